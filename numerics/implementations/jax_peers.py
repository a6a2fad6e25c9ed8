"""JAX and Flax (kind "framework"), CPU and, where JAX sees a GPU, CUDA.

Flax linen's BatchNorm (``use_running_average=False``), LayerNorm, GroupNorm and InstanceNorm, each
with ``use_fast_variance`` True (Flax's default: E[x²] − E[x]², clamped at 0) and False (two passes),
and ``jax.nn.standardize`` with ``algorithm`` "fast" (its default, also clamped) and "stable".
Every call runs under ``jax.jit``, as a training step does (XLA may fuse and reorder a jitted
reduction differently from op-by-op execution).

How the statistics are read: BatchNorm with momentum 0 stores the batch mean and biased variance in
``batch_stats`` (new = 0·old + 1·batch, exact). LayerNorm, GroupNorm, InstanceNorm and standardize
return only their output: mean and variance are recovered from the output at eps = 0
(numerics/implementations/base.py, ``recover_from_output``: about 2u of float32 on the variance).

Layouts: BatchNorm and InstanceNorm take the channel axis as an argument (both layouts), LayerNorm
reduces every axis but the batch (both), GroupNorm groups the last axis only (NHWC only);
standardize reduces any axes (the canonical view's, both layouts, every layer).

Determinism: unless JAX was imported first, ``XLA_FLAGS`` gets
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` before it is, so XLA's CPU
reductions run on one thread whatever the machine.
"""
import dataclasses
import inspect
import os
import sys

import numpy as np

from .base import Implementation, Prepared, canonical, feature_axes, recover_from_output

ALL_NORMS = ("batch", "layer", "instance", "group")
BOTH_LAYOUTS = ("NCHW", "NHWC")
ONE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def jax_module():
    if "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "intra_op_parallelism_threads" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {ONE_THREAD_FLAGS}".strip()
    import jax
    return jax


def devices():
    jax = jax_module()
    return ("cpu", "cuda") if any(device.platform == "gpu" for device in jax.devices()) else ("cpu",)


def on_device(x, device):
    jax = jax_module()
    target = jax.devices("gpu" if device == "cuda" else "cpu")[0]
    return jax.device_put(np.asarray(x), target)


def flax_layer(norm, fast, layout, rank, groups, eps):
    """The Flax linen module of ``norm`` for a tensor of ``rank`` stored in ``layout``, without
    scale or bias (weight 1, bias 0)."""
    import flax.linen as nn
    common = dict(epsilon=eps, use_bias=False, use_scale=False, use_fast_variance=fast)
    channel = 1 if layout == "NCHW" else rank - 1
    if norm == "batch":
        return nn.BatchNorm(use_running_average=False, axis=channel, momentum=0.0, **common)
    if norm == "layer":
        return nn.LayerNorm(reduction_axes=feature_axes("layer", rank, layout), **common)
    if norm == "instance":
        return nn.InstanceNorm(feature_axes=channel, **common)
    return nn.GroupNorm(num_groups=groups, **common)


def flax_apply(norm, fast, layout, rank, groups, eps):
    """A jitted function x -> (y, batch statistics or None) of the Flax layer. The layer's
    variables are made inside it: they are constants (no parameters; batch statistics of zeros and
    ones), so XLA drops the init's arithmetic and one compilation serves both."""
    jax = jax_module()
    layer = flax_layer(norm, fast, layout, rank, groups, eps)
    mutable = ["batch_stats"] if norm == "batch" else False

    def apply(x):
        variables = layer.init(jax.random.PRNGKey(0), x)
        result = layer.apply(variables, x, mutable=mutable)
        if norm == "batch":
            y, updates = result
            return y, (updates["batch_stats"]["mean"], updates["batch_stats"]["var"])
        return result, None
    return jax.jit(apply)


def flax_prepare(fast):
    def prepare(x, norm, groups, layout, device):
        apply = flax_apply(norm, fast, layout, np.ndim(x), groups, 0.0)
        native = on_device(x, device)

        def call():
            return jax_module().block_until_ready(apply(native))

        def finish(result):
            y, batch_stats = result
            if batch_stats is not None:
                return np.asarray(batch_stats[0], np.float64), np.asarray(batch_stats[1], np.float64)
            return recover_from_output(x, np.asarray(y), norm, groups, layout)
        return Prepared(call, finish)
    return prepare


def flax_normalize(fast):
    def normalize(x, norm, groups, layout, eps):
        apply = flax_apply(norm, fast, layout, np.ndim(x), groups, eps)
        return np.asarray(apply(on_device(x, "cpu"))[0])
    return normalize


def flax_default_eps(norm):
    def default_eps():
        import flax.linen as nn
        layer = {"batch": nn.BatchNorm, "layer": nn.LayerNorm, "instance": nn.InstanceNorm,
                 "group": nn.GroupNorm}[norm]
        return next(item.default for item in dataclasses.fields(layer) if item.name == "epsilon")
    return default_eps


def standardize_function(algorithm, eps):
    jax = jax_module()
    return jax.jit(lambda x4: jax.nn.standardize(x4, axis=(1, 3), epsilon=eps, algorithm=algorithm))


def standardize_prepare(algorithm):
    def prepare(x, norm, groups, layout, device):
        function = standardize_function(algorithm, 0.0)
        native = on_device(canonical(x, norm, groups, layout), device)

        def finish(y4):
            return recover_from_output(x, np.asarray(y4).reshape(np.shape(x)), norm, groups, layout)
        return Prepared(lambda: jax_module().block_until_ready(function(native)), finish)
    return prepare


def standardize_normalize(algorithm):
    def normalize(x, norm, groups, layout, eps):
        y4 = standardize_function(algorithm, eps)(on_device(canonical(x, norm, groups, layout), "cpu"))
        return np.asarray(y4).reshape(np.shape(x))
    return normalize


def standardize_default_eps():
    jax = jax_module()
    return inspect.signature(jax.nn.standardize).parameters["epsilon"].default


LAYER_NAMES = {"batch": "BatchNorm", "layer": "LayerNorm", "instance": "InstanceNorm",
               "group": "GroupNorm"}


def flax_implementation(norm, fast):
    variant = "fast" if fast else "two-pass"
    layer = LAYER_NAMES[norm]
    how = ("batch_stats with momentum 0 (biased)" if norm == "batch"
           else "recovered from the output at eps 0")
    algorithm = ("E[x²] − E[x]², clamped at 0" if fast else "two passes: mean, then mean of "
                 "squared deviations") + ", float32 for float32 data, XLA's reduction order"
    return Implementation(
        f"flax {layer} {variant}", "framework", "Flax", (norm,),
        ("NHWC",) if norm == "group" else ("NCHW", "NHWC"), 0,
        f"flax.linen.{layer}(use_fast_variance={fast}){'' if norm != 'batch' else ', training'}; "
        + how, algorithm, flax_prepare(fast), flax_normalize(fast), flax_default_eps(norm),
        ("jax", "flax"), ("jax", "jaxlib", "flax"), devices, exposes_variance=norm == "batch")


def standardize_implementation(algorithm):
    text = ("mean(x²) − mean(x)², clamped at 0" if algorithm == "fast"
            else "two passes: mean((x − mean)²)")
    return Implementation(
        f"jax.nn.standardize {algorithm}", "framework", "JAX", ALL_NORMS, BOTH_LAYOUTS, 0,
        f"jax.nn.standardize(algorithm={algorithm!r}) over the group axes; recovered from the "
        "output at eps 0", text + ", in the input's dtype, XLA's reduction order",
        standardize_prepare(algorithm), standardize_normalize(algorithm), standardize_default_eps,
        ("jax",), ("jax", "jaxlib"), devices, exposes_variance=False)


IMPLEMENTATIONS = (
    *(flax_implementation(norm, fast) for norm in ALL_NORMS for fast in (True, False)),
    standardize_implementation("fast"),
    standardize_implementation("stable"),
)
