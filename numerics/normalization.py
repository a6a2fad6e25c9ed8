"""``normalize``: the output of a normalization layer, y = (x − mean) / sqrt(var + eps) · weight
+ bias, computed the way the frameworks compute it, in the accumulator's arithmetic.

The statistics come from ``numerics.moments`` (any rule, topology, precision, Bessel correction).
Then, every operation rounded to the accumulator format (16-bit accumulators emulated exactly as in
numerics/precision.py: each operation in float32, then rounded to the format, ties to even):

    e    = eps rounded to the accumulator        (so eps = 1e-12 is 0 in a float16 accumulator)
    root = sqrt(var + e)                          two roundings: the sum, then the square root
    rstd = 1 / root                               a correctly rounded division, not an rsqrt
    y    = ((x − mean) · rstd) · weight + bias    four roundings, in this order, no fused multiply-add
    y    → output_dtype                           one rounding, to nearest, ties to even

This is the order of PyTorch's CUDA LayerNorm and GroupNorm elementwise kernels (rstd = 1/sqrt(var
+ eps) once per group, then (x − mean)·rstd·gamma + beta per element in the float32 accumulator);
its CPU BatchNorm folds the same factors into x·(rstd·gamma) + (beta − mean·rstd·gamma) instead,
which rounds differently. Input wider than the accumulator is rounded to it once, as ``moments``
does; weight and bias are rounded to the accumulator once.

A group whose var + eps is negative (a rule that lost every digit) gives NaN, as in the frameworks,
unless ``clamp`` (var = max(var, 0) first). NaN or Inf in a group makes its statistics, and so its
outputs, NaN or Inf; a NaN weight or bias gives NaN outputs in its channel (IEEE arithmetic).

The elementwise pass runs as vectorised numpy on the CPU (numpy's float32/float64 operations are
correctly rounded, one operation per array pass, so no contraction or reassociation can occur), and
as a numba.cuda kernel on the GPU (numerics.gpu_normalize), bitwise equal to the CPU with
fma="separate".
"""
import math
from dataclasses import dataclass

import numpy as np

from . import precision, statistics, subsets


@dataclass(frozen=True)
class AffineView:
    """How weight and bias broadcast over x: x, C-contiguous in its layout, viewed as
    (outer, extent, inner) with weight and bias of ``extent`` elements along the middle axis."""
    outer: int
    extent: int
    inner: int

    @property
    def shape(self):
        return (self.outer, self.extent, self.inner)


def affine_view(shape, norm, layout, parameter_shape):
    """The AffineView of a weight or bias of ``parameter_shape`` over x of ``shape``: per channel
    (C,) for every layer, or for norm "layer" (and None) the whole normalized shape."""
    size = math.prod(shape)
    if norm is not None:
        channels = shape[1] if layout == "NCHW" else shape[-1]
        if parameter_shape == (channels,):
            if layout == "NCHW":
                inner = math.prod(shape[2:])
                return AffineView(size // (channels * inner), channels, inner)
            return AffineView(size // channels, channels, 1)
    whole = tuple(shape[1:]) if norm is not None else tuple(shape)
    if norm in (None, "layer") and parameter_shape == whole:
        return AffineView(size // max(1, math.prod(whole)), math.prod(whole), 1)
    return None


def expected_parameter_shapes(shape, norm, layout):
    if norm is None:
        return (tuple(shape),)
    channels = shape[1] if layout == "NCHW" else shape[-1]
    if norm == "layer" and tuple(shape[1:]) != (channels,):
        return (channels,), tuple(shape[1:])
    return ((channels,),)


def check_parameter(value, argument, shape, norm, layout):
    """``value`` (weight or bias) as a numpy array of a float format and its AffineView, or
    (None, None). TypeError for a non-float dtype, ValueError for a wrong shape, both naming the
    argument."""
    if value is None:
        return None, None
    array = statistics.as_array(value)
    if statistics.is_device_array(array):
        raise ValueError(f"{argument} is a device array: pass a host (numpy or CPU) array")
    precision.format_name(array.dtype, argument)
    view = affine_view(tuple(shape), norm, layout, tuple(array.shape))
    if view is None:
        expected = " or ".join(str(candidate) for candidate in
                               expected_parameter_shapes(shape, norm, layout))
        raise ValueError(f"{argument} must have shape {expected} for norm={norm!r}, "
                         f"layout={layout!r} and x of shape {tuple(shape)}; got {array.shape}")
    return array, view


def check_eps(eps):
    """eps as a Python float: a real, finite, non-negative number (TypeError / ValueError)."""
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.integer,
                                                                 np.floating)):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return value


def in_accumulator(values, acc_format):
    """``values`` rounded once to the accumulator format, held in its compute type."""
    return precision.convert(np.asarray(values), acc_format).astype(
        precision.COMPUTE_DTYPES[acc_format])


def rounder(acc_format):
    """rnd over arrays: round a compute-type array to the accumulator format (in place where it
    is a 16-bit one; numpy and ml_dtypes cast float32 to either format to nearest, ties to even)."""
    if acc_format not in ("float16", "bfloat16"):
        return lambda values: values
    narrow = precision.NUMPY_DTYPES[acc_format]

    def rnd(values):
        values[...] = values.astype(narrow)
        return values

    return rnd


def reciprocal_std(var, eps, acc_format):
    """rstd = 1 / sqrt(var + eps) per group, each operation rounded in the accumulator."""
    rnd = rounder(acc_format)
    compute = precision.COMPUTE_DTYPES[acc_format]
    with np.errstate(all="ignore"):
        total = rnd(np.asarray(var, compute) + in_accumulator(eps, acc_format))
        root = rnd(np.sqrt(total))
        return rnd(compute.type(1) / root)


def centered_scaled(x_view, mean, rstd, acc_format):
    """(x − mean) · rstd over the canonical view, each operation rounded in the accumulator;
    mean and rstd of shape (K1, 1, K2, 1)."""
    rnd = rounder(acc_format)
    values = in_accumulator(x_view, acc_format)
    with np.errstate(all="ignore"):
        np.subtract(values, mean, out=values)
        rnd(values)
        np.multiply(values, rstd, out=values)
    return rnd(values)


def apply_affine(values, weight, weight_view, bias, bias_view, acc_format):
    """values · weight, then + bias, in place over values (x's shape), each rounded."""
    rnd = rounder(acc_format)
    with np.errstate(all="ignore"):
        if weight is not None:
            np.multiply(values.reshape(weight_view.shape),
                        in_accumulator(weight, acc_format).reshape(1, -1, 1),
                        out=values.reshape(weight_view.shape))
            rnd(values)
        if bias is not None:
            np.add(values.reshape(bias_view.shape), in_accumulator(bias, acc_format).reshape(1, -1, 1),
                   out=values.reshape(bias_view.shape))
            rnd(values)
    return values


def gpu_launch_options(device_options):
    """The options of the elementwise kernel among moments' device options: the CUDA block size
    (the kernel multiplies without fusing whatever ``fma`` the statistics used)."""
    if "threads_per_block" in device_options:
        return {"threads_per_block": device_options["threads_per_block"]}
    return {}


def normalize(x, norm=None, *, groups=None, layout="NCHW", eps=1e-5, weight=None, bias=None,
              algorithm="welford", ddof=0, acc_dtype=None, topology=None, output_dtype=None,
              clamp=False, device="cpu", **device_options):
    """y = (x − mean) / sqrt(var + eps) · weight + bias of each normalization group of ``x``.

    Statistics: ``numerics.moments(x, norm, groups=..., layout=..., algorithm=..., ddof=...,
    acc_dtype=..., topology=..., clamp=..., device=...)`` (frameworks normalize with ddof=0). The
    operation order and its roundings are the module docstring's. ``eps``: a finite real >= 0,
    rounded to the accumulator. ``weight``, ``bias``: None or float arrays (numpy, or PyTorch CPU
    tensors) of shape (C,) (per channel, every layer) or, for norm "layer", x.shape[1:] (the whole
    normalized shape in x's memory order, as PyTorch's LayerNorm takes them). ``output_dtype``:
    float16, bfloat16, float32 or float64; default x's dtype. ``device`` "cuda" runs the statistics
    and the elementwise pass on the GPU (options as for moments, e.g. fma, threads_per_block).

    Returns a numpy array of x's shape in ``output_dtype``. Every bad-input rule of ``moments``
    applies; eps, weight, bias and output_dtype errors name the argument.
    """
    eps = check_eps(eps)
    x = statistics.as_array(x)
    if statistics.is_device_array(x):
        raise ValueError("x is a device array: normalize takes host arrays (numpy or PyTorch CPU "
                         "tensors); copy it to the host first")
    input_format = precision.format_name(x.dtype, "x")
    subsets.canonical_view(x.shape, norm, groups, layout)
    weight, weight_view = check_parameter(weight, "weight", x.shape, norm, layout)
    bias, bias_view = check_parameter(bias, "bias", x.shape, norm, layout)
    output_format = (input_format if output_dtype is None
                     else precision.format_name(output_dtype, "output_dtype"))
    result = statistics.moments(x, norm, groups=groups, layout=layout, algorithm=algorithm,
                                ddof=ddof, acc_dtype=acc_dtype, topology=topology, clamp=clamp,
                                device=device, **device_options)
    acc_format = result.run.acc_dtype
    view = subsets.canonical_view(x.shape, norm, groups, layout)
    if device == "cpu":
        group_shape = (view.kept_outer, 1, view.kept_inner, 1)
        compute = precision.COMPUTE_DTYPES[acc_format]
        mean = np.asarray(result.mean).astype(compute).reshape(group_shape)
        rstd = reciprocal_std(np.asarray(result.var).reshape(group_shape), eps, acc_format)
        x_view = np.ascontiguousarray(x).reshape(view.view_shape)
        values = centered_scaled(x_view, mean, rstd, acc_format).reshape(x.shape)
        values = apply_affine(values, weight, weight_view, bias, bias_view, acc_format)
    else:
        from . import gpu_normalize
        kernel_input, kernel_format = statistics.kernel_input_of(x, input_format, acc_format)
        values = gpu_normalize.normalize(kernel_input, kernel_format, view, result.mean,
                                         result.var, eps, weight, weight_view, bias, bias_view,
                                         acc_format, **gpu_launch_options(device_options))
        values = values.reshape(x.shape)
    with np.errstate(over="ignore"):  # overflow to ±inf in the output format is IEEE's rule
        return precision.convert(values, output_format)
