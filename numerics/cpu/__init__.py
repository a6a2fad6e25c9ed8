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

from .. import algorithms, cache, plan, precision
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


class CpuTarget:
    """The CPU kernels as a target of the pass plan (numerics.plan) over one canonical view."""

    def __init__(self, x4, view, rule, topology, input_format, acc_format):
        self.kernel = kernel_for(view, topology)
        self.ctx = context(rule.family, input_format, acc_format,
                           is_simd(acc_format, topology.lanes))
        # the serial kernels have no vector path: one build serves every topology
        self.serial_ctx = context(rule.family, input_format, acc_format, False)
        self.compute_type = precision.COMPUTE_DTYPES[acc_format].type
        self.x4, self.view, self.lanes, self.acc_format = x4, view, topology.lanes, acc_format
        self.block = topology.block_size(view.group_size)
        self.threads = numba.get_num_threads() if x4.nbytes >= THREADED_BYTES else 1
        self.ran, self.fused = 1, False
        if self.kernel == ROWS:
            self.data = x4.reshape(view.kept_outer, view.reduced_outer,
                                   view.kept_inner * view.reduced_inner)
            self.blocks = -(-view.reduced_outer // (self.block // view.reduced_inner))
            self.units, self.owners = view.kept_outer * self.blocks, view.kept_outer
            self.lane_rows, self.columns = self.lanes // view.reduced_inner, self.data.shape[2]
            self.units_kernel, self.two_pass_kernel = rows.row_units, rows.row_two_pass
            self.shape = (self.lanes, view.reduced_inner, self.block)
        else:
            self.data = x4
            self.blocks = -(-view.group_size // self.block)
            self.units, self.owners = view.group_count * self.blocks, view.group_count
            self.lane_rows, self.columns = 1, 1
            self.units_kernel, self.two_pass_kernel = segments.segment_units, segments.segment_two_pass
            self.shape = (self.lanes, self.block)
        states = view.group_count * self.blocks
        self.states = (np.empty(states, np.int64), np.empty(states, self.compute_type),
                       np.empty(states, self.compute_type))
        # what the specialization of a kernel depends on besides the contexts and modes
        self.data_key = (self.data.dtype.str, self.data.flags.writeable)

    def new_scratch(self):
        return new_scratch(self.lanes, self.acc_format, self.lane_rows, self.columns)

    def zero_centers(self):
        return np.zeros((self.view.kept_outer, self.view.kept_inner), self.compute_type)

    def first_elements(self):
        centers = np.empty((self.view.kept_outer, self.view.kept_inner), self.compute_type)
        cache.call(finish.first_elements, (self.serial_ctx,) + self.data_key, self.serial_ctx,
                   self.x4, centers)
        return centers

    def reduce(self, mode, centers):
        mode = MODES[mode]
        ran = run_split(self.units_kernel, (self.ctx, mode) + self.data_key, self.units,
                        (self.ctx, mode, self.data, centers, *self.shape), self.new_scratch,
                        self.states, self.threads)
        self.ran = max(self.ran, ran)

    def both_passes(self, centers):
        """Both passes fused when every thread can own whole groups (slices): pass 2 re-reads a
        group right after its pass 1, from cache."""
        owners, threads = self.owners, self.threads
        if not (owners >= threads and (owners % threads == 0 or owners >= 8 * threads)):
            return None
        self.ran = run_split(self.two_pass_kernel, (self.ctx,) + self.data_key, owners,
                             (self.ctx, FIRST_ONLY, CENTERED, self.data, centers, *self.shape),
                             self.new_scratch, self.states, threads)
        self.fused = True
        return centers

    def pass_one_means(self, centers):
        cache.call(finish.pass_one_means, (self.serial_ctx,), self.serial_ctx, self.blocks,
                   *self.states, centers)
        return centers

    def finalize(self, algorithm, centers, ddof):
        means = np.empty(self.view.group_count, self.compute_type)
        variances = np.empty(self.view.group_count, self.compute_type)
        cache.call(finish.finalize_all, (self.serial_ctx,), self.serial_ctx, algorithm,
                   self.blocks, *self.states, centers, means, variances, ddof)
        return means, variances


#: the CPU's compile-time mode of each pass of the plan
MODES = {plan.PASS_ONE: FIRST_ONLY, plan.CENTERED: CENTERED, plan.ZERO_CENTER: ZERO_CENTER}


def moments(x4, view, algorithm, topology, ddof, input_format, acc_format):
    """(means, variances, kernel name, details) of every group of the canonical view ``x4`` (a
    C-contiguous array of shape view.view_shape, 16-bit formats as uint16 bit patterns), in the
    compute type; details say how many threads ran and whether the two passes were fused."""
    rule = algorithms.ALGORITHMS[algorithm]
    target = CpuTarget(x4, view, rule, topology, input_format, acc_format)
    means, variances = plan.run(rule, target, ddof)
    return means, variances, target.kernel, (("threads", target.ran),
                                             ("fused_two_pass", target.fused))


__all__ = ["moments", "CpuTarget", "THREADED_BYTES", "SEGMENTS", "ROWS"]
