"""Seeded inputs: tensors of a chosen distribution, format and condition number.

Every generator draws float64 values from ``numpy.random.default_rng(seed)`` and rounds them once
(to nearest, ties to even) to the requested format with ``precision.convert``, so the same
arguments give the same bits on every machine. Distributions:

- "normal": mean + std·N(0, 1);
- "uniform": uniform on [mean − √3·std, mean + √3·std] (standard deviation std);
- "half_normal": post-ReLU activations, max(0, mean + std·N(0, 1)): ``mean`` and ``std`` are those
  of the pre-activation normal, the output keeps its exact zeros;
- "heavy_tailed": mean + std·T/√3 with T Student's t with 3 degrees of freedom (variance 3, so the
  scale makes the population standard deviation std; the fourth moment is infinite);
- "constant": every value equals mean (std is ignored).
"""
import math

import numpy as np

from . import precision, subsets

DISTRIBUTIONS = ("normal", "uniform", "half_normal", "heavy_tailed", "constant")

#: the relative perturbation that with_condition's float64 arithmetic (standardizing, shifting,
#: scaling: a few roundings of 2**-53 each) amounts to, in its stated tolerance on κ
FLOAT64_TARGET_EPSILON = 2.0 ** -50

def _check_shape(shape):
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be an integer or a tuple of integers, got {shape!r}") from None
    for extent in shape:
        if isinstance(extent, bool) or not isinstance(extent, (int, np.integer)) or extent < 0:
            raise ValueError(f"shape must hold non-negative integers, got {shape!r}")
    return tuple(int(extent) for extent in shape)


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_distribution(distribution):
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def _check_real(value, argument):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{argument} must be a real number, got {value!r}")
    return float(value)


def _standard_draws(rng, shape, distribution):
    """Draws with population mean 0 and standard deviation 1 ("half_normal": the pre-ReLU N(0, 1))."""
    if distribution in ("normal", "half_normal"):
        return rng.standard_normal(shape)
    if distribution == "uniform":
        return rng.uniform(-math.sqrt(3.0), math.sqrt(3.0), shape)
    return rng.standard_t(3, shape) / math.sqrt(3.0)


def generate(shape, dtype="float32", distribution="normal", mean=0.0, std=1.0, seed=0):
    """An array of ``shape`` and format ``dtype`` (float16, bfloat16, float32, float64) drawn from
    ``distribution`` (module docstring) with parameters ``mean`` and ``std``, rounded once from
    float64; bitwise reproducible by ``seed``."""
    shape = _check_shape(shape)
    name = precision.format_name(dtype, "dtype")
    _check_distribution(distribution)
    mean = _check_real(mean, "mean")
    std = _check_real(std, "std")
    if not math.isfinite(mean):
        raise ValueError(f"mean must be finite, got {mean}")
    if not math.isfinite(std) or std < 0:
        raise ValueError(f"std must be finite and >= 0, got {std}")
    seed = _check_seed(seed)
    if distribution == "constant":
        values = np.full(shape, mean)
    else:
        values = mean + std * _standard_draws(np.random.default_rng(seed), shape, distribution)
        if distribution == "half_normal":
            values = np.maximum(values, 0.0)
    return precision.convert(values, name)


def _sample_kappa(values):
    """κ = sqrt(1 + mean²/var) (population variance) of each row of a (groups, n) float64 array."""
    centered = values - values.mean(axis=1, keepdims=True)
    variance = (centered * centered).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(1.0 + values.mean(axis=1) ** 2 / variance)


def _relu_shift(draws, kappa):
    """Per row, the shift m for which max(0, m + row) has condition number ``kappa``, by bisection.
    κ grows without bound with m, and tends to sqrt(n/(n − 1)) as m falls to −max(row) (one value
    left above zero); the rows are standardized, so m = κ already overshoots (ReLU shrinks the
    spread and raises the mean)."""
    count = draws.shape[1]
    lowest_kappa = math.sqrt(count / (count - 1))
    if kappa <= lowest_kappa:
        raise ValueError(f"kappa={kappa} is out of reach of post-ReLU data in groups of {count} "
                         f"elements: their condition number exceeds sqrt(n/(n-1)) = {lowest_kappa}")
    low = -draws.max(axis=1)  # all values clipped to zero here: the limit κ -> sqrt(n/(n-1))
    high = np.full(draws.shape[0], float(kappa))
    while True:  # halve until no bracket can shrink further in float64
        middle = 0.5 * (low + high)
        if np.all((middle == low) | (middle == high)):
            return high
        too_high = _sample_kappa(np.maximum(middle[:, None] + draws, 0.0)) > kappa
        high = np.where(too_high, middle, high)
        low = np.where(too_high, low, middle)


def with_condition(shape, kappa, dtype="float32", distribution="normal", seed=0, *, norm=None,
                   groups=None, layout="NCHW"):
    """An array whose groups have condition number ``kappa`` (κ = ‖x‖₂/√S = sqrt(1 + mean²/var)
    with the population variance, the κ of numerics.reference.condition_number).

    What is targeted, exactly: the float64 values before the final rounding. With ``norm=None`` the
    whole array is one group; with a ``norm`` (and ``groups``, ``layout``) every normalization group
    of subsets.canonical_view is targeted separately. Per group, the draws are standardized to
    sample mean 0 and sample standard deviation 1, then
    - normal, uniform, heavy_tailed: x = (μ + w)/κ with μ = sqrt(κ² − 1), so the group's sample
      mean is sqrt(1 − 1/κ²) and its sample standard deviation 1/κ (unit root mean square, which
      keeps every format in range);
    - half_normal (post-ReLU): x = max(0, m + w), scaled to unit root mean square, with the shift m
      found by bisection; the zeros stay exact zeros. Reachable: κ > sqrt(n/(n − 1));
    - constant: only kappa = inf (S = 0): every value is 1.
    Tolerance: a relative perturbation ε of every value moves κ by at most the factor range
    [(1 − ε)/(1 + κε), (1 + ε)/(1 − κε)] (the CGL data-perturbation bound, ‖Δx‖ <= ε‖x‖ =
    εκ√S). The float64 arithmetic above amounts to ε = ``FLOAT64_TARGET_EPSILON`` (a few float64
    roundings); rounding to ``dtype`` adds its unit roundoff u (subnormal results aside). So the
    stored data's κ is within that range for ε = FLOAT64_TARGET_EPSILON + u: an accurate target
    only while κu << 1.
    """
    shape = _check_shape(shape)
    kappa = _check_real(kappa, "kappa")
    name = precision.format_name(dtype, "dtype")
    _check_distribution(distribution)
    seed = _check_seed(seed)
    if math.isnan(kappa) or kappa < 1:
        raise ValueError(f"kappa must be >= 1 (κ = sqrt(1 + mean²/var)), got {kappa}")
    if norm is None:
        view_shape = (1, 1, 1, math.prod(shape))
    else:
        view_shape = subsets.canonical_view(shape, norm, groups, layout).view_shape
    if distribution == "constant":
        if kappa != math.inf:
            raise ValueError(f"distribution='constant' has S = 0, so kappa must be inf, got {kappa}")
        return precision.convert(np.ones(shape), name)
    if kappa == math.inf:
        raise ValueError(f"kappa=inf needs distribution='constant', got {distribution!r}")
    group_size = view_shape[1] * view_shape[3]
    if group_size < 2:
        raise ValueError(f"every group needs at least 2 elements to have a condition number; "
                         f"shape {shape} with norm={norm!r} gives groups of {group_size}")
    # rows = groups: (kept_outer, kept_inner) first, the group's elements (reduced axes) last
    draws = _standard_draws(np.random.default_rng(seed), view_shape, distribution)
    rows = draws.transpose(0, 2, 1, 3).reshape(view_shape[0] * view_shape[2], group_size)
    rows = rows - rows.mean(axis=1, keepdims=True)
    rows = rows / np.sqrt((rows * rows).mean(axis=1, keepdims=True))
    if distribution == "half_normal":
        rows = np.maximum(_relu_shift(rows, kappa)[:, None] + rows, 0.0)
        rows = rows / np.sqrt((rows * rows).mean(axis=1, keepdims=True))
    else:
        rows = (math.sqrt((kappa - 1.0) * (kappa + 1.0)) + rows) / kappa
    values = rows.reshape(view_shape[0], view_shape[2], view_shape[1], view_shape[3])
    values = values.transpose(0, 2, 1, 3).reshape(shape)
    return precision.convert(values, name)
