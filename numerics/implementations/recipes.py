"""Recipes (kind "recipe"): ``numerics.moments`` configured the way a framework's own source
computes its statistics: the update rule, the accumulator and the clamp are the documented facts
(each recipe names the frameworks and layers that ship it); the reduction order is the nearest
numerics topology, an approximation stated per recipe. Where the real framework is installed, the
frameworks study checks the recipe against it."""
import numpy as np

from .. import statistics, topology
from .base import Implementation, Prepared, normalize_with

ALL_NORMS = ("batch", "layer", "instance", "group")
BOTH_LAYOUTS = ("NCHW", "NHWC")
RECIPE_EPS = 1e-5

#: PyTorch's CPU LayerNorm/GroupNorm: Welford over chunks of 16 vectors of 8 float32 lanes (AVX2),
#: chunks merged by a binary-counter cascade: numerics' 8 lanes, blocks of 128 elements merged
#: pairwise is the nearest topology
TORCH_CPU_CHUNKS = topology.Topology(8, 128, "torch_cpu_chunks")
#: a CUDA block reducing one group: 128 threads with strided Welford loops, then warp shuffles
GPU_BLOCK = topology.Topology(128, 0, "gpu_block128")
DEFAULT_ORDER = f"order: numerics default ({topology.DEFAULT_TOPOLOGY})"


def recipe_prepare(algorithm, acc_dtype, order, clamp):
    def prepare(x, norm, groups, layout, device):
        def call():
            return statistics.moments(x, norm, groups=groups, layout=layout, algorithm=algorithm,
                                      acc_dtype=acc_dtype, topology=order, clamp=clamp)
        return Prepared(call, lambda result: (result.mean, result.var))
    return prepare


def recipe_normalize(prepare):
    def normalize(x, norm, groups, layout, eps):
        mean, var = prepare(x, norm, groups, layout, "cpu").call()
        # the layer's arithmetic runs in the accumulator format (float32 for 16-bit data)
        dtype = np.float64 if var.dtype == np.float64 else np.float32
        return normalize_with(x, mean, var, norm, groups, layout, eps, dtype=dtype)
    return normalize


def recipe(name, algorithm, acc_dtype, used_by, order=None, order_text=DEFAULT_ORDER, clamp=False):
    prepare = recipe_prepare(algorithm, acc_dtype, order, clamp)
    text = f"numerics {algorithm}, {acc_dtype} accumulator{', clamp' if clamp else ''}; {order_text}"
    return Implementation(name, "recipe", "numerics", ALL_NORMS, BOTH_LAYOUTS, 0, used_by, text,
                          prepare, recipe_normalize(prepare), lambda: RECIPE_EPS, ("numba",),
                          ("numba",))


IMPLEMENTATIONS = (
    recipe("recipe: naive f32", "naive", "float32",
           "Caffe2 GroupNorm/SpatialBN, XLA BatchNormTraining, ONNX Runtime LayerNorm CPU and "
           "GroupNorm CUDA, Keras 3 torch backend"),
    recipe("recipe: naive f32 + clamp", "naive", "float32",
           "PyTorch GroupNorm CPU channels-last, Flax use_fast_variance=True, jax.nn.standardize "
           "algorithm='fast'", clamp=True),
    recipe("recipe: naive f64", "naive", "float64", "ONNX Runtime GroupNormalization CPU"),
    recipe("recipe: two-pass f32", "two_pass", "float32",
           "tf.nn.moments, Keras 3 (TF, JAX), Flax use_fast_variance=False, jax.nn.standardize "
           "algorithm='stable', oneDNN, MXNet, Caffe"),
    recipe("recipe: two-pass f64", "two_pass", "float64",
           "PyTorch BatchNorm CPU (float32 data, float64 sums)"),
    recipe("recipe: welford f32, torch CPU chunks", "welford", "float32",
           "PyTorch LayerNorm / GroupNorm CPU (NCHW)", TORCH_CPU_CHUNKS,
           "order: 8 lanes, blocks of 128, pairwise"),
    recipe("recipe: welford f32, GPU block", "welford", "float32",
           "PyTorch BN/LN/GN CUDA, apex, ONNX Runtime LayerNorm CUDA", GPU_BLOCK,
           "order: 128 lanes (threads), warp-shuffle tree"),
)

#: recipe name -> (real implementation, the layouts where the recipe describes it; None: every
#: layout the implementation offers): the frameworks study checks each recipe against these
STANDS_IN_FOR = {
    "recipe: naive f32": (("onnxruntime LayerNormalization", None),
                          ("tf XLA fused_batch_norm", None)),
    "recipe: naive f32 + clamp": (("torch group_norm", ("NHWC",)),
                                  ("jax.nn.standardize fast", None),
                                  *((f"flax {layer} fast", None) for layer in
                                    ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm"))),
    "recipe: naive f64": (("onnxruntime GroupNormalization", None),),
    "recipe: two-pass f32": (*((name, None) for name in (
        "tf.nn.moments", "keras BatchNormalization", "keras LayerNormalization",
        "keras GroupNormalization", "jax.nn.standardize stable")),
        *((f"flax {layer} two-pass", None) for layer in
          ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm"))),
    "recipe: two-pass f64": (("torch batch_norm", None), ("torch instance_norm", None)),
    "recipe: welford f32, torch CPU chunks": (("torch layer_norm", None),
                                              ("torch group_norm", ("NCHW",))),
}
