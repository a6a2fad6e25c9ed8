"""Seeded generators: reproducible bits, one rounding from float64, the stated distributions, and
the condition number within the tolerance with_condition documents."""
import math

import numpy as np
import pytest

from numerics import data, precision, reference


@pytest.mark.parametrize("name", precision.FORMATS)
@pytest.mark.parametrize("distribution", data.DISTRIBUTIONS)
def test_generate_is_bitwise_reproducible_and_rounds_once(name, distribution):
    first = data.generate((3, 4, 5), name, distribution, mean=2.0, std=3.0, seed=7)
    again = data.generate((3, 4, 5), name, distribution, mean=2.0, std=3.0, seed=7)
    assert first.dtype == precision.NUMPY_DTYPES[name] and first.shape == (3, 4, 5)
    assert first.tobytes() == again.tobytes()
    wide = data.generate((3, 4, 5), "float64", distribution, mean=2.0, std=3.0, seed=7)
    assert first.tobytes() == precision.convert(wide, name).tobytes()
    other_seed = data.generate((3, 4, 5), name, distribution, mean=2.0, std=3.0, seed=8)
    assert (first.tobytes() == other_seed.tobytes()) == (distribution == "constant")


def test_distributions_have_their_stated_parameters():
    n, mean, std = 200_000, 3.0, 2.0
    # tolerances: five standard errors of each estimate
    normal = data.generate(n, "float64", "normal", mean, std, seed=1)
    assert abs(normal.mean() - mean) < 5 * std / math.sqrt(n)
    assert abs(normal.std() - std) < 5 * std / math.sqrt(2 * n)
    uniform = data.generate(n, "float64", "uniform", mean, std, seed=1)
    half_width = math.sqrt(3) * std
    assert mean - half_width <= uniform.min() and uniform.max() <= mean + half_width
    assert abs(uniform.std() - std) < 5 * std / math.sqrt(n)
    relu = data.generate(n, "float64", "half_normal", -1.0, 2.0, seed=1)
    assert relu.min() == 0.0
    zero_share = 0.5 * math.erfc(-0.5 / math.sqrt(2))  # P(N(-1, 2²) <= 0) = Φ(0.5)
    assert abs(np.mean(relu == 0) - zero_share) < 5 * math.sqrt(zero_share * (1 - zero_share) / n)
    pre_activation = -1.0 + 2.0 * np.random.default_rng(1).standard_normal(n)
    assert np.array_equal(relu, np.maximum(pre_activation, 0.0))
    heavy = data.generate(n, "float64", "heavy_tailed", mean, std, seed=1)
    # Student t(3) quartiles are ±0.764892; scaled by std/√3. The sample IQR of n draws is within
    # about 1 % (its standard error is ~0.4 %)
    quartiles = np.quantile(heavy, [0.25, 0.75])
    assert np.diff(quartiles)[0] == pytest.approx(2 * 0.764892 * std / math.sqrt(3), rel=0.02)
    assert np.median(heavy) == pytest.approx(mean, abs=0.02)
    assert np.all(data.generate(10, "bfloat16", "constant", mean=1.5) == 1.5)


CONDITION_CASES = [
    (name, distribution, kappa, norm)
    for name in precision.FORMATS
    for distribution in ("normal", "uniform", "half_normal", "heavy_tailed")
    for kappa in (1.5, 10.0, 1e3, 1e5)
    for norm in (None, "group")
    # the target is only meaningful while κu << 1
    if kappa * precision.unit_roundoff(name) <= 0.25
]


@pytest.mark.parametrize("name, distribution, kappa, norm", CONDITION_CASES)
def test_with_condition_hits_kappa_within_the_documented_tolerance(name, distribution, kappa, norm):
    shape = (4, 6, 5, 8) if norm else (500,)
    groups = 4 if norm else None
    layout = "NHWC" if norm else "NCHW"
    values = data.with_condition(shape, kappa, name, distribution, seed=5, norm=norm, groups=groups,
                                 layout=layout)
    assert values.dtype == precision.NUMPY_DTYPES[name] and values.shape == shape
    if norm is None:
        stored = reference.condition_number(values.reshape(-1))
    else:
        stored = reference.condition_number(values, norm, groups=groups, layout=layout)
    epsilon = data.FLOAT64_TARGET_EPSILON + precision.unit_roundoff(name)
    low = kappa * (1 - epsilon) / (1 + kappa * epsilon)
    high = kappa * (1 + epsilon) / (1 - kappa * epsilon)
    assert np.all((low <= stored) & (stored <= high)), (stored, low, high)
    again = data.with_condition(shape, kappa, name, distribution, seed=5, norm=norm, groups=groups,
                                layout=layout)
    assert values.tobytes() == again.tobytes()


def test_with_condition_keeps_relu_zeros_and_unit_scale():
    values = data.with_condition((2000,), 1.5, "float32", "half_normal", seed=2)
    assert values.min() == 0 and np.mean(values == 0) > 0.1
    normal = data.with_condition((2000,), 100.0, "float64", "normal", seed=2)
    assert np.mean(normal ** 2) == pytest.approx(1.0, rel=1e-12)
    assert normal.std() == pytest.approx(0.01, rel=1e-12)
    assert np.all(data.with_condition((3, 2), math.inf, "float16", "constant") == 1)


@pytest.mark.parametrize("call, error, argument", [
    (lambda: data.generate(4, "int32"), TypeError, "dtype"),
    (lambda: data.generate(4, "float32", "cauchy"), ValueError, "distribution"),
    (lambda: data.generate(4, std=-1.0), ValueError, "std"),
    (lambda: data.generate(4, mean=math.nan), ValueError, "mean"),
    (lambda: data.generate(4, mean="1"), TypeError, "mean"),
    (lambda: data.generate(4, seed=-3), ValueError, "seed"),
    (lambda: data.generate(4, seed=1.5), ValueError, "seed"),
    (lambda: data.generate((2, -1)), ValueError, "shape"),
    (lambda: data.generate("abc"), ValueError, "shape"),
    (lambda: data.with_condition(10, 0.5), ValueError, "kappa"),
    (lambda: data.with_condition(10, math.nan), ValueError, "kappa"),
    (lambda: data.with_condition(10, math.inf), ValueError, "kappa"),
    (lambda: data.with_condition(10, 3.0, distribution="constant"), ValueError, "kappa"),
    (lambda: data.with_condition(10, 1.02, distribution="half_normal"), ValueError, "kappa"),
    (lambda: data.with_condition((2, 4, 1), 3.0, norm="instance"), ValueError, "groups of 1"),
    (lambda: data.with_condition((2, 4, 3), 3.0, norm="group", groups=3), ValueError, "groups"),
])
def test_bad_input_names_the_argument(call, error, argument):
    with pytest.raises(error, match=argument):
        call()
