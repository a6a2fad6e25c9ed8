"""Study: Bessel's correction on small groups, where frameworks disagree (docs/architecture.md,
section 7.3).

Every framework normalizes with the biased variance (ddof 0) while training; for the running
(inference) variance PyTorch, TF fused, Caffe, cuDNN and apex use n − 1, Keras 3, Flax and MXNet
native use n. On small groups the two differ by the factor n/(n − 1), far beyond any rounding
error. This study measures both on many groups of standard normal data (population variance 1),
and records what each library does with a single value and ddof = 1.
"""
import warnings

import numpy as np

import numerics
from numerics import data
from studies import engine

TITLE = "Bessel's correction"

GROUP_SIZES = tuple(range(1, 17))
GROUPS = 20000
QUICK_GROUPS = 500


def size_row(size, groups, seed):
    # LayerNorm over (groups, n): one group per row, n elements each
    x = data.generate((groups, size), "float32", "normal", mean=0.0, std=1.0, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # n = 1, ddof = 1: NaN by definition
        biased = np.asarray(numerics.moments(x, "layer", ddof=0).var, dtype=np.float64)
        unbiased = np.asarray(numerics.moments(x, "layer", ddof=1).var, dtype=np.float64)
    return {
        "n": size, "groups": groups, "seed": seed,
        "mean_var_ddof0": biased.mean(), "expected_ddof0": (size - 1) / size,
        "mean_var_ddof1": unbiased.mean(), "expected_ddof1": 1.0 if size > 1 else np.nan,
        "median_ratio_ddof1_to_ddof0": np.median(unbiased / biased) if size > 1 else np.nan,
        "n_over_n_minus_1": size / (size - 1) if size > 1 else np.nan,
        # inference with PyTorch's running variance (n − 1) against Flax's (n), same statistics
        "output_scale_torch_vs_flax": np.median(np.sqrt(biased / unbiased)) if size > 1 else np.nan,
    }


def _torch():
    import torch

    return torch


X_ONES = np.ones((4, 1), np.float32)
#: one value per group with ddof = 1, as each library computes it
SINGLE_VALUE_CALLS = {
    "numerics.moments(ddof=1)": lambda: numerics.moments(X_ONES, "layer", ddof=1).var,
    "numpy.var(ddof=1)": lambda: np.var(X_ONES, axis=1, ddof=1),
    "torch.var(correction=1)":
        lambda: _torch().var(_torch().from_numpy(X_ONES), dim=1, correction=1),
    "torch F.batch_norm, training, N = 1":
        lambda: _torch().nn.functional.batch_norm(_torch().ones(1, 3), None, None, training=True),
    "torch F.instance_norm, one spatial element":
        lambda: _torch().nn.functional.instance_norm(_torch().ones(2, 3, 1)),
}


def single_value_row(name):
    """What one library returns for one value per group with ddof = 1 (measured, not quoted)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = np.asarray(SINGLE_VALUE_CALLS[name](), dtype=np.float64).reshape(-1)
            outcome = "NaN" if np.isnan(result).all() else f"{result[0]:g}"
        except (ValueError, RuntimeError) as error:
            outcome = f"raises {type(error).__name__}: {error}"
    warning = "; ".join(dict.fromkeys(str(item.message).split(" (Triggered")[0]
                                      for item in caught))
    return {"table": "bessel_single_value", "result": outcome, "warning": warning or "none"}


def grid(profile):
    groups = QUICK_GROUPS if profile == "smoke" else GROUPS
    return (engine.Slice("sizes", {"n": GROUP_SIZES, "groups": (groups,)}),
            engine.Slice("single_value", {"call": tuple(SINGLE_VALUE_CALLS)}))


def cell(cell):
    if cell.slice == "single_value":
        return [single_value_row(cell.settings["call"])]
    return [size_row(cell.settings["n"], cell.settings["groups"], cell.seed)]


def report_section(results):
    frame = results.tables["bessel"]
    behaviour = results.tables["bessel_single_value"][["call", "result", "warning"]]
    groups = int(frame["groups"].iloc[0])
    widest = frame.loc[frame["n"].idxmax()]
    largest = results.finding(
        "Even at n = {n} the two conventions differ by {percent:.1f} % in the variance (median "
        "over the groups), orders of magnitude more than the rounding errors of the stable rules "
        "in the accuracy study.", n=widest["n"],
        percent=100 * (widest["median_ratio_ddof1_to_ddof0"] - 1))
    table = frame[["n", "mean_var_ddof0", "expected_ddof0", "mean_var_ddof1", "expected_ddof1",
                   "median_ratio_ddof1_to_ddof0", "n_over_n_minus_1", "output_scale_torch_vs_flax"]]
    table = table.rename(columns={
        "mean_var_ddof0": "mean var, ddof 0", "expected_ddof0": "(n−1)/n",
        "mean_var_ddof1": "mean var, ddof 1", "expected_ddof1": "expected",
        "median_ratio_ddof1_to_ddof0": "var₁/var₀", "n_over_n_minus_1": "n/(n−1)",
        "output_scale_torch_vs_flax": "output scale, n−1 vs n running var"})
    three = {column: (lambda value: "NaN" if np.isnan(value) else f"{value:.3f}")
             for column in table.columns[1:]}
    body = f"""{groups} groups (rows) of n standard-normal float32 values each (population variance
1), numerics' default rule; "mean var" averages over the groups, var₁/var₀ is the median ratio of the
unbiased to the biased variance of a group (n/(n − 1) up to rounding). The last column is how much
a network's inference output changes between a framework that keeps an unbiased running variance
(PyTorch, TF fused, Caffe, cuDNN, apex) and one that keeps the biased one (Keras 3, Flax, MXNet
native), for the same batch statistics: sqrt(var₀/var₁) = sqrt((n − 1)/n). {largest}

{results.table(table, three)}

One value per group with ddof = 1 (the unbiased estimate is 0/0), as each library handles it on
this machine:

{results.table(behaviour)}
"""
    return results.section(body)


STUDY = engine.Study("bessel", TITLE, grid, cell, report_section, seed_factors=("n",),
                     description="the biased and unbiased variance on small groups")
