"""The two parallel merge trees of the GPU kernels (numerics.gpu.merge_lane_sets and
merge_unit_states) merge in exactly the order of the topology's sequential ones
(numerics.topology.merge_lanes and merge_blocks), shown with a merge that is neither commutative nor
associative, so that the result names the whole tree: every pair, and which side of it each operand
was on. Real rules often round both ways alike on random data; this merge never does."""
import numpy as np
import pytest
from numba import config, cuda

from numerics import gpu, targets, topology
from gpu_cases import requires_kernels

pytestmark = requires_kernels


def ordered_merge(count_a, first_a, second_a, count_b, first_b, second_b):
    # exact in float64 for these sizes: 3 * left + right, and the depth in `second`
    return count_a + count_b, first_a * 3.0 + first_b, max(second_a, second_b) + 1.0


class OrderedContext:
    """A rule context (numerics.algorithms) whose merge is ordered_merge: this object in the
    simulator; compiled for a GPU, a numba-cuda type that carries nothing, as targets.GpuContext."""
    merge = staticmethod(ordered_merge)


def register_ordered_context():
    from numba.cuda import types as cuda_types
    from numba.cuda.extending import overload_method, register_jitable, typeof_impl

    class OrderedContextType(cuda_types.Type):
        def __init__(self):
            super().__init__(name="OrderedContext")

    typeof_impl.register(OrderedContext)(lambda context, _: OrderedContextType())
    targets.register_empty_model(OrderedContextType)
    register_jitable(ordered_merge)

    @overload_method(OrderedContextType, "merge")
    def _merge(ctx, count_a, first_a, second_a, count_b, first_b, second_b):
        return (lambda ctx, count_a, first_a, second_a, count_b, first_b, second_b:
                ordered_merge(count_a, first_a, second_a, count_b, first_b, second_b))


if not config.ENABLE_CUDASIM:
    register_ordered_context()


def kernel_with_context(function):
    """A test kernel that takes an OrderedContext as an argument, as the package's kernels take
    their GpuContext."""
    if config.ENABLE_CUDASIM:
        return cuda.jit(function)
    return cuda.jit(extensions=[targets.ContextArguments(OrderedContext)])(function)


@pytest.mark.parametrize("lanes, sets", [(1, 4), (2, 3), (8, 2), (32, 2), (64, 2), (128, 1),
                                         (256, 1)])
def test_the_lane_tree_is_the_topology_lane_tree(lanes, sets):
    def merge_lanes(ctx, lanes, out_counts, out_firsts, out_seconds):
        thread = np.int64(cuda.threadIdx.x)
        threads = np.int64(cuda.blockDim.x)
        counts, firsts, seconds = gpu.lane_states(threads, out_firsts)
        counts[thread] = 1
        firsts[thread] = np.float64(thread % lanes)
        seconds[thread] = 0.0
        gpu.merge_lane_sets(ctx, counts, firsts, seconds, threads // lanes, lanes, thread,
                            threads)
        if thread % lanes == 0:
            out_counts[thread // lanes] = counts[thread]
            out_firsts[thread // lanes] = firsts[thread]
            out_seconds[thread // lanes] = seconds[thread]

    out = (np.zeros(sets, np.int64), np.zeros(sets), np.zeros(sets))
    threads = lanes * sets
    kernel_with_context(merge_lanes)[1, threads, 0, gpu.shared_bytes(threads, "float64")](
        OrderedContext(), lanes, *out)

    counts, firsts, seconds = [1] * lanes, [float(lane) for lane in range(lanes)], [0.0] * lanes
    topology.merge_lanes(OrderedContext, counts, firsts, seconds, lanes)
    assert out[0].tolist() == [lanes] * sets
    assert out[1].tolist() == [firsts[0]] * sets
    assert out[2].tolist() == [seconds[0]] * sets


@pytest.mark.parametrize("units, threads", [(1, 1), (2, 1), (5, 2), (13, 4), (40, 8)])
def test_the_block_tree_is_the_topology_block_tree(units, threads):
    def merge_blocks(ctx, units, counts, firsts, seconds):
        gpu.merge_unit_states(ctx, counts, firsts, seconds, np.int64(0), units,
                              np.int64(cuda.threadIdx.x), np.int64(cuda.blockDim.x))

    counts, firsts, seconds = np.ones(units, np.int64), np.arange(units, dtype=np.float64), \
        np.zeros(units)
    kernel_with_context(merge_blocks)[1, threads](OrderedContext(), units, counts, firsts, seconds)

    expected = [1] * units, [float(unit) for unit in range(units)], [0.0] * units
    topology.merge_blocks(OrderedContext, *expected, units)
    assert (counts[0], firsts[0], seconds[0]) == (units, expected[1][0], expected[2][0])
