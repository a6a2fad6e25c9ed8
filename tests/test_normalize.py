"""numerics.normalize: the documented operation order replayed bit for bit, the output error
within the a-priori bound of the rule against the exact output, NaN rules, bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import numerics
from numerics import bounds, data, precision, reference
from numerics.normalization import normalize
from helpers import assert_bitwise_equal

SCALAR_ROUNDERS = {"float16": precision.round_float32_to_float16,
                   "bfloat16": precision.round_float32_to_bfloat16,
                   "float32": precision.identity, "float64": precision.identity}

CASES = [("batch", "NCHW", None), ("layer", "NCHW", None), ("instance", "NHWC", None),
         ("group", "NCHW", 2), ("group", "NHWC", 3)]


def replay(x, norm, groups, layout, eps, weight, bias, acc_format, output_format, algorithm):
    """The module docstring's order, one element at a time on numpy scalars: every operation in
    the compute type, then rounded to the accumulator (the project's scalar rounders)."""
    compute = precision.COMPUTE_DTYPES[acc_format].type
    rnd = SCALAR_ROUNDERS[acc_format]

    def to_acc(value):
        return compute(precision.convert(np.array([value]), acc_format)[0])

    mean, var = numerics.moments(x, norm, groups=groups, layout=layout, algorithm=algorithm,
                                 acc_dtype=acc_format)
    view = numerics.canonical_view(x.shape, norm, groups, layout)
    x_view = x.reshape(view.view_shape)
    out = np.empty(view.view_shape, np.float64)
    channels = x.shape[1] if layout == "NCHW" else x.shape[-1]
    for index in np.ndindex(view.view_shape):
        group = index[0] * view.kept_inner + index[2]
        group_mean = compute(mean.reshape(-1)[group])
        root = rnd(compute(np.sqrt(rnd(compute(var.reshape(-1)[group]) + to_acc(eps)))))
        rstd = rnd(compute(1) / root)
        value = rnd(rnd(to_acc(x_view[index]) - group_mean) * rstd)
        flat = np.ravel_multi_index(index, view.view_shape)
        position = np.unravel_index(flat, x.shape)
        channel = position[1] if layout == "NCHW" else position[-1]
        assert 0 <= channel < channels
        value = rnd(value * to_acc(weight[channel]))
        value = rnd(value + to_acc(bias[channel]))
        out[index] = value
    return precision.convert(out.reshape(x.shape), output_format)


@pytest.mark.parametrize("acc_format", precision.FORMATS)
@pytest.mark.parametrize("norm, layout, groups", CASES)
def test_replays_the_documented_operation_order_bit_for_bit(acc_format, norm, layout, groups):
    rng = np.random.default_rng(7)
    x = data.generate((2, 6, 2, 6), "float32", "normal", mean=2.0, std=0.5, seed=3)
    channels = x.shape[1] if layout == "NCHW" else x.shape[-1]
    weight = rng.normal(1, 0.3, channels).astype(np.float32)
    bias = rng.normal(0, 1, channels).astype(np.float16)
    output_format = "bfloat16" if acc_format == "float64" else "float32"
    computed = normalize(x, norm, groups=groups, layout=layout, eps=1e-3, weight=weight, bias=bias,
                         acc_dtype=acc_format, output_dtype=output_format, algorithm="two_pass")
    expected = replay(x, norm, groups, layout, 1e-3, weight, bias, acc_format, output_format,
                      "two_pass")
    assert computed.dtype == precision.NUMPY_DTYPES[output_format]
    assert_bitwise_equal(computed, expected)


def output_error_bound(x, algorithm, acc_format, eps, weight):
    """A-priori bound on |ŷ − y| per element (first order, before the output rounding): the mean's
    error (bounds.mean_bound with Σ|x| in place of |Σx|) times rstd; the variance's relative
    error (bounds.variance_bound) halved by the square root and damped by var/(var + eps); and
    the eight roundings of the elementwise order."""
    u = numerics.unit_roundoff(acc_format)
    values = x.astype(np.float64)
    n = values.size
    mean = values.mean()
    var = values.var()
    kappa = float(reference.condition_number(x))
    mean_error = bounds.mean_bound(n, 1.0, u, 64, 8192) * np.abs(values).mean()
    var_error = bounds.variance_bound(algorithm, n, max(kappa, 1.0), u, 64, 8192)
    rstd = 1 / math.sqrt(var + eps)
    rstd_relative = 0.5 * (var_error * var + u * eps) / (var + eps) + 4 * u
    z = np.abs(values - mean) * rstd
    z_error = (mean_error + u * np.abs(values - mean)) * rstd + z * (rstd_relative + u)
    return abs(weight) * z_error + 2 * u * (abs(weight) * z + 1)


@given(kappa=st.sampled_from([1.0, 10.0, 1e3]), algorithm=st.sampled_from(tuple(numerics.ALGORITHMS)),
       acc_format=st.sampled_from(["float32", "float64"]), eps=st.sampled_from([0.0, 1e-5, 1e-1]),
       seed=st.integers(0, 2 ** 16))
def test_output_error_within_the_a_priori_bound(kappa, algorithm, acc_format, eps, seed):
    x = data.with_condition((48,), kappa, "float32", "normal", seed=seed)
    weight, bias = np.float32([1.5] * 48), np.float32([0.25] * 48)
    computed = normalize(x, eps=eps, weight=weight, bias=bias, algorithm=algorithm,
                         acc_dtype=acc_format, output_dtype="float64")
    exact = reference.normalize(x, eps=eps, weight=weight, bias=bias, output_dtype="float64")
    bound = output_error_bound(x, algorithm, acc_format, eps, 1.5)
    # factor 2: the bounds are leading terms without constants (as in tests/test_accuracy.py)
    assert np.all(np.abs(computed - exact) <= 2 * bound + 4 * np.spacing(np.abs(exact)))


def test_a_negative_variance_gives_nan_in_its_group_unless_clamp():
    x = data.with_condition((64, 4, 2, 2), 1e5, "float32", "normal", seed=1, norm="instance")
    _, var = numerics.moments(x, "instance", algorithm="naive", topology="sequential")
    negative = var < 0
    assert negative.any() and (~negative).any()
    y = normalize(x, "instance", eps=0.0, algorithm="naive", topology="sequential")
    all_nan = np.isnan(y).reshape(64, 4, -1).all(axis=2)
    np.testing.assert_array_equal(all_nan, negative)
    clamped = normalize(x, "instance", eps=1e-3, algorithm="naive", topology="sequential",
                        clamp=True)
    assert not np.isnan(clamped).any()


def test_eps_of_1e_12_vanishes_in_a_float16_accumulator():
    constant = np.full((2, 8), 3.0, np.float32)
    in_float32 = normalize(constant, "layer", eps=1e-12, acc_dtype="float32")
    in_float16 = normalize(constant, "layer", eps=1e-12, acc_dtype="float16")
    assert np.all(in_float32 == 0)  # 0 · 1/sqrt(1e-12)
    assert np.all(np.isnan(in_float16))  # eps rounds to 0: 0 · 1/sqrt(0) = 0 · inf


def test_layer_weight_per_channel_or_for_the_whole_normalized_shape():
    x = data.generate((3, 4, 5), "float32", "normal", seed=2)
    per_channel = np.linspace(0.5, 2, 4).astype(np.float32)
    whole = np.repeat(per_channel[:, None], 5, axis=1)
    assert_bitwise_equal(normalize(x, "layer", weight=per_channel, bias=per_channel),
                         normalize(x, "layer", weight=whole, bias=whole))
    channels_last = np.ascontiguousarray(x.transpose(0, 2, 1))  # (N, L, C): C is the last axis
    assert_bitwise_equal(normalize(channels_last, "layer", layout="NHWC", weight=per_channel),
                         normalize(channels_last, "layer", layout="NHWC",
                                   weight=np.ascontiguousarray(whole.T)))


def test_output_dtype_defaults_to_the_input_and_rounds_once():
    x = data.generate((4, 3, 5), "bfloat16", "normal", seed=4)
    assert normalize(x, "batch").dtype == precision.NUMPY_DTYPES["bfloat16"]
    wide = normalize(x, "batch", output_dtype="float32")
    assert_bitwise_equal(normalize(x, "batch", output_dtype="float16"),
                         wide.astype(np.float16))  # float32 → float16 rounds once


@pytest.mark.parametrize("arguments, error, message", [
    ({"eps": -1e-5}, ValueError, "eps must be finite and >= 0"),
    ({"eps": math.nan}, ValueError, "eps must be finite"),
    ({"eps": math.inf}, ValueError, "eps must be finite"),
    ({"eps": 1e-5j}, TypeError, "eps must be a real number"),
    ({"eps": True}, TypeError, "eps must be a real number"),
    ({"eps": "1e-5"}, TypeError, "eps must be a real number"),
    ({"weight": np.ones(5, np.float32)}, ValueError, r"weight must have shape \(4,\)"),
    ({"weight": np.ones(4, np.int32)}, TypeError, "weight must be one of"),
    ({"bias": np.ones((4, 1), np.float32)}, ValueError, "bias must have shape"),
    ({"bias": np.ones(4, np.complex64)}, TypeError, "bias must be one of"),
    ({"output_dtype": "int8"}, TypeError, "output_dtype must be one of"),
    ({"norm": "batchnorm"}, ValueError, "norm must be one of"),
    ({"groups": 3, "norm": "group"}, ValueError, "groups=3 does not divide"),
    ({"algorithm": "kahan"}, ValueError, "algorithm must be one of"),
    ({"ddof": 2}, ValueError, "ddof must be 0 or 1"),
    ({"acc_dtype": "int16"}, TypeError, "acc_dtype must be one of"),
    ({"device": "tpu"}, ValueError, "device must be one of"),
])
def test_bad_input_names_the_argument(arguments, error, message):
    x = np.ones((2, 4, 3), np.float32)
    arguments = {"norm": "batch", **arguments}
    with pytest.raises(error, match=message):
        normalize(x, **arguments)
    if not {"algorithm", "acc_dtype", "device", "ddof"} & set(arguments):
        with pytest.raises(error, match=message):
            reference.normalize(x, **arguments)


def test_layer_weight_error_lists_both_accepted_shapes():
    with pytest.raises(ValueError, match=r"\(4,\) or \(4, 3\)"):
        normalize(np.ones((2, 4, 3), np.float32), "layer", weight=np.ones(3, np.float32))


def test_nan_input_stays_in_its_group():
    x = data.generate((2, 3, 4), "float32", "normal", seed=5)
    x[1, 2, 0] = np.nan
    y = normalize(x, "instance")
    assert np.isnan(y[1, 2]).all()
    assert not np.isnan(np.delete(y.reshape(6, 4), 5, axis=0)).any()
