"""numpy's own variance (kind "framework") and the textbook formula written in numpy (kind
"expression"). numpy reduces with pairwise summation in blocks of 8 (its ``add.reduce``), single
threaded, so its results depend on nothing but the input."""
import numpy as np

from .base import Implementation, Prepared, canonical, normalize_with

ALL_NORMS = ("batch", "layer", "instance", "group")
BOTH_LAYOUTS = ("NCHW", "NHWC")
#: numpy is no layer: the output is what user code writes, at PyTorch's default eps
USER_CODE_EPS = 1e-5


def numpy_var(dtype):
    def prepare(x, norm, groups, layout, device):
        x4 = canonical(x, norm, groups, layout)

        def call():
            return x4.mean(axis=(1, 3), dtype=dtype), x4.var(axis=(1, 3), dtype=dtype)
        return Prepared(call, lambda result: result)
    return prepare


def numpy_var_output(dtype):
    def normalize(x, norm, groups, layout, eps):
        mean, var = numpy_var(dtype)(x, norm, groups, layout, "cpu").call()
        return normalize_with(x, mean, var, norm, groups, layout, eps, dtype=np.float32)
    return normalize


def textbook(x4):
    mean = x4.mean(axis=(1, 3))
    return mean, (x4 * x4).mean(axis=(1, 3)) - mean ** 2


def prepare_textbook(x, norm, groups, layout, device):
    x4 = canonical(x, norm, groups, layout)
    return Prepared(lambda: textbook(x4), lambda result: result)


def normalize_textbook(x, norm, groups, layout, eps):
    mean, var = textbook(canonical(x, norm, groups, layout))
    return normalize_with(x, mean, var, norm, groups, layout, eps, dtype=np.float32)


def numpy_implementation(name, dtype, used_by):
    return Implementation(
        name, "framework", "numpy", ALL_NORMS, BOTH_LAYOUTS, 0, used_by,
        "two passes (mean, then mean of squared deviations), pairwise sums, in "
        f"{np.dtype(dtype).name}", numpy_var(dtype), numpy_var_output(dtype),
        lambda: USER_CODE_EPS, ("numpy",), ("numpy",))


IMPLEMENTATIONS = (
    numpy_implementation("numpy var float32", np.float32, "numpy.var(dtype=float32)"),
    numpy_implementation("numpy var float64", np.float64, "numpy.var(dtype=float64)"),
    Implementation(
        "numpy E[x²]−E[x]² float32", "expression", "numpy", ALL_NORMS, BOTH_LAYOUTS, 0,
        "the textbook formula written in numpy on float32 data (what jax.nn.standardize computes)",
        "one pass: mean(x·x) − mean(x)², numpy's pairwise sums, float32, no clamp",
        prepare_textbook, normalize_textbook, lambda: USER_CODE_EPS, ("numpy",), ("numpy",)),
)
