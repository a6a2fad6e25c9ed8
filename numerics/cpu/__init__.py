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
vector) runs the same skeleton one lane at a time, on its input widened to the compute type
(``Geometry.kernel_input``), so that its kernels depend on the accumulator format alone.

Every kernel is a module-level function whose first argument, a targets.CpuContext, names its
specialization (rule family, formats, vector or scalar path): numba compiles and caches one version
per specialization. Every pass of the plan runs the same unit kernel, centered on the centers the
plan gives (zeros for the naive rule and pass one: streaming.py).

The two-pass rules fuse their passes per owner (a group for segments, a ``kept_outer`` slice for
rows) when there are enough owners to share among the threads: pass 2 re-reads the owner's data
right after pass 1, from cache where it fits.

A call's fixed cost is kept small for small tensors: what the view, rule, topology and formats
decide is computed once (``Geometry``), each call borrows the work arrays a finished call gave
back, and the contexts carry their numba types (numerics.targets), so a kernel call types its
arguments in C. Threads cost a call a wake-up of each and of the caller at the end, tens of
microseconds each, so a call uses only as many threads as its work pays for: until a call on a
geometry has measured its kernels' work, calls thread from THREADED_BYTES of input on; then each
thread gets at least THREAD_WORK_SECONDS of the least work a call measured (``MeasuredWork``).
Which thread runs what never changes a result, so this choice changes only the time.
"""
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from .. import algorithms, cache, plan, precision
from ..plan import ROWS, SEGMENTS, kernel_for
from ..targets import CpuContext
from . import finish, rows, segments
from .scratch import (GATHERED_CHUNKS, GATHERED_RUN_CHUNKS, SMALL_GROUP_CHUNKS, is_simd,
                      new_scratch, tile_columns, vector_width)

#: the first call on a geometry runs on the calling thread alone below this many input bytes
#: (dispatch costs more than it saves)
THREADED_BYTES = 1 << 20
#: later calls give each thread at least this much of the kernels' work (seconds of kernel time
#: summed over the threads, the least a call measured): waking a pool thread and waking the
#: caller when it is done cost 50-90 us a call on the 2-core machine (docs/architecture.md 2.8)
THREAD_WORK_SECONDS = 150e-6
#: unit states up to this many bytes are kept for the next call of the same geometry; larger ones
#: (as many states as elements when groups are tiny) are allocated per call
KEPT_STATE_BYTES = 1 << 18
#: work arrays kept per geometry: one set per call running at the same time, up to this many
KEPT_WORK = 4


@functools.lru_cache(maxsize=None)
def context(family, input_format, acc_format, vectorized):
    return CpuContext(family, input_format, acc_format, vectorized)


_POOL, _POOL_WORKERS = None, 0
_POOL_GUARD = threading.Lock()


def worker_pool(workers):
    """The shared thread pool, grown to at least ``workers`` threads."""
    global _POOL, _POOL_WORKERS
    with _POOL_GUARD:
        if _POOL_WORKERS < workers:
            _POOL_WORKERS = max(workers, numba.config.NUMBA_NUM_THREADS)
            _POOL = ThreadPoolExecutor(_POOL_WORKERS, thread_name_prefix="numerics-cpu")
        return _POOL


class MeasuredWork:
    """The seconds of kernel work a call of one kind takes, summed over its threads (None before
    one is measured), which sets how many threads the next one runs on: the least any call
    measured. The kind fixes the work, and what the clock adds to it (a preemption, a page
    fault, a thread waiting for a core) is no part of it: one slow call must not wake every
    thread for the calls after it. A call that loaded or compiled a kernel measured no work."""
    work_seconds = None

    def measured(self, parts):
        """Takes a finished call's work: the seconds of each kernel run on each thread
        (run_split), None for a run that loaded or compiled its kernel."""
        if not parts or None in parts:
            return
        seconds = sum(parts)
        if self.work_seconds is None or seconds < self.work_seconds:
            self.work_seconds = seconds

    def threads_for(self, nbytes):
        """How many threads a call on ``nbytes`` of input runs on: all of numba's from
        THREADED_BYTES on until a call has measured the work, then one per THREAD_WORK_SECONDS
        of it, at most numba's thread count."""
        if self.work_seconds is None:
            return numba.get_num_threads() if nbytes >= THREADED_BYTES else 1
        paid_for = int(self.work_seconds / THREAD_WORK_SECONDS)
        return 1 if paid_for < 2 else min(paid_for, numba.get_num_threads())


def run_split(kernel, key, items, leading, scratches, outputs):
    """``kernel(*leading, lo, hi, scratch, *outputs)`` over items 0..items-1 cut into at most
    ``len(scratches)`` contiguous ranges, one per thread with its own scratch: this thread runs the
    first range, the pool the others (the kernels release the GIL). Which thread runs which range
    never changes a result: every unit's state is computed and stored on its own. ``key`` names
    the specialization (numerics.cache.call). Returns how many threads ran and the seconds each
    one's kernel took (the call's work, less the dispatch), None where a thread loaded or
    compiled the kernel first (``timed_call``)."""
    threads = max(1, min(len(scratches), items))
    bounds = [items * t // threads for t in range(threads + 1)]
    futures = ([] if threads == 1 else
               [worker_pool(threads - 1).submit(timed_call, kernel, key, *leading, bounds[t],
                                                bounds[t + 1], scratches[t], *outputs)
                for t in range(1, threads)])
    try:
        own_work = timed_call(kernel, key, *leading, bounds[0], bounds[1], scratches[0], *outputs)
    finally:
        # the pool's ranges finish before this thread's error, if any, propagates
        pool_work = [future.result() for future in futures]
    return threads, [own_work] + pool_work


def timed_call(kernel, key, *arguments):
    """Seconds that ``cache.call(kernel, key, *arguments)`` took, or None where that call loaded
    or compiled the kernel first: the seconds of a build are no measure of the work."""
    measurable = cache.loaded(kernel, key)
    begin = time.perf_counter()
    cache.call(kernel, key, *arguments)
    return time.perf_counter() - begin if measurable else None


def pushes_parts_of_chunks(view, lanes, block, blocks, gathers):
    """Whether the segments kernel's block path ever pushes part of a chunk of lanes
    (segments.block_lanes): where a block is not whole chunks long, or is read in place across
    a run that starts inside a chunk (``gathers``: blocks longer than a run are copied into whole
    chunks first). Exact for a last block read in place (BatchNorm's last block over 28x28
    planes, say), conservative otherwise: True wherever runs of another block read in place
    do not start on chunks."""
    size, run = view.group_size, view.reduced_inner
    last_start = (blocks - 1) * block
    for start, stop in {(0, size if blocks == 1 else block), (last_start, size)}:
        if (stop - start) % lanes:
            return True
        if (gathers and stop - start > run) or run % lanes == 0 or view.reduced_outer == 1:
            continue
        # read in place: one piece if it is the last block and no longer than a run (the group
        # ends where a run does, so no run starts inside it)
        if start != last_start or stop - start > run:
            return True
    return False


class Geometry(MeasuredWork):
    """What every call on one canonical view with one rule, topology and pair of formats shares:
    the kernel and its contexts, how the view is cut into units, and the work arrays (scratch,
    unit states) of finished calls, lent to the next ones: one call's at a time, so results never
    alias between calls or threads (numerics.cpu.geometry_of); and the work its calls measured
    (MeasuredWork)."""

    def __init__(self, view, rule, topology, input_format, acc_format):
        self.rule, self.view, self.kernel = rule, view, kernel_for(view, topology)
        self.vectorized = is_simd(acc_format, topology.lanes)
        # the scalar path and the first elements read their input widened to the compute type
        # (kernel_input), so their kernels are built once per accumulator format, not once per
        # pair of formats (docs/architecture.md 2.7); the finishing kernels (pass-one means,
        # finalize) read no input: one build per accumulator format too (its context names the
        # accumulator's format as the input's)
        compute_format = precision.COMPUTE_DTYPES[acc_format].name
        self.ctx = context(rule.family, input_format if self.vectorized else compute_format,
                           acc_format, self.vectorized)
        self.serial_ctx = context(rule.family, compute_format, acc_format, False)
        self.finish_ctx = context(rule.family, acc_format, acc_format, False)
        self.input_format = input_format
        self.compute_type = precision.COMPUTE_DTYPES[acc_format].type
        self.lanes, self.acc_format = topology.lanes, acc_format
        self.block = topology.block_size(view.group_size)
        if self.kernel == ROWS:
            self.data_shape = (view.kept_outer, view.reduced_outer,
                               view.kept_inner * view.reduced_inner)
            self.blocks = -(-view.reduced_outer // (self.block // view.reduced_inner))
            self.units, self.owners = view.kept_outer * self.blocks, view.kept_outer
            self.lane_rows, self.columns = self.lanes // view.reduced_inner, self.data_shape[2]
            self.units_kernel, self.two_pass_kernel = rows.row_units, rows.row_two_pass
            self.gathered_length = self.transposed_length = 0
            # the vector path's ragged ends, True or None (rows.row_units): rows that are not
            # whole tiles of in-flight vectors, batches of groups that are not one vector per
            # lane row. One argument for both: each would double the kernel's builds
            ragged = self.vectorized and (self.columns % tile_columns(self.ctx) != 0
                                          or view.reduced_inner != 1
                                          or view.kept_inner % vector_width(acc_format) != 0)
            self.paths = (True if ragged else None,)
            self.unit_arguments = (self.lanes, view.reduced_inner, self.block, *self.paths)
        else:
            self.data_shape = view.view_shape
            self.blocks = -(-view.group_size // self.block)
            self.units, self.owners = view.group_count * self.blocks, view.group_count
            self.lane_rows, self.columns = 1, 1
            self.units_kernel = segments.segment_units
            self.two_pass_kernel = segments.segment_two_pass
            # short runs that end inside chunks of lanes are gathered into whole chunks, and
            # groups of a few chunks in one block run side by side in the vector lanes
            # (segments.py)
            small = (self.vectorized and self.blocks == 1
                     and view.group_size <= SMALL_GROUP_CHUNKS * self.lanes)
            gathers = (not small and view.reduced_inner % self.lanes != 0
                       and view.reduced_inner < GATHERED_RUN_CHUNKS * self.lanes)
            self.gathered_length = GATHERED_CHUNKS * self.lanes if gathers else 0
            self.transposed_length = (vector_width(acc_format) * view.group_size if small
                                      else 0)
            # the vector path's ragged ends (segments.block_lanes): parts of chunks of lanes, or
            # lanes that are not whole sweeps of in-flight vectors. One argument for both, and
            # always True on the scalar path: each would double the kernel's builds
            ragged = not small and (not self.vectorized
                                    or self.lanes % tile_columns(self.ctx) != 0
                                    or pushes_parts_of_chunks(view, self.lanes, self.block,
                                                              self.blocks, gathers))
            # the paths the kernel compiles, each True or None (segments.segment_units): small
            # groups or block by block, and the ragged ends
            self.paths = ((True, None) if small else (None, True)) + (True if ragged else None,)
            self.unit_arguments = (self.lanes, self.block, *self.paths)
        # what a unit kernel's specialization depends on besides its data (numerics.cache.call):
        # the path, and whether the scratch has a gathering buffer or None (new_scratch)
        self.kernel_key = (self.ctx, *self.paths, self.gathered_length > 0)
        # the finishing kernels merge each group's blocks by the block tree where it has several
        # (True), and compile no merge where it has one (None: numerics.cpu.finish)
        self.block_tree = True if self.blocks > 1 else None
        self.finish_key = (self.finish_ctx, self.block_tree)
        self.state_count = view.group_count * self.blocks
        state_bytes = self.state_count * (8 + 2 * np.dtype(self.compute_type).itemsize)
        self.keeps_states = state_bytes <= KEPT_STATE_BYTES
        self.spare = []

    def kernel_input(self, values):
        """What the kernels of this geometry read of ``values`` (part of a canonical view): the
        vector path reads the input itself; the scalar path, whose speed is its one lane at a
        time, a copy in the compute type (none where the input already is), exact or rounded
        once as the kernels' own loads would (precision.widened)."""
        if self.vectorized:
            return values
        return precision.widened(values, self.input_format, self.acc_format)

    def borrow_work(self, threads, input_dtype):
        """``(scratches, states)`` for one call on ``threads`` threads whose kernels read
        ``input_dtype`` (the same in every call on this geometry): a finished call's where one is
        free, new otherwise. list.pop and list.append are atomic, so two calls never get the same
        arrays."""
        try:
            scratches, states = self.spare.pop()
        except IndexError:
            scratches, states = [], None
        while len(scratches) < threads:
            scratches.append(new_scratch(self.lanes, self.acc_format, input_dtype,
                                         self.gathered_length, self.transposed_length,
                                         self.lane_rows, self.columns))
        if states is None:
            states = (np.empty(self.state_count, np.int64),
                      np.empty(self.state_count, self.compute_type),
                      np.empty(self.state_count, self.compute_type))
        return scratches, states

    def give_back(self, scratches, states):
        """The work arrays of a finished call, for the next one (every kernel overwrites what it
        reads of them: no value carries from one call to the next)."""
        if len(self.spare) < KEPT_WORK:
            self.spare.append((scratches, states if self.keeps_states else None))


@functools.lru_cache(maxsize=64)
def geometry_of(view, algorithm, topology, input_format, acc_format):
    return Geometry(view, algorithms.ALGORITHMS[algorithm], topology, input_format, acc_format)


class CpuTarget:
    """The CPU kernels as a target of the pass plan (numerics.plan): one call's data and work
    arrays on a Geometry."""

    def __init__(self, geometry, x4, threads):
        self.geometry, self.x4 = geometry, x4
        self.data = geometry.kernel_input(x4).reshape(geometry.data_shape)
        self.threads = threads
        self.scratches, self.states = geometry.borrow_work(threads, self.data.dtype)
        # what the specialization of a unit or two-pass kernel depends on: the geometry's
        # contexts and paths, the data's type
        self.kernel_key = geometry.kernel_key + (self.data.dtype.str, self.data.flags.writeable)
        # the seconds of each kernel run on each thread (run_split)
        self.ran, self.fused, self.work = 1, False, []

    def release(self):
        self.geometry.give_back(self.scratches, self.states)

    def zero_centers(self):
        view = self.geometry.view
        return np.zeros((view.kept_outer, view.kept_inner), self.geometry.compute_type)

    def first_elements(self):
        geometry = self.geometry
        centers = np.empty((geometry.view.kept_outer, geometry.view.kept_inner),
                           geometry.compute_type)
        firsts = precision.widened(self.x4[:, :1, :, :1], geometry.input_format,
                                   geometry.acc_format)
        cache.call(finish.first_elements, (geometry.serial_ctx, firsts.flags.writeable),
                   geometry.serial_ctx, firsts, centers)
        return centers

    def leading_arguments(self, centers):
        """The arguments of a unit or two-pass kernel before its range (run_split)."""
        geometry = self.geometry
        return (geometry.ctx, self.data, centers, *geometry.unit_arguments)

    def reduce(self, mode, centers):
        """One pass, whatever the plan's ``mode``: the two-pass rules' context is already the
        centered sums', and pass one's centers are zeros."""
        geometry = self.geometry
        ran, work = run_split(geometry.units_kernel, self.kernel_key, geometry.units,
                              self.leading_arguments(centers), self.scratches[:self.threads],
                              self.states)
        self.ran = max(self.ran, ran)
        self.work += work

    def both_passes(self, centers):
        """Both passes fused when every thread can own whole groups (slices): pass 2 re-reads a
        group right after its pass 1, from cache. Not on the scalar path: one lane at a time,
        it runs slower than memory serves it, so the fused kernel would be one more build per
        accumulator format that saves no time (docs/architecture.md 2.7)."""
        geometry, threads, owners = self.geometry, self.threads, self.geometry.owners
        if not geometry.vectorized:
            return None
        if not (owners >= threads and (owners % threads == 0 or owners >= 8 * threads)):
            return None
        self.ran, work = run_split(geometry.two_pass_kernel, self.kernel_key, owners,
                                   self.leading_arguments(centers), self.scratches[:threads],
                                   self.states)
        self.work += work
        self.fused = True
        return centers

    def pass_one_means(self, centers):
        # the kernel writes the means through a flat view (numerics.cpu.finish): copy=False
        # raises rather than let them go to a copy
        geometry = self.geometry
        cache.call(finish.pass_one_means, geometry.finish_key, geometry.finish_ctx,
                   geometry.blocks, geometry.block_tree, *self.states,
                   centers.reshape(-1, copy=False))
        return centers

    def finalize(self, algorithm, centers, ddof):
        geometry = self.geometry
        means = np.empty(geometry.view.group_count, geometry.compute_type)
        variances = np.empty(geometry.view.group_count, geometry.compute_type)
        cache.call(finish.finalize_all, geometry.finish_key, geometry.finish_ctx, algorithm,
                   geometry.blocks, geometry.block_tree, *self.states,
                   centers.reshape(-1, copy=False), means, variances, ddof)
        return means, variances


def moments(x4, view, algorithm, topology, ddof, input_format, acc_format):
    """(means, variances, kernel name, details) of every group of the canonical view ``x4`` (a
    C-contiguous array of shape view.view_shape, 16-bit formats as uint16 bit patterns), in the
    compute type, in new arrays; details say how many threads ran and whether the two passes
    were fused."""
    geometry = geometry_of(view, algorithm, topology, input_format, acc_format)
    target = CpuTarget(geometry, x4, geometry.threads_for(x4.nbytes))
    try:
        means, variances = plan.run(geometry.rule, target, ddof)
    finally:
        target.release()
    # a finished call's work only: a failed one stopped short of it
    geometry.measured(target.work)
    return means, variances, geometry.kernel, (("threads", target.ran),
                                               ("fused_two_pass", target.fused))


__all__ = ["moments", "CpuTarget", "Geometry", "MeasuredWork", "THREADED_BYTES",
           "THREAD_WORK_SECONDS", "SEGMENTS", "ROWS"]
