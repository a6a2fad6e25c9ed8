"""The vector geometry of the CPU kernels and each thread's work arrays (``Scratch``)."""
from collections import namedtuple
from math import prod

import numpy as np
from numba import types
from numba.extending import lower_builtin, type_callable

from .. import algorithms, precision
from ..targets import CpuContextType

#: bytes of a SIMD register: 256-bit AVX2 (an AVX-512 machine runs the same code on its ymm halves)
REGISTER_BYTES = 32

#: one thread's work arrays: the lane states of a batch of units (member_*: unit by unit;
#: batch_*: lane by lane, for the vectorized lane tree; warp_counts: a unit's vectors of lanes),
#: one lane tree's states (merge_*) and the rows kernel's lane rows (row_*), its per-column
#: centers and per-lane counts
Scratch = namedtuple("Scratch", ["member_counts", "member_firsts", "member_seconds",
                                 "batch_counts", "batch_firsts", "batch_seconds", "warp_counts",
                                 "merge_counts", "merge_firsts", "merge_seconds", "row_counts",
                                 "rows_per_lane", "row_firsts", "row_seconds", "row_centers",
                                 "lane_counts", "gathered", "transposed", "member_centers"])

#: chunks of lanes the segments kernel gathers at a time from runs that end inside chunks
GATHERED_CHUNKS = 64
#: runs that end inside chunks are gathered when shorter than this many chunks of lanes
GATHERED_RUN_CHUNKS = 16
#: groups of at most this many chunks of lanes in one block run side by side in the vector lanes
#: of the segments kernel (segments.small_batch)
SMALL_GROUP_CHUNKS = 4


def vector_width(acc_format):
    return REGISTER_BYTES // precision.COMPUTE_DTYPES[acc_format].itemsize


def is_simd(acc_format, lanes):
    """Whether the vector path runs: accumulators the hardware has (16-bit ones are emulated per
    operation) and at least one full vector of lanes."""
    return acc_format in ("float32", "float64") and lanes % vector_width(acc_format) == 0


def vectors_in_flight(ctx):
    """How many independent vector states one inner loop of a CpuContext (type) updates: enough to
    cover the latency of a push (Welford's chain is subtract, divide, add: about 17 cycles) and to
    make the sweeps over a block few (a centered sum's chain is one add, but every sweep re-reads
    the block), few enough that the states (two per vector) stay near the 16 AVX2 registers
    (docs/architecture.md trap 8). Float64 centered sums keep 4: with 8 the rows kernel, whose
    centers are a vector per column, ran 5-20 % slower in cache; Welford's and Chan's pushes,
    whose divides have the long chains, ran 5-37 % faster with 8 (docs/architecture.md
    section 9)."""
    if ctx.acc_format == "float32" or ctx.family != algorithms.CENTERED_SUMS:
        return 8
    return 4


def width_of(ctx):
    """Lanes per vector of a CpuContext or its type: 1 on the scalar path."""
    return vector_width(ctx.acc_format) if ctx.vectorized else 1


def tile_columns(ctx):
    """Lanes of one tile of in-flight vectors of a CpuContext or its type."""
    return vectors_in_flight(ctx) * width_of(ctx)


def _compile_time_constant(function):
    """``function(ctx)`` callable from compiled code, where it is a constant of the context's
    type, typed as a literal (simd.load takes its width as one). Typed and lowered in the caller
    (numba's low-level extension API), not an overload, which would compile a function of its
    own (docs/architecture.md 2.7)."""
    @type_callable(function)
    def _type(context):
        def typer(ctx):
            if isinstance(ctx, CpuContextType):
                return types.literal(function(ctx))
        return typer

    @lower_builtin(function, CpuContextType)
    def _lower(context, builder, signature, arguments):
        return context.get_constant(types.intp, function(signature.args[0]))


_compile_time_constant(width_of)
_compile_time_constant(tile_columns)


def aligned_zeros(shape, dtype, alignment=64):
    """Zeros whose data starts on an ``alignment``-byte boundary: simd.as_vectors reads them as
    vectors with aligned loads."""
    dtype = np.dtype(dtype)
    count = prod(shape)
    raw = np.zeros(count * dtype.itemsize + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape)


def new_scratch(lanes, acc_format, input_dtype, gathered_length=0, transposed_length=0,
                lane_rows=1, columns=1):
    """One thread's Scratch (allocated by the caller, who keeps it alive: the kernels borrow it)
    for kernels that read ``input_dtype``."""
    width = vector_width(acc_format) if is_simd(acc_format, lanes) else 1
    compute_type = precision.COMPUTE_DTYPES[acc_format]
    lane_vectors = (width, lanes)
    return Scratch(
        member_counts=np.empty(lane_vectors, np.int64),
        member_firsts=aligned_zeros(lane_vectors, compute_type),
        member_seconds=aligned_zeros(lane_vectors, compute_type),
        batch_counts=np.zeros(lanes, np.int64),
        batch_firsts=aligned_zeros((lanes, width), compute_type),
        batch_seconds=aligned_zeros((lanes, width), compute_type),
        warp_counts=np.empty(lanes, np.int64),
        merge_counts=np.empty(lanes, np.int64),
        merge_firsts=np.empty(lanes, compute_type),
        merge_seconds=np.empty(lanes, compute_type),
        row_counts=np.empty(lane_rows, np.int64),
        rows_per_lane=np.empty(lane_rows, np.int64),
        row_firsts=np.empty((lane_rows, columns), compute_type),
        row_seconds=np.empty((lane_rows, columns), compute_type),
        row_centers=np.empty((lane_rows, columns), compute_type),
        lane_counts=np.empty(lanes, np.int64),
        # None where the geometry gathers nothing: its kernel then compiles no gathering
        # (segments.block_lanes)
        gathered=np.empty(gathered_length, input_dtype) if gathered_length else None,
        transposed=np.empty(transposed_length, input_dtype),
        member_centers=np.empty(width, compute_type))
