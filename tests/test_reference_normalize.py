"""numerics.reference.normalize against fractions.Fraction and mpmath, ties and overflow included."""
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from hypothesis import given, strategies as st

from numerics import data, metrics, precision, reference
from helpers import assert_bitwise_equal


def oracle(values, eps, ddof, weight, bias, output_format):
    """One group, element by element: the exact mean and variance as Fractions, y at 400 bits
    in mpmath, rounded once by numerics.metrics.correctly_rounded (which rounds the mpf itself)."""
    exact = [Fraction(float(value)) for value in values]
    mean = sum(exact) / len(exact)
    total = sum((value - mean) ** 2 for value in exact) / (len(exact) - ddof) + Fraction(eps)
    if total == 0:  # a constant group with eps 0: 0/0 for every element
        return np.full(len(exact), np.nan, precision.NUMPY_DTYPES[output_format])
    outputs = []
    with mpmath.workprec(400):
        rstd = 1 / mpmath.sqrt(mpmath.mpf(total.numerator) / total.denominator)
        for value, scale, shift in zip(exact, weight, bias):
            centered = (value - mean) * Fraction(float(scale))
            outputs.append(mpmath.mpf(centered.numerator) / centered.denominator * rstd
                           + mpmath.mpf(float(shift)))
        return metrics.correctly_rounded(np.array(outputs, dtype=object), output_format)


@given(input_format=st.sampled_from(["float16", "bfloat16", "float32", "float64"]),
       output_format=st.sampled_from(["float16", "bfloat16", "float32"]),
       kappa=st.sampled_from([1.0, 1e2, 1e4]), eps=st.sampled_from([0.0, 1e-12, 1e-5, 1e-3]),
       ddof=st.sampled_from([0, 1]), seed=st.integers(0, 2 ** 16))
def test_matches_a_fraction_and_mpmath_oracle(input_format, output_format, kappa, eps, ddof, seed):
    x = data.with_condition((40,), kappa, input_format, "normal", seed=seed)
    rng = np.random.default_rng(seed)
    weight = rng.normal(1, 0.5, 40).astype(np.float32)
    bias = rng.normal(0, 2, 40).astype(np.float32)
    computed = reference.normalize(x, eps=eps, weight=weight, bias=bias, ddof=ddof,
                                   output_dtype=output_format)
    assert_bitwise_equal(computed, oracle(x, eps, ddof, weight, bias, output_format))


@pytest.mark.parametrize("norm, layout, groups", [("batch", "NCHW", None), ("layer", "NHWC", None),
                                                  ("instance", "NCHW", None),
                                                  ("group", "NHWC", 2)])
def test_every_group_of_a_tensor_matches_the_oracle(norm, layout, groups):
    x = data.generate((3, 2, 3, 4), "float32", "normal", mean=5.0, std=0.1, seed=9)
    channels = 2 if layout == "NCHW" else 4
    weight = np.linspace(0.5, 1.5, channels).astype(np.float32)
    computed = reference.normalize(x, norm, groups=groups, layout=layout, weight=weight,
                                   output_dtype="bfloat16")
    view = reference.subsets.canonical_view(x.shape, norm, groups, layout)
    x_view = x.reshape(view.view_shape)
    channel_of = np.arange(x.size).reshape(x.shape)
    channel_of = (channel_of // (3 * 4)) % 2 if layout == "NCHW" else channel_of % 4
    channel_view = channel_of.reshape(view.view_shape)
    out_view = computed.reshape(view.view_shape)
    for k1 in range(view.kept_outer):
        for k2 in range(view.kept_inner):
            values = x_view[k1, :, k2, :].reshape(-1)
            scales = weight[channel_view[k1, :, k2, :].reshape(-1)]
            expected = oracle(values, 1e-5, 0, scales, np.zeros(values.size), "bfloat16")
            assert_bitwise_equal(out_view[k1, :, k2, :].reshape(-1), expected)


def test_float64_output_takes_the_exact_path_and_matches_the_oracle():
    x = data.generate((12,), "float32", "normal", mean=1.0, std=3.0, seed=3)
    ones = np.ones(12, np.float32)
    assert_bitwise_equal(reference.normalize(x, eps=1e-5, output_dtype="float64"),
                         oracle(x, 1e-5, 0, ones, np.zeros(12), "float64"))


def constant(value, count=2, dtype=np.float64):
    return np.full(count, value, dtype)


@pytest.mark.parametrize("scale, expected", [
    (2.0 ** -24, [1 - 2.0 ** -24, 1.0]),              # 1 + 2**-24: a tie, to the even 1
    (3 * 2.0 ** -24, [1 - 3 * 2.0 ** -24, 1 + 2.0 ** -22]),  # a tie, to the even 1 + 2**-22
])
def test_exact_ties_round_to_even(scale, expected):
    # x = (0, 2): mean 1, variance 1, so y = ±scale + 1 exactly
    x = np.array([0.0, 2.0], np.float32)
    y = reference.normalize(x, eps=0.0, weight=constant(scale), bias=constant(1.0))
    assert y.tolist() == expected


def test_overflow_follows_ieee_at_the_float16_threshold():
    x = np.array([0.0, 1.0, 2.0], np.float32)  # the middle element is the mean: y = bias exactly
    at_threshold = reference.normalize(x, eps=0.0, bias=constant(65520.0, 3, np.float32),
                                       output_dtype="float16")
    assert at_threshold.tolist() == [65504.0, np.inf, np.inf]
    below = reference.normalize(x, eps=0.0, bias=constant(65519.99, 3, np.float32),
                                output_dtype="float16")
    assert below.tolist() == [65504.0, 65504.0, np.inf]


def test_nan_rules():
    x = data.generate((4, 3), "float32", "normal", seed=1)
    x[1, 0] = np.inf
    x[2, 1] = np.nan
    x[3] = 7.0
    y = reference.normalize(x, "layer", eps=0.0)
    assert np.isnan(y[1:]).all()  # Inf, NaN, constant with eps 0 (0/0)
    assert np.isfinite(y[0]).all()
    assert np.all(reference.normalize(x[3:], "layer", eps=1e-5) == 0)
    assert np.isnan(reference.normalize(x[:1], "instance", ddof=1)).all()  # n − ddof = 0


def test_ties_are_decided_exactly_not_by_a_long_approximation():
    # intercept 1, slope 2**-24, total 1: exactly the midpoint of 1 and 1 + 2**-23 in float32
    assert reference._exact_rounding(Fraction(1), Fraction(1, 2 ** 24), Fraction(1), "float32",
                                     np.float32(1.0)) == 1.0
    # the same value approached from an estimate 4 ulps off walks to the right answer
    assert reference._exact_rounding(Fraction(1), Fraction(1, 2 ** 24), Fraction(1), "float32",
                                     np.float32(1 + 2.0 ** -21)) == 1.0
    # just above the midpoint: sqrt(1 − 2**-60) < 1, so slope/√total is above 2**-24
    above = reference._exact_rounding(Fraction(1), Fraction(1, 2 ** 24),
                                      1 - Fraction(1, 2 ** 60), "float32", np.float32(1.0))
    assert above == 1 + 2.0 ** -23


def test_accepts_torch_tensors_of_every_format():
    torch = pytest.importorskip("torch")
    x = data.generate((3, 4), "float32", "normal", seed=2)
    for dtype, name in ((torch.bfloat16, "bfloat16"), (torch.float16, "float16"),
                        (torch.float32, "float32")):
        tensor = torch.from_numpy(x).to(dtype)
        as_numpy = precision.convert(x, name)
        assert_bitwise_equal(reference.normalize(tensor, "layer"),
                             reference.normalize(as_numpy, "layer"))
