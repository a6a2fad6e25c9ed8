"""ONNX Runtime on the CPU (kind "framework"): one-node graphs built with the onnx helper API, run
by an InferenceSession on the CPU execution provider with one intra-op thread (the result of a
reduction split over threads could depend on their count) and the default graph optimizations.

- LayerNormalization (opset 17 and later): its optional outputs Mean and InvStdDev give the
  statistics (epsilon 0: var = 1/InvStdDev², in float64; InvStdDev is float32, so this recovery adds
  a few float32 units). ``axis`` = 1 reduces every axis but the batch: both layouts.
- BatchNormalization (opset 15) with training_mode = 1 and momentum 0: the outputs running_mean and
  running_var are the batch's (new = 0·old + 1·batch, exact). NCHW only (the channel axis is 1).
- InstanceNormalization and GroupNormalization (opset 21): output only; statistics recovered from
  the output at epsilon 0 (numerics/implementations/base.py). NCHW only. ONNX Runtime registers no
  CPU kernel for GroupNormalization in the ONNX domain: it runs the operator's ONNX function body,
  so what is measured is that body (ReduceMean of x and of x·x, then their difference) in float32.
"""
import numpy as np

from .base import Implementation, Prepared, recover_from_output

OPSET = 21
IR_VERSION = 10
NCHW_ONLY = ("NCHW",)
DTYPES = ("float16", "float32", "float64")


def element_type(dtype):
    from onnx import TensorProto
    return {np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.float32): TensorProto.FLOAT,
            np.dtype(np.float64): TensorProto.DOUBLE}[np.dtype(dtype)]


def session(operator, x, attributes, constants, outputs):
    """An InferenceSession running one ``operator`` node on input X (x's shape and dtype) and the
    ``constants`` ({name: array}) as further inputs."""
    import onnxruntime
    from onnx import helper
    names = ["X", *constants]
    node = helper.make_node(operator, names, list(outputs), **attributes)
    inputs = [helper.make_tensor_value_info(name, element_type(x.dtype),
                                            list((x if name == "X" else constants[name]).shape))
              for name in names]
    results = [helper.make_tensor_value_info(name, element_type(x.dtype), None) for name in outputs]
    graph = helper.make_graph([node], operator, inputs, results)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def graph_of(operator, x, groups, eps):
    """(session, feeds) computing ``operator`` on x (weight 1, bias 0) at ``eps``."""
    channels, dtype = x.shape[1], x.dtype
    ones, zeros = np.ones(channels, dtype), np.zeros(channels, dtype)
    if operator == "LayerNormalization":
        constants = {"Scale": np.ones(x.shape[1:], dtype)}
        attributes, outputs = dict(axis=1, epsilon=eps), ("Y", "Mean", "InvStdDev")
    elif operator == "BatchNormalization":
        constants = {"Scale": ones, "B": zeros, "InputMean": zeros, "InputVar": ones}
        attributes = dict(epsilon=eps, momentum=0.0, training_mode=1)
        outputs = ("Y", "RunningMean", "RunningVar")
    elif operator == "GroupNormalization":
        constants = {"Scale": ones, "B": zeros}
        attributes, outputs = dict(epsilon=eps, num_groups=groups), ("Y",)
    else:
        constants = {"Scale": ones, "B": zeros}
        attributes, outputs = dict(epsilon=eps), ("Y",)
    return session(operator, x, attributes, constants, outputs), {"X": x, **constants}


def prepare_for(operator):
    def prepare(x, norm, groups, layout, device):
        x = np.ascontiguousarray(x)
        runner, feeds = graph_of(operator, x, groups, 0.0)

        def finish(result):
            if operator == "LayerNormalization":
                with np.errstate(divide="ignore"):
                    return result[1].astype(np.float64), 1.0 / result[2].astype(np.float64) ** 2
            if operator == "BatchNormalization":
                return result[1].astype(np.float64), result[2].astype(np.float64)
            return recover_from_output(x, result[0], norm, groups, layout)
        return Prepared(lambda: runner.run(None, feeds), finish)
    return prepare


def normalize_for(operator):
    def normalize(x, norm, groups, layout, eps):
        x = np.ascontiguousarray(x)
        runner, feeds = graph_of(operator, x, groups, eps)
        return runner.run(None, feeds)[0]
    return normalize


def default_eps_for(operator):
    def default_eps():
        import onnx.defs
        return onnx.defs.get_schema(operator, OPSET).attributes["epsilon"].default_value.f
    return default_eps


def onnxruntime_implementation(operator, norm, layouts, how, algorithm, exposes_variance):
    return Implementation(
        f"onnxruntime {operator}", "framework", "ONNX Runtime", (norm,), layouts, 0,
        f"ONNX {operator} (opset {OPSET}) on ONNX Runtime's CPU provider; {how}", algorithm,
        prepare_for(operator), normalize_for(operator), default_eps_for(operator),
        ("onnxruntime", "onnx"), ("onnxruntime", "onnx"), exposes_variance=exposes_variance,
        dtypes=DTYPES)


IMPLEMENTATIONS = (
    onnxruntime_implementation("BatchNormalization", "batch", NCHW_ONLY,
                               "training_mode=1, momentum 0: running_var",
                               "ONNX Runtime's CPU kernel (training mode)", True),
    onnxruntime_implementation("LayerNormalization", "layer", ("NCHW", "NHWC"),
                               "epsilon 0: Mean and 1/InvStdDev²",
                               "ONNX Runtime's CPU kernel: E[x²] − E[x]², float32 sums", True),
    onnxruntime_implementation("InstanceNormalization", "instance", NCHW_ONLY,
                               "recovered from the output at epsilon 0",
                               "ONNX Runtime's CPU kernel", False),
    onnxruntime_implementation("GroupNormalization", "group", NCHW_ONLY,
                               "recovered from the output at epsilon 0",
                               "the ONNX function body (no CPU kernel): ReduceMean(x·x) − "
                               "ReduceMean(x)², float32, no clamp", False),
)
