"""The ``segments`` kernel: any layout. A group is a sequence of contiguous runs of
``reduced_inner`` elements; inside each run, full chunks of ``lanes`` elements update the lanes
side by side (``W`` adjacent lanes of a chunk are one vector on the vector path).

A unit is one block of one group (unit = group * blocks + block index). A batch of consecutive
units whose lanes hold the same counts runs the lane tree together, the ``W`` units side by side
in a vector (numerics.cpu.streaming.merge_batch). Two layouts of the same order spare short
runs and small groups their per-run and per-block costs: short runs that end inside chunks are
gathered into whole chunks (block_lanes), and groups of a few chunks stream side by side, one per
vector lane, straight into the batch (small_batch).
"""
import numba
from numba.extending import overload

from .. import algorithms, cache, simd
from ..targets import INTERNAL
from ..topology import WARP_SIZE, merge_blocks, merge_lanes
from .scratch import vectors_in_flight, width_of
from .streaming import load_vector, merge_batch, stream_vectors

#: elements per vector copy of gather_elements
COPY_WIDTH = 8
#: two-pass rules: groups whose two passes run back to back, about this many input bytes at a
#: time (a share of the core's L2; larger groups go one by one, pass 2 then comes from L3)
FUSED_BYTES = 256 * 1024


def stream_chunks(ctx, row, j, chunks, count, center, lanes, firsts, seconds, ragged):
    """``chunks`` full chunks of ``lanes`` elements from ``row[j]`` into the lane states. On the
    vector path, a sweep takes the vectors in flight side by side; ``ragged`` is None where
    ``lanes`` is a whole number of sweeps (the default topology's 64 lanes always are: block_lanes
    says when), and the single vectors of the others are then not compiled."""
    raise NotImplementedError("stream_chunks runs in compiled code only")


@overload(stream_chunks, jit_options=INTERNAL)
def _stream_chunks(ctx, row, j, chunks, count, center, lanes, firsts, seconds, ragged):
    if ctx.vectorized:
        in_flight = vectors_in_flight(ctx)
        width = width_of(ctx)

        def run(ctx, row, j, chunks, count, center, lanes, firsts, seconds, ragged):
            # sweep by sweep (the vectors in flight, whose states fit in registers) over all the
            # chunks of the run; the run stays in L1/L2 between sweeps
            wide = in_flight * width
            # ``ragged`` None: numba removes the branch before it types the function
            if ragged is not None and lanes % wide != 0:
                for base in range(0, lanes, width):
                    stream_vectors(ctx, 1, row, j + base, lanes, chunks, count, center, firsts,
                                   seconds, base)
            else:
                for base in range(0, lanes, wide):
                    stream_vectors(ctx, in_flight, row, j + base, lanes, chunks, count, center,
                                   firsts, seconds, base)
        return run

    def run(ctx, row, j, chunks, count, center, lanes, firsts, seconds, ragged):
        for chunk in range(chunks):
            offset = j + chunk * lanes
            for lane in range(lanes):
                _, firsts[lane], seconds[lane] = ctx.push(count + chunk, center, firsts[lane],
                                                          seconds[lane],
                                                          ctx.load(row[offset + lane]))
    return run


def push_lanes(ctx, row, j, stop, lane, center, counts, firsts, seconds):
    """Elements row[j:stop] into lanes lane, lane + 1, ... (no further than the last lane): a
    part of a chunk, at the start or the end of a run. Lanes from ``lane`` on hold the same count
    (a block fills its lanes in turn from lane 0), so each whole vector of them is one push."""
    raise NotImplementedError("push_lanes runs in compiled code only")


@overload(push_lanes, jit_options=INTERNAL)
def _push_lanes(ctx, row, j, stop, lane, center, counts, firsts, seconds):
    if not ctx.vectorized:
        def run(ctx, row, j, stop, lane, center, counts, firsts, seconds):
            for t in range(stop - j):
                counts[lane + t], firsts[lane + t], seconds[lane + t] = ctx.push(
                    counts[lane + t], center, firsts[lane + t], seconds[lane + t],
                    ctx.load(row[j + t]))
        return run
    width = width_of(ctx)

    def run(ctx, row, j, stop, lane, center, counts, firsts, seconds):
        # whole vectors, then single lanes, in this function: a call per run costs more than a
        # short run's pushes. The center as a vector, as stream_vectors passes it: one compiled
        # push for both (the same subtraction in every lane)
        center_vector = simd.splat(center, width)
        while j + width <= stop:
            first, second = simd.load(firsts, lane, width), simd.load(seconds, lane, width)
            _, first, second = ctx.push(counts[lane], center_vector, first, second,
                                        load_vector(ctx, row, j))
            simd.store(firsts, lane, first)
            simd.store(seconds, lane, second)
            for t in range(lane, lane + width):
                counts[t] += 1
            j, lane = j + width, lane + width
        for t in range(stop - j):
            counts[lane + t], firsts[lane + t], seconds[lane + t] = ctx.push(
                counts[lane + t], center, firsts[lane + t], seconds[lane + t],
                ctx.load(row[j + t]))
    return run


@numba.njit(**INTERNAL)
def gather_elements(x4, k1, k2, i, length, gathered):
    """Elements i .. i + length - 1 of group (k1, k2), across its runs, into gathered[:length]."""
    reduced_inner = x4.shape[3]
    p = i // reduced_inner
    q = i - p * reduced_inner
    t = 0
    while t < length:
        take = simd.smaller(reduced_inner - q, length - t)
        row = x4[k1, p, k2]
        s = 0
        while s + COPY_WIDTH <= take:
            simd.store(gathered, t + s, simd.load(row, q + s, COPY_WIDTH))
            s += COPY_WIDTH
        for s in range(s, take):
            gathered[t + s] = row[q + s]
        t += take
        p += 1
        q = 0


@numba.njit(**INTERNAL)
def block_lanes(ctx, x4, k1, k2, start, stop, center, lanes, counts, firsts, seconds, gathered,
                ragged):
    """The lane states of elements start..stop-1 of group (k1, k2). ``ragged`` is None where no
    run or block of the geometry starts or ends inside a chunk of lanes once gathered and the
    lanes are whole sweeps of vectors (numerics.cpu.Geometry): the parts of chunks (push_lanes)
    and of sweeps (stream_chunks) are then not compiled. Where the caller gives a
    ``gathered`` buffer (whole chunks of lanes: short runs that end inside chunks, such as
    BatchNorm's runs of 49 and 196 elements over 7x7 and 14x14 planes against 64 lanes), a block
    of several runs is first copied into it, its length at a time: each lane then takes the same
    elements in the same order, but as whole chunks, where every run would have begun and ended
    with parts of chunks, pushed partly lane by lane. Longer runs are read in place: the copy then
    costs more than the parts of chunks at their ends (docs/architecture.md 2.4)."""
    reduced_inner = x4.shape[3]
    zero = ctx.to_acc(0)
    for lane in range(lanes):
        counts[lane] = 0
        firsts[lane] = zero
        seconds[lane] = zero
    i = start
    while i < stop:
        # ``gathered`` None: numba removes this branch before it types the function
        if gathered is not None and stop - start > reduced_inner:
            j, end = 0, simd.smaller(stop - i, gathered.shape[0])
            gather_elements(x4, k1, k2, i, end, gathered)
            row = gathered
        else:
            p = i // reduced_inner
            j = i - p * reduced_inner
            end = j + simd.smaller(reduced_inner - j, stop - i)
            row = x4[k1, p, k2]
        run_start = j
        lane = (i - start) % lanes
        # ``ragged`` None: numba removes both branches before it types the function
        if ragged is not None and lane != 0:
            # the run starts inside a chunk: its first elements complete it
            head = simd.smaller(end - j, lanes - lane)
            push_lanes(ctx, row, j, j + head, lane, center, counts, firsts, seconds)
            j += head
        chunks = (end - j) // lanes
        if chunks > 0:
            # lane 0 is next: every lane holds the same count
            stream_chunks(ctx, row, j, chunks, counts[0], center, lanes, firsts, seconds,
                          ragged)
            for lane in range(lanes):
                counts[lane] += chunks
            j += chunks * lanes
        if ragged is not None and j < end:
            push_lanes(ctx, row, j, end, 0, center, counts, firsts, seconds)
        i = i + end - run_start


def fold_vectors(ctx, counts, firsts, seconds, lanes, warp_counts):
    """The first levels of the lane tree of one unit whose lanes hold equal counts, in place, on
    the vector path: inside a warp, the halving tree's levels with offsets >= width pair lane
    v*width + i with lane (v + offset/width)*width + i, which is the same halving tree over the
    warp's vectors of lanes. Returns the count of each lane that still carries a state (lanes
    base..base+width-1 of every warp), or -1 when nothing was folded."""
    raise NotImplementedError("fold_vectors runs in compiled code only")


@overload(fold_vectors, jit_options=INTERNAL)
def _fold_vectors(ctx, counts, firsts, seconds, lanes, warp_counts):
    if not ctx.vectorized:
        return lambda ctx, counts, firsts, seconds, lanes, warp_counts: -1
    width = width_of(ctx)

    def fold(ctx, counts, firsts, seconds, lanes, warp_counts):
        warp_lanes = simd.smaller(lanes, WARP_SIZE)
        warp_vectors = warp_lanes // width
        if warp_vectors == 1 or counts[0] != counts[lanes - 1]:
            return -1
        for base in range(0, lanes, warp_lanes):
            warp_counts[:warp_vectors] = counts[0]
            merge_lanes(ctx, warp_counts, simd.as_vectors(firsts[base:base + warp_lanes], width),
                        simd.as_vectors(seconds[base:base + warp_lanes], width), warp_vectors,
                        WARP_SIZE)
        return warp_counts[0]
    return fold


@numba.njit(**INTERNAL)
def gather_member(folded, w, lanes, width, member_firsts, member_seconds, batch_firsts,
                  batch_seconds):
    """Lane states of member ``w`` into column w of the batch: where the unit was folded
    (fold_vectors), only the lanes that still carry a state, warp after warp in the batch's first
    rows (lane base + i of the warp at base into row base / warp lanes * width + i), every lane
    in its own row otherwise."""
    warp_lanes = simd.smaller(lanes, WARP_SIZE)
    if folded >= 0:
        row = 0
        for base in range(0, lanes, warp_lanes):
            for t in range(base, base + width):
                batch_firsts[row, w] = member_firsts[w, t]
                batch_seconds[row, w] = member_seconds[w, t]
                row += 1
    else:
        for t in range(lanes):
            batch_firsts[t, w] = member_firsts[w, t]
            batch_seconds[t, w] = member_seconds[w, t]


def small_batch(ctx, x4, centers, k1, k2, members, lanes, scratch):
    """The lane states of ``members`` whole groups from (k1, k2) on, each in one block of a few
    chunks of lanes, straight into the batch (lane t of group w at scratch.batch_*[t, w]);
    returns the (k1, k2) of the group after them. The groups' elements are first copied side by
    side (element i of group w at scratch.transposed[i * width + w]), so that vector lane w
    streams group w. Each lane takes the same elements in the same order as in block_lanes; what
    a small group no longer pays is what a large one pays per block: zeroing its lanes and moving
    their states across into the batch one by one (docs/architecture.md 2.4)."""
    raise NotImplementedError("small_batch runs in compiled code only")


@overload(small_batch, jit_options=INTERNAL)
def _small_batch(ctx, x4, centers, k1, k2, members, lanes, scratch):
    if not ctx.vectorized:
        # the scalar path gets no transposed buffer (numerics.cpu.Geometry): never called
        return lambda ctx, x4, centers, k1, k2, members, lanes, scratch: (k1, k2)
    width = width_of(ctx)

    def run(ctx, x4, centers, k1, k2, members, lanes, scratch):
        reduced_outer, kept_inner, reduced_inner = x4.shape[1], x4.shape[2], x4.shape[3]
        size = reduced_outer * reduced_inner
        transposed, member_centers = scratch.transposed, scratch.member_centers
        for w in range(width):
            # a vector lane of no group repeats group 0 (its states are never read)
            group_k1, group_k2 = (k1, k2) if w < members else (0, 0)
            member_centers[w] = centers[group_k1, group_k2]
            for p in range(reduced_outer):
                row = x4[group_k1, p, group_k2]
                for q in range(reduced_inner):
                    transposed[(p * reduced_inner + q) * width + w] = row[q]
            if w < members:
                k2 += 1
                if k2 == kept_inner:
                    k2 = 0
                    k1 += 1
        center = simd.load(member_centers, 0, width)
        zero = simd.splat(ctx.to_acc(0), width)
        firsts = simd.as_vectors(scratch.batch_firsts, width)
        seconds = simd.as_vectors(scratch.batch_seconds, width)
        # a lane's few elements in turn: at most SMALL_GROUP_CHUNKS dependent pushes
        for t in range(lanes):
            count, first, second = 0, zero, zero
            for i in range(t, size, lanes):
                count, first, second = ctx.push(count, center, first, second,
                                                load_vector(ctx, transposed, i * width))
            scratch.batch_counts[t] = count
            firsts[t] = first
            seconds[t] = second
        return k1, k2
    return run


@cache.cached(nogil=True)
def segment_units(ctx, x4, centers, lanes, block, small_groups, block_by_block, ragged, unit_lo,
                  unit_hi, scratch, unit_counts, unit_firsts, unit_seconds):
    """Block states of units unit_lo..unit_hi-1 (unit = group * blocks + block index), their lane
    states computed with groups of one small block each side by side in the vector lanes
    (``small_groups`` True, ``block_by_block`` None) or block by block (the other way round;
    ``ragged``, True or None: block_lanes)."""
    # borrowed: the caller keeps every array alive (simd.borrowed)
    x4, centers, scratch = simd.borrowed(x4), simd.borrowed(centers), simd.borrowed_tuple(scratch)
    unit_counts, unit_firsts = simd.borrowed(unit_counts), simd.borrowed(unit_firsts)
    unit_seconds = simd.borrowed(unit_seconds)
    width = width_of(ctx)
    kept_inner = x4.shape[2]
    size = x4.shape[1] * x4.shape[3]
    blocks = (size + block - 1) // block
    last_length = size - (blocks - 1) * block
    # unit = (k1 * kept_inner + k2) * blocks + b, advanced without divisions
    group = unit_lo // blocks
    b = unit_lo - group * blocks
    k1 = group // kept_inner
    k2 = group - k1 * kept_inner
    unit = unit_lo
    while unit < unit_hi:
        # a batch: consecutive units of one length, whose lanes hold the same counts (a group's
        # last block may be shorter)
        length = last_length if b == blocks - 1 else block
        if blocks == 1:
            members = simd.smaller(width, unit_hi - unit)
        elif b < blocks - 1:
            members = simd.smaller(width, simd.smaller(unit_hi - unit, blocks - 1 - b))
        else:
            members = 1
        batch_lanes, warp = lanes, WARP_SIZE
        # a compile-time choice: numba removes the branch on a None argument before it types the
        # function, so a kernel compiles only the path its geometry takes (docs/architecture.md
        # 2.7)
        if small_groups is not None:
            k1, k2 = small_batch(ctx, x4, centers, k1, k2, members, lanes, scratch)
        if block_by_block is not None:
            folded = -1
            for w in range(members):
                start = b * block
                block_lanes(ctx, x4, k1, k2, start, start + length, centers[k1, k2], lanes,
                            scratch.member_counts[w], scratch.member_firsts[w],
                            scratch.member_seconds[w], scratch.gathered, ragged)
                b += 1
                if b == blocks:
                    b = 0
                    k2 += 1
                    if k2 == kept_inner:
                        k2 = 0
                        k1 += 1
                folded = fold_vectors(ctx, scratch.member_counts[w], scratch.member_firsts[w],
                                      scratch.member_seconds[w], lanes, scratch.warp_counts)
                gather_member(folded, w, lanes, width, scratch.member_firsts,
                              scratch.member_seconds, scratch.batch_firsts,
                              scratch.batch_seconds)
            if folded >= 0:
                # a folded batch's tree is the rest of each warp's, on its first ``width`` lanes,
                # then across the warps (topology.merge_lanes with a warp of ``width`` lanes)
                batch_lanes, warp = lanes // simd.smaller(lanes, WARP_SIZE) * width, width
            for t in range(batch_lanes):
                # a loop, not an array assignment: that would compile numba's shape-mismatch
                # error message, seconds of compilation (docs/architecture.md section 2.7)
                scratch.batch_counts[t] = folded if folded >= 0 else scratch.member_counts[0, t]
        merge_batch(ctx, scratch.batch_counts[:batch_lanes], scratch.batch_firsts[:batch_lanes],
                    scratch.batch_seconds[:batch_lanes], members, scratch, unit_counts[unit:],
                    unit_firsts[unit:], unit_seconds[unit:], warp)
        unit += members


@cache.cached(nogil=True)
def segment_two_pass(ctx, x4, centers, lanes, block, small_groups, block_by_block, ragged,
                     group_lo, group_hi, scratch, unit_counts, unit_firsts, unit_seconds):
    """Both passes of groups group_lo..group_hi-1, a few groups at a time (about FUSED_BYTES of
    input): pass 2 re-reads them right after pass 1, from cache wherever they fit. ``centers``
    must hold zeros for these groups (pass 1 is centered on them); it ends with the pass-1
    means."""
    kept_inner = x4.shape[2]
    size = x4.shape[1] * x4.shape[3]
    blocks = (size + block - 1) // block
    step = simd.larger(1, FUSED_BYTES // (size * x4.itemsize))
    for chunk_lo in range(group_lo, group_hi, step):
        chunk_hi = simd.smaller(chunk_lo + step, group_hi)
        segment_units(ctx, x4, centers, lanes, block, small_groups, block_by_block, ragged,
                      chunk_lo * blocks, chunk_hi * blocks, scratch, unit_counts, unit_firsts,
                      unit_seconds)
        for group in range(chunk_lo, chunk_hi):
            k1 = group // kept_inner
            k2 = group - k1 * kept_inner
            first_unit = group * blocks
            if blocks > 1:  # one block: nothing to merge, and the call costs 25-40 ns a group
                merge_blocks(ctx, unit_counts[first_unit:], unit_firsts[first_unit:],
                             unit_seconds[first_unit:], blocks)
            centers[k1, k2] = algorithms.pass_one_mean(ctx, unit_counts[first_unit],
                                                       unit_firsts[first_unit])
        segment_units(ctx, x4, centers, lanes, block, small_groups, block_by_block, ragged,
                      chunk_lo * blocks, chunk_hi * blocks, scratch, unit_counts, unit_firsts,
                      unit_seconds)
