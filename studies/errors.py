"""The error summary of one computed set of variances against the exact reference, shared by the
accuracy and frameworks studies: one row of a study table per call."""
import ml_dtypes
import numpy as np

from numerics import metrics, precision, unit_roundoff

#: LRE cap: past float64's 15.9 significant digits, so the cap (17) only ever marks an exact result
LRE_DIGITS = 17


def variance_errors(computed, exact, acc_format, bound=None):
    """Summarise computed variances (any float array) against exact ones (object array of mpf, same
    shape) for results computed in ``acc_format``.

    Groups with an exact variance of 0 (constant groups) have no relative error: they are counted
    in ``constant_groups`` and left out of every error column (study them by sign instead).
    ``bound``: the a-priori bound of each measurable group (in the order of the measurable groups),
    or None. The bounds assume that nothing overflows or underflows, so the observed/bound ratio
    leaves out groups whose result is not finite (``nonfinite_count``) and groups whose exact
    variance lies below the accumulator's normal range (``underflow_groups``: float16 variances
    under 6.1e-5). Returns a dict of plain floats and ints.
    """
    computed = np.asarray(computed, dtype=np.float64).reshape(-1)
    exact = np.asarray(exact, dtype=object).reshape(-1)
    measurable = np.array([value > 0 for value in exact], dtype=bool)
    smallest_normal = float(ml_dtypes.finfo(precision.NUMPY_DTYPES[acc_format]).smallest_normal)
    underflow = measurable & np.array([value < smallest_normal for value in exact], dtype=bool)
    summary = {
        "group_count": int(computed.size),
        "constant_groups": int((~measurable).sum()),
        "underflow_groups": int(underflow.sum()),
        "negative_count": int((computed < 0).sum()),
        # a variance computed as exactly 0 although the exact one is positive: every digit lost
        "zero_count": int((computed[measurable] == 0).sum()),
        "nonfinite_count": int((~np.isfinite(computed)).sum()),
    }
    if measurable.any():
        relative = np.atleast_1d(metrics.relative_error(computed[measurable], exact[measurable]))
        # a NaN result counts as the worst error, not as a missing one
        relative = np.where(np.isnan(relative), np.inf, relative)
        summary.update(max_rel_error=float(relative.max()), median_rel_error=float(np.median(relative)),
                       max_rel_error_u=float(relative.max() / unit_roundoff(acc_format)),
                       min_lre=worst_lre(computed[measurable], exact[measurable], relative))
    else:
        summary.update(max_rel_error=np.nan, median_rel_error=np.nan, max_rel_error_u=np.nan,
                       min_lre=np.nan)
    if bound is not None:
        bound = np.asarray(bound, dtype=np.float64).reshape(-1)
        modelled = (np.isfinite(computed) & ~underflow)[measurable]
        if modelled.any():
            ratio = relative[modelled] / bound[modelled]
            summary.update(bound_median=float(np.median(bound[modelled])),
                           max_bound_ratio=float(ratio.max()), groups_over_bound=int((ratio > 1).sum()))
        else:
            summary.update(bound_median=np.nan, max_bound_ratio=np.nan, groups_over_bound=0)
    return summary


def layout_mismatches(frame, keys, columns=("max_rel_error", "median_rel_error", "min_lre")):
    """Batch and instance groups hold their elements in the same order in both layouts (the
    canonical views of numerics.subsets), so any rule must return bitwise the same variances for
    NCHW and NHWC data holding the same values, and so the same error summaries. Returns (cell
    pairs compared, pairs whose summaries differ) over the batch and instance rows of ``frame``;
    ``keys``: the columns that identify a cell apart from its layout."""
    cells = frame[frame["norm"].isin(["batch", "instance"])]
    by_layout = [cells[cells["layout"] == layout].set_index(list(keys))[list(columns)].fillna(-1.0)
                 for layout in ("NCHW", "NHWC")]
    first, second = by_layout[0].align(by_layout[1], join="inner")
    return len(first), int(first.ne(second).any(axis=1).sum())


def worst_lre(computed, exact, relative):
    """The smallest LRE over the groups, evaluating metrics.lre (mpmath logarithms: the costly
    part of a cell) only where the minimum can be. A group with relative error below 1/2 is never
    "grossly wrong" (its ratio to the reference lies in (1/2, 3/2)), so its LRE is −log10 of its
    relative error, above log10(2); a group at 1/2 or more has an LRE of at most log10(2). So the
    minimum is among the groups at 1/2 or more if there are any, else it is the worst group's."""
    candidates = np.flatnonzero(relative >= 0.5)
    if candidates.size == 0:
        candidates = np.array([np.argmax(relative)])
    return float(np.min(metrics.lre(computed[candidates], exact[candidates], digits=LRE_DIGITS)))
