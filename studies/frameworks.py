"""Study (b): the variances that numpy and PyTorch (CPU) compute, and the recipes of other
frameworks (research/frameworks.md) reproduced with numerics, on the same inputs.

Three kinds of rows. "library": a library's own variance code, run here (numpy, PyTorch CPU).
"expression": the textbook formula written with numpy means, as user code does. "recipe":
numerics.moments with the update rule, accumulator and clamp that frameworks.md documents for a
framework the machine cannot run (Flax, Caffe2, ONNX Runtime, TensorFlow, CUDA kernels); the rule
and precision are the documented facts, the reduction order is an approximation (stated per
recipe). Both are compared with the exact variance of the stored float32 input
(numerics.reference), group by group.

Getting PyTorch's variance out of its normalization layers:
- BatchNorm: ``native_batch_norm`` in training mode with momentum 1 leaves the batch's unbiased
  variance, as the kernel computed it, in ``running_var`` (new = 1·var + 0·old); compared with
  the exact ddof = 1 variance. InstanceNorm is the same call on the (1, N·C, H, W) view that
  ``torch.instance_norm`` builds.
- LayerNorm and GroupNorm return only mean and rstd = 1/sqrt(var + eps): with eps = 0 the variance
  is 1/rstd², taken in float64. rstd is a float32 result of a square root and a division, so this
  recovery alone adds up to a few float32 units (≈ 2e-7): below that, those rows measure the
  recovery, not the statistics.
"""
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

import numerics
from numerics import data, reference
from studies import errors, report

TITLE = "Frameworks"
ANCHOR = "frameworks"

SHAPE = (8, 64, 56, 56)
QUICK_SHAPE = (2, 64, 14, 14)
SUBSETS = (("batch", None), ("layer", None), ("instance", None), ("group", 32))
LAYOUTS = ("NCHW", "NHWC")
#: (distribution, mean) of float32 inputs with std 1: centred and shifted activations, post-ReLU
CONDITIONS = (("normal", 0.0), ("normal", 1e2), ("normal", 1e4), ("normal", 1e5), ("half_normal", 0.0))
QUICK_CONDITIONS = (("normal", 0.0), ("normal", 1e4))
#: accuracy.md's case: GroupNorm G = 32 on (8, 64, 56, 56), float32, mean 1e4, std 1
ANCHOR_CONDITION = ("normal", 1e4)
ANCHOR_SUBSET = ("group", 32)
#: one thread: PyTorch's channels-last BatchNorm sums per thread, so its result depends on the
#: thread count; fixing it makes the run reproducible on any machine
TORCH_THREADS = 1


def condition_label(distribution, mean):
    return f"{distribution}, mean {mean:g}, std 1"


# ---- what runs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Implementation:
    name: str
    kind: str          # "library", "expression" or "recipe" (module docstring)
    used_by: str       # where frameworks.md says this computation ships
    ddof: int          # the variance it returns: biased (0) or unbiased (1)
    norms: tuple       # the layers it applies to
    compute: object    # (x, norm, groups, layout) -> variances, in C order of the statistics


def canonical(x, norm, groups, layout):
    """x as its (kept_outer, reduced_outer, kept_inner, reduced_inner) view: each group reduces
    over axes 1 and 3, the statistics come out in the layer's order."""
    return x.reshape(numerics.canonical_view(x.shape, norm, groups, layout).view_shape)


def numpy_var(dtype):
    def compute(x, norm, groups, layout):
        return canonical(x, norm, groups, layout).var(axis=(1, 3), dtype=dtype)
    return compute


def numpy_textbook(x, norm, groups, layout):
    x4 = canonical(x, norm, groups, layout)
    return (x4 * x4).mean(axis=(1, 3)) - x4.mean(axis=(1, 3)) ** 2


def torch_tensor(x, layout):
    """The array as PyTorch sees an (N, C, *spatial) tensor: NHWC data become a channels-last
    tensor (a permuted view, no copy), which selects PyTorch's channels-last kernels."""
    import torch

    tensor = torch.from_numpy(x)
    return tensor if layout == "NCHW" else tensor.permute(0, x.ndim - 1, *range(1, x.ndim - 1))


def torch_var_mean(x, norm, groups, layout):
    import torch

    variance, _ = torch.var_mean(torch.from_numpy(canonical(x, norm, groups, layout)), dim=(1, 3),
                                 correction=0)
    return variance.numpy()


def batch_norm_running_var(tensor):
    import torch

    channels = tensor.shape[1]
    running_mean, running_var = torch.zeros(channels), torch.ones(channels)
    torch.ops.aten.native_batch_norm(tensor, None, None, running_mean, running_var, True, 1.0, 0.0)
    return running_var


def torch_batch_norm(x, norm, groups, layout):
    return batch_norm_running_var(torch_tensor(x, layout)).numpy()


def torch_instance_norm(x, norm, groups, layout):
    tensor = torch_tensor(x, layout)
    batch, channels = tensor.shape[:2]
    # torch.instance_norm: input.contiguous().view(1, N*C, *spatial), then batch norm
    reshaped = tensor.contiguous().view(1, batch * channels, *tensor.shape[2:])
    return batch_norm_running_var(reshaped).numpy()


def variance_from_rstd(rstd):
    return 1.0 / rstd.double().numpy() ** 2


def torch_layer_norm(x, norm, groups, layout):
    import torch

    tensor = torch_tensor(x, layout)
    _, _, rstd = torch.ops.aten.native_layer_norm(tensor, list(tensor.shape[1:]), None, None, 0.0)
    return variance_from_rstd(rstd)


def torch_group_norm(x, norm, groups, layout):
    import torch

    tensor = torch_tensor(x, layout)
    batch, channels = tensor.shape[:2]
    _, _, rstd = torch.ops.aten.native_group_norm(tensor, None, None, batch, channels,
                                                  math.prod(tensor.shape[2:]), groups, 0.0)
    return variance_from_rstd(rstd)


def recipe(algorithm, acc_dtype, topology=None, clamp=False):
    def compute(x, norm, groups, layout):
        return numerics.moments(x, norm, groups=groups, layout=layout, algorithm=algorithm,
                                acc_dtype=acc_dtype, topology=topology, clamp=clamp).var
    return compute


ALL_NORMS = tuple(norm for norm, _ in SUBSETS)
#: PyTorch's CPU LayerNorm/GroupNorm: Welford over chunks of 16 vectors of 8 float32 lanes (AVX2,
#: what torch reports here), chunks merged by a binary-counter cascade (moments_utils.h): numerics'
#: 8 lanes, blocks of 128 elements merged pairwise is the nearest topology
TORCH_CPU_CHUNKS = numerics.Topology(8, 128, "torch_cpu_chunks")
#: a CUDA block reducing one group: 128 threads with strided Welford loops, then warp shuffles
GPU_BLOCK = numerics.Topology(128, 0, "gpu_block128")
DEFAULT_ORDER = f"order: numerics default ({numerics.DEFAULT_TOPOLOGY})"

IMPLEMENTATIONS = (
    Implementation("numpy var float32", "library", "numpy.var(dtype=float32): two passes",
                   0, ALL_NORMS, numpy_var(np.float32)),
    Implementation("numpy var float64", "library", "numpy.var(dtype=float64)",
                   0, ALL_NORMS, numpy_var(np.float64)),
    Implementation("numpy E[x²]−E[x]² float32", "expression",
                   "the textbook formula written in numpy (what jax.nn.standardize computes)",
                   0, ALL_NORMS, numpy_textbook),
    Implementation("torch.var_mean", "library", "torch.var_mean, correction=0",
                   0, ALL_NORMS, torch_var_mean),
    Implementation("torch batch_norm", "library",
                   "native_batch_norm, training, momentum 1: running_var (unbiased)",
                   1, ("batch",), torch_batch_norm),
    Implementation("torch instance_norm", "library",
                   "native_batch_norm on the (1, N·C, H, W) view, as torch.instance_norm: "
                   "running_var (unbiased)", 1, ("instance",), torch_instance_norm),
    Implementation("torch layer_norm", "library", "native_layer_norm, eps 0: 1/rstd²",
                   0, ("layer",), torch_layer_norm),
    Implementation("torch group_norm", "library", "native_group_norm, eps 0: 1/rstd²",
                   0, ("group",), torch_group_norm),
    Implementation("recipe: naive f32", "recipe",
                   "Caffe2 GroupNorm/SpatialBN, XLA BatchNormTraining, ONNX Runtime LayerNorm CPU "
                   f"and GroupNorm CUDA, Keras 3 torch backend; {DEFAULT_ORDER}",
                   0, ALL_NORMS, recipe("naive", "float32")),
    Implementation("recipe: naive f32 + clamp", "recipe",
                   "PyTorch GroupNorm CPU channels-last, Flax use_fast_variance=True; "
                   + DEFAULT_ORDER, 0, ALL_NORMS, recipe("naive", "float32", clamp=True)),
    Implementation("recipe: naive f64", "recipe",
                   f"ONNX Runtime GroupNormalization CPU; {DEFAULT_ORDER}",
                   0, ALL_NORMS, recipe("naive", "float64")),
    Implementation("recipe: two-pass f32", "recipe",
                   "tf.nn.moments, Keras 3 (TF, JAX), Flax use_fast_variance=False, oneDNN, MXNet, "
                   f"Caffe; {DEFAULT_ORDER}", 0, ALL_NORMS, recipe("two_pass", "float32")),
    Implementation("recipe: two-pass f64", "recipe",
                   f"PyTorch BatchNorm CPU (float32 data, float64 sums); {DEFAULT_ORDER}",
                   0, ALL_NORMS, recipe("two_pass", "float64")),
    Implementation("recipe: welford f32, torch CPU chunks", "recipe",
                   "PyTorch LayerNorm / GroupNorm CPU (NCHW); order: 8 lanes, blocks of 128, "
                   "pairwise", 0, ALL_NORMS, recipe("welford", "float32", TORCH_CPU_CHUNKS)),
    Implementation("recipe: welford f32, GPU block", "recipe",
                   "PyTorch BN/LN/GN CUDA, apex, ONNX Runtime LayerNorm CUDA; order: 128 "
                   "lanes (threads), warp-shuffle tree", 0, ALL_NORMS,
                   recipe("welford", "float32", GPU_BLOCK)),
)


# ---- the cells ---------------------------------------------------------------------------------

def make_input(shape, distribution, mean, layout, seed):
    values = data.generate(shape, "float32", distribution, mean=mean, std=1.0, seed=seed)
    # NHWC holds the same values channels last: the groups are identical, only the order differs
    return values if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(values, 1, -1))


def rows_for(x, condition, subset, layout):
    norm, groups = subset
    exact = {ddof: reference.moments(x, norm, groups=groups, layout=layout, ddof=ddof)[1]
             for ddof in (0, 1)}
    kappa = reference.condition_number(x, norm, groups=groups, layout=layout)
    rows = []
    for implementation in IMPLEMENTATIONS:
        if norm not in implementation.norms:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            variances = implementation.compute(x, norm, groups, layout)
        rows.append({
            "implementation": implementation.name, "kind": implementation.kind,
            "used_by": implementation.used_by, "ddof": implementation.ddof,
            "norm": norm, "groups": groups, "subset": report.subset_label(norm, groups),
            "layout": layout,
            "distribution": condition[0], "mean": condition[1], "std": 1.0,
            "condition": condition_label(*condition), "shape": "x".join(map(str, x.shape)),
            "input_dtype": "float32", "kappa_median": float(np.median(kappa)),
            **errors.variance_errors(variances, exact[implementation.ddof], "float32"),
        })
    return rows


def anchor_extras(x):
    """The textbook rule in float32 in three orders, for the anchor comparison's "naive" line."""
    norm, groups = ANCHOR_SUBSET
    exact = reference.moments(x, norm, groups=groups)[1]
    return {topology: errors.variance_errors(
        numerics.moments(x, norm, groups=groups, algorithm="naive", acc_dtype="float32",
                         topology=topology).var, exact, "float32")["max_rel_error"]
        for topology in ("sequential", numerics.DEFAULT_TOPOLOGY, "pairwise")}


# ---- tables and figure -------------------------------------------------------------------------

#: accuracy.md's figures for the anchor case (worst relative error over 256 groups), the rows of
#: this study that measure the same thing, and whether the textbook rule's three orders belong too
QUOTED_ANCHOR = (
    ("torch.var_mean", "5.9e-8", ("torch.var_mean",), False),
    ("PyTorch native_group_norm statistics", "9.0e-5", ("torch group_norm",), False),
    ("numpy var in float32", "1.4e-6", ("numpy var float32",), False),
    ("bottleneck nanvar", "8.5e-4", (), False),
    ("naive E[x²] − E[x]² in float32", "30 to 887", ("numpy E[x²]−E[x]² float32",
                                                      "recipe: naive f32"), True),
    ("float64 two-pass", "about 4e-15", ("numpy var float64", "recipe: two-pass f64"), False),
)


def anchor_table(frame, extras, quick):
    cells = frame[(frame["subset"] == report.subset_label(*ANCHOR_SUBSET)) & (frame["layout"] == "NCHW")
                  & (frame["condition"] == condition_label(*ANCHOR_CONDITION))]
    measured = dict(zip(cells["implementation"], cells["max_rel_error"]))
    rows = []
    for label, quoted, names, with_orders in QUOTED_ANCHOR:
        if not names:
            text = "not measured: bottleneck is not installed in this environment"
        else:
            text = "; ".join(f"{name}: {measured[name]:.2g}" for name in names)
            if with_orders:
                text += "; numerics naive f32 " + ", ".join(
                    f"{topology}: {value:.3g}" for topology, value in extras.items())
        rows.append({"computation": label, "accuracy.md": quoted, "this run": text})
    note = ("quick mode: a smaller tensor than the anchor's (8, 64, 56, 56)" if quick else "")
    return pd.DataFrame(rows), note


def by_condition_table(frame):
    cells = frame[(frame["subset"] == report.subset_label(*ANCHOR_SUBSET))
                  & (frame["layout"] == "NCHW")]
    table = cells.pivot_table(index="implementation", columns="condition", values="max_rel_error",
                              aggfunc="max", sort=False)
    return table.reset_index()


def by_subset_table(frame):
    cells = frame[frame["condition"] == condition_label(*ANCHOR_CONDITION)].copy()
    cells["column"] = cells["subset"] + " " + cells["layout"]
    table = cells.pivot_table(index="implementation", columns="column", values="max_rel_error",
                              aggfunc="max", sort=False)
    return table.reset_index()


def worst_where_table(frame):
    """Per subset, layout and condition: the worst and the best of the libraries' own code."""
    cells = frame[frame["kind"] == "library"]
    rows = []
    for (subset, layout, condition), group in cells.groupby(["subset", "layout", "condition"],
                                                            sort=False):
        worst = group.loc[group["max_rel_error"].idxmax()]
        best = group.loc[group["max_rel_error"].idxmin()]
        rows.append({"subset": subset, "layout": layout, "condition": condition,
                     "worst": worst["implementation"], "worst error": worst["max_rel_error"],
                     "best": best["implementation"], "best error": best["max_rel_error"]})
    return pd.DataFrame(rows)


def layout_penalties(frame, factor=10.0):
    """(implementation, subset, NCHW error, NHWC error) where the library's own code errs more than
    ``factor`` times more on channels-last data than on the same values channels first, at the
    anchor condition."""
    cells = frame[(frame["kind"] == "library")
                  & (frame["condition"] == condition_label(*ANCHOR_CONDITION))]
    by_layout = cells.pivot_table(index=["implementation", "subset"], columns="layout",
                                  values="max_rel_error", sort=False)
    worse = by_layout[by_layout["NHWC"] > factor * by_layout["NCHW"]]
    return [(name, subset, row["NCHW"], row["NHWC"]) for (name, subset), row in worse.iterrows()]


def figure_anchor_condition(frame, settings):
    import matplotlib.pyplot as plt

    cells = frame[frame["condition"] == condition_label(*ANCHOR_CONDITION)]
    subsets = list(dict.fromkeys(cells["subset"]))
    figure, axes = plt.subplots(1, len(subsets), figsize=(4.6 * len(subsets), 5.2), squeeze=False)
    floor = 1e-17  # exact results (error 0) are drawn at this floor
    for axis, subset in zip(axes.flat, subsets):
        panel = cells[cells["subset"] == subset]
        names = list(dict.fromkeys(panel["implementation"]))
        for offset, layout, color in ((-0.2, "NCHW", "C0"), (0.2, "NHWC", "C1")):
            errors_by_name = panel[panel["layout"] == layout].set_index(
                "implementation")["max_rel_error"]
            heights = [max(errors_by_name.get(name, np.nan), floor) for name in names]
            axis.barh(np.arange(len(names)) + offset, heights, height=0.4, color=color, label=layout,
                      log=True)
        axis.set_yticks(range(len(names)), names, fontsize=7)
        axis.invert_yaxis()
        axis.axvline(2.0 ** -24, color="0.5", ls=":", lw=0.8)
        axis.set_title(subset, fontsize=9)
        axis.set_xlabel("worst-group relative error of var (dotted: u of float32)", fontsize=8)
    axes.flat[0].legend(fontsize=8)
    figure.suptitle(f"Frameworks and recipes on float32 data, {condition_label(*ANCHOR_CONDITION)}",
                    fontsize=10)
    figure.tight_layout(rect=(0, 0.02, 1, 0.96))
    return report.save_figure(figure, settings.figures_directory / "frameworks_anchor_condition.png",
                              settings)


# ---- the study -------------------------------------------------------------------------------

def run(settings):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        shape = QUICK_SHAPE if settings.quick else SHAPE
        conditions = QUICK_CONDITIONS if settings.quick else CONDITIONS
        rows, extras = [], None
        for condition in conditions:
            seed = settings.seed_for("frameworks", shape, *condition)
            for layout in LAYOUTS:
                x = make_input(shape, *condition, layout, seed)
                for subset in SUBSETS:
                    rows.extend(rows_for(x, condition, subset, layout))
                if condition == ANCHOR_CONDITION and layout == "NCHW":
                    extras = anchor_extras(x)
    finally:
        torch.set_num_threads(threads)
    frame = pd.DataFrame(rows)
    frame["groups"] = frame["groups"].astype("Int64")
    files = [report.write_parquet(frame, settings.data_directory / "frameworks.parquet", settings),
             figure_anchor_condition(frame, settings)]
    anchor, anchor_note = anchor_table(frame, extras, settings.quick)
    penalties = "; ".join(f"{name} on {subset}: {nchw:.2g} → {nhwc:.2g}"
                          for name, subset, nchw, nhwc in layout_penalties(frame))
    pairs, mismatched = errors.layout_mismatches(frame[frame["kind"] == "recipe"],
                                                 ("implementation", "condition", "subset"))
    layout_verdict = "." if not mismatched else " — the others point at a kernel fault."
    figure = report.figure_link(files[1], settings, "Worst-group relative error per "
                                "implementation, both layouts, at the anchor condition.")
    implementations = pd.DataFrame([{"implementation": item.name, "kind": item.kind,
                                     "ddof compared": item.ddof, "layers": ", ".join(item.norms),
                                     "what it is": item.used_by} for item in IMPLEMENTATIONS])
    body = f"""The same float32 tensors ({shape}; conditions
{'; '.join(condition_label(*condition) for condition in conditions)}; NCHW and the same values
stored NHWC) through numpy {np.__version__}, PyTorch {torch.__version__} on the CPU
({torch.backends.cpu.get_cpu_capability()}, {TORCH_THREADS} thread) and numerics recipes of other
frameworks. Error: worst-group relative error of the variance against the exact variance of the
stored input, with the ddof the implementation returns. `data/frameworks.parquet` holds every cell
(columns as in the accuracy study; `max_rel_error_u` in units of u = 2⁻²⁴, the data's format).

{report.markdown_table(implementations)}

How PyTorch's layers were read: BatchNorm and InstanceNorm from `running_var` after one training
step with momentum 1 (exact copy of the unbiased variance the kernel computed); LayerNorm and
GroupNorm from rstd with eps = 0, var = 1/rstd² in float64, which itself adds up to a few float32
units (≈ 2e-7): values at that level in those rows are the recovery, not the statistics.

### The anchor case of accuracy.md

GroupNorm G = 32, NCHW, float32, mean 1e4, std 1, worst relative error over the groups; the
quoted figures come from a different draw of the data, so only their magnitude can agree.
{anchor_note}

{report.markdown_table(anchor)}

### GroupNorm G = 32 (NCHW) across conditions

{report.markdown_table(by_condition_table(frame))}

### Every layer at {condition_label(*ANCHOR_CONDITION)}

{figure}

{report.markdown_table(by_subset_table(frame))}

Where the libraries' own code errs more than 10× more on the same values stored channels last
(worst-group error, NCHW → NHWC): {penalties or "nowhere"}.

Layout check: the recipes' batch and instance groups visit their elements in the same order in
both layouts, so they must agree exactly: {pairs - mismatched} of {pairs} pairs do{layout_verdict}

### Which library is worst where (numpy's and PyTorch's own code only)

{report.markdown_table(worst_where_table(frame))}
"""
    return report.Section(TITLE, ANCHOR, body, tuple(files))
