"""Every row of the README's bad-input table: a clear error naming the argument, or the documented
value."""
import warnings

import ml_dtypes
import numpy as np
import pytest

import numerics
from tests.helpers import assert_bitwise_equal

X = np.random.default_rng(0).normal(5.0, 1.0, (2, 4, 3, 3)).astype(np.float32)


@pytest.mark.parametrize("kwargs, error, names", [
    (dict(norm="batch", groups=2), ValueError, "groups"),
    (dict(norm="group"), ValueError, "groups"),
    (dict(norm="group", groups=0), ValueError, "groups"),
    (dict(norm="group", groups=-2), ValueError, "groups"),
    (dict(norm="group", groups=3), ValueError, "groups=3 does not divide"),
    (dict(norm="group", groups=2.0), ValueError, "groups"),
    (dict(norm="spectral"), ValueError, "norm"),
    (dict(norm="layer", layout="NDHWC"), ValueError, "layout"),
    (dict(norm="layer", algorithm="kahan"), ValueError, "algorithm"),
    (dict(norm="layer", acc_dtype="int32"), TypeError, "acc_dtype"),
    (dict(norm="layer", acc_dtype="float128"), TypeError, "acc_dtype"),
    (dict(norm="layer", topology="random"), ValueError, "topology"),
    (dict(norm="layer", ddof=2), ValueError, "ddof"),
    (dict(norm="layer", ddof=True), ValueError, "ddof"),
    (dict(norm="layer", clamp="yes"), ValueError, "clamp"),
    (dict(norm="layer", device="tpu"), ValueError, "device"),
])
def test_bad_arguments_name_the_argument(kwargs, error, names):
    with pytest.raises(error, match=names):
        numerics.moments(X, **kwargs)


@pytest.mark.parametrize("lanes, block", [(3, 0), (0, 0), (4, 6), (2, -2)])
def test_bad_topology_names_the_field(lanes, block):
    with pytest.raises(ValueError, match="topology (lanes|block)"):
        numerics.Topology(lanes, block)


@pytest.mark.parametrize("shape, norm", [((4, 3), None), ((5,), "batch"), ((), "layer"), ((), None)])
def test_wrong_rank(shape, norm):
    with pytest.raises(ValueError, match="x must"):
        numerics.moments(np.ones(shape, np.float32), norm)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, bool, np.complex64, np.complex128])
def test_non_float_input_is_a_type_error(dtype):
    with pytest.raises(TypeError, match="x must be one of"):
        numerics.moments(np.ones((2, 4), dtype), "layer")


@pytest.mark.parametrize("shape, norm", [((0,), None), ((0, 4), "layer"), ((2, 4, 0), "batch")])
def test_empty_input(shape, norm):
    with pytest.raises(ValueError, match="x is empty"):
        numerics.moments(np.ones(shape, np.float32), norm)


def test_no_degrees_of_freedom_gives_nan_and_a_warning_as_numpy_does():
    x = np.arange(4, dtype=np.float32).reshape(1, 4)  # batch norm: one value per channel
    with pytest.warns(RuntimeWarning, match="degrees of freedom"):
        mean, var = numerics.moments(x, "batch", ddof=1)
    assert np.isnan(var).all()
    np.testing.assert_array_equal(mean, x[0])
    with pytest.warns(RuntimeWarning):
        assert np.isnan(np.var(x[:, 0], ddof=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, var = numerics.moments(x, "batch", ddof=0)
    np.testing.assert_array_equal(var, np.zeros(4, np.float32))


@pytest.mark.parametrize("algorithm", list(numerics.ALGORITHMS))
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("norm, layout, groups, position, group_index", [
    ("group", "NCHW", 2, (1, 2, 0, 1), (1, 1)),
    ("group", "NHWC", 2, (1, 0, 1, 2), (1, 1)),
    ("batch", "NHWC", None, (0, 1, 1, 3), (3,)),
    ("instance", "NCHW", None, (0, 3, 2, 2), (0, 3)),
])
def test_nan_and_inf_stay_in_their_group(algorithm, bad_value, norm, layout, groups, position,
                                         group_index):
    x = X if layout == "NCHW" else np.ascontiguousarray(X.transpose(0, 2, 3, 1))
    dirty = x.copy()
    dirty[position] = bad_value
    clean_mean, clean_var = numerics.moments(x, norm, groups=groups, layout=layout, algorithm=algorithm)
    mean, var = numerics.moments(dirty, norm, groups=groups, layout=layout, algorithm=algorithm)
    assert not np.isfinite(var[group_index])
    if np.isnan(bad_value):
        assert np.isnan(mean[group_index])
    else:
        assert not np.isfinite(mean[group_index])
    untouched = np.ones(var.shape, bool)
    untouched[group_index] = False
    assert_bitwise_equal(mean[untouched], clean_mean[untouched])
    assert_bitwise_equal(var[untouched], clean_var[untouched])


@pytest.mark.parametrize("make_view", [
    lambda x: x[:, ::-1],                       # negative stride
    lambda x: x.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2),  # non-contiguous
    lambda x: x.astype(x.dtype.newbyteorder(">")),  # big-endian
    lambda x: np.asfortranarray(x),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
def test_strided_reversed_and_big_endian_input_give_the_same_answer(make_view, dtype):
    x = X.astype(dtype)
    odd = make_view(x)
    contiguous = np.ascontiguousarray(odd).astype(np.dtype(dtype).newbyteorder("="))
    for norm, groups in (("group", 2), ("batch", None)):
        expected = numerics.moments(contiguous, norm, groups=groups)
        actual = numerics.moments(odd, norm, groups=groups)
        assert_bitwise_equal(actual.mean, expected.mean)
        assert_bitwise_equal(actual.var, expected.var)


@pytest.mark.parametrize("algorithm", list(numerics.ALGORITHMS))
@pytest.mark.parametrize("x, acc_dtype", [
    (np.full((2, 4, 8), 300.0, np.float16) + np.arange(8, dtype=np.float16), "float16"),
    (np.full((2, 4, 8), 3e37, np.float32) * np.linspace(1, 2, 8, dtype=np.float32), "float32"),
])
def test_overflowing_accumulator_is_reported_never_a_finite_wrong_number(algorithm, x, acc_dtype):
    """float16 squares overflow past 65504 (several fp16 GroupNorm reports); float32 (x - mean)^2
    overflows for |x| ~ 1e30 (PyTorch #162489)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mean, var = numerics.moments(x, "layer", algorithm=algorithm, acc_dtype=acc_dtype)
    exact_var = np.var(x.astype(np.float64), axis=(1, 2))
    finite = np.isfinite(var.astype(np.float64))
    if not finite.all() or not np.isfinite(mean.astype(np.float64)).all():
        assert any("overflowed" in str(w.message) for w in caught)
    # whatever stayed finite must be right to the accumulator's precision, not a wrong number
    relative = np.abs(var.astype(np.float64)[finite] - exact_var[finite]) / exact_var[finite]
    assert (relative < 0.05).all(), relative


def test_clamp_removes_negative_variances_only():
    x = np.full((4, 4096), 10000.0, np.float32)
    x[:, ::2] += np.float32(0.5)  # every group has the same small spread around a large mean
    raw = numerics.moments(x, "layer", algorithm="naive", topology="sequential")
    clamped = numerics.moments(x, "layer", algorithm="naive", topology="sequential", clamp=True)
    assert_bitwise_equal(clamped.var, np.maximum(raw.var, 0))
    assert clamped.run.clamp and not raw.run.clamp


def test_run_record_says_what_ran():
    result = numerics.moments(X, "group", groups=2, algorithm="two_pass", ddof=1,
                              acc_dtype="float64", topology=numerics.Topology(4, 16))
    record = result.run.as_dict()
    assert record["algorithm"] == "two_pass"
    assert record["topology"] == {"lanes": 4, "block": 16, "name": "custom"}
    assert (record["input_dtype"], record["acc_dtype"], record["ddof"]) == ("float32", "float64", 1)
    assert record["group_size"] == 2 * 3 * 3 and record["device"] == "cpu"
    mean, var = result
    assert mean.dtype == var.dtype == np.float64 and mean.shape == (2, 2)


@pytest.mark.parametrize("input_dtype, acc_dtype, expected", [
    (np.float16, None, np.float32), (ml_dtypes.bfloat16, None, np.float32),
    (np.float32, None, np.float32), (np.float64, None, np.float64),
    (np.float32, "bfloat16", ml_dtypes.bfloat16), (np.float64, "float16", np.float16),
])
def test_results_come_in_the_accumulator_dtype(input_dtype, acc_dtype, expected):
    mean, var = numerics.moments(X.astype(input_dtype), "instance", acc_dtype=acc_dtype)
    assert mean.dtype == var.dtype == np.dtype(expected)
    assert var.shape == (2, 4)


def test_one_dimensional_input_gives_zero_dimensional_results():
    mean, var = numerics.moments(np.arange(10, dtype=np.float64), algorithm="two_pass", ddof=1)
    assert mean.shape == var.shape == ()
    assert float(mean) == 4.5 and float(var) == np.var(np.arange(10.0), ddof=1)
