"""PyTorch's own statistics (kind "framework"), CPU and, where a GPU is present, CUDA.

How each layer's statistics are read:

- BatchNorm: ``native_batch_norm`` in training mode with momentum 1 leaves the batch mean and the
  unbiased variance, as the kernel computed them, in ``running_mean``/``running_var``
  (new = 1·batch + 0·old, exact). InstanceNorm is the same call on the (1, N·C, *spatial) view that
  ``torch.instance_norm`` builds.
- LayerNorm and GroupNorm return mean and rstd = 1/sqrt(var + eps): with eps = 0, var = 1/rstd² in
  float64. rstd is a float32 square root and division, so this recovery alone adds up to a few
  float32 units (about 2e-7); a zero variance gives rstd = inf and var 0, a negative one NaN.

PyTorch's channels-last CPU BatchNorm sums per thread, so its result depends on the thread count:
``pinned`` runs the accuracy calls on one thread (and restores the caller's count).
"""
import contextlib
import math

import ml_dtypes
import numpy as np

from .base import Implementation, Prepared, canonical, to_storage

ALL_NORMS = ("batch", "layer", "instance", "group")
BOTH_LAYOUTS = ("NCHW", "NHWC")
MODULES = ("torch",)
#: torch.nn's default eps for every normalization layer
TORCH_EPS = 1e-5


def devices():
    import torch
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


@contextlib.contextmanager
def one_thread():
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def from_numpy(array):
    """A tensor over the array's memory; ml_dtypes' bfloat16 goes through its bits."""
    import torch
    array = np.asarray(array)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def tensor_of(x, layout, device="cpu"):
    """The array as PyTorch sees an (N, C, *spatial) tensor: NHWC data become a channels-last
    tensor (a permuted view of the same memory), which selects PyTorch's channels-last kernels."""
    tensor = from_numpy(x)
    if layout == "NHWC":
        tensor = tensor.permute(0, tensor.dim() - 1, *range(1, tensor.dim() - 1))
    return tensor.to(device)


def waited(call, device):
    """``call`` followed by a wait for the device, so that a timer sees the whole computation."""
    import torch
    if device == "cpu":
        return call

    def synchronized():
        result = call()
        torch.cuda.synchronize()
        return result
    return synchronized


def host(tensor):
    return tensor.detach().cpu().double().numpy()


def prepare_var_mean(x, norm, groups, layout, device):
    import torch
    grouped = from_numpy(np.ascontiguousarray(canonical(x, norm, groups, layout))).to(device)
    call = waited(lambda: torch.var_mean(grouped, dim=(1, 3), correction=0), device)
    return Prepared(call, lambda result: (host(result[1]), host(result[0])))


def batch_norm_call(tensor):
    import torch
    channels = tensor.shape[1]
    running_mean = torch.zeros(channels, dtype=tensor.dtype, device=tensor.device)
    running_var = torch.ones(channels, dtype=tensor.dtype, device=tensor.device)

    def call():
        torch.ops.aten.native_batch_norm(tensor, None, None, running_mean, running_var, True, 1.0,
                                         0.0)
        return running_mean, running_var
    return call


def prepare_batch_norm(x, norm, groups, layout, device):
    call = batch_norm_call(tensor_of(x, layout, device))
    return Prepared(waited(call, device), lambda result: (host(result[0]), host(result[1])))


def prepare_instance_norm(x, norm, groups, layout, device):
    tensor = tensor_of(x, layout, device)
    batch, channels = tensor.shape[:2]
    # torch.instance_norm: input.contiguous().view(1, N*C, *spatial), then batch norm
    call = batch_norm_call(tensor.contiguous().view(1, batch * channels, *tensor.shape[2:]))
    return Prepared(waited(call, device), lambda result: (host(result[0]), host(result[1])))


def from_rstd(result):
    _, mean, rstd = result
    with np.errstate(divide="ignore"):
        return host(mean), 1.0 / host(rstd) ** 2


def prepare_layer_norm(x, norm, groups, layout, device):
    import torch
    tensor = tensor_of(x, layout, device)
    shape = list(tensor.shape[1:])
    call = waited(lambda: torch.ops.aten.native_layer_norm(tensor, shape, None, None, 0.0), device)
    return Prepared(call, from_rstd)


def prepare_group_norm(x, norm, groups, layout, device):
    import torch
    tensor = tensor_of(x, layout, device)
    batch, channels = tensor.shape[:2]
    spatial = math.prod(tensor.shape[2:])
    call = waited(lambda: torch.ops.aten.native_group_norm(tensor, None, None, batch, channels,
                                                           spatial, groups, 0.0), device)
    return Prepared(call, from_rstd)


def normalize(x, norm, groups, layout, eps):
    import torch
    import torch.nn.functional as F
    tensor = tensor_of(x, layout)
    if norm == "batch":
        y = F.batch_norm(tensor, None, None, training=True, eps=eps)
    elif norm == "instance":
        y = F.instance_norm(tensor, eps=eps)
    elif norm == "layer":
        y = F.layer_norm(tensor, list(tensor.shape[1:]), eps=eps)
    else:
        y = F.group_norm(tensor, groups, eps=eps)
    return to_storage(y.float().numpy() if y.dtype == torch.bfloat16 else y.numpy(), layout)


def torch_implementation(name, norms, ddof, used_by, algorithm, prepare, normalized=True):
    return Implementation(name, "framework", "PyTorch", norms, BOTH_LAYOUTS, ddof, used_by, algorithm,
                          prepare, normalize if normalized else None, lambda: TORCH_EPS, MODULES,
                          ("torch",), devices, pinned=one_thread)


IMPLEMENTATIONS = (
    torch_implementation("torch.var_mean", ALL_NORMS, 0, "torch.var_mean, correction=0",
                         "a reduction over the canonical view's axes 1 and 3 (cascade sums)",
                         prepare_var_mean, normalized=False),
    torch_implementation("torch batch_norm", ("batch",), 1,
                         "torch.nn.BatchNorm*d in training (native_batch_norm): running_var, unbiased",
                         "CPU: two-pass with float64 sums for float32 data (channels-last: "
                         "per-thread partial sums); CUDA: Welford + warp-shuffle Chan merges",
                         prepare_batch_norm),
    torch_implementation("torch instance_norm", ("instance",), 1,
                         "torch.nn.InstanceNorm*d: batch norm on the (1, N·C, *spatial) view; "
                         "running_var, unbiased", "as torch batch_norm", prepare_instance_norm),
    torch_implementation("torch layer_norm", ("layer",), 0,
                         "torch.nn.LayerNorm (native_layer_norm), eps 0: 1/rstd²",
                         "CPU: Welford in chunks of vector lanes, chunks merged by a binary-counter "
                         "cascade (moments_utils.h)", prepare_layer_norm),
    torch_implementation("torch group_norm", ("group",), 0,
                         "torch.nn.GroupNorm (native_group_norm), eps 0: 1/rstd²",
                         "CPU contiguous: as LayerNorm; CPU channels-last: Σx and Σx² in float32, "
                         "max(E[x²] − E[x]², 0)", prepare_group_norm),
)
