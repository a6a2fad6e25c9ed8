"""CPU drivers: numba kernels that walk the canonical view in the order the topology defines.

Work is cut into fixed *units*, one block of one group (``segments``) or one block of rows of one
``kept_outer`` slice for all its groups (``rows``). Each unit's lane states merge by the topology's
lane tree into one block state per group, and a group's block states merge by the block tree
(numerics.topology), so the answer is bitwise the same whatever the thread count
(ARCHITECTURE.md trap 4). Threads take contiguous ranges of units; ``numba.get_num_threads()``
says how many run. Two kernels realise the same order:

- ``segments``: any layout. A group is a sequence of contiguous runs of ``reduced_inner`` elements;
  inside each run, full chunks of ``lanes`` elements update the lanes side by side.
- ``rows``: layouts whose groups interleave in memory (channels last: ``reduced_inner`` divides
  ``lanes``). Lane ``((p - p0) mod (lanes / Q)) * Q + q`` is the lane that the topology gives
  element ``(p, q)``, so the two kernels agree bit for bit; a tile of adjacent columns (groups) is
  updated side by side, row after row of one lane.

Speed comes from explicit SIMD (numerics.simd), never from fastmath (trap 3): ``W`` adjacent lanes
of a chunk (segments) or ``W`` adjacent columns (rows) are one vector register, and the rules of
algorithms.py run on those vectors unchanged. A vector only ever holds lanes with the same count
(a chunk that starts at lane 0 of its block; one lane row of the rows kernel), so Welford's divisor
and Chan's weights stay scalars. The lane trees run on vectors too, across ``W`` units (segments)
or ``W`` groups (rows) whose lanes hold the same counts. The scalar path (16-bit accumulators,
which are emulated with a rounding after each operation, and topologies with fewer lanes than a
vector) runs the same skeleton one lane at a time.

The two-pass rules fuse their passes per owner (a group for segments, a ``kept_outer`` slice for
rows) when there are enough owners to share among the threads: pass 2 re-reads the owner's data
right after pass 1, from cache where it fits.
"""
import functools
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from . import algorithms, precision, simd, targets
from .topology import WARP_SIZE

SEGMENTS, ROWS = "segments", "rows"

#: what a pass computes (the unit kernels' ``mode``): centered sums around each group's center;
#: the same with every center zero (the naive rule: the subtraction folds away); or, for pass 1 of
#: the two-pass rules, zero centers and only the count and the first sum (the mean needs no more)
CENTERED, ZERO_CENTER, FIRST_ONLY = range(3)

#: one thread's work arrays: the lane states of a batch of units (member_*: unit by unit;
#: batch_*: lane by lane, for the vectorized lane tree; warp_counts: a unit's vectors of lanes),
#: one lane tree's states (merge_*) and the rows kernel's lane rows (row_*), its per-column
#: centers and per-lane counts
Scratch = namedtuple("Scratch", ["member_counts", "member_firsts", "member_seconds",
                                 "batch_counts", "batch_firsts", "batch_seconds", "warp_counts",
                                 "merge_counts", "merge_firsts", "merge_seconds", "row_counts",
                                 "rows_per_lane", "row_firsts", "row_seconds", "row_centers",
                                 "lane_counts"])


def aligned_zeros(shape, dtype, alignment=64):
    """Zeros whose data starts on an ``alignment``-byte boundary: simd.as_vectors reads them as
    vectors with aligned loads."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = np.zeros(count * dtype.itemsize + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape)


def new_scratch(lanes, acc_format, lane_rows=1, columns=1):
    """One thread's Scratch (allocated by the caller, who keeps it alive: the kernels borrow it)."""
    width = vector_width(acc_format) if is_simd(acc_format, lanes) else 1
    compute_type = compute_type_of(acc_format)
    return Scratch(np.empty((width, lanes), np.int64), aligned_zeros((width, lanes), compute_type),
                   aligned_zeros((width, lanes), compute_type), np.zeros(lanes, np.int64),
                   aligned_zeros((lanes, width), compute_type),
                   aligned_zeros((lanes, width), compute_type), np.empty(lanes, np.int64),
                   np.empty(lanes, np.int64), np.empty(lanes, compute_type),
                   np.empty(lanes, compute_type), np.empty(lane_rows, np.int64),
                   np.empty(lane_rows, np.int64), np.empty((lane_rows, columns), compute_type),
                   np.empty((lane_rows, columns), compute_type), np.empty(columns, compute_type),
                   np.empty(lanes, np.int64))


def borrow_scratch(scratch):
    """The Scratch with every array borrowed (simd.borrowed)."""
    b = simd.borrowed
    return Scratch(b(scratch.member_counts), b(scratch.member_firsts), b(scratch.member_seconds),
                   b(scratch.batch_counts), b(scratch.batch_firsts), b(scratch.batch_seconds),
                   b(scratch.warp_counts), b(scratch.merge_counts), b(scratch.merge_firsts),
                   b(scratch.merge_seconds), b(scratch.row_counts), b(scratch.rows_per_lane),
                   b(scratch.row_firsts), b(scratch.row_seconds), b(scratch.row_centers),
                   b(scratch.lane_counts))


borrow_scratch = targets.cpu_inline(borrow_scratch)


@targets.cpu_inline
def non_literal_modes():
    """FIRST_ONLY and CENTERED typed int64, not as literals: a unit kernel called with a literal
    mode is compiled again for that literal, and the fused two-pass drivers would then compile
    their unit kernel twice more (seconds each) for no speed (the mode is branched on outside the
    streaming loops)."""
    return np.int64(FIRST_ONLY), np.int64(CENTERED)

#: bytes of a SIMD register: 256-bit AVX2 (an AVX-512 machine runs the same code on its ymm halves)
REGISTER_BYTES = 32
#: rows kernel: rows of one lane row per slab. Each column tile re-reads them from L1; they lie
#: lane_rows * row bytes apart, often a multiple of 4 KiB, which maps them all to the same L1
#: sets, so no more of them than the L1's 8 ways
SLAB_ROWS_PER_LANE = 8
#: two-pass rules: groups whose two passes run back to back, about this many input bytes at a
#: time (a share of the core's L2; larger groups go one by one, pass 2 then comes from L3)
FUSED_BYTES = 256 * 1024
#: below this many input bytes, one thread does the whole call (dispatch costs more than it saves)
THREADED_BYTES = 1 << 20


def kernel_for(view, topology):
    """Which kernel walks this view for this topology."""
    return ROWS if topology.lanes % view.reduced_inner == 0 else SEGMENTS


def compute_type_of(acc_format):
    return precision.COMPUTE_DTYPES[acc_format].type


def vector_width(acc_format):
    return REGISTER_BYTES // precision.COMPUTE_DTYPES[acc_format].itemsize


def is_simd(acc_format, lanes):
    """Whether the vector path runs: accumulators the hardware has (16-bit ones are emulated per
    operation) and at least one full vector of lanes."""
    return acc_format in ("float32", "float64") and lanes % vector_width(acc_format) == 0


def vectors_in_flight(acc_format):
    """How many independent vector states one inner loop updates: enough to cover the latency of
    a push (Welford's chain is subtract, divide, add: about 17 cycles) and to make the sweeps over
    a block few (a centered sum's chain is one add, but every sweep re-reads the block), few
    enough that the states (two per vector) stay near the 16 AVX2 registers (trap 8)."""
    return 8 if acc_format == "float32" else 4


@functools.lru_cache(maxsize=None)
def kernels(family, input_format, acc_format, vectorized):
    """The compiled unit kernels of one family of rules for one (input, accumulator) format pair,
    vectorized (is_simd) or one lane at a time: ``units`` and ``two_pass`` for each of SEGMENTS
    and ROWS. The lane count is an argument: one compilation serves every topology."""
    scalar = targets.cpu_scalar_functions(input_format, acc_format)
    push = scalar[algorithms.push_and_merge(family)[0]]
    load = scalar["load"]
    to_acc = scalar["to_acc"]
    pass_one_mean = scalar["pass_one_mean"]
    merge_lanes = scalar[f"merge_lanes_{family}"]
    merge_blocks = scalar[f"merge_blocks_{family}"]
    compute_type = compute_type_of(acc_format)
    width = vector_width(acc_format) if vectorized else 1
    in_flight = vectors_in_flight(acc_format)
    specialization = f"{family}_{input_format}_{acc_format}_{'simd' if vectorized else 'scalar'}"

    def named(function):
        # closures of different specializations must not share a compiled name
        # (targets.specialized)
        return targets.specialized(function, specialization)

    def jit(function):
        return targets.cpu_inline(named(function))

    if input_format in ("float16", "bfloat16"):
        def load_vector(data, j):
            return simd.convert(simd.decode(simd.load(data, j, width), input_format), compute_type)
    else:
        def load_vector(data, j):
            return simd.convert(simd.load(data, j, width), compute_type)
    load_vector = jit(load_vector)

    # ---- one run of full chunks: every lane of the block holds ``count`` elements on entry ------

    def sweep_function(vectors):
        """The chunks of a run for ``vectors`` adjacent vectors of lanes (a compile-time count,
        so that their states live in registers)."""

        def sweep(row, j, chunks, count, center, mode, lanes, base, firsts, seconds):
            # one loop per mode, so that LLVM folds a zero center away (x - 0 == x exactly) and,
            # for FIRST_ONLY, drops the second sum that nothing stores
            zero = to_acc(0)
            first = simd.stack_vectors(vectors, width, compute_type)
            second = simd.stack_vectors(vectors, width, compute_type)
            for v in range(vectors):
                first[v] = simd.load(firsts, base + v * width, width)
                second[v] = simd.load(seconds, base + v * width, width)
            if mode == CENTERED:
                for chunk in range(chunks):
                    offset = j + chunk * lanes + base
                    for v in range(vectors):
                        _, first[v], second[v] = push(count + chunk, center, first[v], second[v],
                                                      load_vector(row, offset + v * width))
            elif mode == ZERO_CENTER:
                for chunk in range(chunks):
                    offset = j + chunk * lanes + base
                    for v in range(vectors):
                        _, first[v], second[v] = push(count + chunk, zero, first[v], second[v],
                                                      load_vector(row, offset + v * width))
            else:
                for chunk in range(chunks):
                    offset = j + chunk * lanes + base
                    for v in range(vectors):
                        _, first[v], _ = push(count + chunk, zero, first[v], second[v],
                                              load_vector(row, offset + v * width))
            for v in range(vectors):
                simd.store(firsts, base + v * width, first[v])
                simd.store(seconds, base + v * width, second[v])

        return jit(sweep)

    sweep_wide, sweep_narrow = sweep_function(in_flight), sweep_function(1)

    def stream_chunks_simd(row, j, chunks, count, center, mode, lanes, firsts, seconds):
        # sweep by sweep (`in_flight` vectors of lanes whose states fit in registers) over all
        # the chunks of the run; the run stays in L1/L2 between sweeps
        wide = in_flight * width
        if lanes % wide == 0:
            for base in range(0, lanes, wide):
                sweep_wide(row, j, chunks, count, center, mode, lanes, base, firsts, seconds)
        else:
            for base in range(0, lanes, width):
                sweep_narrow(row, j, chunks, count, center, mode, lanes, base, firsts, seconds)

    def stream_chunks_scalar(row, j, chunks, count, center, mode, lanes, firsts, seconds):
        for chunk in range(chunks):
            offset = j + chunk * lanes
            for lane in range(lanes):
                _, firsts[lane], seconds[lane] = push(count + chunk, center, firsts[lane],
                                                      seconds[lane], load(row[offset + lane]))

    stream_chunks = jit(stream_chunks_simd if vectorized else stream_chunks_scalar)

    def block_lanes(x4, k1, k2, start, stop, center, mode, lanes, counts, firsts, seconds):
        """The lane states of elements start..stop-1 of group (k1, k2)."""
        reduced_inner = x4.shape[3]
        zero = to_acc(0)
        for lane in range(lanes):
            counts[lane] = 0
            firsts[lane] = zero
            seconds[lane] = zero
        i = start
        while i < stop:
            p = i // reduced_inner
            q = i - p * reduced_inner
            end = q + min(reduced_inner - q, stop - i)
            row = x4[k1, p, k2]
            lane = (i - start) % lanes
            j = q
            while j < end and lane != 0:
                counts[lane], firsts[lane], seconds[lane] = push(counts[lane], center, firsts[lane],
                                                                 seconds[lane], load(row[j]))
                lane = lane + 1 if lane + 1 < lanes else 0
                j += 1
            chunks = (end - j) // lanes
            if chunks > 0:
                # lane 0 is next: every lane holds the same count
                stream_chunks(row, j, chunks, counts[0], center, mode, lanes, firsts, seconds)
                for lane in range(lanes):
                    counts[lane] += chunks
                j += chunks * lanes
            lane = 0
            while j < end:
                counts[lane], firsts[lane], seconds[lane] = push(counts[lane], center, firsts[lane],
                                                                 seconds[lane], load(row[j]))
                lane += 1
                j += 1
            i = i + end - q

    block_lanes = jit(block_lanes)

    # ---- the lane tree of a batch of units (segments) or of groups (rows) ---------------------

    def merge_batch_simd(counts, firsts, seconds, members, scratch, out_counts, out_firsts,
                         out_seconds):
        # firsts[t, w]: lane t of member w; every member holds the same counts (counts[t]). The
        # topology's lane tree runs on the rows of firsts/seconds as vectors, in place
        lanes = counts.shape[0]
        lane_counts = scratch.merge_counts
        lane_counts[:] = counts
        first = simd.as_vectors(firsts, width)
        second = simd.as_vectors(seconds, width)
        merge_lanes(lane_counts, first, second, lanes)
        for w in range(members):
            out_counts[w] = lane_counts[0]
            out_firsts[w] = simd.extract(first[0], w)
            out_seconds[w] = simd.extract(second[0], w)

    def merge_batch_scalar(counts, firsts, seconds, members, scratch, out_counts, out_firsts,
                           out_seconds):
        lanes = counts.shape[0]
        lane_counts, lane_firsts, lane_seconds = (scratch.merge_counts, scratch.merge_firsts,
                                                  scratch.merge_seconds)
        for w in range(members):
            for t in range(lanes):
                lane_counts[t] = counts[t]
                lane_firsts[t] = firsts[t, w]
                lane_seconds[t] = seconds[t, w]
            merge_lanes(lane_counts, lane_firsts, lane_seconds, lanes)
            out_counts[w] = lane_counts[0]
            out_firsts[w] = lane_firsts[0]
            out_seconds[w] = lane_seconds[0]

    merge_batch = jit(merge_batch_simd if vectorized else merge_batch_scalar)

    def fold_vectors_simd(counts, firsts, seconds, lanes, warp_counts):
        # The first levels of the lane tree of one unit whose lanes hold equal counts, in place:
        # inside a warp, the halving tree's levels with offsets >= width pair lane v*width + i
        # with lane (v + offset/width)*width + i, which is the same halving tree over the warp's
        # vectors of lanes. Returns the count of each lane that still carries a state (lanes
        # base..base+width-1 of every warp), or -1 when the counts differ (nothing folded).
        warp_lanes = min(lanes, WARP_SIZE)
        warp_vectors = warp_lanes // width
        if warp_vectors == 1 or counts[0] != counts[lanes - 1]:
            return -1
        for base in range(0, lanes, warp_lanes):
            warp_counts[:warp_vectors] = counts[0]
            merge_lanes(warp_counts, simd.as_vectors(firsts[base:base + warp_lanes], width),
                        simd.as_vectors(seconds[base:base + warp_lanes], width), warp_vectors)
        return warp_counts[0]

    def fold_vectors_scalar(counts, firsts, seconds, lanes, warp_counts):
        return -1

    fold_vectors = jit(fold_vectors_simd if vectorized else fold_vectors_scalar)

    # ---- segments ------------------------------------------------------------------------------

    def segment_units(x4, centers, mode, lanes, block, unit_lo, unit_hi, scratch, unit_counts,
                      unit_firsts, unit_seconds):
        """Block states of units unit_lo..unit_hi-1 (unit = group * blocks + block index)."""
        # borrowed: the caller keeps every array alive (simd.borrowed)
        x4, centers, scratch = simd.borrowed(x4), simd.borrowed(centers), borrow_scratch(scratch)
        unit_counts, unit_firsts = simd.borrowed(unit_counts), simd.borrowed(unit_firsts)
        unit_seconds = simd.borrowed(unit_seconds)
        kept_inner = x4.shape[2]
        size = x4.shape[1] * x4.shape[3]
        blocks = (size + block - 1) // block
        last_length = size - (blocks - 1) * block
        member_counts, member_firsts, member_seconds = (scratch.member_counts,
                                                        scratch.member_firsts,
                                                        scratch.member_seconds)
        batch_counts = scratch.batch_counts
        batch_firsts, batch_seconds = scratch.batch_firsts, scratch.batch_seconds
        warp_lanes = min(lanes, WARP_SIZE)
        # lanes of a folded batch that carry no state hold the merge's identity: count 0 and
        # -0.0 (x + -0.0 == x for every x; Chan's merge returns the other state for count 0),
        # so the whole lane tree runs over them and changes nothing
        padded = False
        # unit = (k1 * kept_inner + k2) * blocks + b, advanced without divisions
        group = unit_lo // blocks
        b = unit_lo - group * blocks
        k1 = group // kept_inner
        k2 = group - k1 * kept_inner
        unit = unit_lo
        while unit < unit_hi:
            # a batch: consecutive units of one length, whose lanes hold the same counts (a
            # group's last block may be shorter)
            length = last_length if b == blocks - 1 else block
            if blocks == 1:
                members = min(width, unit_hi - unit)
            elif b < blocks - 1:
                members = min(width, unit_hi - unit, blocks - 1 - b)
            else:
                members = 1
            folded = -1
            for w in range(members):
                start = b * block
                block_lanes(x4, k1, k2, start, start + length, centers[k1, k2], mode, lanes,
                            member_counts[w], member_firsts[w], member_seconds[w])
                b += 1
                if b == blocks:
                    b = 0
                    k2 += 1
                    if k2 == kept_inner:
                        k2 = 0
                        k1 += 1
                folded = fold_vectors(member_counts[w], member_firsts[w], member_seconds[w],
                                      lanes, scratch.warp_counts)
                if folded >= 0:
                    if not padded:
                        batch_counts[:] = 0
                        batch_firsts[:] = -0.0
                        batch_seconds[:] = -0.0
                        padded = True
                    for base in range(0, lanes, warp_lanes):
                        for t in range(base, base + width):
                            batch_firsts[t, w] = member_firsts[w, t]
                            batch_seconds[t, w] = member_seconds[w, t]
                else:
                    padded = False
                    for t in range(lanes):
                        batch_firsts[t, w] = member_firsts[w, t]
                        batch_seconds[t, w] = member_seconds[w, t]
            if folded >= 0:
                for base in range(0, lanes, warp_lanes):
                    batch_counts[base:base + width] = folded
            else:
                batch_counts[:] = member_counts[0]
            merge_batch(batch_counts, batch_firsts, batch_seconds, members, scratch,
                        unit_counts[unit:], unit_firsts[unit:], unit_seconds[unit:])
            unit += members

    segment_units = targets.cpu_kernel(named(segment_units))

    def segment_two_pass(x4, centers, lanes, block, group_lo, group_hi, scratch, unit_counts,
                         unit_firsts, unit_seconds):
        """Both passes of groups group_lo..group_hi-1, a few groups at a time (about
        FUSED_BYTES of input): pass 2 re-reads them right after pass 1, from cache wherever they
        fit. ``centers`` must hold zeros for these groups; it ends with the pass-1 means."""
        kept_inner = x4.shape[2]
        size = x4.shape[1] * x4.shape[3]
        blocks = (size + block - 1) // block
        step = max(1, FUSED_BYTES // (size * x4.itemsize))
        first_only, centered = non_literal_modes()
        for chunk_lo in range(group_lo, group_hi, step):
            chunk_hi = min(chunk_lo + step, group_hi)
            segment_units(x4, centers, first_only, lanes, block, chunk_lo * blocks,
                          chunk_hi * blocks, scratch, unit_counts, unit_firsts, unit_seconds)
            for group in range(chunk_lo, chunk_hi):
                k1 = group // kept_inner
                k2 = group - k1 * kept_inner
                first_unit = group * blocks
                merge_blocks(unit_counts[first_unit:], unit_firsts[first_unit:],
                             unit_seconds[first_unit:], blocks)
                centers[k1, k2] = pass_one_mean(unit_counts[first_unit], unit_firsts[first_unit])
            segment_units(x4, centers, centered, lanes, block, chunk_lo * blocks,
                          chunk_hi * blocks, scratch, unit_counts, unit_firsts, unit_seconds)

    # ---- rows ----------------------------------------------------------------------------------

    def stream_rows_simd(x2, row_lo, rows_per_lane, lane_rows, row_centers, mode, counts, firsts,
                         seconds):
        # lane row by lane row; a tile of `in_flight` column vectors keeps its states in
        # registers over all the lane row's rows of the slab (one loop per mode, as in sweep)
        columns = x2.shape[1]
        tile_columns = in_flight * width
        tiled = columns - columns % tile_columns
        vectorized_columns = columns - columns % width
        zero = to_acc(0)
        for r in range(lane_rows):
            rows = rows_per_lane[r]
            first_row = row_lo + r
            count = counts[r]
            for c0 in range(0, tiled, tile_columns):
                center = simd.stack_vectors(in_flight, width, compute_type)
                first = simd.stack_vectors(in_flight, width, compute_type)
                second = simd.stack_vectors(in_flight, width, compute_type)
                for v in range(in_flight):
                    center[v] = simd.load(row_centers, c0 + v * width, width)
                    first[v] = simd.load(firsts[r], c0 + v * width, width)
                    second[v] = simd.load(seconds[r], c0 + v * width, width)
                # a flat offset, not a row view: a view in these loops costs a call (its
                # reference count), and a call spills every vector register
                if mode == CENTERED:
                    for k in range(rows):
                        offset = (first_row + k * lane_rows) * columns + c0
                        for v in range(in_flight):
                            _, first[v], second[v] = push(count + k, center[v], first[v],
                                                          second[v],
                                                          load_vector(x2, offset + v * width))
                elif mode == ZERO_CENTER:
                    for k in range(rows):
                        offset = (first_row + k * lane_rows) * columns + c0
                        for v in range(in_flight):
                            _, first[v], second[v] = push(count + k, zero, first[v], second[v],
                                                          load_vector(x2, offset + v * width))
                else:
                    for k in range(rows):
                        offset = (first_row + k * lane_rows) * columns + c0
                        for v in range(in_flight):
                            _, first[v], _ = push(count + k, zero, first[v], second[v],
                                                  load_vector(x2, offset + v * width))
                for v in range(in_flight):
                    simd.store(firsts[r], c0 + v * width, first[v])
                    simd.store(seconds[r], c0 + v * width, second[v])
            for c0 in range(tiled, vectorized_columns, width):
                center_vector = simd.load(row_centers, c0, width)
                first_vector = simd.load(firsts[r], c0, width)
                second_vector = simd.load(seconds[r], c0, width)
                for k in range(rows):
                    _, first_vector, second_vector = push(
                        count + k, center_vector, first_vector, second_vector,
                        load_vector(x2, (first_row + k * lane_rows) * columns + c0))
                simd.store(firsts[r], c0, first_vector)
                simd.store(seconds[r], c0, second_vector)
        stream_rows_scalar(x2, row_lo, rows_per_lane, lane_rows, vectorized_columns, row_centers,
                           counts, firsts, seconds)

    def stream_rows_scalar(x2, row_lo, rows_per_lane, lane_rows, column_lo, row_centers, counts,
                           firsts, seconds):
        for r in range(lane_rows):
            count = counts[r]
            for k in range(rows_per_lane[r]):
                p = row_lo + r + k * lane_rows
                for m in range(column_lo, x2.shape[1]):
                    _, firsts[r, m], seconds[r, m] = push(count + k, row_centers[m], firsts[r, m],
                                                          seconds[r, m], load(x2[p, m]))

    stream_rows_scalar = jit(stream_rows_scalar)
    if vectorized:
        stream_rows = jit(stream_rows_simd)
    else:
        def stream_rows(x2, row_lo, rows_per_lane, lane_rows, row_centers, mode, counts, firsts,
                        seconds):
            stream_rows_scalar(x2, row_lo, rows_per_lane, lane_rows, 0, row_centers, counts,
                               firsts, seconds)
        stream_rows = jit(stream_rows)

    def row_units(x3, centers, mode, lanes, reduced_inner, block, unit_lo, unit_hi, scratch,
                  unit_counts, unit_firsts, unit_seconds):
        """Block states of units unit_lo..unit_hi-1 (unit = k1 * blocks + block index) for every
        group of the unit's slice; unit_* are indexed (group * blocks + block index)."""
        # borrowed: the caller keeps every array alive (simd.borrowed)
        x3, centers, scratch = simd.borrowed(x3), simd.borrowed(centers), borrow_scratch(scratch)
        unit_counts, unit_firsts = simd.borrowed(unit_counts), simd.borrowed(unit_firsts)
        unit_seconds = simd.borrowed(unit_seconds)
        kept_outer, reduced_outer, columns = x3.shape
        kept_inner = columns // reduced_inner
        block_rows = block // reduced_inner
        lane_rows = lanes // reduced_inner
        blocks = (reduced_outer + block_rows - 1) // block_rows
        # a slab: the same number of rows for every lane row
        slab_rows = SLAB_ROWS_PER_LANE * lane_rows
        counts, rows_per_lane = scratch.row_counts, scratch.rows_per_lane
        firsts, seconds = scratch.row_firsts, scratch.row_seconds
        row_centers, lane_counts = scratch.row_centers, scratch.lane_counts
        batch_firsts, batch_seconds = scratch.batch_firsts, scratch.batch_seconds
        zero = to_acc(0)
        for unit in range(unit_lo, unit_hi):
            k1 = unit // blocks
            b = unit - k1 * blocks
            for m in range(columns):
                row_centers[m] = centers[k1, m // reduced_inner]
            counts[:] = 0
            firsts[:] = zero
            seconds[:] = zero
            row_lo = b * block_rows
            row_hi = min(row_lo + block_rows, reduced_outer)
            for slab_lo in range(row_lo, row_hi, slab_rows):
                slab_length = min(slab_rows, row_hi - slab_lo)
                for r in range(lane_rows):
                    rows_per_lane[r] = (slab_length - r + lane_rows - 1) // lane_rows
                stream_rows(x3[k1], slab_lo, rows_per_lane, lane_rows, row_centers, mode, counts,
                            firsts, seconds)
                for r in range(lane_rows):
                    counts[r] += rows_per_lane[r]
            for r in range(lane_rows):
                lane_counts[r * reduced_inner:(r + 1) * reduced_inner] = counts[r]
            # the lane tree of `width` groups at once: lane t = r * Q + q of group k2 is
            # element (r, k2 * Q + q) of the lane states
            for k2 in range(0, kept_inner, width):
                members = min(width, kept_inner - k2)
                for r in range(lane_rows):
                    for q in range(reduced_inner):
                        t = r * reduced_inner + q
                        for w in range(members):
                            batch_firsts[t, w] = firsts[r, (k2 + w) * reduced_inner + q]
                            batch_seconds[t, w] = seconds[r, (k2 + w) * reduced_inner + q]
                first_out = (k1 * kept_inner + k2) * blocks + b
                merge_batch(lane_counts, batch_firsts, batch_seconds, members, scratch,
                            unit_counts[first_out::blocks], unit_firsts[first_out::blocks],
                            unit_seconds[first_out::blocks])

    row_units = targets.cpu_kernel(named(row_units))

    def row_two_pass(x3, centers, lanes, reduced_inner, block, slice_lo, slice_hi, scratch,
                     unit_counts, unit_firsts, unit_seconds):
        """Both passes of kept_outer slices slice_lo..slice_hi-1, back to back (pass 2 finds the
        slice in cache wherever it fits). ``centers`` must hold zeros for these slices; it ends
        with the pass-1 means."""
        reduced_outer, columns = x3.shape[1], x3.shape[2]
        kept_inner = columns // reduced_inner
        block_rows = block // reduced_inner
        blocks = (reduced_outer + block_rows - 1) // block_rows
        first_only, centered = non_literal_modes()
        for k1 in range(slice_lo, slice_hi):
            row_units(x3, centers, first_only, lanes, reduced_inner, block, k1 * blocks,
                      (k1 + 1) * blocks, scratch, unit_counts, unit_firsts, unit_seconds)
            for k2 in range(kept_inner):
                first_unit = (k1 * kept_inner + k2) * blocks
                merge_blocks(unit_counts[first_unit:], unit_firsts[first_unit:],
                             unit_seconds[first_unit:], blocks)
                centers[k1, k2] = pass_one_mean(unit_counts[first_unit], unit_firsts[first_unit])
            row_units(x3, centers, centered, lanes, reduced_inner, block, k1 * blocks,
                      (k1 + 1) * blocks, scratch, unit_counts, unit_firsts, unit_seconds)

    return {
        SEGMENTS: {"units": segment_units,
                   "two_pass": targets.cpu_kernel(named(segment_two_pass))},
        ROWS: {"units": row_units, "two_pass": targets.cpu_kernel(named(row_two_pass))},
    }


@functools.lru_cache(maxsize=None)
def finishers(input_format, acc_format, family):
    """Serial helpers around the unit kernels: the shift of each group, the block trees, the
    pass-one means and finalize."""
    scalar = targets.cpu_scalar_functions(input_format, acc_format)
    load = scalar["load"]
    pass_one_mean = scalar["pass_one_mean"]
    finalize = scalar["finalize"]
    merge_blocks = scalar[f"merge_blocks_{family}"]

    def first_elements(x4, centers):
        for k1 in range(x4.shape[0]):
            for k2 in range(x4.shape[2]):
                centers[k1, k2] = load(x4[k1, 0, k2, 0])

    def merge_groups(blocks, unit_counts, unit_firsts, unit_seconds):
        """Each group's block states merged by the block tree, in place (into its block 0)."""
        for first_unit in range(0, unit_counts.shape[0], blocks):
            merge_blocks(unit_counts[first_unit:], unit_firsts[first_unit:],
                         unit_seconds[first_unit:], blocks)

    def pass_one_means(blocks, unit_counts, unit_firsts, centers):
        flat = centers.reshape(-1)
        for group in range(flat.shape[0]):
            flat[group] = pass_one_mean(unit_counts[group * blocks], unit_firsts[group * blocks])

    def finalize_all(algorithm, blocks, unit_counts, centers, unit_firsts, unit_seconds, ddof,
                     means, variances):
        flat_centers = centers.reshape(-1)
        for group in range(means.shape[0]):
            unit = group * blocks
            # n - ddof <= 0: the mean is still defined; the caller sets the variance to NaN
            usable_ddof = ddof if unit_counts[unit] - ddof > 0 else 0
            means[group], variances[group] = finalize(algorithm, unit_counts[unit],
                                                      flat_centers[group], unit_firsts[unit],
                                                      unit_seconds[unit], usable_ddof)

    tag = f"{input_format}_{acc_format}_{family}"
    return tuple(targets.cpu_serial(targets.specialized(function, tag))
                 for function in (first_elements, merge_groups, pass_one_means, finalize_all))


_POOL = None


def run_split(kernel, items, leading, make_scratch, outputs, threads):
    """``kernel(*leading, lo, hi, scratch, *outputs)`` over items 0..items-1 cut into ``threads``
    contiguous ranges, one per thread, each with its own ``make_scratch()`` (the kernels release
    the GIL). Which thread runs which range never changes a result: every unit's state is
    computed and stored on its own. Returns how many threads ran."""
    global _POOL
    threads = max(1, min(threads, items))
    if threads == 1:
        kernel(*leading, 0, items, make_scratch(), *outputs)
        return 1
    if _POOL is None or _POOL._max_workers < threads:
        _POOL = ThreadPoolExecutor(max(threads, numba.config.NUMBA_NUM_THREADS),
                                   thread_name_prefix="numerics-cpu")
    bounds = [items * t // threads for t in range(threads + 1)]
    scratches = [make_scratch() for _ in range(threads)]
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
    compiled = kernels(rule.family, input_format, acc_format,
                       is_simd(acc_format, topology.lanes))[kernel]
    first_elements, merge_groups, pass_one_means, finalize_all = finishers(
        input_format, acc_format, rule.family)
    compute_type = compute_type_of(acc_format)
    block = topology.block_size(view.group_size)
    threads = numba.get_num_threads() if x4.nbytes >= THREADED_BYTES else 1
    if kernel == ROWS:
        data = x4.reshape(view.kept_outer, view.reduced_outer,
                          view.kept_inner * view.reduced_inner)
        blocks = -(-view.reduced_outer // (block // view.reduced_inner))
        units, owners = view.kept_outer * blocks, view.kept_outer
        lane_rows, columns = topology.lanes // view.reduced_inner, data.shape[2]
    else:
        data = x4
        blocks = -(-view.group_size // block)
        units, owners = view.group_count * blocks, view.group_count
        lane_rows, columns = 1, 1

    def make_scratch():
        return new_scratch(topology.lanes, acc_format, lane_rows, columns)

    groups = view.group_count
    outputs = (np.empty(groups * blocks, np.int64), np.empty(groups * blocks, compute_type),
               np.empty(groups * blocks, compute_type))
    centers = np.zeros((view.kept_outer, view.kept_inner), compute_type)
    shape = view.reduced_inner
    lanes = topology.lanes

    def reduce(mode):
        leading = ((data, centers, mode, lanes, block) if kernel == SEGMENTS
                   else (data, centers, mode, lanes, shape, block))
        ran = run_split(compiled["units"], units, leading, make_scratch, outputs, threads)
        merge_groups(blocks, *outputs)
        return ran

    if rule.code == algorithms.SHIFTED:
        first_elements(x4, centers)
    fused = (rule.passes == 2 and owners >= threads
             and (owners % threads == 0 or owners >= 8 * threads))
    if fused:
        # every thread owns whole groups (slices): both passes back to back, pass 2 from cache
        leading = ((data, centers, lanes, block) if kernel == SEGMENTS
                   else (data, centers, lanes, shape, block))
        ran = run_split(compiled["two_pass"], owners, leading, make_scratch, outputs, threads)
        merge_groups(blocks, *outputs)
    elif rule.passes == 2:
        ran = reduce(FIRST_ONLY)
        pass_one_means(blocks, outputs[0], outputs[1], centers)
        ran = max(ran, reduce(CENTERED))
    else:
        ran = reduce(ZERO_CENTER if rule.code == algorithms.NAIVE else CENTERED)
    means = np.empty(groups, compute_type)
    variances = np.empty(groups, compute_type)
    finalize_all(rule.code, blocks, outputs[0], centers, outputs[1], outputs[2], ddof, means,
                 variances)
    return means, variances, kernel, (("threads", ran), ("fused_two_pass", fused))
