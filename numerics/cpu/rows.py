"""The ``rows`` kernel: layouts whose groups interleave in memory (channels last:
``reduced_inner`` divides ``lanes``). Lane ``((p - p0) mod (lanes / Q)) * Q + q`` is the lane that
the topology gives element ``(p, q)``, so the two kernels agree bit for bit; a tile of adjacent
states (columns, then the next lane rows' columns) is updated side by side, row after row of one
lane (``W`` adjacent states are one vector on the vector path).

A unit is one block of rows of one ``kept_outer`` slice, for all its groups (unit = k1 * blocks +
block index).
"""
import numba
from numba.extending import overload

from .. import algorithms, cache, simd
from ..targets import INTERNAL
from ..topology import WARP_SIZE, merge_blocks
from .scratch import tile_columns, vectors_in_flight, width_of
from .streaming import merge_batch, stream_vectors

#: rows of one lane row per slab. Each column tile re-reads them from L1; they lie
#: lane_rows * row bytes apart, often a multiple of 4 KiB, which maps them all to the same L1
#: sets, so no more of them than the L1's 8 ways
SLAB_ROWS_PER_LANE = 8
#: bytes of a slab whose lane rows are no wider than one tile of in-flight vectors (at least
#: SLAB_ROWS_PER_LANE rows per lane): every row is then read once per slab, so the L1's ways do
#: not bound it, and more rows per lane load and store the tile's states fewer times (8 float32
#: channels last: 32 rows per lane). Bounded in bytes, since a tile's steps lie lane_rows rows
#: apart: from memory, 64 rows per lane of 64 float32 channels (1 MiB slabs) ran 1.6 to 2.4 times
#: slower than 8, and 128 KiB slabs of 64 float16 channels 1.3 to 1.6 times (docs/architecture.md
#: 2.4)
NARROW_SLAB_BYTES = 64 * 1024


@numba.njit(**INTERNAL)
def stream_states_singly(ctx, x2, row_lo, rows_per_lane, lane_rows, state_lo, state_hi,
                         row_centers, counts, firsts, seconds):
    """States state_lo..state_hi-1 of the slab (state r * columns + m: lane row r, column m),
    one element at a time."""
    columns = x2.shape[1]
    r = state_lo // columns
    m = state_lo - r * columns
    for _ in range(state_hi - state_lo):
        for k in range(rows_per_lane[r]):
            _, firsts[r, m], seconds[r, m] = ctx.push(counts[r] + k, row_centers[r, m],
                                                      firsts[r, m], seconds[r, m],
                                                      ctx.load(x2[row_lo + r + k * lane_rows, m]))
        m += 1
        if m == columns:
            r, m = r + 1, 0


def stream_rows(ctx, x2, row_lo, rows_per_lane, lane_rows, row_centers, counts, firsts, seconds,
                ragged):
    """The rows of one slab from ``row_lo`` into the lane rows' states (row r of the lane rows
    takes rows row_lo + r, row_lo + r + lane_rows, ...: ``rows_per_lane[r]`` of them).
    ``ragged`` is None where a row is a whole number of tiles of in-flight vectors (and batches
    are one vector per lane row: row_units): the single vectors and single states that end other
    rows are then not compiled."""
    raise NotImplementedError("stream_rows runs in compiled code only")


@overload(stream_rows, jit_options=INTERNAL)
def _stream_rows(ctx, x2, row_lo, rows_per_lane, lane_rows, row_centers, counts, firsts, seconds,
                 ragged):
    if not ctx.vectorized:
        def run(ctx, x2, row_lo, rows_per_lane, lane_rows, row_centers, counts, firsts, seconds,
                ragged):
            stream_states_singly(ctx, x2, row_lo, rows_per_lane, lane_rows, 0,
                                 lane_rows * x2.shape[1], row_centers, counts, firsts, seconds)
        return run
    in_flight = vectors_in_flight(ctx)
    width = width_of(ctx)

    def run(ctx, x2, row_lo, rows_per_lane, lane_rows, row_centers, counts, firsts, seconds,
            ragged):
        # lane rows that hold the same counts are one flat row of states, (lane row, column) in
        # order, and so are their elements at each step (rows row_lo + r of x2 follow each other
        # in memory): tiles of in-flight vectors, then single vectors, then single states run
        # along it, across lane rows where a row is narrower than a tile or not a whole number of
        # vectors (channels last with few channels). Every state takes the same pushes in the
        # same order as one lane row at a time; the centers are the states' own (row_centers)
        columns = x2.shape[1]
        tile = in_flight * width
        stride, start = lane_rows * columns, row_lo * columns
        r = 0
        while r < lane_rows:
            end = r + 1
            while (end < lane_rows and counts[end] == counts[r]
                   and rows_per_lane[end] == rows_per_lane[r]):
                end += 1
            lo, hi = r * columns, end * columns
            tiled, vectorized = hi - (hi - lo) % tile, hi - (hi - lo) % width
            for c0 in range(lo, tiled, tile):
                stream_vectors(ctx, in_flight, x2, start + c0, stride, rows_per_lane[r], counts[r],
                               row_centers, firsts, seconds, c0)
            # ``ragged`` None: numba removes the branch before it types the function
            if ragged is not None:
                for c0 in range(tiled, vectorized, width):
                    stream_vectors(ctx, 1, x2, start + c0, stride, rows_per_lane[r], counts[r],
                                   row_centers, firsts, seconds, c0)
                stream_states_singly(ctx, x2, row_lo, rows_per_lane, lane_rows, vectorized, hi,
                                     row_centers, counts, firsts, seconds)
            r = end
    return run


@numba.njit(**INTERNAL)
def gather_groups_singly(k2, members, lane_rows, reduced_inner, scratch):
    """Lane t = r * Q + q of group k2 + w, element (r, (k2 + w) * Q + q) of the lane states, into
    element (t, w) of the batch, one state at a time."""
    for r in range(lane_rows):
        for q in range(reduced_inner):
            t = r * reduced_inner + q
            for w in range(members):
                column = (k2 + w) * reduced_inner + q
                scratch.batch_firsts[t, w] = scratch.row_firsts[r, column]
                scratch.batch_seconds[t, w] = scratch.row_seconds[r, column]


def gather_groups(ctx, k2, members, lane_rows, reduced_inner, scratch, ragged):
    """The lane states of groups k2..k2+members-1 into the batch: on the vector path, one vector
    per lane row where each group is one column and the batch is whole, one state at a time
    otherwise (gather_groups_singly), which ``ragged`` None says never happens."""
    raise NotImplementedError("gather_groups runs in compiled code only")


@overload(gather_groups, jit_options=INTERNAL)
def _gather_groups(ctx, k2, members, lane_rows, reduced_inner, scratch, ragged):
    if not ctx.vectorized:
        return (lambda ctx, k2, members, lane_rows, reduced_inner, scratch, ragged:
                gather_groups_singly(k2, members, lane_rows, reduced_inner, scratch))
    width = width_of(ctx)

    def gather(ctx, k2, members, lane_rows, reduced_inner, scratch, ragged):
        # ``ragged`` None: numba removes the branch before it types the function
        if ragged is not None and (reduced_inner != 1 or members != width):
            gather_groups_singly(k2, members, lane_rows, reduced_inner, scratch)
            return
        # one column per group: a lane row's states of the batch are one vector
        columns = scratch.row_firsts.shape[1]
        for r in range(lane_rows):
            simd.store(scratch.batch_firsts, r * width,
                       simd.load(scratch.row_firsts, r * columns + k2, width))
            simd.store(scratch.batch_seconds, r * width,
                       simd.load(scratch.row_seconds, r * columns + k2, width))
    return gather


@numba.njit(**INTERNAL)
def lane_tree_of_groups(ctx, k1, b, blocks, lane_rows, reduced_inner, ragged, scratch,
                        unit_counts, unit_firsts, unit_seconds):
    """The lane tree of every group of the slice, ``width`` groups at once: lane
    t = r * Q + q of group k2 is element (r, k2 * Q + q) of the lane states."""
    kept_inner = scratch.row_centers.shape[1] // reduced_inner
    width = width_of(ctx)
    for r in range(lane_rows):
        scratch.lane_counts[r * reduced_inner:(r + 1) * reduced_inner] = scratch.row_counts[r]
    for k2 in range(0, kept_inner, width):
        members = simd.smaller(width, kept_inner - k2)
        gather_groups(ctx, k2, members, lane_rows, reduced_inner, scratch, ragged)
        first_out = (k1 * kept_inner + k2) * blocks + b
        merge_batch(ctx, scratch.lane_counts, scratch.batch_firsts, scratch.batch_seconds,
                    members, scratch, unit_counts[first_out::blocks],
                    unit_firsts[first_out::blocks], unit_seconds[first_out::blocks], WARP_SIZE)


@cache.cached(nogil=True)
def row_units(ctx, x3, centers, lanes, reduced_inner, block, ragged, unit_lo, unit_hi, scratch,
              unit_counts, unit_firsts, unit_seconds):
    """Block states of units unit_lo..unit_hi-1 (unit = k1 * blocks + block index) for every
    group of the unit's slice; unit_* are indexed (group * blocks + block index).
    ``ragged``, True or None: stream_rows and gather_groups."""
    # borrowed: the caller keeps every array alive (simd.borrowed)
    x3, centers, scratch = simd.borrowed(x3), simd.borrowed(centers), simd.borrowed_tuple(scratch)
    unit_counts, unit_firsts = simd.borrowed(unit_counts), simd.borrowed(unit_firsts)
    unit_seconds = simd.borrowed(unit_seconds)
    reduced_outer, columns = x3.shape[1], x3.shape[2]
    block_rows = block // reduced_inner
    lane_rows = lanes // reduced_inner
    blocks = (reduced_outer + block_rows - 1) // block_rows
    # a slab: the same number of rows for every lane row
    rows_per_lane_of_slab = SLAB_ROWS_PER_LANE
    if columns <= tile_columns(ctx):
        slab_bytes_per_row = lane_rows * columns * x3.itemsize
        rows_per_lane_of_slab = simd.larger(SLAB_ROWS_PER_LANE,
                                            NARROW_SLAB_BYTES // slab_bytes_per_row)
    slab_rows = lane_rows * rows_per_lane_of_slab
    counts, rows_per_lane = scratch.row_counts, scratch.rows_per_lane
    zero = ctx.to_acc(0)
    for unit in range(unit_lo, unit_hi):
        k1 = unit // blocks
        b = unit - k1 * blocks
        # every lane row's copy of the columns' centers (stream_rows reads them like the states)
        for k2 in range(columns // reduced_inner):
            for q in range(reduced_inner):
                scratch.row_centers[0, k2 * reduced_inner + q] = centers[k1, k2]
        for r in range(1, lane_rows):
            for m in range(columns):
                scratch.row_centers[r, m] = scratch.row_centers[0, m]
        counts[:] = 0
        scratch.row_firsts[:] = zero
        scratch.row_seconds[:] = zero
        row_lo = b * block_rows
        row_hi = simd.smaller(row_lo + block_rows, reduced_outer)
        for slab_lo in range(row_lo, row_hi, slab_rows):
            slab_length = simd.smaller(slab_rows, row_hi - slab_lo)
            for r in range(lane_rows):
                rows_per_lane[r] = (slab_length - r + lane_rows - 1) // lane_rows
            stream_rows(ctx, x3[k1], slab_lo, rows_per_lane, lane_rows, scratch.row_centers,
                        counts, scratch.row_firsts, scratch.row_seconds, ragged)
            for r in range(lane_rows):
                counts[r] += rows_per_lane[r]
        lane_tree_of_groups(ctx, k1, b, blocks, lane_rows, reduced_inner, ragged, scratch,
                            unit_counts, unit_firsts, unit_seconds)


@cache.cached(nogil=True)
def row_two_pass(ctx, x3, centers, lanes, reduced_inner, block, ragged, slice_lo, slice_hi,
                 scratch, unit_counts, unit_firsts, unit_seconds):
    """Both passes of kept_outer slices slice_lo..slice_hi-1, back to back (pass 2 finds the slice
    in cache wherever it fits). ``centers`` must hold zeros for these slices (pass 1 is centered
    on them); it ends with the pass-1 means."""
    reduced_outer, columns = x3.shape[1], x3.shape[2]
    kept_inner = columns // reduced_inner
    block_rows = block // reduced_inner
    blocks = (reduced_outer + block_rows - 1) // block_rows
    for k1 in range(slice_lo, slice_hi):
        row_units(ctx, x3, centers, lanes, reduced_inner, block, ragged, k1 * blocks,
                  (k1 + 1) * blocks, scratch, unit_counts, unit_firsts, unit_seconds)
        for k2 in range(kept_inner):
            first_unit = (k1 * kept_inner + k2) * blocks
            if blocks > 1:  # one block: nothing to merge, and the call costs 25-40 ns a group
                merge_blocks(ctx, unit_counts[first_unit:], unit_firsts[first_unit:],
                             unit_seconds[first_unit:], blocks)
            centers[k1, k2] = algorithms.pass_one_mean(ctx, unit_counts[first_unit],
                                                       unit_firsts[first_unit])
        row_units(ctx, x3, centers, lanes, reduced_inner, block, ragged, k1 * blocks,
                  (k1 + 1) * blocks, scratch, unit_counts, unit_firsts, unit_seconds)
