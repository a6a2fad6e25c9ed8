"""The ``rows`` kernel: layouts whose groups interleave in memory (channels last:
``reduced_inner`` divides ``lanes``). Lane ``((p - p0) mod (lanes / Q)) * Q + q`` is the lane that
the topology gives element ``(p, q)``, so the two kernels agree bit for bit; a tile of adjacent
columns (groups) is updated side by side, row after row of one lane (``W`` adjacent columns are
one vector on the vector path).

A unit is one block of rows of one ``kept_outer`` slice, for all its groups (unit = k1 * blocks +
block index).
"""
import numba
from numba.extending import overload

from .. import algorithms, cache, simd
from ..targets import INTERNAL
from ..topology import merge_blocks
from .scratch import vectors_in_flight, width_of
from .streaming import merge_batch, stream_vectors

#: rows of one lane row per slab. Each column tile re-reads them from L1; they lie
#: lane_rows * row bytes apart, often a multiple of 4 KiB, which maps them all to the same L1
#: sets, so no more of them than the L1's 8 ways
SLAB_ROWS_PER_LANE = 8


@numba.njit(**INTERNAL)
def stream_rows_scalar(ctx, x2, row_lo, rows_per_lane, lane_rows, column_lo, row_centers, counts,
                       firsts, seconds):
    """Columns column_lo.. of the slab's lane rows, one element at a time."""
    for r in range(lane_rows):
        count = counts[r]
        for k in range(rows_per_lane[r]):
            p = row_lo + r + k * lane_rows
            for m in range(column_lo, x2.shape[1]):
                _, firsts[r, m], seconds[r, m] = ctx.push(count + k, row_centers[m], firsts[r, m],
                                                          seconds[r, m], ctx.load(x2[p, m]))


def stream_rows(ctx, x2, row_lo, rows_per_lane, lane_rows, row_centers, counts, firsts, seconds):
    """The rows of one slab from ``row_lo`` into the lane rows' states (row r of the lane rows
    takes rows row_lo + r, row_lo + r + lane_rows, ...: ``rows_per_lane[r]`` of them)."""
    raise NotImplementedError("stream_rows runs in compiled code only")


@overload(stream_rows, jit_options=INTERNAL)
def _stream_rows(ctx, x2, row_lo, rows_per_lane, lane_rows, row_centers, counts, firsts, seconds):
    if not ctx.vectorized:
        def run(ctx, x2, row_lo, rows_per_lane, lane_rows, row_centers, counts, firsts, seconds):
            stream_rows_scalar(ctx, x2, row_lo, rows_per_lane, lane_rows, 0, row_centers, counts,
                               firsts, seconds)
        return run
    in_flight = vectors_in_flight(ctx.acc_format)
    width = width_of(ctx)

    def run(ctx, x2, row_lo, rows_per_lane, lane_rows, row_centers, counts, firsts, seconds):
        # lane row by lane row; a tile of in-flight column vectors keeps its states in registers
        # over all the lane row's rows of the slab, then single vectors, then single columns
        columns = x2.shape[1]
        tile_columns = in_flight * width
        tiled = columns - columns % tile_columns
        vectorized_columns = columns - columns % width
        for r in range(lane_rows):
            start, stride = (row_lo + r) * columns, lane_rows * columns
            for c0 in range(0, tiled, tile_columns):
                stream_vectors(ctx, in_flight, x2, start + c0, stride, rows_per_lane[r], counts[r],
                               row_centers, firsts[r], seconds[r], c0)
            for c0 in range(tiled, vectorized_columns, width):
                stream_vectors(ctx, 1, x2, start + c0, stride, rows_per_lane[r], counts[r],
                               row_centers, firsts[r], seconds[r], c0)
        stream_rows_scalar(ctx, x2, row_lo, rows_per_lane, lane_rows, vectorized_columns,
                           row_centers, counts, firsts, seconds)
    return run


@numba.njit(**INTERNAL)
def lane_tree_of_groups(ctx, k1, b, blocks, lane_rows, reduced_inner, scratch, unit_counts,
                        unit_firsts, unit_seconds):
    """The lane tree of every group of the slice, ``width`` groups at once: lane
    t = r * Q + q of group k2 is element (r, k2 * Q + q) of the lane states."""
    kept_inner = scratch.row_centers.shape[0] // reduced_inner
    width = width_of(ctx)
    for r in range(lane_rows):
        scratch.lane_counts[r * reduced_inner:(r + 1) * reduced_inner] = scratch.row_counts[r]
    for k2 in range(0, kept_inner, width):
        members = min(width, kept_inner - k2)
        for r in range(lane_rows):
            for q in range(reduced_inner):
                t = r * reduced_inner + q
                for w in range(members):
                    scratch.batch_firsts[t, w] = scratch.row_firsts[r, (k2 + w) * reduced_inner + q]
                    scratch.batch_seconds[t, w] = scratch.row_seconds[r,
                                                                      (k2 + w) * reduced_inner + q]
        first_out = (k1 * kept_inner + k2) * blocks + b
        merge_batch(ctx, scratch.lane_counts, scratch.batch_firsts, scratch.batch_seconds,
                    members, scratch, unit_counts[first_out::blocks],
                    unit_firsts[first_out::blocks], unit_seconds[first_out::blocks])


@cache.cached(nogil=True)
def row_units(ctx, x3, centers, lanes, reduced_inner, block, unit_lo, unit_hi, scratch,
              unit_counts, unit_firsts, unit_seconds):
    """Block states of units unit_lo..unit_hi-1 (unit = k1 * blocks + block index) for every
    group of the unit's slice; unit_* are indexed (group * blocks + block index)."""
    # borrowed: the caller keeps every array alive (simd.borrowed)
    x3, centers, scratch = simd.borrowed(x3), simd.borrowed(centers), simd.borrowed_tuple(scratch)
    unit_counts, unit_firsts = simd.borrowed(unit_counts), simd.borrowed(unit_firsts)
    unit_seconds = simd.borrowed(unit_seconds)
    reduced_outer, columns = x3.shape[1], x3.shape[2]
    block_rows = block // reduced_inner
    lane_rows = lanes // reduced_inner
    blocks = (reduced_outer + block_rows - 1) // block_rows
    # a slab: the same number of rows for every lane row
    slab_rows = SLAB_ROWS_PER_LANE * lane_rows
    counts, rows_per_lane = scratch.row_counts, scratch.rows_per_lane
    zero = ctx.to_acc(0)
    for unit in range(unit_lo, unit_hi):
        k1 = unit // blocks
        b = unit - k1 * blocks
        for m in range(columns):
            scratch.row_centers[m] = centers[k1, m // reduced_inner]
        counts[:] = 0
        scratch.row_firsts[:] = zero
        scratch.row_seconds[:] = zero
        row_lo = b * block_rows
        row_hi = min(row_lo + block_rows, reduced_outer)
        for slab_lo in range(row_lo, row_hi, slab_rows):
            slab_length = min(slab_rows, row_hi - slab_lo)
            for r in range(lane_rows):
                rows_per_lane[r] = (slab_length - r + lane_rows - 1) // lane_rows
            stream_rows(ctx, x3[k1], slab_lo, rows_per_lane, lane_rows, scratch.row_centers,
                        counts, scratch.row_firsts, scratch.row_seconds)
            for r in range(lane_rows):
                counts[r] += rows_per_lane[r]
        lane_tree_of_groups(ctx, k1, b, blocks, lane_rows, reduced_inner, scratch, unit_counts,
                            unit_firsts, unit_seconds)


@cache.cached(nogil=True)
def row_two_pass(ctx, x3, centers, lanes, reduced_inner, block, slice_lo, slice_hi, scratch,
                 unit_counts, unit_firsts, unit_seconds):
    """Both passes of kept_outer slices slice_lo..slice_hi-1, back to back (pass 2 finds the slice
    in cache wherever it fits). ``centers`` must hold zeros for these slices (pass 1 is centered
    on them); it ends with the pass-1 means."""
    reduced_outer, columns = x3.shape[1], x3.shape[2]
    kept_inner = columns // reduced_inner
    block_rows = block // reduced_inner
    blocks = (reduced_outer + block_rows - 1) // block_rows
    for k1 in range(slice_lo, slice_hi):
        row_units(ctx, x3, centers, lanes, reduced_inner, block, k1 * blocks, (k1 + 1) * blocks,
                  scratch, unit_counts, unit_firsts, unit_seconds)
        for k2 in range(kept_inner):
            first_unit = (k1 * kept_inner + k2) * blocks
            merge_blocks(ctx, unit_counts[first_unit:], unit_firsts[first_unit:],
                         unit_seconds[first_unit:], blocks)
            centers[k1, k2] = algorithms.pass_one_mean(ctx, unit_counts[first_unit],
                                                       unit_firsts[first_unit])
        row_units(ctx, x3, centers, lanes, reduced_inner, block, k1 * blocks, (k1 + 1) * blocks,
                  scratch, unit_counts, unit_firsts, unit_seconds)
