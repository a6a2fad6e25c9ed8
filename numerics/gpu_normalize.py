"""The elementwise pass of ``numerics.normalize`` on the GPU: one numba.cuda kernel.

Each thread takes elements of the C-contiguous input (a grid-stride loop, 64-bit indices) and
computes, in the accumulator's arithmetic and in the order of numerics/normalization.py:

    rstd = 1 / sqrt(var + eps)                     per element, from its group's var: no extra pass
    z    = ((x − mean) · rstd) · weight + bias     every operation rounded (targets.py's ``rnd``)

The products are targets.py's "separate" ones (libdevice ``fmul_rn``), which NVVM never contracts
into a fused multiply-add with the following addition (docs/architecture.md trap 2): the kernel is
bitwise equal to the CPU's numpy pass. Division and square root are the IEEE ones (``div.rn``,
``sqrt.rn``: no fastmath, trap 3). The kernel writes z in the accumulator's compute type; the host
rounds it once to the output format with the same function as the CPU (precision.convert).
"""
import math

import numpy as np

from . import gpu, precision, targets
from .algorithms import CENTERED_SUMS
# a module-level global on purpose, as in numerics/gpu.py: the simulator swaps the global named
# ``cuda`` of a kernel's module for its fake one
from .gpu import cuda

THREADS_PER_BLOCK = 256
#: CUDA blocks of one launch at most; the grid-stride loop covers the rest
MAX_CUDA_BLOCKS = 65536


@targets.gpu_kernel
def normalize_elements(ctx, x, means, variances, eps, weight, bias, group_span, kept_inner,
                       reduced_inner, weight_extent, weight_inner, bias_extent, bias_inner, out):
    """z of every element, in the arithmetic of ``ctx`` (a CENTERED_SUMS context, "separate")."""
    start = np.int64(cuda.grid(1))
    stride = np.int64(cuda.gridsize(1))
    size = np.int64(x.size)
    for i in range(start, size, stride):
        # canonical view (K1, P, K2, Q): group_span = P * K2 * Q elements per k1
        k1 = i // group_span
        k2 = (i // reduced_inner) % kept_inner
        group = k1 * kept_inner + k2
        total = ctx.rnd(variances[group] + eps)
        # var + eps < 0 (or NaN) gives NaN, as the CPU's np.sqrt does; the guard also keeps
        # the simulator's Python math.sqrt from raising on a negative. to_acc(v) is
        # rnd(compute type(v)): 1 and NaN are exact in every format
        root = ctx.to_acc(math.sqrt(total)) if total >= 0 else ctx.to_acc(math.nan)
        rstd = ctx.rnd(ctx.to_acc(1) / root)
        value = ctx.mul(ctx.rnd(ctx.load(x[i]) - means[group]), rstd)
        if weight_extent > 0:
            value = ctx.mul(value, weight[(i // weight_inner) % weight_extent])
        if bias_extent > 0:
            value = ctx.rnd(value + bias[(i // bias_inner) % bias_extent])
        out[i] = value


def context(input_format, acc_format):
    """The context of the kernel for one (input format, accumulator format) pair."""
    return targets.gpu_context(CENTERED_SUMS, input_format, acc_format, "separate")


def parameter_on_device(parameter, parameter_view, acc_format):
    """(device array, extent, inner) of a weight or bias in the accumulator (extent 0: absent)."""
    compute = precision.COMPUTE_DTYPES[acc_format]
    if parameter is None:
        return cuda.to_device(np.zeros(1, compute)), 0, 1
    values = precision.convert(np.asarray(parameter), acc_format).astype(compute)
    return cuda.to_device(values.reshape(-1)), parameter_view.extent, parameter_view.inner


def normalize(kernel_input, kernel_format, view, means, variances, eps, weight, weight_view, bias,
              bias_view, acc_format, threads_per_block=THREADS_PER_BLOCK):
    """z over the canonical view on the GPU, copied back as a flat compute-type numpy array.
    ``kernel_input``: statistics.kernel_input_of's array (16-bit formats as uint16 bits);
    ``means``, ``variances``: the group statistics in the accumulator format."""
    gpu.require_gpu()
    compute = precision.COMPUTE_DTYPES[acc_format]
    x = cuda.to_device(kernel_input.reshape(-1))
    mean_values = cuda.to_device(np.asarray(means).astype(compute).reshape(-1))
    variance_values = cuda.to_device(np.asarray(variances).astype(compute).reshape(-1))
    eps_value = precision.convert(np.array([eps]), acc_format).astype(compute)[0]
    weight_values, weight_extent, weight_inner = parameter_on_device(weight, weight_view, acc_format)
    bias_values, bias_extent, bias_inner = parameter_on_device(bias, bias_view, acc_format)
    out = cuda.device_array(x.size, compute)
    cuda_blocks = max(1, min(MAX_CUDA_BLOCKS, -(-x.size // threads_per_block)))
    normalize_elements[cuda_blocks, threads_per_block](
        context(kernel_format, acc_format), x, mean_values, variance_values, eps_value,
        weight_values, bias_values,
        view.reduced_outer * view.kept_inner * view.reduced_inner, view.kept_inner,
        view.reduced_inner, weight_extent, weight_inner, bias_extent, bias_inner, out)
    return out.copy_to_host()


def specializations():
    """``(label, fma, python function, numba signature)`` of every specialization, as
    numerics.gpu.specializations lists its kernels (fma "separate": it must contain no fma.rn)."""
    from numba import from_dtype, types

    def array(dtype):
        return types.Array(from_dtype(np.dtype(dtype)), 1, "C")

    for input_format, acc_format in gpu.FORMAT_PAIRS:
        x = array(np.uint16 if input_format in ("float16", "bfloat16") else input_format)
        compute = precision.COMPUTE_DTYPES[acc_format]
        state = array(compute)
        ctx = targets.gpu_context_type(context(input_format, acc_format))
        yield (f"normalize/{input_format}->{acc_format}", "separate", normalize_elements.py_func,
               types.void(ctx, x, state, state, from_dtype(compute), state, state,
                          *[types.int64] * 7, state))
