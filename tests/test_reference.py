"""The exact reference against independent oracles: fractions.Fraction (exact) and a direct
high-precision mpmath two-pass, on every format, every layer and layout, special values included."""
import math
from fractions import Fraction

import mpmath
from mpmath import libmp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from numerics import precision, reference
from tests.helpers import explicit_groups

BIT_DTYPES = {"float16": np.uint16, "bfloat16": np.uint16, "float32": np.uint32, "float64": np.uint64}


def as_fraction(value):
    """An mpf or a binary float as the exact Fraction it holds."""
    if isinstance(value, mpmath.mpf):
        return Fraction(*libmp.to_rational(value._mpf_))
    return Fraction(float(value))


def exact_moments(values, ddof):
    """Mean and variance as Fractions, straight from the definition (two passes, exact)."""
    exact = [Fraction(float(value)) for value in values]
    count = len(exact)
    mean = sum(exact) / count
    sum_of_squares = sum((value - mean) ** 2 for value in exact)
    return mean, (sum_of_squares / (count - ddof) if count > ddof else None)


def assert_correctly_rounded(value, exact, bits):
    """``value`` (an mpf) is ``exact`` rounded to nearest at ``bits`` bits: within half an ulp."""
    assert value.man_exp[0].bit_length() <= bits if value else True
    if exact == 0:
        assert value == 0
        return
    magnitude = abs(exact)
    top = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** top > magnitude:
        top -= 1
    assert abs(as_fraction(value) - exact) <= Fraction(2) ** (top - bits)


def random_values(name, max_size=12):
    """Finite values of the format from random bit patterns (every binade, subnormals included),
    or a cluster of neighbours of one value (large condition numbers)."""
    width = 8 * np.dtype(BIT_DTYPES[name]).itemsize
    patterns = st.one_of(
        st.lists(st.integers(0, 2 ** width - 1), min_size=1, max_size=max_size),
        st.tuples(st.integers(0, 2 ** (width - 1) - 64), st.booleans(),
                  st.lists(st.integers(0, 40), min_size=1, max_size=max_size)).map(
            lambda cluster: [cluster[0] + offset + (cluster[1] << (width - 1))
                             for offset in cluster[2]]))

    def to_values(words):
        values = np.array(words, dtype=BIT_DTYPES[name]).view(precision.NUMPY_DTYPES[name])
        with np.errstate(invalid="ignore"):  # signalling NaN patterns warn in ml_dtypes
            values[~np.isfinite(values)] = 0
        return values

    return patterns.map(to_values)


def mpmath_two_pass(values, ddof, working_bits):
    with mpmath.workprec(working_bits):
        data = [mpmath.mpf(float(value)) for value in values]
        mean = mpmath.fsum(data) / len(data)
        sum_of_squares = mpmath.fsum((value - mean) ** 2 for value in data)
        return mean, sum_of_squares / (len(data) - ddof)


@pytest.mark.parametrize("name", precision.FORMATS)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), ddof=st.sampled_from([0, 1]))
def test_moments_are_correctly_rounded_exact_values(name, data, ddof):
    values = data.draw(random_values(name))
    mean, var = reference.moments(values, ddof=ddof, bits=200)
    exact_mean, exact_var = exact_moments(values, ddof)
    assert mean.shape == () and var.shape == ()
    assert_correctly_rounded(mean[()], exact_mean, 200)
    if exact_var is None:
        assert mpmath.isnan(var[()])
    else:
        assert_correctly_rounded(var[()], exact_var, 200)


@pytest.mark.parametrize("name", precision.FORMATS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_moments_agree_with_mpmath_two_pass(name, data):
    values = data.draw(random_values(name).filter(lambda values: values.size > 1))
    # enough bits to hold every sum of squares of the format exactly: the two-pass is then exact
    # up to its own rounding of the mean, far below 2**-256
    working_bits = 4600 if name == "float64" else 700
    mean, var = reference.moments(values, ddof=1)
    oracle_mean, oracle_var = mpmath_two_pass(values, 1, working_bits)
    with mpmath.workprec(working_bits):
        for value, oracle in ((mean[()], oracle_mean), (var[()], oracle_var)):
            assert abs(value - oracle) <= abs(oracle) * mpmath.mpf(2) ** -250


@st.composite
def layer_cases(draw):
    name = draw(st.sampled_from(precision.FORMATS))
    norm = draw(st.sampled_from(["batch", "layer", "instance", "group"]))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    batch, channels = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    spatial = draw(st.lists(st.integers(1, 3), max_size=3))
    shape = (batch, channels, *spatial) if layout == "NCHW" else (batch, *spatial, channels)
    groups = None
    if norm == "group":
        groups = draw(st.sampled_from([g for g in range(1, channels + 1) if channels % g == 0]))
    size = math.prod(shape)
    values = draw(random_values(name, max_size=size).filter(lambda v: v.size >= 1))
    values = np.resize(values, size).reshape(shape)
    return values, norm, groups, layout


@settings(max_examples=60, deadline=None)
@given(case=layer_cases(), ddof=st.sampled_from([0, 1]))
def test_every_layer_and_layout_groups_as_defined(case, ddof):
    values, norm, groups, layout = case
    mean, var = reference.moments(values, norm, groups=groups, layout=layout, ddof=ddof)
    kappa = reference.condition_number(values, norm, groups=groups, layout=layout)
    shifted_kappa = reference.shifted_condition_number(values, norm, groups=groups, layout=layout)
    expected = explicit_groups(values.shape, norm, groups, layout)
    assert mean.shape == var.shape == kappa.shape == shifted_kappa.shape
    assert mean.size == len(expected)
    flat = values.reshape(-1)
    for index, positions in expected.items():
        group_values = flat[np.sort(positions.reshape(-1))]  # memory order: the first comes first
        exact_mean, exact_var = exact_moments(group_values, ddof)
        assert_correctly_rounded(mean[index], exact_mean, 256)
        if exact_var is None:
            assert mpmath.isnan(var[index])
        else:
            assert_correctly_rounded(var[index], exact_var, 256)
        exact = [Fraction(float(value)) for value in group_values]
        sum_of_squares = sum((value - exact_mean) ** 2 for value in exact)
        for computed, shift in ((kappa, 0), (shifted_kappa, exact[0])):
            if sum_of_squares == 0:
                assert computed[index] == math.inf
                continue
            ratio = sum((value - shift) ** 2 for value in exact) / sum_of_squares
            with mpmath.workprec(200):
                oracle = float(mpmath.sqrt(mpmath.mpf(ratio.numerator) / ratio.denominator))
            assert abs(computed[index] - oracle) <= math.ulp(oracle)


@pytest.mark.parametrize("name", precision.FORMATS)
def test_nan_and_inf_stay_in_their_group(name):
    dtype = precision.NUMPY_DTYPES[name]
    finite = np.arange(30, dtype=np.float64).reshape(2, 5, 3) * 0.25 - 3
    values = finite.astype(dtype)
    values[0, 0, 1] = np.nan                       # channel 0: NaN
    values[1, 1, 2] = np.inf                       # channel 1: +inf
    values[0, 2, 0], values[1, 2, 0] = np.inf, -np.inf  # channel 2: both infinities
    values[0, 3, 0], values[1, 3, 1] = -np.inf, -np.inf  # channel 3: -inf
    mean, var = reference.moments(values, "batch")
    expected_means = [math.nan, math.inf, math.nan, -math.inf]
    for channel, expected_mean in enumerate(expected_means):
        assert (mpmath.isnan(mean[channel]) if math.isnan(expected_mean)
                else mean[channel] == expected_mean)
        assert mpmath.isnan(var[channel])
    clean_mean, clean_var = reference.moments(finite.astype(dtype)[:, 4].reshape(-1))
    assert mean[4] == clean_mean[()] and var[4] == clean_var[()]
    assert np.isnan(reference.condition_number(values, "batch")[:4]).all()
    assert np.isfinite(reference.condition_number(values, "batch")[4])
    sums = reference.exact_sums(values, "batch")
    assert math.isnan(sums.sum_x[0]) and math.isnan(sums.sum_x[2])
    assert sums.sum_x[1] == math.inf and sums.sum_x[3] == -math.inf
    assert math.isnan(sums.sum_x2[0]) and list(sums.sum_x2[1:4]) == [math.inf] * 3
    assert sums.sum_x[4] == sum(Fraction(float(v)) for v in finite.astype(dtype)[:, 4].reshape(-1))


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_every_16_bit_value_sums_exactly(name):
    """All finite values of the format, shuffled into groups: exercises every decode path."""
    words = np.arange(2 ** 16, dtype=np.uint16)
    values = words.view(precision.NUMPY_DTYPES[name])
    values = values[np.isfinite(values.astype(np.float32))]
    values = values[np.random.default_rng(0).permutation(values.size)]
    width = 1024 if name == "float16" else 256
    values = values.reshape(-1, width)
    sums = reference.exact_sums(values, "layer")
    assert sums.count == width
    for row, sum_x, sum_x2 in zip(values, sums.sum_x, sums.sum_x2):
        exact = [Fraction(float(value)) for value in row]
        assert sum_x == sum(exact)
        assert sum_x2 == sum(value * value for value in exact)


@pytest.mark.parametrize("name", ["float32", "float64"])
def test_long_groups_carry_exactly_through_digit_normalisation(name):
    """More than FLUSH_INTERVAL elements in one group, at the top of the range, mixed signs."""
    dtype = precision.NUMPY_DTYPES[name]
    largest = np.finfo(dtype).max
    count = reference.FLUSH_INTERVAL + 9
    values = np.full(count, largest, dtype=dtype)
    values[::3] = -largest / 2
    negatives = len(range(0, count, 3))
    sums = reference.exact_sums(values)
    big, half = Fraction(float(largest)), Fraction(float(largest)) / 2
    assert sums.count == count
    assert sums.sum_x[()] == (count - negatives) * big - negatives * half
    assert sums.sum_x2[()] == (count - negatives) * big ** 2 + negatives * half ** 2


def test_decimal_strings_are_exact_decimals():
    mean, var = reference.moments(["0.1", "0.2", " 0.3 ", "-1e-3"], ddof=1)
    exact = [Fraction("0.1"), Fraction("0.2"), Fraction("0.3"), Fraction("-1e-3")]
    exact_mean = sum(exact) / 4
    assert_correctly_rounded(mean[()], exact_mean, 256)
    assert_correctly_rounded(var[()], sum((v - exact_mean) ** 2 for v in exact) / 3, 256)
    sums = reference.exact_sums(np.array(["1.5", "2.25"]))
    assert sums.sum_x[()] == Fraction(15, 4) and sums.sum_x2[()] == Fraction(9, 4) + Fraction(81, 16)
    assert reference.condition_number(["10000001", "10000003", "10000002"]) == pytest.approx(
        math.sqrt(1 + 3 * 10000002 ** 2 / 2), rel=1e-15)


def test_precision_is_the_requested_one_and_scoped():
    values = np.array([1.0, 2.0, 4.0], np.float32)  # mean 7/3, not a dyadic
    before = mpmath.mp.prec
    mean_256, _ = reference.moments(values)
    mean_400, _ = reference.moments(values, bits=400)
    assert mpmath.mp.prec == before
    assert mean_256[()].man_exp[0].bit_length() == 256
    assert mean_400[()].man_exp[0].bit_length() == 400
    assert_correctly_rounded(mean_400[()], Fraction(7, 3), 400)


@pytest.mark.parametrize("call, error, argument", [
    (lambda: reference.moments(np.arange(4)), TypeError, "x"),
    (lambda: reference.moments(np.ones(4, np.complex64)), TypeError, "x"),
    (lambda: reference.moments(np.ones(4), bits=100), ValueError, "bits"),
    (lambda: reference.moments(np.ones(4), ddof=-1), ValueError, "ddof"),
    (lambda: reference.moments(np.ones(4), ddof=True), ValueError, "ddof"),
    (lambda: reference.moments(np.ones((2, 4))), ValueError, "norm"),
    (lambda: reference.moments(np.ones((2, 4)), "weird"), ValueError, "norm"),
    (lambda: reference.moments(np.ones((2, 4, 3)), "group", groups=3), ValueError, "groups"),
    (lambda: reference.moments(np.ones((0, 4, 3)), "batch"), ValueError, "empty"),
    (lambda: reference.moments(["1.0", "nan"]), ValueError, "x"),
    (lambda: reference.moments(["1.0", "2.0"], "batch"), ValueError, "norm"),
    (lambda: reference.moments(np.array([["1.0"], ["2.0"]])), ValueError, "1-D"),
])
def test_bad_input_names_the_argument(call, error, argument):
    with pytest.raises(error, match=argument):
        call()


def test_variance_is_nan_without_degrees_of_freedom():
    mean, var = reference.moments(np.array([3.5], np.float32), ddof=1)
    assert mean[()] == 3.5 and mpmath.isnan(var[()])
    assert reference.condition_number(np.array([3.5], np.float32)) == math.inf


def test_memory_order_and_byte_order_do_not_matter():
    values = np.random.default_rng(4).normal(3.0, 1.0, size=(3, 6, 4, 5))
    strided = np.asfortranarray(values)[:, ::2]           # non-contiguous view
    contiguous = np.ascontiguousarray(values[:, ::2])
    swapped = contiguous.astype(contiguous.dtype.newbyteorder(">"))
    expected = reference.moments(contiguous, "group", groups=3, ddof=1)
    for variant in (strided, swapped):
        result = reference.moments(variant, "group", groups=3, ddof=1)
        assert all(np.array_equal(a, b) for a, b in zip(result, expected))
