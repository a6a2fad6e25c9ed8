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


def scalar_functions(decorate, input_format, acc_format, products=None):
    """Every scalar function a kernel needs for one (input format, accumulator format), each passed
    through ``decorate``. ``products(compute_type, rnd)`` returns plain ``(mul, mul_add)`` functions
    that replace the two-rounding ones of algorithms.arithmetic (a GPU build: products the compiler
    may not contract, or fused multiply-adds, ARCHITECTURE.md trap 2); the CPU never fuses."""
    compute_type = precision.COMPUTE_DTYPES[acc_format].type
    rnd = decorate(ROUNDERS[acc_format])
    decode = decorate(INPUT_DECODERS[input_format])
    to_acc, mul, mul_add = algorithms.arithmetic(compute_type, rnd)
    if products is not None:
        mul, mul_add = products(compute_type, rnd)
    to_acc, mul, mul_add = decorate(to_acc), decorate(mul), decorate(mul_add)
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
    return njit(function)


def specialized(function, tag):
    """``function`` with ``tag`` appended to its qualname. Numba names compiled code after the
    qualname plus a per-process counter and links each callee into every library that calls it
    under that name; closures built by one factory for several formats share qualname and often
    signature (float16 and bfloat16 accumulators both compute in float32), so a kernel loaded from
    the disk cache could resolve a callee to another format's code compiled in this process
    (reproduced: acc_dtype="float16" then returned bfloat16 results). Every CPU closure carries
    its specialization in its name."""
    function.__qualname__ = f"{function.__qualname__}__{tag}"
    return function


@functools.lru_cache(maxsize=None)
def cpu_scalar_functions(input_format, acc_format):
    """The scalar functions compiled for the CPU (numba.njit, inlined into the kernels)."""
    def decorate(function):
        return cpu_inline(specialized(function, f"{input_format}_{acc_format}"))

    return scalar_functions(decorate, input_format, acc_format)


def cpu_kernel(function):
    """A CPU driver: run on fixed ranges of work units by the threads of numerics.cpu (it releases
    the GIL), cached on disk (numerics.cache keys the cache on the package sources,
    ARCHITECTURE.md trap 5)."""
    from numba import njit
    return njit(cache=True, nogil=True)(function)


def cpu_serial(function):
    from numba import njit
    return njit(cache=True)(function)


# ---- GPU --------------------------------------------------------------------------------------

#: how a GPU build treats ``c + a*b`` (ARCHITECTURE.md trap 2): "separate" rounds the product and
#: the sum apart, exactly as the CPU does; "fused" rounds once, with an FMA at every mul_add site.
FMA_MODES = ("separate", "fused")


def gpu_products(fma):
    """``products`` for scalar_functions on the GPU. NVVM contracts a plain ``a*b + c`` into an FMA
    even without fastmath, so every product goes through libdevice's ``fmul_rn``/``dmul_rn``: a
    multiply with an explicit rounding mode, which neither NVVM nor ptxas fuses. Only "fused"
    writes FMAs (``cuda.fma``), at the mul_add sites and nowhere else.

    numba-cuda's simulator has no libdevice (its functions are stubs there) and its ``cuda.fma`` is
    ``a*b + c``: it runs Python arithmetic, which never contracts. There the products are plain
    Python products, the same correctly rounded operation, and "fused" computes what the
    simulator's FMA computes, two roundings; only the PTX shows the fusion (numerics.gpu_compile)."""
    from numba import config, cuda
    from numba.cuda import libdevice
    if fma not in FMA_MODES:
        raise ValueError(f"fma must be one of {FMA_MODES}, got {fma!r}")
    simulated = config.ENABLE_CUDASIM

    def products(compute_type, rnd):
        if simulated:
            def product(a, b):
                return a * b
        else:
            product = libdevice.fmul_rn if compute_type is np.float32 else libdevice.dmul_rn

        def mul(a, b):
            return rnd(product(a, b))

        if fma == "separate":
            def mul_add(a, b, c):
                return rnd(rnd(product(a, b)) + c)
        elif simulated:
            def mul_add(a, b, c):
                return rnd(a * b + c)  # what the simulator's cuda.fma computes
        else:
            def mul_add(a, b, c):
                return rnd(cuda.fma(a, b, c))
        return mul, mul_add

    return products


def gpu_inline(function):
    """A GPU device function, inlined into its caller. Undecorated helpers pass in the simulator but
    fail in real NVVM (ARCHITECTURE.md section 2), so every helper a kernel calls goes through here.
    The inlining is LLVM's (``forceinline``), not numba's (``inline="always"``): numba's IR inlining
    copies the callee's IR at every call site and re-types it, which took 10 to 40 s per kernel
    here; this way each device function is compiled once per signature and NVVM inlines it. The
    simulator's jit takes no ``forceinline`` (it compiles nothing: device functions are Python calls)."""
    from numba import config, cuda
    if config.ENABLE_CUDASIM:
        return cuda.jit(device=True)(function)
    return cuda.jit(device=True, forceinline=True)(function)


@functools.lru_cache(maxsize=None)
def gpu_scalar_functions(input_format, acc_format, fma):
    """The scalar functions compiled as GPU device functions, with the FMA mode ``fma``."""
    return scalar_functions(gpu_inline, input_format, acc_format, products=gpu_products(fma))


def gpu_kernel(function):
    """A GPU kernel (numba.cuda.jit). No fastmath (ARCHITECTURE.md trap 3): it would also turn on
    NVVM's FMA contraction and approximate division."""
    from numba import cuda
    return cuda.jit(function)
