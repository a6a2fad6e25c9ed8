"""``moments``: the mean and variance of every normalization group, by a chosen rule, topology,
precision and Bessel correction, with a record of what ran."""
import functools
import sys
import warnings
from dataclasses import dataclass, asdict
from math import prod

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
    any number of spatial dimensions. ``algorithm``: one of numerics.ALGORITHMS. ``ddof`` 0 or 1,
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
    call = checked_call(x.shape, x.dtype, norm, groups, layout, algorithm, ddof, acc_dtype,
                        topology, clamp, device)
    if device == "cpu" and device_options:
        raise TypeError(f"unexpected keyword arguments for device='cpu': {sorted(device_options)}")
    if device == "cpu" and is_device_array(x):
        raise ValueError("x is a device array: pass device='cuda', or copy it to the host first")

    if algorithm == algorithms.CORRECTLY_ROUNDED:  # rounded once from the exact values: no topology, no clamp
        from . import correctly_rounded
        mean, var, kernel, details = correctly_rounded.moments(x, call.view, ddof, call.acc_format,
                                                               device, device_options)
        return Moments(mean, var, call.record(kernel, details))
    kernel_input, kernel_format = kernel_input_of(x, call.input_format, call.acc_format)
    x4 = kernel_input.reshape(call.view.view_shape)
    if device == "cpu":
        from . import cpu
        means, variances, kernel, details = cpu.moments(x4, call.view, algorithm, call.topology,
                                                        ddof, kernel_format, call.acc_format)
    else:
        from . import gpu
        with np.errstate(all="ignore"):
            means, variances, kernel, details = gpu.moments(x4, call.view, algorithm,
                                                            call.topology, ddof, kernel_format,
                                                            call.acc_format, **device_options)
    if not call.variance_defined:
        warnings.warn(f"degrees of freedom <= 0: each group has {call.view.group_size} "
                      f"element(s) and ddof={ddof}; the variance is NaN", RuntimeWarning,
                      stacklevel=2)
    stats_shape = call.view.stats_shape
    if not isinstance(means, np.ndarray):
        # device arrays in, device arrays out, in the compute dtype (chained work, no copy back)
        mean = means.reshape(stats_shape)
        var = (gpu.clamped(variances) if clamp else variances).reshape(stats_shape)
    else:
        report_overflow(x4, means, variances, kernel_format, call.variance_defined)
        if clamp:
            variances = np.maximum(variances, 0)  # NaN stays NaN
        # fresh arrays from the kernels: no copy when they are already in the output format
        mean = means.astype(call.output_dtype, copy=False).reshape(stats_shape)
        var = variances.astype(call.output_dtype, copy=False).reshape(stats_shape)
    return Moments(mean, var, call.record(kernel, details))


class CheckedCall:
    """What the arguments of a ``moments`` call decide together with x's shape and dtype, checked:
    the canonical view, the formats, the topology, and the Run records of the calls made with
    them (one per kernel and details)."""

    def __init__(self, shape, norm, groups, layout, algorithm, ddof, clamp, device, view,
                 input_format, acc_format, topology):
        self.view, self.input_format, self.acc_format = view, input_format, acc_format
        self.topology = topology
        self.output_dtype = precision.NUMPY_DTYPES[acc_format]
        self.variance_defined = view.group_size - ddof > 0
        self.fields = (algorithm, topology, input_format, acc_format, ddof, clamp, device, norm,
                       groups, layout, tuple(shape), view.group_size)
        self.records = {}

    def record(self, kernel, details):
        """The Run of a call that ran ``kernel`` with ``details`` (immutable: calls share it)."""
        key = (kernel, tuple(details))
        try:
            run = self.records.get(key)
        except TypeError:  # a detail that cannot be a key: a record of its own
            return Run(*self.fields, *key)
        if run is None:
            run = self.records.setdefault(key, Run(*self.fields, *key))
        return run


def checked_call(shape, dtype, norm, groups, layout, algorithm, ddof, acc_dtype, topology, clamp,
                 device):
    """The CheckedCall of these arguments, checked once per distinct combination (arguments of
    different types are different combinations: ``ddof=True`` is refused where ``ddof=1`` is
    not). Raises the error naming the first bad argument."""
    arguments = (shape, dtype, norm, groups, layout, algorithm, ddof, acc_dtype, topology, clamp,
                 device)
    try:
        return _checked_call_cached(*arguments)
    except TypeError:
        # an unhashable argument cannot be a cache key (or a check failed): check uncached
        return _checked_call(*arguments)


def _checked_call(shape, dtype, norm, groups, layout, algorithm, ddof, acc_dtype, topology, clamp,
                  device):
    input_format = precision.format_name(dtype, "x")
    view = subsets.canonical_view(shape, norm, groups, layout)
    if prod(shape) == 0:
        raise ValueError(f"x is empty (shape {tuple(shape)}): every group needs at least one "
                         f"element")
    if algorithm not in (*algorithms.ALGORITHMS, algorithms.CORRECTLY_ROUNDED):
        raise ValueError(f"algorithm must be one of "
                         f"{(*algorithms.ALGORITHMS, algorithms.CORRECTLY_ROUNDED)}, "
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
    return CheckedCall(shape, norm, groups, layout, algorithm, ddof, clamp, device, view,
                       input_format, acc_format, resolved_topology)


_checked_call_cached = functools.lru_cache(maxsize=256, typed=True)(_checked_call)


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
    if every_statistic_finite(means, variances, variance_defined):
        return
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


def every_statistic_finite(means, variances, variance_defined):
    """Whether every mean (and every variance, where defined) is finite: the common case, settled
    in a few numpy calls whatever the number of groups, before any per-group work (no arithmetic
    on the statistics, so no floating-point warning either)."""
    return bool(np.logical_and.reduce(np.isfinite(means), axis=None)
                and (not variance_defined
                     or np.logical_and.reduce(np.isfinite(variances), axis=None)))
