"""``moments``: the mean and variance of every normalization group, by a chosen rule, topology,
precision and Bessel correction, with a record of what ran."""
import warnings
from dataclasses import dataclass, asdict

import numpy as np

from . import algorithms, plan, precision, subsets
from . import topology as topologies

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Run:
    """What produced a result: enough to record it in a study and to reproduce it."""
    algorithm: str
    topology: topologies.Topology
    input_dtype: str
    acc_dtype: str
    ddof: int
    clamp: bool
    device: str
    norm: str
    groups: int
    layout: str
    shape: tuple
    group_size: int
    kernel: str
    details: tuple = ()

    def as_dict(self):
        record = asdict(self)
        record["topology"] = self.topology.as_dict()
        record["details"] = dict(self.details)
        return record


class Moments(tuple):
    """``(mean, var)``; unpacks as a pair, and ``.run`` tells what computed it."""

    def __new__(cls, mean, var, run):
        result = super().__new__(cls, (mean, var))
        result.run = run
        return result

    @property
    def mean(self):
        return self[0]

    @property
    def var(self):
        return self[1]


def moments(x, norm=None, *, groups=None, layout="NCHW", algorithm="welford", ddof=0, acc_dtype=None,
            topology=None, clamp=False, device="cpu", **device_options):
    """Mean and variance of each normalization group of ``x``.

    ``norm``: "batch" -> (C,), "layer" -> (N,), "instance" -> (N, C), "group" -> (N, groups); None
    reduces a 1-D array to 0-d results. ``layout`` "NCHW" (channels first) or "NHWC" (channels last),
    any number of spatial dimensions. ``algorithm``: one of numerics.ALGORITHMS, or
    numerics.CORRECTLY_ROUNDED ("correctly_rounded": both statistics rounded once from their exact
    values, numerics.correctly_rounded; ``topology`` and ``clamp`` do not affect it). ``ddof`` 0 or 1,
    applied once at finalization. ``acc_dtype``: float16, bfloat16, float32 or float64 (default
    float64 for float64 input, float32 otherwise); input wider than the accumulator is first rounded
    to it, once. ``topology``: a preset name of numerics.TOPOLOGIES or a numerics.Topology (default
    "blocked"). ``clamp=True`` returns max(var, 0). ``device`` "cpu" or "cuda" (extra keyword
    options go to the GPU launcher).

    Returns ``Moments(mean, var)`` in the accumulator dtype, with ``.run`` describing what ran.
    Edge cases (README, "Bad input"): a group with n - ddof <= 0 gets a NaN variance and a
    RuntimeWarning; NaN/Inf in a group make that group's statistics NaN/Inf only; a group whose
    finite input overflows the accumulator gets a non-finite statistic and a RuntimeWarning.
    """
    x = as_array(x)
    input_format = precision.format_name(x.dtype, "x")
    view = subsets.canonical_view(x.shape, norm, groups, layout)
    if x.size == 0:
        raise ValueError(f"x is empty (shape {x.shape}): every group needs at least one element")
    from .correctly_rounded import CORRECTLY_ROUNDED
    if algorithm not in (*algorithms.ALGORITHMS, CORRECTLY_ROUNDED):
        raise ValueError(f"algorithm must be one of {(*algorithms.ALGORITHMS, CORRECTLY_ROUNDED)}, "
                         f"got {algorithm!r}")
    if isinstance(ddof, bool) or ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    if acc_dtype is None:
        acc_format = plan.default_acc_format(input_format)
    else:
        acc_format = precision.format_name(acc_dtype, "acc_dtype")
    resolved_topology = topologies.resolve(topology)
    if not isinstance(clamp, bool):
        raise ValueError(f"clamp must be True or False, got {clamp!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu" and device_options:
        raise TypeError(f"unexpected keyword arguments for device='cpu': {sorted(device_options)}")
    if device == "cpu" and is_device_array(x):
        raise ValueError("x is a device array: pass device='cuda', or copy it to the host first")

    if algorithm == CORRECTLY_ROUNDED:  # rounded once from the exact values: no topology, no clamp
        from . import correctly_rounded
        mean, var, kernel, details = correctly_rounded.moments(x, view, ddof, acc_format, device,
                                                               device_options)
        return Moments(mean, var, Run(algorithm, resolved_topology, input_format, acc_format, ddof,
                                      clamp, device, norm, groups, layout, tuple(x.shape),
                                      view.group_size, kernel, details))
    kernel_input, kernel_format = kernel_input_of(x, input_format, acc_format)
    x4 = kernel_input.reshape(view.view_shape)
    with np.errstate(all="ignore"):
        if device == "cpu":
            from . import cpu
            means, variances, kernel, details = cpu.moments(x4, view, algorithm,
                                                            resolved_topology, ddof,
                                                            kernel_format, acc_format)
        else:
            from . import gpu
            means, variances, kernel, details = gpu.moments(x4, view, algorithm, resolved_topology,
                                                            ddof, kernel_format, acc_format,
                                                            **device_options)
    if view.group_size - ddof <= 0:
        warnings.warn(f"degrees of freedom <= 0: each group has {view.group_size} element(s) and "
                      f"ddof={ddof}; the variance is NaN", RuntimeWarning, stacklevel=2)
    if not isinstance(means, np.ndarray):
        # device arrays in, device arrays out, in the compute dtype (chained work, no copy back)
        mean = means.reshape(view.stats_shape)
        var = (gpu.clamped(variances) if clamp else variances).reshape(view.stats_shape)
    else:
        report_overflow(x4, means, variances, kernel_format, view.group_size - ddof > 0)
        if clamp:
            variances = np.maximum(variances, 0)  # NaN stays NaN
        output_dtype = precision.NUMPY_DTYPES[acc_format]
        mean = means.astype(output_dtype).reshape(view.stats_shape)
        var = variances.astype(output_dtype).reshape(view.stats_shape)
    run = Run(algorithm, resolved_topology, input_format, acc_format, ddof, clamp, device, norm,
              groups, layout, tuple(x.shape), view.group_size, kernel, tuple(details))
    return Moments(mean, var, run)


def is_device_array(x):
    """A CUDA device array: one exporting ``__cuda_array_interface__`` (numba, CuPy, PyTorch), or a
    numba device array, the simulator's included (which exports no interface)."""
    return not isinstance(x, np.ndarray) and (hasattr(x, "__cuda_array_interface__")
                                              or getattr(x, "__cuda_ndarray__", False))


def as_array(x):
    """``x`` as a numpy array in native byte order; device arrays pass through untouched. A
    PyTorch CPU tensor becomes the numpy array of its values and dtype, bfloat16 included
    (numerics.torch_integration; torch is looked up, never imported, so numerics stays torch-free)."""
    if is_device_array(x):
        return x
    import sys
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        from .torch_integration import tensor_to_numpy
        x = tensor_to_numpy(x)
    x = np.asarray(x)
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    return x


def kernel_input_of(x, input_format, acc_format):
    """The C-contiguous array the kernels read and its format. Input wider than the accumulator is
    rounded to the accumulator's format here, once (a float64 value rounded to float32 inside the
    kernel is one rounding too; only float64 -> 16-bit needs the host to avoid double rounding)."""
    on_device = is_device_array(x)
    if input_format == "float64" and acc_format in ("float16", "bfloat16"):
        if on_device:
            raise ValueError(f"a float64 device array with acc_dtype={acc_format!r}: convert x to "
                             f"{acc_format} first (the host conversion avoids double rounding)")
        x = precision.convert(x, acc_format)
        input_format = acc_format
    if on_device:
        return x, input_format
    x = np.ascontiguousarray(x)
    if input_format in ("float16", "bfloat16"):
        x = x.view(np.uint16)
    return x, input_format


def report_overflow(x4, means, variances, input_format, variance_defined):
    """Warn when a group of finite inputs produced a non-finite statistic: the accumulator
    overflowed (squares of float16 data past 65504, say). The value stays Inf/NaN, never a finite
    wrong number. Without ``variance_defined`` (n - ddof <= 0) the variance is NaN by definition
    and only the means are checked."""
    finite = np.isfinite(means) & (np.isfinite(variances) if variance_defined else True)
    suspects = np.flatnonzero(~finite)
    if suspects.size == 0 or not isinstance(x4, np.ndarray):
        return
    values = x4
    if values.dtype == np.uint16:
        # the exponent field all ones marks Inf/NaN in both 16-bit formats
        exponent_mask = np.uint16(0x7C00) if input_format == "float16" else np.uint16(0x7F80)
        finite = (values & exponent_mask) != exponent_mask
    else:
        finite = np.isfinite(values)
    finite_groups = finite.all(axis=(1, 3)).reshape(-1)
    overflowed = suspects[finite_groups[suspects]]
    if overflowed.size:
        warnings.warn(f"the accumulator overflowed in {overflowed.size} group(s) with finite "
                      f"input (first: group {int(overflowed[0])}); their statistics are Inf or NaN",
                      RuntimeWarning, stacklevel=3)
