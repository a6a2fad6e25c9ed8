"""The GPU fast path of the "correctly_rounded" algorithm (numerics.correctly_rounded, and
docs/architecture.md section 4.6): one CUDA block per group computes the shift c (the group's
first element) and the float64 sums Σ(x − c) and Σ(x − c)². Thread t sums the elements t, t + T,
t + 2T, ... of the group in order (depth ⌈n/T⌉), then a halving tree in shared memory merges the
T threads (depth log2 T). The host certifies the groups from these sums with the CPU's bound and
decides the others exactly (correctly_rounded.moments): the results are the same bits as the
CPU's, whatever the summation order.

numba.cuda is used directly (module-level kernel); contraction of d·d + s into an FMA is allowed:
one rounding instead of two keeps the bound valid.
"""
import math

import numpy as np
from numba import cuda, float64

from .correctly_rounded import fast_input, tree_depth

DEFAULT_THREADS_PER_BLOCK = 128
#: the shared arrays are sized at compile time: the most threads a block may have
MAX_THREADS_PER_BLOCK = 1024


@cuda.jit
def fast_sums_kernel(x4, shifts, first_sums, second_sums):
    """Block g: group g of the canonical view ``x4`` (kept_outer, reduced_outer, kept_inner,
    reduced_inner); writes its shift and its two sums."""
    firsts = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
    seconds = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
    group = cuda.blockIdx.x
    thread = cuda.threadIdx.x
    threads = cuda.blockDim.x
    kept_inner, reduced_inner = x4.shape[2], x4.shape[3]
    outer = group // kept_inner
    inner = group - outer * kept_inner
    shift = float64(x4[outer, 0, inner, 0])
    n = x4.shape[1] * reduced_inner
    first = 0.0
    second = 0.0
    for k in range(thread, n, threads):
        row = k // reduced_inner
        d = float64(x4[outer, row, inner, k - row * reduced_inner]) - shift
        first += d
        second += d * d
    firsts[thread] = first
    seconds[thread] = second
    cuda.syncthreads()
    stride = threads // 2
    while stride > 0:
        if thread < stride:
            firsts[thread] += firsts[thread + stride]
            seconds[thread] += seconds[thread + stride]
        cuda.syncthreads()
        stride //= 2
    if thread == 0:
        shifts[group] = shift
        first_sums[group] = firsts[0]
        second_sums[group] = seconds[0]


def check_options(threads_per_block=DEFAULT_THREADS_PER_BLOCK):
    if (isinstance(threads_per_block, bool) or not isinstance(threads_per_block, int)
            or threads_per_block < 32 or threads_per_block > MAX_THREADS_PER_BLOCK
            or threads_per_block & (threads_per_block - 1)):
        raise ValueError(f"threads_per_block must be a power of two from 32 to "
                         f"{MAX_THREADS_PER_BLOCK}, got {threads_per_block!r}")
    return threads_per_block


def device_view(x, view):
    """The canonical view on the device: numpy input is widened (16-bit) and copied; a device
    array must already hold float32 or float64."""
    if isinstance(x, np.ndarray):
        return cuda.to_device(fast_input(x).reshape(view.view_shape))
    if not getattr(x, "__cuda_ndarray__", False):  # numba's own (the simulator's too) or foreign
        x = cuda.as_cuda_array(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"a device array x for algorithm='correctly_rounded' must hold float32 or "
                         f"float64, got {x.dtype}: widen it first")
    return x.reshape(view.view_shape)


def fast_sums(x, view, *, threads_per_block=DEFAULT_THREADS_PER_BLOCK):
    """(device view, shifts, Σd, Σd², depth) per group, on the GPU; the sums come back to the
    host (numpy float64)."""
    threads = check_options(threads_per_block)
    if not cuda.is_available():
        raise RuntimeError("device='cuda' needs a CUDA GPU (or NUMBA_ENABLE_CUDASIM=1)")
    x4 = device_view(x, view)
    groups = view.group_count
    shifts = cuda.device_array(groups, np.float64)
    first_sums = cuda.device_array(groups, np.float64)
    second_sums = cuda.device_array(groups, np.float64)
    fast_sums_kernel[groups, threads](x4, shifts, first_sums, second_sums)
    depth = math.ceil(view.group_size / threads) + tree_depth(threads)
    return (x4, shifts.copy_to_host(), first_sums.copy_to_host(), second_sums.copy_to_host(),
            depth)


def specializations():
    """``(label, python function, numba signature)`` of the kernel for each input type it reads,
    for a PTX compile (numerics.gpu_compile.ptx_by_cc)."""
    from numba import from_dtype, types
    state = types.Array(types.float64, 1, "C")
    for dtype in (np.float32, np.float64):
        x4 = types.Array(from_dtype(np.dtype(dtype)), 4, "C")
        yield (f"correctly_rounded/{np.dtype(dtype).name}", fast_sums_kernel.py_func,
               types.void(x4, state, state, state))
