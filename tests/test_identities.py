"""Identities between subsets and layouts, and independence from the thread count."""
import numba
import numpy as np
import pytest

import numerics
from numerics import cpu
from tests.helpers import assert_bitwise_equal

RNG = np.random.default_rng(11)
X = RNG.normal(50.0, 2.0, (3, 6, 4, 5)).astype(np.float32)
TOPOLOGIES = ["sequential", "blocked", "pairwise", numerics.Topology(2, 4)]


@pytest.mark.parametrize("algorithm", list(numerics.ALGORITHMS))
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("layout", numerics.LAYOUTS)
def test_one_group_is_layer_norm_and_c_groups_are_instance_norm(algorithm, topology, layout):
    x = X if layout == "NCHW" else np.ascontiguousarray(X.transpose(0, 2, 3, 1))
    options = dict(layout=layout, algorithm=algorithm, topology=topology, ddof=1)
    one_group = numerics.moments(x, "group", groups=1, **options)
    layer = numerics.moments(x, "layer", **options)
    assert_bitwise_equal(one_group.mean.reshape(-1), layer.mean)
    assert_bitwise_equal(one_group.var.reshape(-1), layer.var)
    channel_groups = numerics.moments(x, "group", groups=6, **options)
    instance = numerics.moments(x, "instance", **options)
    assert_bitwise_equal(channel_groups.mean, instance.mean)
    assert_bitwise_equal(channel_groups.var, instance.var)


@pytest.mark.parametrize("algorithm", list(numerics.ALGORITHMS))
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("spatial_shape", [(), (7,), (4, 5), (2, 3, 2)])
def test_channels_last_equals_channels_first_bitwise_where_the_order_is_the_same(
        algorithm, topology, norm, spatial_shape):
    """BatchNorm and InstanceNorm visit a group's elements in the same order in both layouts
    (batch, then space), so the layouts must agree bit for bit; the kernels differ (segments
    against rows), so this also checks that the two kernels realise one topology."""
    x = RNG.normal(-3.0, 1.0, (2, 8, *spatial_shape)).astype(np.float32)
    channels_last = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    first = numerics.moments(x, norm, layout="NCHW", algorithm=algorithm, topology=topology)
    last = numerics.moments(channels_last, norm, layout="NHWC", algorithm=algorithm,
                            topology=topology)
    assert_bitwise_equal(first.mean, last.mean)
    assert_bitwise_equal(first.var, last.var)


@pytest.mark.parametrize("algorithm", list(numerics.ALGORITHMS))
@pytest.mark.parametrize("norm, groups, layout", [("batch", None, "NCHW"), ("batch", None, "NHWC"),
                                                  ("layer", None, "NCHW"), ("group", 4, "NHWC")])
def test_bitwise_identical_with_one_and_two_threads(algorithm, norm, groups, layout, monkeypatch):
    # every measured call pays for every thread
    monkeypatch.setattr(cpu, "THREAD_WORK_SECONDS", 1e-12)
    x = RNG.normal(1e3, 1.0, (8, 16, 48, 48)).astype(np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            results.append(numerics.moments(x, norm, groups=groups, layout=layout,
                                            algorithm=algorithm))
    finally:
        numba.set_num_threads(previous)
    threads_that_ran = [dict(result.run.details)["threads"] for result in results]
    assert threads_that_ran == [1, min(2, numba.config.NUMBA_NUM_THREADS)]
    assert_bitwise_equal(results[0].mean, results[1].mean)
    assert_bitwise_equal(results[0].var, results[1].var)
