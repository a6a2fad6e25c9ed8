"""What one implementation of the normalization statistics is, and the helpers every adapter shares.

An implementation is a way the mean and variance of normalization groups get computed in practice:

- kind "framework": a real library's own code ran (numpy, PyTorch, JAX/Flax, ONNX Runtime,
  TensorFlow/Keras);
- kind "recipe": ``numerics.moments`` configured the way a framework's own source computes (update
  rule, accumulator, clamp; the reduction order is approximate; each recipe names its sources);
- kind "expression": the textbook formula in numpy, as user code writes it.

Every adapter gives the statistics of a numpy input as float64 arrays of the statistics shape of
``numerics.canonical_view`` (mean, var), and, where the layer computes one, the normalized output
``y`` (weight 1, bias 0) at a given eps. For timing, ``prepare`` converts the input to the
framework's native object once and returns a ``Prepared`` whose ``call`` runs only the framework
call (a benchmark times ``implementation.run(prepared)``).

Where a layer returns only its output, the statistics are recovered from it (``recover_from_output``):
the layer computes y = (x − m̂)·r̂ with r̂ = 1/sqrt(v̂ + eps); at eps = 0 the least-squares line of x on
y over a group has slope 1/r̂ and intercept m̂. Each y carries one rounding of the output format
(relative u), which moves the recovered variance by at most about 2u (u of the output format) and the
mean by about u·std: below that level such a row measures the recovery, not the layer. A group
whose output at eps = 0 is not finite (a variance that was zero or negative) is recovered as NaN.
"""
import contextlib
import itertools
import importlib.metadata
import importlib.util
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from .. import precision, subsets

KINDS = ("framework", "recipe", "expression")
DEVICES = ("cpu", "cuda")
ALL_FORMATS = ("float16", "bfloat16", "float32", "float64")
#: elements per slice of recover_from_output (two float64 copies: 8 MiB each)
RECOVERY_CHUNK = 1 << 20


class UnsupportedError(ValueError):
    """The implementation does not offer this layer, layout, device or output."""


class Prepared(NamedTuple):
    """An input converted to the framework's native object. ``call()`` runs the framework's
    computation on it and nothing else (what a benchmark times; it waits for the device);
    ``finish(result)`` turns that result into (mean, var) float64 numpy arrays."""
    call: Callable[[], object]
    finish: Callable[[object], tuple]


def cpu_only():
    return ("cpu",)


@dataclass(frozen=True)
class Implementation:
    """One implementation (module docstring). ``prepare(x, norm, groups, layout, device)`` returns
    a Prepared; ``normalize(x, norm, groups, layout, eps)`` returns y in x's storage layout (None:
    the implementation computes no output). ``default_eps()`` reads the layer's default eps from
    the framework (None where it has none). ``modules``: the import names it needs; ``packages``:
    the distributions whose versions describe it; ``dtypes``: the input formats it takes.
    ``exposes_variance``: False where the variance is
    recovered from the output (module docstring), which hides its sign. ``pinned()`` is a context
    manager that fixes what the result depends on (threads) for accuracy runs."""
    name: str
    kind: str
    framework: str
    norms: tuple
    layouts: tuple
    ddof: int
    used_by: str
    algorithm: str
    prepare: Callable
    normalize: Callable | None = None
    default_eps: Callable[[], float | None] = lambda: None
    modules: tuple = ()
    packages: tuple = ()
    devices: Callable[[], tuple] = cpu_only
    exposes_variance: bool = True
    pinned: Callable = contextlib.nullcontext
    dtypes: tuple = ALL_FORMATS
    notes: str = field(default="")

    def available(self):
        """True when every module it needs can be imported here."""
        return all(importlib.util.find_spec(module) is not None for module in self.modules)

    def version(self):
        """The versions of the packages that ran, e.g. "torch 2.13.0+cpu" (a package listed
        under several distribution names, like tensorflow and tensorflow-cpu: the installed one)."""
        found = []
        for package in self.packages:
            try:
                found.append(f"{package} {importlib.metadata.version(package)}")
            except importlib.metadata.PackageNotFoundError:
                continue
        return "; ".join(found)

    def supports(self, norm, layout="NCHW"):
        return norm in self.norms and layout in self.layouts

    def check(self, x, norm, groups, layout, device="cpu"):
        if not self.supports(norm, layout):
            raise UnsupportedError(f"{self.name} does not compute norm={norm!r} with layout={layout!r} "
                                   f"(it offers norms {self.norms}, layouts {self.layouts})")
        if device not in self.devices():
            raise UnsupportedError(f"{self.name} cannot run on device={device!r} here (devices: "
                                   f"{self.devices()})")
        if precision.format_name(np.asarray(x).dtype, "x") not in self.dtypes:
            raise UnsupportedError(f"{self.name} takes {', '.join(self.dtypes)} input, not "
                                   f"{np.asarray(x).dtype}")
        if not self.available():
            raise UnsupportedError(f"{self.name} needs {', '.join(self.modules)}, not installed")
        return subsets.canonical_view(np.shape(x), norm, groups, layout)

    def statistics(self, x, norm, *, groups=None, layout="NCHW"):
        """(mean, var) of every group of the numpy array ``x``: float64 arrays of the statistics
        shape, with the ddof the implementation returns (``self.ddof``)."""
        view = self.check(x, norm, groups, layout)
        with self.pinned(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            prepared = self.prepare(x, norm, groups, layout, "cpu")
            mean, var = prepared.finish(prepared.call())
        return (np.asarray(mean, np.float64).reshape(view.stats_shape),
                np.asarray(var, np.float64).reshape(view.stats_shape))

    def output(self, x, norm, *, groups=None, layout="NCHW", eps=None):
        """The layer's normalized output y (weight 1, bias 0) at ``eps`` (default: the layer's),
        as a numpy array of x's shape and storage layout."""
        self.check(x, norm, groups, layout)
        if self.normalize is None:
            raise UnsupportedError(f"{self.name} computes statistics only, no normalized output")
        eps = self.default_eps() if eps is None else eps
        with self.pinned(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.asarray(self.normalize(x, norm, groups, layout, float(eps)))

    def run(self, prepared):
        """Run the prepared framework call (what a benchmark times)."""
        return prepared.call()


# ---- helpers the adapters share -------------------------------------------------------------------

def canonical(x, norm, groups, layout):
    """x as its (kept_outer, reduced_outer, kept_inner, reduced_inner) view: each group reduces
    over axes 1 and 3, and the statistics come out in the layer's order."""
    return np.reshape(x, subsets.canonical_view(np.shape(x), norm, groups, layout).view_shape)


def to_storage(y, layout):
    """A logical (N, C, *spatial) result back in the storage layout, C-contiguous."""
    return np.ascontiguousarray(y if layout == "NCHW" else np.moveaxis(y, 1, -1))


def feature_axes(norm, rank, layout):
    """The axes a layer reduces over for a tensor of ``rank`` stored in ``layout`` (GroupNorm:
    see group_reshape)."""
    spatial = tuple(range(2, rank)) if layout == "NCHW" else tuple(range(1, rank - 1))
    channel = 1 if layout == "NCHW" else rank - 1
    if norm == "batch":
        return (0, *spatial)
    if norm == "instance":
        return spatial
    if norm == "layer":
        return tuple(range(1, rank))
    raise UnsupportedError(f"no single axis set for norm={norm!r}: reshape the groups first "
                           f"(channel axis {channel})")


def normalize_with(x, mean, var, norm, groups, layout, eps, dtype=np.float32):
    """y = (x − mean)·(1/sqrt(var + eps)) in ``dtype``, the statistics broadcast over their groups:
    what a layer does with its statistics (weight 1, bias 0)."""
    x4 = canonical(np.asarray(x, dtype), norm, groups, layout)
    view = subsets.canonical_view(np.shape(x), norm, groups, layout)
    shape = (view.kept_outer, 1, view.kept_inner, 1)
    mean4 = np.asarray(mean, dtype).reshape(shape)
    inverse = (dtype(1) / np.sqrt(np.asarray(var, dtype) + dtype(eps))).reshape(shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((x4 - mean4) * inverse).reshape(np.shape(x))


def recover_from_output(x, y, norm, groups, layout):
    """(mean, var) of each group from the layer's output y at eps = 0 (module docstring): the
    least-squares line x = m + s·y over the group in float64 gives m̂ = m and v̂ = s²; groups with a
    non-finite output give NaN. Works through slices of about RECOVERY_CHUNK elements of the
    canonical view (whole groups), in place, so that a large tensor needs two float64 copies of one
    slice at most and the slice stays in cache."""
    view = subsets.canonical_view(np.shape(x), norm, groups, layout)
    xs, ys = canonical(x, norm, groups, layout), canonical(y, norm, groups, layout)
    mean = np.empty((view.kept_outer, view.kept_inner))
    var = np.empty((view.kept_outer, view.kept_inner))
    with np.errstate(all="ignore"):
        step = max(1, RECOVERY_CHUNK // view.group_size)
        for outer, inner in itertools.product(range(view.kept_outer),
                                              range(0, view.kept_inner, step)):
            part = slice(inner, inner + step)
            # (reduced_outer, groups of the slice, reduced_inner)
            x_centred = xs[outer, :, part].astype(np.float64)
            y_centred = ys[outer, :, part].astype(np.float64)
            x_mean = x_centred.mean(axis=(0, 2))
            y_mean = y_centred.mean(axis=(0, 2))
            x_centred -= x_mean[None, :, None]
            y_centred -= y_mean[None, :, None]
            slope = (np.einsum("pkq,pkq->k", x_centred, y_centred)
                     / np.einsum("pkq,pkq->k", y_centred, y_centred))
            finite = np.isfinite(y_centred).all(axis=(0, 2))
            mean[outer, part] = np.where(finite, x_mean - slope * y_mean, math.nan)
            var[outer, part] = np.where(finite, slope ** 2, math.nan)
    return mean.reshape(view.stats_shape), var.reshape(view.stats_shape)
