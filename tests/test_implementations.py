"""The registry of implementations: every adapter against the exact reference within the bound of
the algorithm it documents, its output against the exact normalization, its defaults, versions and
refusals; the recipes bit for bit against numerics.moments configured as they say."""
import subprocess
import sys

import numpy as np
import pytest

import numerics
from numerics import bounds, data, implementations, reference, unit_roundoff
from numerics.implementations import base, recipes

from helpers import assert_bitwise_equal

# one worker imports the frameworks once (TensorFlow alone takes seconds)
pytestmark = pytest.mark.xdist_group("frameworks")

SHAPE = (2, 8, 5, 5)
GROUPS = 4
SUBSETS = (("batch", None), ("layer", None), ("instance", None), ("group", GROUPS))
#: the loosest update rule each adapter's documentation allows (module docstrings of
#: numerics/implementations): its sequential bound holds for any order of the same rule
NAIVE_FAMILY = "naive"
#: the recoveries from rstd or from the output add a few units of the output format
RECOVERY_UNITS = 4


def stored(layout, dtype="float32", mean=3.0):
    x = data.generate(SHAPE, dtype, "normal", mean=mean, std=1.0, seed=11)
    return x if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(x, 1, -1))


def cases():
    for implementation in implementations.IMPLEMENTATIONS:
        for norm, groups in SUBSETS:
            for layout in ("NCHW", "NHWC"):
                if implementation.supports(norm, layout):
                    yield pytest.param(implementation, norm, groups, layout,
                                       id=f"{implementation.name}-{norm}-{layout}")


def test_registry_entries_are_well_formed():
    names = [item.name for item in implementations.IMPLEMENTATIONS]
    assert len(names) == len(set(names))
    for item in implementations.IMPLEMENTATIONS:
        assert item.kind in implementations.KINDS
        assert set(item.norms) <= set(numerics.NORMS) and set(item.layouts) <= set(numerics.LAYOUTS)
        assert item.ddof in (0, 1) and item.used_by and item.algorithm
    frameworks = {item.framework for item in implementations.select("framework")}
    assert {"numpy", "PyTorch", "Flax", "JAX", "ONNX Runtime", "TensorFlow"} <= frameworks
    for recipe, stand_ins in implementations.STANDS_IN_FOR.items():
        assert implementations.by_name(recipe).kind == "recipe"
        for name, layouts in stand_ins:
            assert implementations.by_name(name).kind == "framework"
            assert layouts is None or set(layouts) <= set(implementations.by_name(name).layouts)


def test_importing_the_registry_imports_no_framework():
    code = ("import sys, numerics.implementations; "
            "print([m for m in ('torch', 'jax', 'tensorflow', 'onnxruntime', 'keras') "
            "if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_framework_is_installed_and_reports_its_version():
    import importlib.metadata
    import importlib.util
    for item in implementations.IMPLEMENTATIONS:
        assert item.available(), item.name
        installed = [package for package in item.packages
                     if importlib.util.find_spec(package.split("-")[0]) is not None]
        assert installed and item.version()
        for package in item.packages:
            try:
                assert f"{package} {importlib.metadata.version(package)}" in item.version()
            except importlib.metadata.PackageNotFoundError:  # another distribution name
                assert package not in item.version().split()


@pytest.mark.parametrize("implementation, norm, groups, layout", list(cases()))
def test_statistics_within_the_bound_of_the_documented_rule(implementation, norm, groups, layout):
    x = stored(layout)
    mean, var = implementation.statistics(x, norm, groups=groups, layout=layout)
    exact_mean, exact_var = reference.moments(x, norm, groups=groups, layout=layout,
                                              ddof=implementation.ddof)
    n = numerics.canonical_view(x.shape, norm, groups, layout).group_size
    kappa = reference.condition_number(x, norm, groups=groups, layout=layout)
    u = unit_roundoff("float32")
    variance_bound = bounds.variance_bound(NAIVE_FAMILY, n, kappa, u) + RECOVERY_UNITS * u
    absolute = np.abs(x.astype(np.float64)).max()
    mean_bound = (n + RECOVERY_UNITS) * u * absolute + np.zeros(mean.shape)
    assert mean.shape == var.shape == exact_var.shape
    var_error = numerics.metrics.relative_error(var, exact_var)
    mean_error = np.abs(mean - exact_mean.astype(np.float64))
    assert np.all(var_error <= 2 * variance_bound), (var_error.max(), variance_bound.max())
    assert np.all(mean_error <= 2 * mean_bound), mean_error.max()


@pytest.mark.parametrize("implementation, norm, groups, layout",
                         [case for case in cases() if case.values[0].normalize is not None])
def test_output_is_the_normalization_at_the_given_eps(implementation, norm, groups, layout):
    x, eps = stored(layout), 0.25  # a large eps: an output that ignored it would be 12 % off
    y = implementation.output(x, norm, groups=groups, layout=layout, eps=eps)
    exact_mean, exact_var = reference.moments(x, norm, groups=groups, layout=layout)
    expected = base.normalize_with(x, exact_mean.astype(np.float64), exact_var.astype(np.float64),
                                   norm, groups, layout, eps, dtype=np.float64)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4)


def test_default_eps_read_from_each_framework():
    expected = {"torch batch_norm": 1e-5, "flax BatchNorm fast": 1e-5, "flax LayerNorm fast": 1e-6,
                "flax GroupNorm two-pass": 1e-6, "jax.nn.standardize fast": 1e-5,
                "onnxruntime LayerNormalization": float(np.float32(1e-5)),
                "tf fused_batch_norm": 1e-3, "keras LayerNormalization": 1e-3,
                "keras GroupNormalization": 1e-3}
    for name, eps in expected.items():
        assert implementations.by_name(name).default_eps() == eps, name


@pytest.mark.parametrize("recipe", recipes.IMPLEMENTATIONS, ids=lambda item: item.name)
def test_recipes_are_numerics_moments_bit_for_bit(recipe):
    x = stored("NHWC", mean=1e4)
    mean, var = recipe.statistics(x, "group", groups=GROUPS, layout="NHWC")
    settings = {"recipe: naive f32": ("naive", "float32", None, False),
                "recipe: naive f32 + clamp": ("naive", "float32", None, True),
                "recipe: naive f64": ("naive", "float64", None, False),
                "recipe: two-pass f32": ("two_pass", "float32", None, False),
                "recipe: two-pass f64": ("two_pass", "float64", None, False),
                "recipe: welford f32, torch CPU chunks": ("welford", "float32",
                                                          recipes.TORCH_CPU_CHUNKS, False),
                "recipe: welford f32, GPU block": ("welford", "float32", recipes.GPU_BLOCK, False)}
    algorithm, acc, order, clamp = settings[recipe.name]
    expected = numerics.moments(x, "group", groups=GROUPS, layout="NHWC", algorithm=algorithm,
                                acc_dtype=acc, topology=order, clamp=clamp)
    assert_bitwise_equal(mean, expected.mean.astype(np.float64))
    assert_bitwise_equal(var, expected.var.astype(np.float64))


def test_prepare_and_run_give_the_statistics():
    for name in ("torch group_norm", "flax GroupNorm fast", "onnxruntime LayerNormalization",
                 "tf.nn.moments", "recipe: two-pass f32"):
        implementation = implementations.by_name(name)
        norm, groups = ("layer", None) if "Layer" in name else ("group", GROUPS)
        x = stored("NHWC")
        prepared = implementation.prepare(x, norm, groups, "NHWC", "cpu")
        mean, var = prepared.finish(implementation.run(prepared))
        expected = implementation.statistics(x, norm, groups=groups, layout="NHWC")
        assert_bitwise_equal(np.asarray(var, np.float64).reshape(expected[1].shape), expected[1])


def test_statistics_are_deterministic():
    x = stored("NHWC", mean=1e4)
    for name in ("torch batch_norm", "flax BatchNorm fast", "tf fused_batch_norm"):
        implementation = implementations.by_name(name)
        first = implementation.statistics(x, "batch", layout="NHWC")
        second = implementation.statistics(x, "batch", layout="NHWC")
        assert_bitwise_equal(first[1], second[1])


def test_unsupported_requests_are_refused_naming_what_is_offered():
    x = stored("NCHW")
    with pytest.raises(implementations.UnsupportedError, match="layouts"):
        implementations.by_name("flax GroupNorm fast").statistics(x, "group", groups=GROUPS)
    with pytest.raises(implementations.UnsupportedError, match="norms"):
        implementations.by_name("torch layer_norm").statistics(x, "batch")
    with pytest.raises(implementations.UnsupportedError, match="bfloat16"):
        implementations.by_name("onnxruntime LayerNormalization").statistics(
            stored("NCHW", "bfloat16"), "layer")
    with pytest.raises(implementations.UnsupportedError, match="no normalized output"):
        implementations.by_name("torch.var_mean").output(x, "layer")
    with pytest.raises(ValueError, match="no implementation named"):
        implementations.by_name("caffe2")


def test_recovery_from_the_output_returns_the_layers_statistics():
    x = stored("NCHW").astype(np.float64)
    mean, var = np.array([3.25, -1.5]), np.array([2.0, 0.5])
    y = base.normalize_with(x, mean, var, "layer", None, "NCHW", 0.0, dtype=np.float64)
    recovered_mean, recovered_var = base.recover_from_output(x, y, "layer", None, "NCHW")
    np.testing.assert_allclose(recovered_mean, mean, rtol=1e-13)
    np.testing.assert_allclose(recovered_var, var, rtol=1e-13)
    y[0, 0, 0, 0] = np.nan  # a group whose output is not finite: no statistics
    recovered_mean, recovered_var = base.recover_from_output(x, y, "layer", None, "NCHW")
    assert np.isnan(recovered_var[0]) and np.isnan(recovered_mean[0]) and recovered_var[1] > 0
