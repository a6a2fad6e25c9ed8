"""Study: how accurate the variance of each normalization group is, over the toolkit's factors.

The factors are algorithm, subset (batch / layer / instance / group with several group sizes),
layout, input format, accumulator format, Bessel correction, data condition (distribution and
|mean|/std) and reduction topology. Their full product is about 10^5 cells, so the sweep is a union
of factorial slices, each crossing every algorithm with the factors that matter to one question
(``slices``). Every cell compares numerics.moments with the exact variance of the stored input
(numerics.reference) group by group and keeps the worst and median group (studies.errors); the
a-priori bound of every group (numerics.bounds) gives the observed/bound ratio. Constant groups,
whose exact variance is 0, are a slice of their own: there only the sign of the computed variance
means anything.

Inputs come from numerics.data.with_condition: per group, unit root-mean-square values with
condition number κ = sqrt(1 + (mean/std)²), so every format stays in range and only κ varies
(float16 cannot even hold a mean of 1e5). Rounding to a narrow input format moves κ (a float32
input cannot resolve std/|mean| much below its u), so every figure uses the κ measured exactly on
the stored values, not the target.
"""
import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

import numerics
from numerics import bounds, data, precision, reference
from studies import engine, errors, report

TITLE = "Accuracy sweep"

ALGORITHMS = tuple(numerics.ALGORITHMS)
#: the textbook order, the fast order every rule runs with by default, and a pure pairwise tree
TOPOLOGIES = ("sequential", numerics.DEFAULT_TOPOLOGY, "pairwise")
#: (input format, accumulator format): each format as input and as accumulator, mixed where
#: frameworks mix (16-bit data, float32 statistics; float32 data, float64 statistics)
PRECISIONS = (("float64", "float64"), ("float32", "float64"), ("float32", "float32"),
              ("float16", "float32"), ("bfloat16", "float32"), ("float16", "float16"),
              ("bfloat16", "bfloat16"))
QUICK_PRECISIONS = (("float64", "float64"), ("float32", "float32"), ("float16", "float32"),
                    ("bfloat16", "bfloat16"))
#: |mean|/std of the condition slice: 0, then steps of about half a decade up to 1e8
MEAN_OVER_STD = (0.0, *(factor * 10.0 ** exponent for exponent in range(8) for factor in (1, 3)),
                 1e8)
QUICK_MEAN_OVER_STD = (0.0, 1.0, 1e2, 1e4)
#: the columns of the LRE table
DECADES = (0.0, *(10.0 ** exponent for exponent in range(9)))
#: the anchor condition (mean 1e4, std 1: docs/architecture.md, section 4.3), on every grid
HEADLINE = 1e4
#: |mean|/std of the tables that compare subsets, distributions, ddof and group sizes: far enough
#: from 0 that the rules differ, close enough that the stable ones keep most digits
MODERATE = 1e2
DISTRIBUTIONS = ("normal", "half_normal", "heavy_tailed", "uniform")
QUICK_DISTRIBUTIONS = ("normal", "half_normal")
#: (norm, groups); with C = 64 channels
SUBSETS = (("batch", None), ("layer", None), ("instance", None), ("group", 2), ("group", 8),
           ("group", 32))
#: constants of the constant-group slice: exactly representable (1.0) or not (0.1), the value of
#: ONNX Runtime issue #21935 (1234.0 -> NaN), and large non-representable ones
CONSTANTS = (0.1, 1.0, 1234.0, 3333.3333, 10000.1)
#: the eps of a typical normalization layer: a variance below -eps makes 1/sqrt(var + eps) NaN
LAYER_EPS = 1e-5
#: where the textbook one-pass formula loses every digit, κ²u ≈ 1 (docs/architecture.md,
#: section 4.3)
PREDICTED_TOTAL_LOSS = {"float32": 4e3, "float64": 1e8, "float16": 45, "bfloat16": 16}


#: what each slice of the sweep asks, for the report's description of the grid
QUESTIONS = {
    "condition": "error against κ: every rule, topology, precision and distribution",
    "subset": "batch / layer / instance / group, both layouts, both Bessel corrections",
    "group_size": "error against the group size n (GroupNorm, G = 1 is LayerNorm and G = C is "
                  "InstanceNorm)",
    "factorial": "every factor crossed with every other (the full profile only)",
    "constant": "groups of one repeated value: the sign of the computed variance, with and "
                "without clamp",
}


def shape_label(shape):
    return "x".join(map(str, shape))


def parse_shape(label):
    return tuple(int(size) for size in label.split("x"))


def parse_subset(label):
    """The (norm, groups) of a subset label (report.subset_label): "group8" -> ("group", 8)."""
    return ("group", int(label[len("group"):])) if label.startswith("group") else (label, None)


def sweep_slice(name, shapes, subsets, layouts, distributions, ratios, precisions, topologies,
                ddofs):
    """A slice of the sweep; every cell runs every rule. Post-ReLU data cannot have κ = 1 (its
    zeros and positive values have a mean), so half-normal data skip |mean|/std = 0."""
    formats, keep_pair = engine.paired("input_dtype", "acc_dtype", precisions)
    factors = {"shape": tuple(map(shape_label, shapes)),
               "subset": tuple(report.subset_label(*subset) for subset in subsets),
               "layout": layouts, "distribution": distributions, "mean_over_std": ratios,
               **formats, "topology": topologies, "ddof": ddofs}
    return engine.Slice(name, factors, keep=lambda settings: keep_pair(settings) and not (
        settings["distribution"] == "half_normal" and settings["mean_over_std"] == 0))


def grid(profile):
    smoke = profile == "smoke"
    precisions = QUICK_PRECISIONS if smoke else PRECISIONS
    ratios = QUICK_MEAN_OVER_STD if smoke else MEAN_OVER_STD
    core_shape = (2, 64, 8, 8) if smoke else (4, 64, 16, 16)
    spatial = (4, 16) if smoke else (4, 16, 64)
    group_counts = (1, 16) if smoke else (1, 4, 16, 64)
    distributions = QUICK_DISTRIBUTIONS if smoke else DISTRIBUTIONS
    slices = [
        sweep_slice("condition", (core_shape,), (("group", 8),), ("NCHW",), distributions,
                    ratios, precisions, TOPOLOGIES, (0,)),
        sweep_slice("subset", (core_shape,), SUBSETS, ("NCHW", "NHWC"), ("normal",),
                    (MODERATE,) if smoke else (0.0, MODERATE, HEADLINE), precisions,
                    (numerics.DEFAULT_TOPOLOGY,), (0, 1)),
        sweep_slice("group_size", tuple((2, 64, side, side) for side in spatial),
                    tuple(("group", count) for count in group_counts), ("NCHW",), ("normal",),
                    (0.0, MODERATE), tuple(pair for pair in precisions if pair[0] == pair[1]),
                    TOPOLOGIES, (0,)),
    ]
    if profile == "full":
        slices.append(sweep_slice("factorial", (core_shape, (2, 64, 64, 64)), SUBSETS,
                                  ("NCHW", "NHWC"), DISTRIBUTIONS, MEAN_OVER_STD, PRECISIONS,
                                  TOPOLOGIES, (0, 1)))
    formats, keep_pair = engine.paired("input_dtype", "acc_dtype", precisions)
    slices.append(engine.Slice("constant", {"shape": (shape_label(core_shape),),
                                            "value": CONSTANTS, **formats,
                                            "topology": TOPOLOGIES, "clamp": (False, True)},
                               keep=keep_pair))
    return tuple(slices)


def describe(part):
    """One line of the report's grid description: the slice's question and its factor values."""
    def listing(values):
        return ", ".join(f"{value:g}" if isinstance(value, float) else str(value)
                         for value in values)

    settings = part.settings()
    pairs = dict.fromkeys(f"{cell['input_dtype']}→{cell['acc_dtype']}" for cell in settings)
    factors = [f"{name} {listing(values)}" for name, values in part.factors.items()
               if name not in ("input_dtype", "acc_dtype")]
    return (f"**{part.name}** ({len(settings) * len(ALGORITHMS)} rows): {QUESTIONS[part.name]}. "
            f"{'; '.join(factors)}; precisions {', '.join(pairs)}; all {len(ALGORITHMS)} rules.")


def seed_key(settings):
    """The description of a cell's input tensor: the layout is left out (both layouts hold the
    same values), so are the formats (every format rounds the same float64 draws). Written as
    the sweep has always written it, so the seeds (and the data) stay those of earlier runs."""
    if "mean_over_std" not in settings:
        return ("accuracy", "constant", settings["value"])
    return ("accuracy", parse_shape(settings["shape"]), parse_subset(settings["subset"]),
            settings["distribution"], settings["mean_over_std"])


# ---- one input tensor and its exact statistics ---------------------------------------------------

@dataclass(frozen=True)
class Inputs:
    values: np.ndarray
    norm: str
    groups: object
    layout: str
    kappa: np.ndarray           # per group, exact (inf for constant groups)
    shifted_kappa: np.ndarray   # per group, of the data shifted by its first element
    exact_var: dict             # ddof -> object array of mpf, per group (exact_variance fills it)
    columns: dict               # what describes these inputs in a result row

    def exact_variance(self, ddof):
        if ddof not in self.exact_var:
            self.exact_var[ddof] = reference.moments(self.values, self.norm, ddof=ddof,
                                                     groups=self.groups,
                                                     layout=self.layout)[1].reshape(-1)
        return self.exact_var[ddof]


# the cells of one input tensor (every format pair, topology and ddof) come one after another:
# its exact statistics, the costly part of a cell, are computed once per process
@functools.lru_cache(maxsize=4)
def make_inputs(shape, subset, layout, input_dtype, distribution, ratio, seed):
    norm, groups = subset
    kappa_target = math.hypot(1.0, ratio)
    values = data.with_condition(shape, kappa_target, input_dtype, distribution, seed, norm=norm,
                                 groups=groups)
    if layout == "NHWC":
        # the same values as the NCHW cell, stored channels last: only the order of the group's
        # elements changes, so the two layouts are compared on identical groups
        values = np.ascontiguousarray(np.moveaxis(values, 1, -1))
    where = {"groups": groups, "layout": layout}
    kappa = reference.condition_number(values, norm, **where).reshape(-1)
    shifted_kappa = reference.shifted_condition_number(values, norm, **where).reshape(-1)
    finite = kappa[np.isfinite(kappa)]
    columns = {
        "norm": norm, "groups": groups, "subset": report.subset_label(norm, groups),
        "layout": layout,
        "shape": "x".join(map(str, shape)), "input_dtype": input_dtype,
        "distribution": distribution, "mean_over_std": ratio, "kappa_target": kappa_target,
        "kappa_median": float(np.median(finite)) if finite.size else np.nan,
        "kappa_max": float(finite.max()) if finite.size else np.nan,
        "shifted_kappa_median": float(np.median(shifted_kappa[np.isfinite(kappa)]))
        if finite.size else np.nan,
        "seed": seed,
    }
    return Inputs(values, norm, groups, layout, kappa, shifted_kappa, {}, columns)


def quiet_moments(values, norm, **options):
    with warnings.catch_warnings():
        # an accumulator overflow (float16 squares) warns; the cells count it as non-finite
        warnings.simplefilter("ignore", RuntimeWarning)
        return numerics.moments(values, norm, **options)


def rule_row(inputs, algorithm, topology_name, acc_dtype, ddof):
    """The variance by one rule, topology, accumulator and ddof, against the reference."""
    topology = numerics.TOPOLOGIES[topology_name]
    result = quiet_moments(inputs.values, inputs.norm, groups=inputs.groups, layout=inputs.layout,
                           algorithm=algorithm, ddof=ddof, acc_dtype=acc_dtype, topology=topology)
    run = result.run
    u = numerics.unit_roundoff(acc_dtype)
    measurable = np.isfinite(inputs.kappa)
    rule_kappa = inputs.shifted_kappa if algorithm == "shifted" else inputs.kappa
    # input wider than the accumulator is rounded to it first: a relative perturbation of u
    narrowed = precision.SIGNIFICAND_BITS[run.input_dtype] > precision.SIGNIFICAND_BITS[acc_dtype]
    bound = bounds.variance_bound(algorithm, run.group_size, rule_kappa[measurable], u,
                                  topology.lanes, topology.block, u if narrowed else 0.0,
                                  data_kappa=inputs.kappa[measurable])
    # float16 cannot hold n >= 65520: the count rounds to inf, so S/n is 0 or NaN whatever the
    # rule, which no rounding-error bound models (NaN bounds leave the cell out of the ratios)
    with np.errstate(over="ignore"):
        count_overflows = bool(np.isinf(precision.convert(np.array([float(run.group_size)]),
                                                          acc_dtype))[0])
    if count_overflows:
        bound = np.full(bound.shape, np.nan)
    return {"algorithm": algorithm, "topology": topology.name, "lanes": topology.lanes,
            "block": topology.block, "acc_dtype": acc_dtype, "ddof": ddof, "kernel": run.kernel,
            "group_size": run.group_size, "u": u, "count_overflows": count_overflows,
            **errors.variance_errors(result.var, inputs.exact_variance(ddof), acc_dtype, bound)}


def sweep_cell(settings, seed):
    """Every rule on one input tensor, in one format pair, topology and ddof."""
    inputs = make_inputs(parse_shape(settings["shape"]), parse_subset(settings["subset"]),
                         settings["layout"], settings["input_dtype"], settings["distribution"],
                         settings["mean_over_std"], seed)
    return [{**inputs.columns, **rule_row(inputs, algorithm, settings["topology"],
                                          settings["acc_dtype"], settings["ddof"])}
            for algorithm in ALGORITHMS]


def constant_cell(settings):
    """Groups whose exact variance is 0: the sign of the computed variance, and what clamping
    does, for every rule (GroupNorm G = 8)."""
    shape = parse_shape(settings["shape"])
    norm, groups = subset = ("group", 8)
    values = data.generate(shape, settings["input_dtype"], "constant", mean=settings["value"])
    stored = float(values.reshape(-1)[0])
    rows = []
    for algorithm in ALGORITHMS:
        result = quiet_moments(values, norm, groups=groups, algorithm=algorithm,
                               acc_dtype=settings["acc_dtype"], topology=settings["topology"],
                               clamp=settings["clamp"])
        var = np.asarray(result.var, dtype=np.float64).reshape(-1)
        mean = np.asarray(result.mean, dtype=np.float64).reshape(-1)
        finite = np.isfinite(var)
        rows.append({
            "table": "accuracy_constant", "stored_value": stored, "algorithm": algorithm,
            "subset": report.subset_label(*subset),
            "group_size": result.run.group_size, "group_count": var.size,
            "negative_count": int((var < 0).sum()), "zero_count": int((var == 0).sum()),
            "positive_count": int((var > 0).sum()), "nonfinite_count": int((~finite).sum()),
            "max_abs_var": float(np.abs(var[finite]).max()) if finite.any() else np.nan,
            "min_var": float(var[finite].min()) if finite.any() else np.nan,
            # what a layer then does: 1/sqrt(var + eps) is NaN for var < -eps
            "rstd_nan_count": int((var + LAYER_EPS < 0).sum() + (~finite).sum()),
            "exact_mean_count": int((mean == stored).sum()),
        })
    return rows


def cell(cell):
    if cell.slice == "constant":
        return constant_cell(cell.settings)
    return sweep_cell(cell.settings, cell.seed)


# ---- figures -------------------------------------------------------------------------------------

ALGORITHM_STYLES = {name: {"color": color, "marker": marker} for name, color, marker in zip(
    ALGORITHMS, ("C3", "C1", "C0", "C9", "C2", "C4"), ("o", "s", "^", "v", "D", "x"))}
TOPOLOGY_STYLES = {"sequential": "-", numerics.DEFAULT_TOPOLOGY: "--", "pairwise": ":"}
#: error axis range of the figures: exact results sit at the floor (in units of u), errors past
#: "all digits lost" (and non-finite results) at the ceiling
PLOT_FLOOR_U, PLOT_CEILING = 1e-2, 1e3


def plotted_error(frame):
    return frame["max_rel_error"].clip(lower=PLOT_FLOOR_U * frame["u"], upper=PLOT_CEILING)


def precision_label(input_dtype, acc_dtype):
    return f"{input_dtype} data, {acc_dtype} accumulator"


def figure_error_vs_kappa(frame):
    import matplotlib.pyplot as plt

    cells = frame[(frame["slice"] == "condition") & (frame["distribution"] == "normal")
                  & (frame["topology"] == "sequential")]
    pairs = list(dict.fromkeys(zip(cells["input_dtype"], cells["acc_dtype"])))
    columns = 4
    rows = -(-len(pairs) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    for axis, (input_dtype, acc_dtype) in zip(axes.flat, pairs):
        panel = cells[(cells["input_dtype"] == input_dtype) & (cells["acc_dtype"] == acc_dtype)]
        u = numerics.unit_roundoff(acc_dtype)
        for algorithm, points in panel.groupby("algorithm", sort=False):
            points = points.dropna(subset=["kappa_median"]).sort_values("kappa_median")
            axis.loglog(points["kappa_median"], plotted_error(points), label=algorithm, lw=1.2,
                        ms=4, **ALGORITHM_STYLES[algorithm])
        kappa = np.logspace(0, math.log10(max(panel["kappa_median"].max(), 10)), 50)
        axis.loglog(kappa, np.clip(kappa * u, None, PLOT_CEILING), color="0.5", ls="--", lw=0.8,
                    label="κu")
        axis.loglog(kappa, np.clip(kappa ** 2 * u, None, PLOT_CEILING), color="0.5", ls=":",
                    lw=0.8, label="κ²u")
        axis.axhline(1.0, color="0.7", lw=0.6)
        axis.set_ylim(PLOT_FLOOR_U * u / 2, PLOT_CEILING * 2)
        axis.set_title(precision_label(input_dtype, acc_dtype), fontsize=9)
        axis.set_xlabel("κ of the stored data (median over groups)", fontsize=8)
        axis.set_ylabel("max relative error of var", fontsize=8)
    for axis in axes.flat[len(pairs):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    figure.suptitle("Variance error against the condition number: GroupNorm G=8, normal data, "
                    "sequential order (errors clipped to [0.01u, 1e3])", fontsize=10)
    figure.tight_layout(rect=(0, 0.02, 1, 0.97))
    return figure


def figure_topologies(frame):
    import matplotlib.pyplot as plt

    cells = frame[(frame["slice"] == "condition") & (frame["distribution"] == "normal")]
    pairs = [pair for pair in (("float32", "float32"), ("bfloat16", "bfloat16"))
             if ((cells["input_dtype"] == pair[0]) & (cells["acc_dtype"] == pair[1])).any()]
    figure, axes = plt.subplots(len(pairs), len(ALGORITHMS), figsize=(3.1 * len(ALGORITHMS),
                                3.1 * len(pairs)), squeeze=False, sharey="row")
    for row, (input_dtype, acc_dtype) in enumerate(pairs):
        for column, algorithm in enumerate(ALGORITHMS):
            axis = axes[row, column]
            panel = cells[(cells["input_dtype"] == input_dtype) & (cells["acc_dtype"] == acc_dtype)
                          & (cells["algorithm"] == algorithm)]
            for topology_name, points in panel.groupby("topology", sort=False):
                points = points.dropna(subset=["kappa_median"]).sort_values("kappa_median")
                axis.loglog(points["kappa_median"], plotted_error(points), ls=TOPOLOGY_STYLES[
                    topology_name], marker=".", label=topology_name,
                    color=ALGORITHM_STYLES[algorithm]["color"])
            axis.set_title(f"{algorithm}\n{precision_label(input_dtype, acc_dtype)}", fontsize=8)
            axis.set_xlabel("κ", fontsize=8)
        axes[row, 0].set_ylabel("max relative error of var", fontsize=8)
        axes[row, 0].legend(fontsize=7)
    default = numerics.TOPOLOGIES[numerics.DEFAULT_TOPOLOGY]
    figure.suptitle(f"Sequential order against the fast default ({default.name}: {default.lanes} "
                    f"lanes, blocks of {default.block}) and a pairwise tree: GroupNorm G=8 "
                    f"(n={cells['group_size'].iloc[0]}), normal data", fontsize=10)
    figure.tight_layout(rect=(0, 0.02, 1, 0.95))
    return figure


def figure_group_size(frame):
    import matplotlib.pyplot as plt

    cells = frame[(frame["slice"] == "group_size") & (frame["mean_over_std"] == MODERATE)]
    pairs = list(dict.fromkeys(zip(cells["input_dtype"], cells["acc_dtype"])))
    figure, axes = plt.subplots(len(TOPOLOGIES), len(pairs), figsize=(3.8 * len(pairs), 3.2 * 3),
                                squeeze=False)
    for row, topology_name in enumerate(TOPOLOGIES):
        for column, (input_dtype, acc_dtype) in enumerate(pairs):
            axis = axes[row, column]
            panel = cells[(cells["topology"] == topology_name)
                          & (cells["input_dtype"] == input_dtype)
                          & (cells["acc_dtype"] == acc_dtype)]
            for algorithm, points in panel.groupby("algorithm", sort=False):
                points = points.groupby("group_size", as_index=False).agg(
                    max_rel_error=("max_rel_error", "max"), u=("u", "first"))
                axis.loglog(points["group_size"], plotted_error(points), label=algorithm, ms=4,
                            **ALGORITHM_STYLES[algorithm])
            axis.set_ylim(PLOT_FLOOR_U * numerics.unit_roundoff(acc_dtype) / 2, PLOT_CEILING * 2)
            axis.set_title(f"{topology_name}: {precision_label(input_dtype, acc_dtype)}",
                           fontsize=8)
            axis.set_xlabel("group size n", fontsize=8)
        axes[row, 0].set_ylabel("max relative error of var", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    figure.suptitle(f"Variance error against group size: GroupNorm G = 1..64 on (2, 64, H, H), "
                    f"normal data, |mean|/std = {MODERATE:g} (clipped to [0.01u, 1e3]; "
                    f"non-finite results at the top)", fontsize=10)
    figure.tight_layout(rect=(0, 0.02, 1, 0.96))
    return figure


def figure_constant_groups(constant):
    import matplotlib.pyplot as plt

    unclamped = constant[~constant["clamp"]]
    totals = unclamped.groupby(["algorithm", "input_dtype", "acc_dtype"], sort=False)[
        ["negative_count", "group_count"]].sum().reset_index()
    totals["pair"] = totals["input_dtype"] + "→" + totals["acc_dtype"]
    share = totals.pivot(index="algorithm", columns="pair", values="negative_count") / totals.pivot(
        index="algorithm", columns="pair", values="group_count")
    share = share.reindex(index=list(ALGORITHMS))
    figure, axis = plt.subplots(figsize=(1.3 * share.shape[1] + 3, 0.5 * share.shape[0] + 2))
    image = axis.imshow(share.to_numpy(dtype=float), cmap="Reds", vmin=0, vmax=1, aspect="auto")
    for (row, column), value in np.ndenumerate(share.to_numpy(dtype=float)):
        axis.text(column, row, f"{value:.0%}", ha="center", va="center", fontsize=8)
    axis.set_xticks(range(share.shape[1]), share.columns, rotation=30, ha="right", fontsize=8)
    axis.set_yticks(range(share.shape[0]), share.index, fontsize=8)
    figure.colorbar(image, label="share of constant groups with var < 0")
    axis.set_title("Negative variances of constant groups (no clamp), all constants and topologies",
                   fontsize=9)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


# ---- tables and findings -------------------------------------------------------------------------

def lre_by_condition(frame):
    """Worst-group LRE (correct digits) of every rule against |mean|/std (0 and the decades),
    per precision, in the default topology."""
    cells = frame[(frame["slice"] == "condition") & (frame["distribution"] == "normal")
                  & (frame["topology"] == numerics.DEFAULT_TOPOLOGY)
                  & frame["mean_over_std"].isin(DECADES)].copy()
    cells["precision"] = cells["input_dtype"] + "→" + cells["acc_dtype"]
    table = cells.pivot_table(index=["precision", "algorithm"], columns="mean_over_std",
                              values="min_lre", aggfunc="min", sort=False)
    table.columns = [f"{ratio:g}" for ratio in table.columns]
    return table.reset_index()


def bound_check(frame):
    """Observed error / a-priori bound, per rule and topology, over every measured cell."""
    cells = frame[frame["max_bound_ratio"].notna()]
    grouped = cells.groupby(["algorithm", "topology"], sort=False)
    table = grouped.agg(cells=("max_bound_ratio", "size"),
                        max_ratio=("max_bound_ratio", "max"),
                        median_ratio=("max_bound_ratio", "median"),
                        cells_over_bound=("groups_over_bound",
                                          lambda counts: int((counts > 0).sum())))
    return table.reset_index()


def worst_over_bound(frame):
    cells = frame[np.isfinite(frame["max_bound_ratio"])]
    if cells.empty:
        return None
    return cells.loc[cells["max_bound_ratio"].idxmax()]


def subset_table(frame, acc_dtype="float32"):
    cells = frame[(frame["slice"] == "subset") & (frame["input_dtype"] == "float32")
                  & (frame["acc_dtype"] == acc_dtype) & (frame["mean_over_std"] == MODERATE)
                  & (frame["ddof"] == 0)].copy()
    cells["column"] = (cells["subset"] + " " + cells["layout"] + " (n="
                       + cells["group_size"].astype(str) + ")")
    table = cells.pivot_table(index="algorithm", columns="column", values="max_rel_error_u",
                              aggfunc="max", sort=False)
    return table.reset_index()


def distribution_table(frame):
    cells = frame[(frame["slice"] == "condition") & (frame["input_dtype"] == "float32")
                  & (frame["acc_dtype"] == "float32")
                  & (frame["topology"] == numerics.DEFAULT_TOPOLOGY)
                  & (frame["mean_over_std"].isin([1.0, MODERATE]))].copy()
    cells["column"] = (cells["distribution"] + ", |mean|/std="
                       + cells["mean_over_std"].map("{:g}".format))
    table = cells.pivot_table(index="algorithm", columns="column", values="max_rel_error_u",
                              aggfunc="max", sort=False)
    return table.reset_index()


def ddof_table(frame):
    cells = frame[frame["slice"] == "subset"].copy()
    cells["precision"] = cells["input_dtype"] + "→" + cells["acc_dtype"]
    table = cells.pivot_table(index=["precision", "algorithm"], columns="ddof",
                              values="max_rel_error_u", aggfunc="max", sort=False)
    table.columns = [f"ddof={ddof}: max error / u" for ddof in table.columns]
    return table.reset_index()


def group_size_table(frame):
    cells = frame[(frame["slice"] == "group_size") & (frame["input_dtype"] == "float32")
                  & (frame["acc_dtype"] == "float32") & (frame["mean_over_std"] == MODERATE)]
    table = cells.pivot_table(index=["algorithm", "topology"], columns="group_size",
                              values="max_rel_error_u", aggfunc="max", sort=False)
    table = table[sorted(table.columns)]
    table.columns = [f"n={size}" for size in table.columns]
    return table.reset_index()


def constant_table(constant):
    grouped = constant.groupby(["input_dtype", "acc_dtype", "algorithm", "clamp"], sort=False)
    counts = grouped[["group_count", "negative_count", "zero_count", "positive_count",
                      "nonfinite_count", "rstd_nan_count"]].sum()
    counts["min_var"] = grouped["min_var"].min()
    table = counts.unstack("clamp")
    flat = pd.DataFrame({
        "groups": table[("group_count", False)],
        "var = 0": table[("zero_count", False)],
        "var > 0": table[("positive_count", False)],
        "var < 0": table[("negative_count", False)],
        "non-finite": table[("nonfinite_count", False)],
        "smallest var": table[("min_var", False)],
        f"NaN rstd (eps={LAYER_EPS:g})": table[("rstd_nan_count", False)],
        "var < 0 with clamp": table[("negative_count", True)],
        "NaN rstd with clamp": table[("rstd_nan_count", True)],
    })
    return flat.reset_index()


def headline_table(frame):
    """Worst-group LRE of every rule in every order at |mean|/std = HEADLINE, float32 throughout."""
    cells = frame[(frame["slice"] == "condition") & (frame["distribution"] == "normal")
                  & (frame["input_dtype"] == "float32") & (frame["acc_dtype"] == "float32")
                  & (frame["mean_over_std"] == HEADLINE)]
    table = cells.pivot_table(index="algorithm", columns="topology", values="min_lre", aggfunc="min",
                              sort=False)
    return table[list(TOPOLOGIES)].reset_index()


def total_loss_ratio(frame, acc_dtype):
    """The smallest |mean|/std at which the naive rule in the default topology leaves no correct
    digit in some group (worst-group LRE 0), for acc_dtype with same-format data; None if never."""
    cells = frame[(frame["slice"] == "condition") & (frame["distribution"] == "normal")
                  & (frame["algorithm"] == "naive") & (frame["topology"] == numerics.DEFAULT_TOPOLOGY)
                  & (frame["input_dtype"] == acc_dtype) & (frame["acc_dtype"] == acc_dtype)
                  & (frame["min_lre"] == 0)]
    return None if cells.empty else float(cells["mean_over_std"].min())


def findings(frame, constant):
    lines = []
    losses = [(acc_dtype, total_loss_ratio(frame, acc_dtype), predicted)
              for acc_dtype, predicted in PREDICTED_TOTAL_LOSS.items()]
    lines.append("The textbook rule (naive, default order, same format for data and sums) first "
                 "leaves a group with no correct digit at |mean|/std = "
                 + "; ".join(f"{ratio:g} in {acc_dtype} (κ²u = 1 at {predicted:g})"
                             for acc_dtype, ratio, predicted in losses if ratio is not None) + ".")
    sizes = frame[(frame["slice"] == "group_size") & (frame["input_dtype"] == "float32")
                  & (frame["acc_dtype"] == "float32") & (frame["mean_over_std"] == MODERATE)]
    if not sizes.empty:
        largest = sizes[sizes["group_size"] == sizes["group_size"].max()]
        errors_u = largest.pivot_table(index="algorithm", columns="topology",
                                       values="max_rel_error_u", aggfunc="max")
        lines.append(f"Order matters as much as the rule: at n = {largest['group_size'].iloc[0]}, "
                     f"float32, |mean|/std = {MODERATE:g}, two-pass errs by "
                     f"{errors_u.loc['two_pass', 'sequential']:.3g} u in sequential order and "
                     f"{errors_u.loc['two_pass', numerics.DEFAULT_TOPOLOGY]:.2g} u in the default "
                     f"order; Welford by {errors_u.loc['welford', 'sequential']:.3g} u and "
                     f"{errors_u.loc['welford', numerics.DEFAULT_TOPOLOGY]:.2g} u.")
    worst = worst_over_bound(frame)
    if worst is not None:
        over = frame["groups_over_bound"].fillna(0) > 0
        modelled = int(frame["max_bound_ratio"].notna().sum())
        lines.append(f"Observed/bound: {int(over.sum())} of {modelled} cells have a group above "
                     f"its leading-order bound; the largest ratio is "
                     f"{worst['max_bound_ratio']:.2g} ({worst['algorithm']}, {worst['topology']}, "
                     f"{worst['input_dtype']}→{worst['acc_dtype']}, {worst['subset']}, n = "
                     f"{worst['group_size']}, |mean|/std = {worst['mean_over_std']:g}). Left out of "
                     f"the ratios, because the bounds assume no overflow or underflow: "
                     f"{int(frame['nonfinite_count'].sum())} non-finite results, "
                     f"{int(frame['underflow_groups'].sum())} groups whose exact variance lies below "
                     f"the accumulator's normal range, and {int(frame['count_overflows'].sum())} "
                     f"cells whose group size does not fit the accumulator.")
    overflowing = frame[frame["count_overflows"]]
    if not overflowing.empty:
        lost = overflowing[(overflowing["zero_count"] + overflowing["nonfinite_count"]
                            == overflowing["group_count"] - overflowing["constant_groups"])]
        lines.append(f"A float16 accumulator cannot even hold the count: n ≥ 65520 rounds to inf. "
                     f"{len(lost)} of the {len(overflowing)} cells with such groups (n ≥ "
                     f"{int(overflowing['group_size'].min())} here) return 0 or a non-finite "
                     f"variance in every group, whatever the rule.")
    pairs, mismatched = errors.layout_mismatches(
        frame[frame["slice"] == "subset"],
        ("subset", "input_dtype", "acc_dtype", "mean_over_std", "algorithm", "topology", "ddof"))
    lines.append(f"Layout check: batch and instance groups hold their elements in the same order in "
                 f"both layouts, so NCHW and NHWC must agree exactly: {pairs - mismatched} of "
                 f"{pairs} cell pairs do" + ("." if not mismatched else
                                            " — the others point at a kernel fault."))
    unclamped = constant[~constant["clamp"]]
    negative = unclamped.groupby("algorithm", sort=False)[["negative_count", "group_count"]].sum()
    lines.append("Constant groups, no clamp: negative variances in "
                 + ", ".join(f"{algorithm} {row.negative_count}/{row.group_count}"
                             for algorithm, row in negative.iterrows())
                 + f" groups; with clamp, {int(constant[constant['clamp']]['negative_count'].sum())}.")
    return lines


# ---- the study -----------------------------------------------------------------------------------

#: the figures' captions in REPORT.md, by file stem
CAPTIONS = {
    "accuracy_error_vs_kappa": "Worst-group relative error of the variance against the measured "
                               "κ, sequential order, with the κu (updating rules) and κ²u "
                               "(textbook rule) lines.",
    "accuracy_topologies": "Sequential, default (blocked) and pairwise orders, per rule.",
    "accuracy_group_size": "Worst-group relative error against the group size n. A float16 "
                           "accumulator cannot hold a count of 65520 or more (see the findings).",
    "accuracy_constant_groups": "Share of constant groups whose computed variance is negative.",
}


def method_text(frame, constant, sweep):
    """The report's opening: what every cell measures, the columns of the data, and the grid."""
    grid = "\n".join(f"- {describe(part)}" for part in sweep)
    constants = ", ".join(f"{value:g}" for value in CONSTANTS)
    return f"""Every cell runs `numerics.moments` and compares each group's variance with the exact
variance of the stored values (`numerics.reference`). Columns of `data/accuracy.parquet`: the
cell's factors, the measured κ of the stored data, and per cell the worst and median group's
relative error, the worst in units of u of the accumulator, the worst LRE (digits, capped at
{errors.LRE_DIGITS}: only an exact result reaches it), the worst observed/bound ratio against
`numerics.bounds.variance_bound` (leading-order CGL terms with the topology's summation depth) and
the counts of negative, zero and non-finite variances and of variances below the accumulator's
normal range (`underflow_groups`; with non-finite results, left out of the bound ratio). Inputs:
unit-RMS data of condition κ = sqrt(1 + (mean/std)²) per group (`numerics.data.with_condition`);
a format that cannot resolve the spread rounds some groups to constants, which leave the error
columns (`constant_groups`). {len(frame)} rows (one rule on one input, format pair, topology
and ddof) in {len(sweep)} slices, plus {len(constant)} constant-group rows:

{grid}
- **constant** ({len(constant)} rows): groups of one repeated value ({constants}), every rule,
  topology and precision, with and without clamp (`data/accuracy_constant.parquet`)."""


def report_section(results):
    frame, constant = results.tables["accuracy"], results.tables["accuracy_constant"]
    figure = {"accuracy_error_vs_kappa": figure_error_vs_kappa(frame),
              "accuracy_topologies": figure_topologies(frame),
              "accuracy_group_size": figure_group_size(frame),
              "accuracy_constant_groups": figure_constant_groups(constant)}
    figure = {name: results.figure(name, drawing, CAPTIONS[name])
              for name, drawing in figure.items()}
    sweep = [part for part in results.slices if part.name != "constant"]
    headline = headline_table(frame)
    body = f"""{method_text(frame, constant, sweep)}

### Findings (this run)

{chr(10).join(f'- {line}' for line in findings(frame, constant))}

Correct digits (worst-group LRE) at the anchor condition, |mean|/std = {HEADLINE:g}
(κ ≈ {HEADLINE:g}), float32 data and accumulator, GroupNorm G=8, normal data, by order:

{results.table(headline, one_decimal(headline.columns[1:]))}

{detail_text(results, frame, constant, figure)}
"""
    return results.section(body)


def one_decimal(columns):
    return {column: (lambda value: "–" if pd.isna(value) else f"{value:.1f}") for column in columns}


def detail_text(results, frame, constant, figure):
    """The report's sections after the findings: error against κ, topology, group size, subsets,
    distributions, ddof, the bounds, constant groups."""
    lre_table = lre_by_condition(frame)
    return f"""### Error against κ

{figure['accuracy_error_vs_kappa']}

Worst-group LRE (correct significant digits) by |mean|/std, GroupNorm G=8, normal data, default
order ({numerics.DEFAULT_TOPOLOGY}); "–": every group of the stored data is constant:

{results.table(lre_table, one_decimal(lre_table.columns[2:]))}

### Topology

{figure['accuracy_topologies']}

### Group size

{figure['accuracy_group_size']}

Worst-group error in units of u, float32 data and accumulator, |mean|/std = {MODERATE:g}:

{results.table(group_size_table(frame))}

### Subsets and layouts

Worst-group error in units of u, float32 data and accumulator, |mean|/std = {MODERATE:g}, ddof 0,
default order (the NHWC cells hold the same values as the NCHW ones):

{results.table(subset_table(frame))}

### Distributions

Worst-group error in units of u, float32 → float32, default order, GroupNorm G=8:

{results.table(distribution_table(frame))}

### Bessel correction (ddof)

Worst error in units of u over the subset slice, by ddof (the correction is one division at
finalization, so the two columns should agree to within a rounding or two):

{results.table(ddof_table(frame))}

### Observed error against the a-priori bound

Per rule and topology over every cell with a modelled group: the largest and the median of the
cells' worst observed/bound ratio, and how many cells have a group above its bound. The bounds are
leading-order terms without constants, so ratios of a few are not violations of the theorems.

{results.table(bound_check(frame))}

### Constant groups

{figure['accuracy_constant_groups']}

Counts over all constants and topologies (GroupNorm G=8). "NaN rstd": groups where a layer's
1/sqrt(var + {LAYER_EPS:g}) would be NaN (var < −eps, or a non-finite var):

{results.table(constant_table(constant))}"""


STUDY = engine.Study("accuracy", TITLE, grid, cell, report_section, seed_key=seed_key,
                     description="the variance of every rule against exact arithmetic, over the "
                                 "toolkit's factors")
