"""TensorFlow and Keras 3 on the CPU (kind "framework").

- ``tf.nn.moments`` over the group axes of the canonical view (every layer, both layouts): returns
  mean and biased variance; it computes no output.
- ``tf.compat.v1.nn.fused_batch_norm`` in training mode (FusedBatchNormV3), both data formats: its
  batch_mean and batch_variance outputs are the statistics (batch_variance is the one TensorFlow
  feeds its running variance). The same call under ``tf.function(jit_compile=True)`` is compiled
  by XLA, which expands the op into its own arithmetic: a different algorithm, measured separately.
- Keras 3 (TensorFlow backend): ``BatchNormalization`` (axis = the channel axis, momentum 0: the
  moving statistics become the batch's, exact), ``LayerNormalization`` (every axis but the batch)
  and ``GroupNormalization`` (axis = the channel axis), without scale and centre, called with
  ``training=True`` outside any compiled function; LayerNormalization and GroupNormalization give
  only their output, so their statistics are recovered from it at epsilon 0
  (numerics/implementations/base.py).

Determinism and noise: before TensorFlow is first imported here, ``TF_CPP_MIN_LOG_LEVEL`` defaults
to 2 (no info logs) and ``KERAS_BACKEND`` to "tensorflow"; then TensorFlow runs one intra-op and one
inter-op thread (a reduction split over threads could depend on their count) with op determinism
enabled. A process that initialized TensorFlow before keeps its own thread settings.
"""
import os
import sys

import numpy as np

from .base import Implementation, Prepared, canonical, feature_axes, recover_from_output

ALL_NORMS = ("batch", "layer", "instance", "group")
BOTH_LAYOUTS = ("NCHW", "NHWC")
MODULES = ("tensorflow", "keras")
PACKAGES = ("tensorflow", "tensorflow-cpu", "keras")


def tf_module():
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import tensorflow as tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # the runtime was initialized elsewhere: its settings stay
            pass
        tf.config.experimental.enable_op_determinism()
        tf.get_logger().setLevel("ERROR")  # every adapter call traces a new tf.function
    import tensorflow as tf
    return tf


def to_numpy(tensor):
    return np.asarray(tensor.numpy(), np.float64)


# ---- tf.nn.moments ------------------------------------------------------------------------------

def prepare_moments(x, norm, groups, layout, device):
    tf = tf_module()
    native = tf.constant(np.ascontiguousarray(canonical(x, norm, groups, layout)))
    return Prepared(lambda: tf.nn.moments(native, axes=[1, 3]),
                    lambda result: (to_numpy(result[0]), to_numpy(result[1])))


# ---- FusedBatchNormV3, eager and XLA -----------------------------------------------------------

def fused_function(layout, eps, compiled):
    tf = tf_module()

    def fused(native):
        channels = native.shape[1 if layout == "NCHW" else -1]
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            native, tf.ones([channels], native.dtype), tf.zeros([channels], native.dtype),
            epsilon=eps, data_format="NCHW" if layout == "NCHW" else "NHWC", is_training=True)
        return y, mean, variance
    return tf.function(fused, jit_compile=True) if compiled else fused


def fused_prepare(compiled):
    def prepare(x, norm, groups, layout, device):
        tf = tf_module()
        function, native = fused_function(layout, 0.0, compiled), tf.constant(x)
        return Prepared(lambda: function(native),
                        lambda result: (to_numpy(result[1]), to_numpy(result[2])))
    return prepare


def fused_normalize(compiled):
    def normalize(x, norm, groups, layout, eps):
        tf = tf_module()
        return fused_function(layout, eps, compiled)(tf.constant(x))[0].numpy()
    return normalize


def fused_default_eps():
    import inspect
    return inspect.signature(tf_module().compat.v1.nn.fused_batch_norm).parameters["epsilon"].default


# ---- Keras 3 layers ----------------------------------------------------------------------------

def keras_layer(norm, layout, rank, groups, eps):
    tf_module()
    import keras
    channel = 1 if layout == "NCHW" else rank - 1
    common = dict(epsilon=eps, center=False, scale=False)
    if norm == "batch":
        return keras.layers.BatchNormalization(axis=channel, momentum=0.0, **common)
    if norm == "layer":
        return keras.layers.LayerNormalization(axis=list(feature_axes("layer", rank, layout)), **common)
    return keras.layers.GroupNormalization(groups=groups, axis=channel, **common)


def keras_prepare(x, norm, groups, layout, device):
    tf = tf_module()
    layer, native = keras_layer(norm, layout, np.ndim(x), groups, 0.0), tf.constant(x)
    layer.build(native.shape)

    def call():
        y = layer(native, training=True)
        if norm == "batch":
            return y, (layer.moving_mean, layer.moving_variance)
        return y, None

    def finish(result):
        y, moving = result
        if moving is not None:
            return to_numpy(moving[0]), to_numpy(moving[1])
        return recover_from_output(x, y.numpy(), norm, groups, layout)
    return Prepared(call, finish)


def keras_normalize(x, norm, groups, layout, eps):
    tf = tf_module()
    return keras_layer(norm, layout, np.ndim(x), groups, eps)(tf.constant(x), training=True).numpy()


def keras_default_eps(norm):
    def default_eps():
        import inspect
        tf_module()
        import keras
        layer = {"batch": keras.layers.BatchNormalization, "layer": keras.layers.LayerNormalization,
                 "group": keras.layers.GroupNormalization}[norm]
        return inspect.signature(layer).parameters["epsilon"].default
    return default_eps


def tf_implementation(name, norms, ddof, used_by, algorithm, prepare, normalize=None,
                      default_eps=lambda: None, exposes_variance=True):
    return Implementation(name, "framework", "TensorFlow", norms, BOTH_LAYOUTS, ddof, used_by,
                          algorithm, prepare, normalize, default_eps, MODULES, PACKAGES,
                          exposes_variance=exposes_variance)


IMPLEMENTATIONS = (
    tf_implementation("tf.nn.moments", ALL_NORMS, 0, "tf.nn.moments over the group axes",
                      "mean, then mean of squared differences (two passes), float32",
                      prepare_moments),
    tf_implementation("tf fused_batch_norm", ("batch",), 1,
                      "tf.compat.v1.nn.fused_batch_norm(is_training=True): batch_variance",
                      "FusedBatchNormV3 CPU kernel", fused_prepare(False), fused_normalize(False),
                      fused_default_eps),
    tf_implementation("tf XLA fused_batch_norm", ("batch",), 1,
                      "the same under tf.function(jit_compile=True)",
                      "XLA's expansion of BatchNormTraining", fused_prepare(True),
                      fused_normalize(True), fused_default_eps),
    tf_implementation("keras BatchNormalization", ("batch",), 0,
                      "keras.layers.BatchNormalization, training, momentum 0: moving_variance",
                      "keras.ops.moments on the TensorFlow backend", keras_prepare,
                      keras_normalize, keras_default_eps("batch")),
    tf_implementation("keras LayerNormalization", ("layer",), 0,
                      "keras.layers.LayerNormalization; recovered from the output at epsilon 0",
                      "keras.ops.moments on the TensorFlow backend", keras_prepare,
                      keras_normalize, keras_default_eps("layer"), exposes_variance=False),
    tf_implementation("keras GroupNormalization", ("group",), 0,
                      "keras.layers.GroupNormalization; recovered from the output at epsilon 0",
                      "keras.ops.moments on the TensorFlow backend", keras_prepare,
                      keras_normalize, keras_default_eps("group"), exposes_variance=False),
)
