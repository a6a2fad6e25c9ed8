"""Audit a tensor: how accurately every numerics rule × precision and every installed framework
computes the normalization statistics of *this* tensor.

``audit(x, norm, groups=None, layout="NCHW", eps=1e-5)`` returns an ``Audit`` (``eps=None``: each
layer's own default eps; ``accumulator_formats`` and ``kinds`` narrow what runs, see ``audit``):

- per group: n, κ (numerics.reference), and the exact mean and variance of the stored values
  (correctly rounded to float64 for display);
- per implementation (numerics rules at the default topology with each accumulator at least as
  wide as the input's format among float32 and float64 — and the input's own 16-bit format;
  every installed framework and recipe of numerics.implementations that takes this layer, layout
  and format): the worst group's correct digits of mean and variance (LRE, numerics.metrics.lre,
  capped at 17), the largest relative error of the variance, the count of negative variances
  (None where the framework only returns its output, which hides the sign), the NaN outputs at
  ``eps``, and for numerics rules the a-priori bound of numerics.bounds at the worst group. Where
  the statistics are recovered from the output, a group whose output at eps = 0 is not finite
  (the layer's variance there was 0 or negative) has no recovered statistics: it is counted in
  ``unrecovered_groups`` and left out of the digits (None when no group is left);
- a verdict: the implementations whose mean and variance keep at least half the digits of the
  input's format (float32: 3.6 of 7.2) in every group and give no NaN output, and those that do not.

NaN outputs: a framework layer's own output at ``eps`` is counted element by element. numerics
rules and the statistics-only frameworks have no layer: for them every element of a group whose
var + eps is not positive (NaN, negative, or zero at eps = 0) counts, since normalizing with those
statistics gives NaN or ±inf there. Groups holding NaN or Inf input have no exact statistics: they
are counted (``nonfinite_groups``) and left out of the digits and the NaN outputs. An implementation that raises is
listed with its error, not dropped. Nothing is subsampled: every element of every group is used.
"""
import math
import warnings
from dataclasses import dataclass, field

import mpmath
import numpy as np

from . import bounds, implementations, metrics, precision, reference, subsets
from . import topology as topologies
from .algorithms import ALGORITHMS
from .statistics import moments

#: the LRE cap: past float64's 15.9 significant digits, so the cap only marks an exact result
DIGITS_CAP = 17
KINDS = ("numerics", "framework", "recipe")
#: the eps of a numerics rule's normalization when each layer's default is asked for (PyTorch's)
NUMERICS_EPS = 1e-5


@dataclass
class Audit:
    """The audit of one tensor (module docstring); ``as_dict()`` is the JSON object."""
    shape: tuple
    dtype: str
    norm: str
    groups_argument: int | None
    layout: str
    eps: float | None
    groups: list
    implementations: list
    threshold_digits: float
    nonfinite_groups: int = 0
    verdict: dict = field(default_factory=dict)

    def as_dict(self):
        return {"input": {"shape": list(self.shape), "dtype": self.dtype, "norm": self.norm,
                          "groups": self.groups_argument, "layout": self.layout, "eps": self.eps,
                          "nonfinite_groups": self.nonfinite_groups},
                "groups": self.groups, "implementations": self.implementations,
                "verdict": self.verdict}


def format_digits(name):
    """Decimal digits of a format: p·log10(2) (float32: 7.22)."""
    return precision.SIGNIFICAND_BITS[name] * math.log10(2)


def accumulators(input_format):
    """The accumulators audited for an input format: its own and the wider of float32/float64."""
    return tuple(dict.fromkeys(
        [input_format] + [name for name in ("float32", "float64")
                          if precision.SIGNIFICAND_BITS[name] >= precision.SIGNIFICAND_BITS[input_format]]))


class ExactGroups:
    """The exact statistics of every group, as mpmath numbers and as float64 (high, low) pairs
    whose sum is within 2**-106 of the exact value (for fast relative errors)."""

    def __init__(self, x, norm, groups, layout):
        self.view = subsets.canonical_view(x.shape, norm, groups, layout)
        mean, var = reference.moments(x, norm, groups=groups, layout=layout)
        n = self.view.group_size
        self.mean = mean.reshape(-1)
        self.var = {0: var.reshape(-1),
                    1: np.array([v * n / (n - 1) if n > 1 else v * math.nan for v in var.reshape(-1)],
                                dtype=object)}
        self.finite = np.array([math.isfinite(float(v)) for v in self.var[0]], dtype=bool)
        self.kappa = reference.condition_number(x, norm, groups=groups, layout=layout).reshape(-1)
        self.pairs = {"mean": split(self.mean)}
        self.pairs.update({ddof: split(values) for ddof, values in self.var.items()})


def split(values):
    high = np.array([float(value) for value in values], np.float64)
    with mpmath.workprec(reference.MINIMUM_BITS):
        low = np.array([float(value - h) if math.isfinite(h) else 0.0
                        for value, h in zip(values, high)], np.float64)
    return high, low


def min_correct_digits(computed, exact, pair, finite):
    """The smallest LRE over the finite groups. The double-double relative error finds the
    candidates (numerics.metrics.lre: a group at relative error ≥ 1/2 has an LRE of at most
    log10 2, any other one at least that, so the minimum is among the former if there are any,
    else it is the worst group); metrics.lre then gives their exact digits."""
    computed = np.asarray(computed, np.float64).reshape(-1)[finite]
    high, low = pair[0][finite], pair[1][finite]
    if computed.size == 0:
        return None, None
    with np.errstate(all="ignore"):
        relative = np.abs((computed - high) - low) / np.abs(high)
    relative = np.where(high == 0, np.where(computed == 0, 0.0, np.inf), relative)
    relative = np.where(np.isnan(relative), np.inf, relative)
    candidates = np.flatnonzero(relative >= 0.5)
    if candidates.size == 0:
        candidates = np.array([np.argmax(relative)])
    digits = metrics.lre(computed[candidates], exact[finite][candidates], digits=DIGITS_CAP)
    return float(np.min(digits)), float(np.max(relative))


def derived_nan_outputs(var, eps, exact, dtype):
    """Output elements that are NaN or ±inf when a layer normalizes with these variances (module
    docstring): every element of a finite group whose var + eps is not positive."""
    with np.errstate(invalid="ignore"):
        denominator = np.asarray(var, dtype).reshape(-1) + dtype(eps)
    return int(np.count_nonzero(~(denominator > 0) & exact.finite)) * exact.view.group_size


def output_nans(y, norm, groups, layout, exact):
    """NaN elements of a layer's output y, in the groups of finite input only."""
    view = exact.view
    grouped = np.isnan(np.asarray(y)).reshape(view.view_shape).sum(axis=(1, 3)).reshape(-1)
    return int(grouped[exact.finite].sum())


def measured(name, kind, mean, var, exact, ddof, negative, nan_outputs, bound=None,
             unrecovered=None):
    """One implementation's row of the audit (module docstring). ``unrecovered``: a mask of the
    groups whose statistics could not be recovered from the output (left out of the digits)."""
    groups = exact.finite if unrecovered is None else exact.finite & ~unrecovered
    digits_mean, _ = min_correct_digits(mean, exact.mean, exact.pairs["mean"], groups)
    digits_var, worst_var = min_correct_digits(var, exact.var[ddof], exact.pairs[ddof], groups)
    return {"implementation": name, "kind": kind, "min_correct_digits_mean": digits_mean,
            "min_correct_digits_var": digits_var, "max_relative_error_var": worst_var,
            "negative_variances": negative, "nan_outputs": nan_outputs, "bound": bound,
            "unrecovered_groups": None if unrecovered is None else int(unrecovered.sum()),
            "ddof": ddof, "error": None}


def failed(name, kind, error):
    return {"implementation": name, "kind": kind, "min_correct_digits_mean": None,
            "min_correct_digits_var": None, "max_relative_error_var": None,
            "negative_variances": None, "nan_outputs": None, "bound": None,
            "unrecovered_groups": None, "ddof": None, "error": f"{type(error).__name__}: {error}"}


def rule_bound(algorithm, acc_format, input_format, exact, shifted_kappa):
    """The a-priori bound of the rule at the default topology for the worst group (numerics.bounds)."""
    order = topologies.resolve(None)
    finite = exact.finite & np.isfinite(exact.kappa)
    if not finite.any():
        return None
    kappa = (shifted_kappa if algorithm == "shifted" else exact.kappa)[finite]
    u = precision.unit_roundoff(acc_format)
    narrower = precision.SIGNIFICAND_BITS[acc_format] < precision.SIGNIFICAND_BITS[input_format]
    values = bounds.variance_bound(algorithm, exact.view.group_size, np.maximum(kappa, 1.0), u,
                                   order.lanes, order.block, u if narrower else 0.0,
                                   data_kappa=np.maximum(exact.kappa[finite], 1.0))
    return float(np.max(values))


def numerics_rows(x, norm, groups, layout, eps, exact, accumulator_formats):
    input_format = precision.format_name(x.dtype, "x")
    shifted = reference.shifted_condition_number(x, norm, groups=groups, layout=layout).reshape(-1)
    eps = NUMERICS_EPS if eps is None else eps
    rows = []
    for acc_format in accumulator_formats or accumulators(input_format):
        for algorithm in ALGORITHMS:
            name = f"numerics {algorithm} {acc_format}"
            mean, var = moments(x, norm, groups=groups, layout=layout, algorithm=algorithm,
                                acc_dtype=acc_format)
            var = var.reshape(-1)
            nan_outputs = derived_nan_outputs(var, eps, exact, var.dtype.type)
            rows.append(measured(name, "numerics", mean, var, exact, 0,
                                 int(np.count_nonzero(var < 0)), nan_outputs,
                                 rule_bound(algorithm, acc_format, input_format, exact, shifted)))
    return rows


def framework_row(implementation, x, norm, groups, layout, eps, exact):
    mean, var = implementation.statistics(x, norm, groups=groups, layout=layout)
    var = var.reshape(-1)
    if eps is None:
        eps = implementation.default_eps()
        eps = NUMERICS_EPS if eps is None else eps
    if implementation.normalize is not None and implementation.kind == "framework":
        y = implementation.output(x, norm, groups=groups, layout=layout, eps=eps)
        nan_outputs = output_nans(y, norm, groups, layout, exact)
    else:
        compute = np.float64 if np.asarray(x).dtype == np.float64 else np.float32
        nan_outputs = derived_nan_outputs(var, eps, exact, compute)
    if implementation.exposes_variance:
        negative, unrecovered = int(np.count_nonzero(var < 0)), None
    else:
        negative, unrecovered = None, np.isnan(var)
    return measured(implementation.name, implementation.kind, mean, var, exact,
                    implementation.ddof, negative, nan_outputs, unrecovered=unrecovered)


def implementation_rows(x, norm, groups, layout, eps, exact, kinds):
    """Every installed framework and recipe (of ``kinds``) that takes this layer, layout and input
    format."""
    input_format = precision.format_name(x.dtype, "x")
    rows = []
    for kind in [kind for kind in ("framework", "recipe") if kind in kinds]:
        for implementation in implementations.select(kind, norm, layout):
            if input_format not in implementation.dtypes:
                continue
            try:
                rows.append(framework_row(implementation, x, norm, groups, layout, eps, exact))
            except Exception as error:  # a framework that fails on this tensor is a finding
                rows.append(failed(implementation.name, kind, error))
    return rows


def verdict(rows, threshold):
    keeps, loses, not_run = [], [], []
    for row in rows:
        if row["error"] is not None:
            not_run.append(row["implementation"])
            continue
        digits = [row["min_correct_digits_mean"], row["min_correct_digits_var"]]
        good = all(value is None or value >= threshold for value in digits) and not row["nan_outputs"]
        (keeps if good else loses).append(row["implementation"])
    return {"threshold_digits": threshold, "keeps_half_the_digits": keeps,
            "loses_half_the_digits": loses, "not_run": not_run}


def group_rows(exact):
    return [{"index": index, "n": exact.view.group_size, "kappa": float(exact.kappa[index]),
             "exact_mean": float(exact.mean[index]), "exact_var": float(exact.var[0][index])}
            for index in range(exact.mean.size)]


def checked_input(x, norm, groups, layout, eps):
    x = np.asarray(x)
    if x.dtype.kind == "V" and x.dtype.itemsize == 2:
        x = x.view(precision.NUMPY_DTYPES["bfloat16"])  # how numpy saves ml_dtypes' bfloat16
    precision.format_name(x.dtype, "x")
    subsets.canonical_view(x.shape, norm, groups, layout)
    if x.size == 0:
        raise ValueError(f"x is empty (shape {x.shape}): every group needs at least one element")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float))
                            or not eps >= 0):
        raise ValueError(f"eps must be a non-negative number or None, got {eps!r}")
    return x


def audit(x, norm, *, groups=None, layout="NCHW", eps=1e-5, accumulator_formats=None, kinds=KINDS):
    """Audit the tensor ``x`` for the layer ``norm`` (module docstring); returns an Audit.

    ``eps=None`` counts NaN outputs at each layer's own default eps (NUMERICS_EPS for numerics
    rules and layers without one). ``accumulator_formats``: the numerics accumulators to audit
    (default: ``accumulators`` of the input's format). ``kinds``: which of KINDS to run (all by
    default; leaving out "framework" spares importing the frameworks)."""
    if not set(kinds) <= set(KINDS):
        raise ValueError(f"kinds must be a subset of {KINDS}, got {kinds!r}")
    x = checked_input(x, norm, groups, layout, eps)
    input_format = precision.format_name(x.dtype, "x")
    for name in accumulator_formats or ():
        precision.format_name(name, "accumulator_formats")
    eps = None if eps is None else float(eps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        exact = ExactGroups(x, norm, groups, layout)
        rows = (numerics_rows(x, norm, groups, layout, eps, exact, accumulator_formats)
                if "numerics" in kinds else [])
        rows += implementation_rows(x, norm, groups, layout, eps, exact, kinds)
    threshold = format_digits(input_format) / 2
    return Audit(tuple(x.shape), input_format, norm, groups, layout, eps, group_rows(exact),
                 rows, threshold, int(np.count_nonzero(~exact.finite)), verdict(rows, threshold))
