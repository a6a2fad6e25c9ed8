"""Every rule x topology x subset x layout x spatial rank x input dtype x accumulator dtype x ddof
against the exact reference, within a small constant times that rule's a-priori bound
(numerics.bounds: CGL's leading terms with the topology's summation depth)."""
import zlib

import ml_dtypes
import numpy as np
import pytest

import numerics
from numerics import bounds, data, metrics, precision, reference

#: the small constant the bounds are multiplied by: bounds.py gives leading-order terms without
#: their constants (docs/architecture.md, section 4.2)
BOUND_FACTOR = 2.0
TOPOLOGIES = [numerics.TOPOLOGIES[name] for name in numerics.TOPOLOGIES]
FORMAT_TYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
                "float64": np.float64}
SUBSETS = [("batch", None), ("layer", None), ("instance", None), ("group", 2)]
SPATIAL_SHAPES = [(), (5,), (3, 4), (2, 3, 2)]
#: accumulators that hold every value of the input format exactly (no rounding on the way in)
EXACT_WIDENINGS = {("float16", "float32"), ("float16", "float64"), ("bfloat16", "float32"),
                   ("bfloat16", "float64"), ("float32", "float64")}


def input_rounding(input_format, acc_format):
    if input_format == acc_format or (input_format, acc_format) in EXACT_WIDENINGS:
        return 0.0
    return numerics.unit_roundoff(acc_format)


def check_against_bounds(x, norm, groups, layout, algorithms, topologies, acc_formats):
    """Run every combination on ``x`` and compare with the exact reference and the bounds."""
    input_format = precision.format_name(x.dtype, "x")
    view = numerics.canonical_view(x.shape, norm, groups, layout)
    n = view.group_size
    kappa = reference.condition_number(x, norm, groups=groups, layout=layout)
    shifted_kappa = reference.shifted_condition_number(x, norm, groups=groups, layout=layout)
    values = np.moveaxis(np.asarray(x, np.float64).reshape(view.view_shape), 2, 1)
    values = values.reshape(view.group_count, n)
    mean_condition = (np.abs(values).sum(axis=1) + np.abs(values - values[:, :1]).sum(axis=1)) / \
        np.abs(values.sum(axis=1))
    mean_condition = mean_condition.reshape(view.stats_shape)
    failures = []
    for ddof in (0, 1):
        exact_mean, exact_var = reference.moments(x, norm, groups=groups, layout=layout, ddof=ddof)
        for acc_format in acc_formats:
            u = numerics.unit_roundoff(acc_format)
            epsilon = input_rounding(input_format, acc_format)
            for algorithm in algorithms:
                rule_kappa = shifted_kappa if algorithm == "shifted" else kappa
                for topology in topologies:
                    mean, var = numerics.moments(x, norm, groups=groups, layout=layout,
                                                 algorithm=algorithm, ddof=ddof,
                                                 acc_dtype=acc_format, topology=topology)
                    var_bound = BOUND_FACTOR * bounds.variance_bound(
                        algorithm, n, np.nan_to_num(rule_kappa, posinf=1.0), u, topology.lanes,
                        topology.block, input_rounding_u=epsilon,
                        data_kappa=np.nan_to_num(kappa, posinf=1.0))
                    mean_bound = BOUND_FACTOR * (bounds.mean_bound(
                        n, mean_condition, u, topology.lanes, topology.block)
                        + epsilon * mean_condition)
                    var_error = metrics.relative_error(var, exact_var)
                    mean_error = metrics.relative_error(mean, exact_mean)
                    # S = 0 (one-element groups): no relative bound; every rule must give exactly 0,
                    # or NaN where n - ddof = 0, as the exact reference does
                    spread = np.isfinite(kappa)
                    exact_zero = np.array_equal(np.isnan(var.astype(np.float64))[~spread],
                                                np.isnan(exact_var.astype(float))[~spread]) and \
                        np.all(np.nan_to_num(var.astype(np.float64)[~spread], nan=0.0) == 0)
                    if not (exact_zero and np.all(var_error[spread] <= var_bound[spread])
                            and np.all(mean_error <= mean_bound)):
                        failures.append((acc_format, algorithm, topology.name, ddof,
                                         float(np.max(var_error[spread] / var_bound[spread], initial=0.0)),
                                         float(np.max(mean_error / mean_bound))))
    assert not failures, f"error above {BOUND_FACTOR} x bound (acc, rule, topology, ddof, " \
                         f"var error/bound, mean error/bound): {failures[:10]}"


@pytest.mark.parametrize("input_format", numerics.FORMATS)
@pytest.mark.parametrize("spatial_shape", SPATIAL_SHAPES, ids=lambda s: f"spatial{len(s)}d")
@pytest.mark.parametrize("layout", numerics.LAYOUTS)
@pytest.mark.parametrize("norm, groups", SUBSETS, ids=[s[0] for s in SUBSETS])
def test_every_combination_within_its_bound(norm, groups, layout, spatial_shape, input_format):
    shape = (2, *spatial_shape, 4) if layout == "NHWC" else (2, 4, *spatial_shape)
    seed = zlib.crc32(repr((norm, layout, spatial_shape, input_format)).encode())
    # mean 3, std 1 (kappa ~ 3): float16 squares and sums stay far from overflow at these sizes
    x = data.generate(shape, input_format, "normal", mean=3.0, std=1.0, seed=seed)
    check_against_bounds(x, norm, groups, layout, list(numerics.ALGORITHMS), TOPOLOGIES,
                         numerics.FORMATS)


@pytest.mark.parametrize("input_format", ["float32", "float64"])
@pytest.mark.parametrize("norm, groups, layout", [("batch", None, "NHWC"), ("layer", None, "NCHW"),
                                                  ("group", 4, "NCHW"), ("group", 4, "NHWC")])
def test_ill_conditioned_data_within_its_bound(norm, groups, layout, input_format):
    """|mean|/std = 1e3: the textbook rule's kappa^2 term dominates in float32; the bounds of
    every rule must still hold."""
    shape = (4, 20, 6, 6) if layout == "NCHW" else (4, 6, 6, 20)
    x = data.generate(shape, input_format, "normal", mean=1e3, std=1.0, seed=5)
    check_against_bounds(x, norm, groups, layout, list(numerics.ALGORITHMS), TOPOLOGIES,
                         ["float32", "float64"])


def test_the_naive_rule_really_is_naive():
    """float32 data with |mean|/std = 1e4 in a sequential float32 accumulator lose most digits, as
    n kappa^2 u says; an accidental float64 accumulator (docs/architecture.md, trap 1) would not."""
    x = data.generate((8, 4096), "float32", "normal", mean=1e4, std=1.0, seed=3)
    _, exact_var = reference.moments(x, "layer")
    _, naive_var = numerics.moments(x, "layer", algorithm="naive", topology="sequential",
                                    acc_dtype="float32")
    naive_error = metrics.relative_error(naive_var, exact_var)
    assert np.median(naive_error) > 1e-2, naive_error
    kappa = reference.condition_number(x, "layer")
    assert np.all(naive_error <= BOUND_FACTOR * bounds.variance_bound(
        "naive", 4096, kappa, numerics.unit_roundoff("float32")))
    _, wide_var = numerics.moments(x, "layer", algorithm="naive", topology="sequential",
                                   acc_dtype="float64")
    wide_error = metrics.relative_error(wide_var, exact_var)
    assert np.all(wide_error <= BOUND_FACTOR * bounds.variance_bound(
        "naive", 4096, kappa, numerics.unit_roundoff("float64")))
    assert np.all(wide_error < naive_error / 1e4)
    _, welford_var = numerics.moments(x, "layer", algorithm="welford", topology="sequential")
    assert np.all(metrics.relative_error(welford_var, exact_var) < 1e-3)
