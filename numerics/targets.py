"""The only module that decorates: the plain scalar functions of algorithms.py, precision.py and
topology.py compiled for each target (ARCHITECTURE.md section 2).

A helper shared by CPU and GPU code must be compiled for each target separately: undecorated, it
fails under njit and under real NVVM (while passing in the CUDA simulator), so every function is
wrapped as ``njit(inline='always')`` for the CPU and ``cuda.jit(device=True, inline='always')`` for
the GPU. No fastmath anywhere: reassociation rewrites ordered and compensated reductions
(ARCHITECTURE.md trap 3).
"""
import functools

import numpy as np

from . import algorithms, precision, topology

INPUT_DECODERS = {
    "float16": precision.float16_bits_to_float32,
    "bfloat16": precision.bfloat16_bits_to_float32,
    "float32": precision.identity,
    "float64": precision.identity,
}

ROUNDERS = {
    "float16": precision.round_float32_to_float16,
    "bfloat16": precision.round_float32_to_bfloat16,
    "float32": precision.identity,
    "float64": precision.identity,
}


def scalar_functions(decorate, input_format, acc_format, fused_mul_add=None):
    """Every scalar function a kernel needs for one (input format, accumulator format), each passed
    through ``decorate``. ``fused_mul_add`` replaces the two-rounding multiply-add (a GPU build that
    fuses); the CPU never fuses."""
    compute_type = precision.COMPUTE_DTYPES[acc_format].type
    rnd = decorate(ROUNDERS[acc_format])
    decode = decorate(INPUT_DECODERS[input_format])
    to_acc, mul, mul_add = (decorate(function) for function in algorithms.arithmetic(compute_type, rnd))
    if fused_mul_add is not None:
        mul_add = fused_mul_add
    functions = algorithms.rules(to_acc, rnd, mul, mul_add, compile=decorate)

    def load(raw):
        return to_acc(decode(raw))

    functions.update(load=decorate(load), to_acc=to_acc, rnd=rnd)
    for family in (algorithms.CENTERED_SUMS, algorithms.WELFORD_UPDATES, algorithms.CHAN_UPDATES):
        merge = functions[algorithms.push_and_merge(family)[1]]
        functions[f"merge_lanes_{family}"] = decorate(topology.lane_merger(merge))
        functions[f"merge_blocks_{family}"] = decorate(topology.block_merger(merge))
    return functions


def cpu_inline(function):
    from numba import njit
    return njit(inline="always")(function)


@functools.lru_cache(maxsize=None)
def cpu_scalar_functions(input_format, acc_format):
    """The scalar functions compiled for the CPU (numba.njit, inlined into the kernels)."""
    return scalar_functions(cpu_inline, input_format, acc_format)


def cpu_kernel(function):
    """A CPU driver: parallel over fixed work units, cached on disk (numerics.cache keys the cache
    on the package sources, ARCHITECTURE.md trap 5)."""
    from numba import njit
    return njit(parallel=True, cache=True)(function)


def cpu_serial(function):
    from numba import njit
    return njit(cache=True)(function)
