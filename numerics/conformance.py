"""Conformance cases: inputs that broke frameworks in their issue trackers, as named, seeded cases.

Each case records its source (tracker and number), what broke there, the input (generated here,
seeded), the layer, layout and eps of the report, and the expected statistics: the exact mean and
variance of the stored input (numerics.reference), plus a short statement of what they must be
(``expected``). ``input(profile)`` gives the case's tensor: "default" the reported size, "smoke" a
smaller one of the same kind for tests and quick runs (``smoke_shape``: the failure depends on the
condition number, not the size, except where the case says otherwise).

The cases (``CASES``, in this order):

- ``onnxruntime-21935``: ONNX Runtime #21935, CPU LayerNormalization of 256 copies of 1234.0 returned
  NaN (its variance went negative); closed as stale, not fixed.
- ``onnxruntime-28463``: ONNX Runtime #28463, CPU LayerNormalization of [40000, 40001, 40002, 40003]
  (opset 17) returned all NaN; ``onnxruntime-28463-shifted``: the same + 40000, also reported there.
- ``pytorch-40302``: PyTorch #40302, LayerNorm of 0.01·randn(1024, 32768) + 100 returned variance
  exactly 0 (expected about 1e-4); fixed there by Welford with a cascade.
- ``pytorch-51102``: PyTorch #51102, LayerNorm(4) of randn(5, 4) + 2000: output variance 48 425
  instead of 1 (silent).
- ``pytorch-5410``: PyTorch #5410, BatchNorm of channels constant at magnitudes above 1e7: outputs
  saturated to ±1 instead of 0.
- ``tensorflow-118701``: TensorFlow #118701, XLA FusedBatchNormV3 (``jit_compile=True``, training)
  returned NaN on NCHW input with 3 channels and an offset of 1e4: XLA's expansion computes
  E[x²] − E[x]² and the variance went negative.
- ``flax-1491``: Flax #1491 (open), BatchNorm's variance negative, hence NaN from rsqrt, on large
  synthetic images; Flax's default is E[x²] − E[x]² with a clamp. The images of #1491 are not
  reproduced: the stand-in is channels-last images of one grey level (250) with noise of std 0.05,
  |mean|/std = 5000, where float32's E[x²] − E[x]² keeps no digit.
- ``numerics-groupnorm-channels-last``: found by this toolkit, no upstream report found: PyTorch's CPU
  GroupNorm on channels-last float32 input, normal(1e4, 1), (8, 64, 56, 56), G = 32.
"""
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import data, reference

PROFILES = ("smoke", "default")


@dataclass(frozen=True)
class Case:
    """One conformance case (module docstring). ``make(shape, seed)`` returns the tensor in its
    storage layout (channels last for NHWC: ``shape`` is always the logical (N, C, ...) shape)."""
    name: str
    source: str
    url: str
    what_broke: str
    framework: str
    norm: str
    groups: int | None
    layout: str
    eps: float
    shape: tuple
    smoke_shape: tuple
    make: Callable[[tuple, int], np.ndarray]
    expected: str

    def seed(self, base_seed=0):
        """The case's seed: the base seed plus a CRC of its name (the same bits on every machine)."""
        return base_seed + zlib.crc32(self.name.encode())

    def input(self, profile="default", base_seed=0):
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
        shape = self.shape if profile == "default" else self.smoke_shape
        return self.make(shape, self.seed(base_seed))

    def exact(self, x, ddof=0):
        """The exact (mean, var) of every group of x: object arrays of mpmath numbers."""
        return reference.moments(x, self.norm, groups=self.groups, layout=self.layout, ddof=ddof)


def stored(values, layout):
    """A logical (N, C, ...) tensor stored in ``layout``."""
    return values if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(values, 1, -1))


def constant_rows(value):
    return lambda shape, seed: np.full(shape, value, np.float32)


def consecutive_from(start):
    """Rows holding start, start + 1, ...: the exact variance of k consecutive integers is
    (k² − 1)/12 (1.25 for k = 4)."""
    return lambda shape, seed: np.broadcast_to(
        np.arange(start, start + shape[-1], dtype=np.float32), shape).copy()


def normal(mean, std, layout="NCHW"):
    return lambda shape, seed: stored(data.generate(shape, "float32", "normal", mean=mean, std=std,
                                                    seed=seed), layout)


#: channel levels of the constant-channel case: every one above 1e7 and exact in float32
CONSTANT_LEVELS = (12345678.0, -16777215.0, 30000000.0, 98765432.0)


def constant_channels(shape, seed):
    levels = np.resize(np.asarray(CONSTANT_LEVELS, np.float32), shape[1])
    return np.broadcast_to(levels.reshape(1, -1, *([1] * (len(shape) - 2))), shape).copy()


CASES = (
    Case("onnxruntime-21935", "ONNX Runtime #21935",
         "https://github.com/microsoft/onnxruntime/issues/21935",
         "CPU LayerNormalization returned NaN: the computed variance was negative", "ONNX Runtime",
         "layer", None, "NCHW", 1e-5, (1, 256), (1, 256), constant_rows(1234.0),
         "mean 1234, variance 0 (every output 0)"),
    Case("onnxruntime-28463", "ONNX Runtime #28463",
         "https://github.com/microsoft/onnxruntime/issues/28463",
         "CPU LayerNormalization returned all NaN on finite input (opset 17)", "ONNX Runtime",
         "layer", None, "NCHW", 1e-5, (1, 4), (1, 4), consecutive_from(40000.0),
         "mean 40001.5, variance 1.25"),
    Case("onnxruntime-28463-shifted", "ONNX Runtime #28463",
         "https://github.com/microsoft/onnxruntime/issues/28463",
         "the same values + 40000, also all NaN", "ONNX Runtime", "layer", None, "NCHW", 1e-5,
         (1, 4), (1, 4), consecutive_from(80000.0), "mean 80001.5, variance 1.25"),
    Case("pytorch-40302", "PyTorch #40302", "https://github.com/pytorch/pytorch/issues/40302",
         "LayerNorm/GroupNorm variance exactly 0 (the naive formula, since replaced by Welford)",
         "PyTorch", "layer", None, "NCHW", 1e-5, (1024, 32768), (8, 4096), normal(100.0, 0.01),
         "variance about 1e-4 in every row"),
    Case("pytorch-51102", "PyTorch #51102", "https://github.com/pytorch/pytorch/issues/51102",
         "LayerNorm output variance 48 425 instead of 1 (silent)", "PyTorch", "layer", None, "NCHW",
         1e-5, (5, 4), (5, 4), normal(2000.0, 1.0), "variance about 1 per row; output variance "
         "var/(var + eps), just below 1"),
    Case("pytorch-5410", "PyTorch #5410", "https://github.com/pytorch/pytorch/issues/5410",
         "BatchNorm of constant channels above 1e7 saturated to ±1 instead of 0", "PyTorch",
         "batch", None, "NCHW", 1e-5, (16, 4, 8, 8), (4, 4, 4, 4), constant_channels,
         "each channel's mean is its level, variance 0, every output 0"),
    Case("tensorflow-118701", "TensorFlow #118701",
         "https://github.com/tensorflow/tensorflow/issues/118701",
         "XLA FusedBatchNormV3 (jit_compile=True, training) returned NaN: E[x²] − E[x]² went "
         "negative", "TensorFlow", "batch", None, "NCHW", 1e-3, (8, 3, 32, 32), (4, 3, 16, 16),
         normal(1e4, 1.0), "variance about 1 per channel"),
    Case("flax-1491", "Flax #1491", "https://github.com/google/flax/issues/1491",
         "BatchNorm variance negative, NaN from rsqrt, on large synthetic images", "Flax", "batch",
         None, "NHWC", 1e-5, (8, 3, 128, 128), (2, 3, 32, 32), normal(250.0, 0.05, "NHWC"),
         "variance about 0.0025 per channel (std 0.05)"),
    Case("numerics-groupnorm-channels-last", "numerics (no upstream report found)", "",
         "PyTorch CPU GroupNorm on channels-last float32: relative error of the variance in the "
         "hundreds (contiguous path: about 1e-4)", "PyTorch", "group", 32, "NHWC", 1e-5,
         (8, 64, 56, 56), (2, 64, 14, 14), normal(1e4, 1.0, "NHWC"), "variance about 1 per group"),
)

_BY_NAME = {case.name: case for case in CASES}


def case(name):
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"no conformance case named {name!r}; known: {list(_BY_NAME)}") from None
