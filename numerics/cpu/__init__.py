"""CPU drivers: numba kernels that walk the canonical view in the order the topology defines.

Work is cut into fixed *units*, one block of one group (``segments``) or one block of rows of one
``kept_outer`` slice for all its groups (``rows``; numerics.plan says which kernel runs). Each
unit's lane states merge by the topology's lane tree into one block state per group, and a group's
block states merge by the block tree (numerics.topology), so the answer is bitwise the same
whatever the thread count (docs/architecture.md trap 4). Threads take contiguous ranges of units;
``numba.get_num_threads()`` says how many run.

Speed comes from explicit SIMD (numerics.simd), never from fastmath (trap 3): ``W`` adjacent lanes
of a chunk (segments) or ``W`` adjacent columns (rows) are one vector register, and the rules of
algorithms.py run on those vectors unchanged. A vector only ever holds lanes with the same count
(a chunk that starts at lane 0 of its block; one lane row of the rows kernel), so Welford's divisor
and Chan's weights stay scalars. The lane trees run on vectors too, across ``W`` units (segments)
or ``W`` groups (rows) whose lanes hold the same counts. The scalar path (16-bit accumulators,
which are emulated with a rounding after each operation, and topologies with fewer lanes than a
vector) runs the same skeleton one lane at a time.

Every kernel is a module-level function whose first argument, a targets.CpuContext, names its
specialization (rule family, formats, vector or scalar path), and whose ``mode`` (streaming.py) is
a compile-time type too: numba compiles and caches one version per specialization.

The two-pass rules fuse their passes per owner (a group for segments, a ``kept_outer`` slice for
rows) when there are enough owners to share among the threads: pass 2 re-reads the owner's data
right after pass 1, from cache where it fits.
"""
import functools
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from .. import algorithms, cache, precision
from ..plan import ROWS, SEGMENTS, kernel_for
from ..targets import CpuContext
from . import finish, rows, segments
from .scratch import is_simd, new_scratch
from .streaming import CENTERED, FIRST_ONLY, ZERO_CENTER

#: below this many input bytes, one thread does the whole call (dispatch costs more than it saves)
THREADED_BYTES = 1 << 20


@functools.lru_cache(maxsize=None)
def context(family, input_format, acc_format, vectorized):
    return CpuContext(family, input_format, acc_format, vectorized)


_POOL = None


def run_split(kernel, key, items, leading, make_scratch, outputs, threads):
    """``kernel(*leading, lo, hi, scratch, *outputs)`` over items 0..items-1 cut into ``threads``
    contiguous ranges, one per thread, each with its own ``make_scratch()`` (the kernels release
    the GIL). Which thread runs which range never changes a result: every unit's state is
    computed and stored on its own. ``key`` names the specialization (numerics.cache.call).
    Returns how many threads ran."""
    global _POOL
    threads = max(1, min(threads, items))
    if threads == 1:
        cache.call(kernel, key, *leading, 0, items, make_scratch(), *outputs)
        return 1
    if _POOL is None or _POOL._max_workers < threads:
        _POOL = ThreadPoolExecutor(max(threads, numba.config.NUMBA_NUM_THREADS),
                                   thread_name_prefix="numerics-cpu")
    bounds = [items * t // threads for t in range(threads + 1)]
    scratches = [make_scratch() for _ in range(threads)]
    # the threads call the kernel directly: an empty range loads it first
    cache.call(kernel, key, *leading, 0, 0, scratches[0], *outputs)
    futures = [_POOL.submit(kernel, *leading, bounds[t], bounds[t + 1], scratches[t], *outputs)
               for t in range(threads)]
    for future in futures:
        future.result()
    return threads


def moments(x4, view, algorithm, topology, ddof, input_format, acc_format):
    """(means, variances, kernel name, details) of every group of the canonical view ``x4`` (a
    C-contiguous array of shape view.view_shape, 16-bit formats as uint16 bit patterns), in the
    compute type; details say how many threads ran and whether the two passes were fused."""
    rule = algorithms.ALGORITHMS[algorithm]
    kernel = kernel_for(view, topology)
    ctx = context(rule.family, input_format, acc_format, is_simd(acc_format, topology.lanes))
    serial_ctx = context(rule.family, input_format, acc_format, False)
    compute_type = precision.COMPUTE_DTYPES[acc_format].type
    block = topology.block_size(view.group_size)
    threads = numba.get_num_threads() if x4.nbytes >= THREADED_BYTES else 1
    lanes = topology.lanes
    if kernel == ROWS:
        data = x4.reshape(view.kept_outer, view.reduced_outer,
                          view.kept_inner * view.reduced_inner)
        blocks = -(-view.reduced_outer // (block // view.reduced_inner))
        units, owners = view.kept_outer * blocks, view.kept_outer
        lane_rows, columns = lanes // view.reduced_inner, data.shape[2]
        units_kernel, two_pass_kernel = rows.row_units, rows.row_two_pass
        shape = (lanes, view.reduced_inner, block)
    else:
        data = x4
        blocks = -(-view.group_size // block)
        units, owners = view.group_count * blocks, view.group_count
        lane_rows, columns = 1, 1
        units_kernel, two_pass_kernel = segments.segment_units, segments.segment_two_pass
        shape = (lanes, block)

    def make_scratch():
        return new_scratch(lanes, acc_format, lane_rows, columns)

    groups = view.group_count
    outputs = (np.empty(groups * blocks, np.int64), np.empty(groups * blocks, compute_type),
               np.empty(groups * blocks, compute_type))
    centers = np.zeros((view.kept_outer, view.kept_inner), compute_type)
    data_key = (data.dtype.str, data.flags.writeable)

    def merge_groups():
        cache.call(finish.merge_groups, (serial_ctx,), serial_ctx, blocks, *outputs)

    def reduce(mode):
        ran = run_split(units_kernel, (ctx, mode) + data_key, units,
                        (ctx, mode, data, centers, *shape), make_scratch, outputs, threads)
        merge_groups()
        return ran

    if rule.code == algorithms.SHIFTED:
        cache.call(finish.first_elements, (serial_ctx,) + data_key, serial_ctx, x4, centers)
    fused = (rule.passes == 2 and owners >= threads
             and (owners % threads == 0 or owners >= 8 * threads))
    if fused:
        # every thread owns whole groups (slices): both passes back to back, pass 2 from cache
        ran = run_split(two_pass_kernel, (ctx,) + data_key, owners,
                        (ctx, FIRST_ONLY, CENTERED, data, centers, *shape), make_scratch,
                        outputs, threads)
        merge_groups()
    elif rule.passes == 2:
        ran = reduce(FIRST_ONLY)
        cache.call(finish.pass_one_means, (serial_ctx,), serial_ctx, blocks, outputs[0],
                   outputs[1], centers)
        ran = max(ran, reduce(CENTERED))
    else:
        ran = reduce(ZERO_CENTER if rule.code == algorithms.NAIVE else CENTERED)
    means = np.empty(groups, compute_type)
    variances = np.empty(groups, compute_type)
    cache.call(finish.finalize_all, (serial_ctx,), serial_ctx, rule.code, blocks, outputs[0],
               centers, outputs[1], outputs[2], ddof, means, variances)
    return means, variances, kernel, (("threads", ran), ("fused_two_pass", fused))


__all__ = ["moments", "THREADED_BYTES", "SEGMENTS", "ROWS"]
