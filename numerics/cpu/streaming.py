"""What both CPU kernels share: the streaming loop, vector loads, and the lane tree of a batch of
units or groups.

Every function here takes the CpuContext (numerics.targets) first, and the implementations are
chosen from its numba type with ``numba.extending.overload``: a function compiled for one
specialization is named after it, and the vector width and the vectors in flight are compile-time
constants of the code it runs.

Every pass is the family's push around each group's center: the naive rule and pass one of the
two-pass rules get zero centers, and ``x - 0`` is exactly ``x`` (signed zeros, infinities and NaN
included), so their sums are bit for bit the uncentered ones. One pass per specialization, not one
per pass kind: each would be a kernel compiled anew (docs/architecture.md 2.7).
"""
from numba import types
from numba.extending import overload

from .. import precision, simd
from ..targets import INTERNAL
from ..topology import merge_lanes
from .scratch import vector_width, width_of


def load_vector(ctx, data, j):
    """Elements j .. j + width - 1 of ``data`` (flat) as a Vector of the compute type."""
    raise NotImplementedError("load_vector runs in compiled code only")


@overload(load_vector, jit_options=INTERNAL)
def _load_vector(ctx, data, j):
    width = width_of(ctx)
    compute_type = precision.COMPUTE_DTYPES[ctx.acc_format].type
    input_format = ctx.input_format
    if input_format in ("float16", "bfloat16"):
        return lambda ctx, data, j: simd.convert(simd.decode(simd.load(data, j, width),
                                                             input_format), compute_type)
    return lambda ctx, data, j: simd.convert(simd.load(data, j, width), compute_type)


def stream_vectors(ctx, vectors, data, start, stride, steps, count, center, firsts, seconds,
                   base):
    """The one streaming loop of both kernels: ``vectors`` adjacent vectors of lane states
    (``firsts``/``seconds`` from ``base``, each holding ``count`` elements on entry; a
    compile-time count, so that the states live in registers) take, at step k = 0..steps-1, the
    elements ``data[start + k * stride ..]`` (flat, no views: a view in the loop costs a call for
    its reference count, and a call spills every vector register). ``center`` is a scalar, or an
    array of centers indexed like the states."""
    raise NotImplementedError("stream_vectors runs in compiled code only")


@overload(stream_vectors, prefer_literal=True, jit_options=INTERNAL)
def _stream_vectors(ctx, vectors, data, start, stride, steps, count, center, firsts, seconds,
                    base):
    if not isinstance(vectors, types.IntegerLiteral):
        return None
    count_of_vectors = vectors.literal_value
    width = width_of(ctx)
    compute_type = precision.COMPUTE_DTYPES[ctx.acc_format].type

    def run(ctx, vectors, data, start, stride, steps, count, center, firsts, seconds, base):
        centers = simd.stack_vectors(count_of_vectors, width, compute_type)
        first = simd.stack_vectors(count_of_vectors, width, compute_type)
        second = simd.stack_vectors(count_of_vectors, width, compute_type)
        for v in range(count_of_vectors):
            centers[v] = simd.lanes_of(center, base + v * width, width)
            first[v] = simd.load(firsts, base + v * width, width)
            second[v] = simd.load(seconds, base + v * width, width)
        for k in range(steps):
            offset = start + k * stride
            for v in range(count_of_vectors):
                _, first[v], second[v] = ctx.push(count + k, centers[v], first[v], second[v],
                                                  load_vector(ctx, data, offset + v * width))
        for v in range(count_of_vectors):
            simd.store(firsts, base + v * width, first[v])
            simd.store(seconds, base + v * width, second[v])
    return run


def merge_batch(ctx, counts, firsts, seconds, members, scratch, out_counts, out_firsts,
                out_seconds, warp):
    """The lane tree of ``members`` units or groups at once: ``firsts[t, w]`` is lane t of member
    w, and every member holds the same counts (``counts[t]``); member w's state goes to
    ``out_*[w]``. ``warp``: the lanes of one warp in these rows (topology.merge_lanes)."""
    raise NotImplementedError("merge_batch runs in compiled code only")


@overload(merge_batch, jit_options=INTERNAL)
def _merge_batch(ctx, counts, firsts, seconds, members, scratch, out_counts, out_firsts,
                 out_seconds, warp):
    if ctx.vectorized:
        width = vector_width(ctx.acc_format)

        def merge(ctx, counts, firsts, seconds, members, scratch, out_counts, out_firsts,
                  out_seconds, warp):
            # the topology's lane tree runs on the rows of firsts/seconds as vectors, in place
            lanes = counts.shape[0]
            lane_counts = scratch.merge_counts
            for t in range(lanes):
                # not ``lane_counts[:] = counts``: see segments.segment_units
                lane_counts[t] = counts[t]
            first = simd.as_vectors(firsts, width)
            second = simd.as_vectors(seconds, width)
            merge_lanes(ctx, lane_counts, first, second, lanes, warp)
            for w in range(members):
                out_counts[w] = lane_counts[0]
                out_firsts[w] = simd.extract(first[0], w)
                out_seconds[w] = simd.extract(second[0], w)
        return merge

    def merge(ctx, counts, firsts, seconds, members, scratch, out_counts, out_firsts,
              out_seconds, warp):
        lanes = counts.shape[0]
        lane_counts, lane_firsts, lane_seconds = (scratch.merge_counts, scratch.merge_firsts,
                                                  scratch.merge_seconds)
        for w in range(members):
            for t in range(lanes):
                lane_counts[t] = counts[t]
                lane_firsts[t] = firsts[t, w]
                lane_seconds[t] = seconds[t, w]
            merge_lanes(ctx, lane_counts, lane_firsts, lane_seconds, lanes, warp)
            out_counts[w] = lane_counts[0]
            out_firsts[w] = lane_firsts[0]
            out_seconds[w] = lane_seconds[0]
    return merge

