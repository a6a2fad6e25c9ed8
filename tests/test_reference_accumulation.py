"""The bucket accumulation of numerics.reference (per-exponent int64 buckets folded into the digits
every FLUSH_INTERVAL elements of a group) against exact sums computed here with Python integers:
fold boundaries at the worst-case bucket load, the extreme exponents, exact cancellation, NaN and
Inf in long groups, and every layer and layout with groups longer than the fold interval, for
binary32 (the fast path, which float16 and bfloat16 widen to) and binary64."""
import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from mpmath import libmp

from numerics import reference
from tests.helpers import explicit_groups

#: every finite float32 (float64) is an integer multiple of 2**-149 (2**-1074)
SCALES = {np.float32: 2 ** 149, np.float64: 2 ** 1074}
WORDS = {np.float32: np.uint32, np.float64: np.uint64}
LARGEST = np.float32(np.finfo(np.float32).max)  # significand 2**24 - 1 at the top exponent
LARGEST_SUBNORMAL = np.uint32(0x007FFFFF).view(np.float32)
SMALLEST_NORMAL_FULL = np.uint32(0x00FFFFFF).view(np.float32)  # significand 2**24 - 1, exponent 1
#: binary64: the largest finite value, the largest subnormal, the smallest normal with a full
#: significand, and 2**53 - 1 (every piece of the significand at its maximum)
FLOAT64_FULL = (np.finfo(np.float64).max, np.uint64(0x000FFFFFFFFFFFFF).view(np.float64),
                np.uint64(0x001FFFFFFFFFFFFF).view(np.float64), np.float64(2 ** 53 - 1))


def exact_sums(values):
    """(Σx, Σx²) of float32 or float64 values as Fractions, through the integers x·scale."""
    values = np.asarray(values)
    scale = SCALES[values.dtype.type]
    scaled = []
    for value in values.reshape(-1).tolist():
        numerator, denominator = value.as_integer_ratio()
        scaled.append(numerator * (scale // denominator))
    return Fraction(sum(scaled), scale), Fraction(sum(v * v for v in scaled), scale * scale)


def rounded(fraction, bits=256):
    """The Fraction correctly rounded to nearest at ``bits`` bits, as an mpf."""
    with mpmath.workprec(bits):
        return mpmath.mpf(libmp.from_rational(fraction.numerator, fraction.denominator, bits,
                                              libmp.round_nearest))


def assert_exact(values, norm=None, groups=None, layout="NCHW", ddof=0):
    """exact_sums and moments of every group equal the oracle's exact sums and their rounding."""
    sums = reference.exact_sums(values, norm, groups=groups, layout=layout)
    mean, var = reference.moments(values, norm, groups=groups, layout=layout, ddof=ddof)
    expected = ({index: values.reshape(-1)[positions] for index, positions
                 in explicit_groups(values.shape, norm, groups, layout).items()} if norm
                else {(): values})
    for index, group_values in expected.items():
        sum_x, sum_x2 = exact_sums(group_values)
        count = group_values.size
        assert sums.count == count
        assert sums.sum_x[index] == sum_x and sums.sum_x2[index] == sum_x2
        assert mean[index] == rounded(sum_x / count)
        assert var[index] == rounded((sum_x2 - sum_x * sum_x / count) / (count - ddof))


@pytest.mark.parametrize("value", [LARGEST, -LARGEST, SMALLEST_NORMAL_FULL, LARGEST_SUBNORMAL,
                                   np.float32(1 - 2.0 ** -24), *FLOAT64_FULL, -FLOAT64_FULL[0]])
@pytest.mark.parametrize("extra", [-1, 0, 1, reference.FLUSH_INTERVAL + 1])
def test_the_fullest_bucket_folds_in_time(value, extra):
    """FLUSH_INTERVAL + extra copies of a value with the largest significand: a binary32 square
    slot reaches (2**24 - 1)²·FLUSH_INTERVAL, just below 2**63, and one more element before a
    fold would overflow it. Folds within one row (1-D), between rows (NCHW batch, rows of 7
    elements) and across channels (NHWC batch)."""
    count = reference.FLUSH_INTERVAL + extra
    rows = -(-count // 7)
    exact = Fraction(float(value))
    for values, norm, layout in ((np.full(count, value), None, "NCHW"),
                                 (np.full((rows, 2, 7), value), "batch", "NCHW"),
                                 (np.full((count, 1, 3), value), "batch", "NHWC")):
        sums = reference.exact_sums(values, norm, layout=layout)
        mean, var = reference.moments(values, norm, layout=layout)
        assert (sums.sum_x == sums.count * exact).all()
        assert (sums.sum_x2 == sums.count * exact * exact).all()
        assert (mean == float(value)).all() and (var == 0).all()


def extreme_values(dtype):
    """The largest finite value and its half, the smallest and the largest subnormal, the
    smallest normal with a full significand, the smallest normal, 1, 3 and 0."""
    info, word = np.finfo(dtype), WORDS[dtype]
    full = (1 << info.nmant) - 1  # the fraction field all ones
    return np.array([info.max, info.max / 2, info.smallest_subnormal,
                     np.array(full, word).view(dtype), np.array(2 * full + 1, word).view(dtype),
                     info.tiny, 1.0, 3.0, 0.0], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_exponents_in_long_groups(dtype):
    """The extremes of every binade that matters, with random signs, in groups longer than the
    fold interval, with ddof 1."""
    rng = np.random.default_rng(7)
    extremes = extreme_values(dtype)
    count = 3 * reference.FLUSH_INTERVAL + 5
    values = extremes[rng.integers(0, extremes.size, count)]
    values *= rng.choice(np.array([-1, 1], dtype), count)
    assert_exact(values, ddof=1)
    assert_exact(values[:count - count % 4].reshape(-1, 2, 2), "batch", layout="NHWC", ddof=1)


def test_exact_cancellation():
    """Values and their negatives, shuffled: Σx is exactly 0 (the mean is exactly 0) although
    partial sums are huge. Then each value next to its negative (two channels of one layer-norm
    group): every bucket's Σ±m is 0 at every fold while its Σm² is not."""
    rng = np.random.default_rng(11)
    half = rng.standard_normal(reference.FLUSH_INTERVAL, dtype=np.float32)
    half *= np.float32(2.0) ** rng.integers(-140, 120, half.size).astype(np.float32)
    values = rng.permutation(np.concatenate([half, -half, [LARGEST, -LARGEST]]).astype(np.float32))
    sums = reference.exact_sums(values)
    assert sums.sum_x[()] == 0
    mean, var = reference.moments(values)
    assert mean[()] == 0
    assert var[()] == rounded(exact_sums(values)[1] / values.size)
    paired = np.stack([half, -half], axis=1).reshape(1, -1, 1, 2)  # NHWC: 2 channels
    assert_exact(paired, "layer", layout="NHWC")
    assert reference.exact_sums(paired, "layer", layout="NHWC").sum_x[0] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_nan_and_inf_in_long_groups(layout, dtype):
    """The non-finite rule holds for groups longer than the fold interval, whichever side of a
    fold the NaN or Inf falls on; the finite group next to them stays exact."""
    rows = reference.FLUSH_INTERVAL + 3
    values = np.random.default_rng(5).standard_normal((rows, 5, 1)).astype(dtype)
    values[rows - 1, 0, 0] = np.nan                                   # channel 0: NaN last
    values[0, 1, 0] = np.inf                                          # channel 1: +inf first
    values[reference.FLUSH_INTERVAL, 2, 0], values[7, 2, 0] = np.inf, -np.inf  # both
    values[reference.FLUSH_INTERVAL - 1, 3, 0] = -np.inf              # channel 3: -inf
    if layout == "NHWC":
        values = np.ascontiguousarray(np.moveaxis(values, 1, -1))
    mean, var = reference.moments(values, "batch", layout=layout)
    for channel, expected in enumerate([math.nan, math.inf, math.nan, -math.inf]):
        assert (mpmath.isnan(mean[channel]) if math.isnan(expected)
                else mean[channel] == expected)
        assert mpmath.isnan(var[channel])
    finite = values[..., 4] if layout == "NHWC" else values[:, 4]
    sum_x, sum_x2 = exact_sums(finite)
    assert mean[4] == rounded(sum_x / rows)
    assert var[4] == rounded((sum_x2 - sum_x * sum_x / rows) / rows)


def finite_bit_patterns(rng, shape, dtype):
    """Values from random finite bit patterns: every binade, subnormals and both signs."""
    word = WORDS[dtype]
    bits = 8 * np.dtype(word).itemsize
    infinity = int(np.array(np.inf, dtype).view(word))
    words = rng.integers(0, infinity, size=shape, dtype=word)
    words |= rng.integers(0, 2, size=shape, dtype=word) << word(bits - 1)
    return words.view(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("norm, groups", [("batch", None), ("layer", None), ("instance", None),
                                          ("group", 2)])
def test_every_layer_and_layout_with_long_groups(norm, groups, layout, dtype):
    """(2, 4, 185, 180) and its channels-last twin: every group of every layer holds more than
    FLUSH_INTERVAL elements (an instance 33300), so every one is folded mid-group."""
    assert 185 * 180 > reference.FLUSH_INTERVAL
    shape = (2, 4, 185, 180) if layout == "NCHW" else (2, 185, 180, 4)
    values = finite_bit_patterns(np.random.default_rng(3), shape, dtype)
    assert_exact(values, norm, groups=groups, layout=layout, ddof=1)
