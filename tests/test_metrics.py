"""Error measures against exact Fraction arithmetic and numpy's own correctly rounded conversions."""
import math
from fractions import Fraction

import ml_dtypes
import mpmath
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from numerics import metrics, precision, reference

finite_doubles = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(computed=finite_doubles, reference_value=finite_doubles.filter(lambda value: value != 0))
def test_relative_error_is_the_exact_ratio_rounded(computed, reference_value):
    exact = abs(Fraction(computed) - Fraction(reference_value)) / abs(Fraction(reference_value))
    try:
        expected = float(exact)
    except OverflowError:
        expected = math.inf
    result = metrics.relative_error(computed, reference_value)
    assert isinstance(result, np.float64)
    # the mpmath result at 128 bits, rounded to float64: at most one rounding more than float(exact)
    assert result == expected or abs(result - expected) <= math.ulp(expected)


def test_relative_error_special_cases():
    inf, nan = math.inf, math.nan
    cases = [(0.0, 0.0, 0.0), (1e-300, 0.0, inf), (inf, inf, 0.0), (-inf, inf, inf), (inf, 2.0, inf),
             (2.0, inf, inf), (nan, 1.0, nan), (1.0, nan, nan), (-0.0, 0.0, 0.0)]
    for computed, reference_value, expected in cases:
        result = metrics.relative_error(computed, reference_value)
        assert (math.isnan(result) if math.isnan(expected) else result == expected), \
            (computed, reference_value)


def test_relative_error_takes_every_format_and_mpf_arrays_with_broadcasting():
    mean, _ = reference.moments(np.array([1.0, 2.0, 4.0], np.float32))  # 7/3 at 256 bits
    exact = Fraction(7, 3)
    for name in precision.FORMATS:
        computed = precision.convert(np.array([7 / 3, 2.0]), name)
        result = metrics.relative_error(computed, mean)
        assert result.dtype == np.float64 and result.shape == (2,)
        for value, error in zip(computed, result):
            expected = abs(Fraction(float(value)) - exact) / exact
            assert error == pytest.approx(float(expected), rel=1e-15)
    assert metrics.relative_error(ml_dtypes.bfloat16(3.0), "3") == 0.0
    assert metrics.relative_error(np.float16(1.5), Fraction(3, 2)) == 0.0
    grid = metrics.relative_error(np.array([[1.0], [2.0]]), np.array([1.0, 4.0]))
    assert grid.shape == (2, 2) and grid.tolist() == [[0.0, 0.75], [1.0, 0.5]]


def test_relative_error_in_u_divides_by_the_accumulator_unit_roundoff():
    assert metrics.relative_error_in_u(1.0 + 2 ** -20, 1.0, "float32") == 16.0
    assert metrics.relative_error_in_u(1.0 + 2 ** -20, 1.0, np.float16) == 2 ** -9
    with pytest.raises(TypeError, match="acc_dtype"):
        metrics.relative_error_in_u(1.0, 1.0, "int8")


@pytest.mark.parametrize("name", precision.FORMATS)
@settings(max_examples=150, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_correctly_rounded_matches_one_ieee_rounding_from_float64(name, value):
    """numpy's float64 -> float32/float16 cast and precision.convert's bfloat16 path are single
    correct roundings (gradual underflow and overflow included): the mpf path must agree."""
    with np.errstate(over="ignore"):
        expected = precision.convert(np.array([value]), name).astype(np.float64)
    rounded = metrics.correctly_rounded(mpmath.mpf(value), name)
    assert rounded.dtype == precision.NUMPY_DTYPES[name]
    if value != 0:  # mpmath has no signed zero; a non-zero value keeps its sign even on underflow
        assert rounded.astype(np.float64).tobytes() == expected.tobytes()
    else:
        assert rounded.astype(np.float64) == 0


def test_correctly_rounded_breaks_ties_to_even_without_double_rounding():
    with mpmath.workprec(300):
        just_above_tie = 1 + mpmath.mpf(2) ** -24 + mpmath.mpf(2) ** -200  # via float64: 1.0
        cases = [(1 + mpmath.mpf(2) ** -24, "float32", 1.0),
                 (1 + 3 * mpmath.mpf(2) ** -24, "float32", 1 + 2 ** -22),
                 (just_above_tie, "float32", 1 + 2 ** -23),
                 (mpmath.mpf(65520), "float16", math.inf),
                 (mpmath.mpf(2) ** -25, "float16", 0.0),
                 (mpmath.mpf(3) * mpmath.mpf(2) ** -26, "float16", 2 ** -24)]
    for value, name, expected in cases:
        assert float(metrics.correctly_rounded(value, name)) == expected, (value, name)


@pytest.mark.parametrize("name", precision.FORMATS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_ulp_distance_counts_steps_between_format_values(name, data):
    """Consecutive bit patterns of positive floats are consecutive values, so moving the pattern
    by k moves the value by k ulps; a reference a thousandth of an ulp off still rounds back."""
    dtype = precision.NUMPY_DTYPES[name]
    words = {"float16": np.uint16, "bfloat16": np.uint16, "float32": np.uint32,
             "float64": np.uint64}[name]
    largest_finite = int(np.array([ml_dtypes.finfo(dtype).max], dtype).view(words)[0])
    word = data.draw(st.integers(0, largest_finite - 5))
    steps = data.draw(st.integers(0, 5))
    sign = data.draw(st.sampled_from([1, -1]))
    start, following, moved = (np.array([word + offset], words).view(dtype)[0] * dtype.type(sign)
                               for offset in (0, 1, steps))
    with mpmath.workprec(400):
        reference_value = mpmath.mpf(float(start)) + (mpmath.mpf(float(following))
                                                      - mpmath.mpf(float(start))) / 1000
    result = metrics.ulp_distance(moved, reference_value, name)
    assert isinstance(result, np.float64) and result == steps
    assert metrics.ulp_distance(np.array([moved, start]), reference_value, name).tolist() == [
        steps, 0]


def test_ulp_distance_across_zero_infinity_and_nan():
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    assert metrics.ulp_distance(np.float32(-tiny), tiny, "float32") == 2
    assert metrics.ulp_distance(np.float32(0.0), -0.0, "float32") == 0
    assert metrics.ulp_distance(np.float32(np.inf), float(np.finfo(np.float32).max), "float32") == 1
    assert metrics.ulp_distance(np.float16(65504), mpmath.mpf(10) ** 6, "float16") == 1
    assert math.isnan(metrics.ulp_distance(np.float32(np.nan), 1.0, "float32"))
    assert math.isnan(metrics.ulp_distance(1.0, mpmath.mpf("nan"), "float64"))
    with pytest.raises(ValueError, match="computed"):
        metrics.ulp_distance(0.1, "0.1", "float32")
    with pytest.raises(TypeError, match="dtype"):
        metrics.ulp_distance(1.0, 1.0, "float128")


def test_lre_follows_mccullough():
    assert metrics.lre(1.0, 1.0) == 15.0
    assert metrics.lre(1.0, 1.0, digits=9) == 9.0
    assert metrics.lre(1.0000001, "1") == pytest.approx(7.0, abs=1e-6)
    assert metrics.lre(1 + 1e-17, "1") == 15.0  # capped
    assert metrics.lre("-177.43500000001", "-177.435") == pytest.approx(
        -math.log10(1e-11 / 177.435), abs=1e-9)
    assert metrics.lre(1e-9, 0.0) == pytest.approx(9.0)  # c = 0: -log10|x|
    assert metrics.lre(5.0, 0.0) == 0.0
    assert metrics.lre(1e-30, 0.0) == 15.0
    # grossly wrong: opposite sign, more than a factor of two either way, non-finite
    for computed in (-1.0, 2.0001, 0.4999, 0.0, math.inf, math.nan):
        assert metrics.lre(computed, 1.0) == 0.0, computed
    assert metrics.lre(1.9, 1.0) == pytest.approx(-math.log10(0.9))
    assert math.isnan(metrics.lre(1.0, math.nan))
    assert metrics.lre(np.array([1.0, 2.5]), np.array(["1.0", "1.0"])).tolist() == [15.0, 0.0]
    with pytest.raises(ValueError, match="digits"):
        metrics.lre(1.0, 1.0, digits=0)


def test_condition_number_from_reference_statistics_matches_the_data():
    values = np.random.default_rng(3).normal(50.0, 0.5, size=(4, 6, 10)).astype(np.float32)
    for ddof in (0, 1):
        mean, var = reference.moments(values, "layer", ddof=ddof)
        kappa = metrics.condition_number(mean, var, 60, ddof)
        assert kappa.shape == (4,) and kappa.dtype == np.float64
        np.testing.assert_allclose(kappa, reference.condition_number(values, "layer"), rtol=1e-15)
    assert metrics.condition_number(mpmath.mpf(2), mpmath.mpf(0), 5, 0) == math.inf
    assert math.isnan(metrics.condition_number(1.0, math.nan, 5, 1))
    assert math.isnan(metrics.condition_number(1.0, 1.0, 1, 1))
    assert metrics.condition_number(0.0, 3.0, 7, 1) == 1.0
    with pytest.raises(ValueError, match="ddof"):
        metrics.condition_number(1.0, 1.0, 5, -1)
    with pytest.raises(ValueError, match="n"):
        metrics.condition_number(1.0, 1.0, 2.5, 0)


@pytest.mark.parametrize("bad, error", [(object(), TypeError), (True, TypeError),
                                        ("one", ValueError), (np.array([1, 2], "c8"), TypeError)])
def test_bad_values_name_the_argument(bad, error):
    with pytest.raises(error, match="computed"):
        metrics.relative_error(bad, 1.0)
    with pytest.raises(error, match="reference"):
        metrics.lre(1.0, bad)
