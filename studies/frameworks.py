"""Study: the statistics that real frameworks compute, beside numpy and the numerics recipes of
frameworks, on the same float32 tensors; and every recipe checked against the real framework it
stands in for.

Implementations: every installed entry of numerics.implementations (kind "framework": numpy,
PyTorch, JAX/Flax, ONNX Runtime, TensorFlow/Keras; "recipe": numerics.moments configured as a
framework documents; "expression": the textbook formula in numpy). Each is compared with the exact
statistics of the stored input (numerics.reference), group by group, with the ddof it returns; its
module docstring says how its statistics are read (directly, from rstd, or recovered from the
output, which adds about 2u of float32).

Slices: "conditions" (every implementation × layer × layout × condition) and "orders" (the naive
float32 rule in three reduction orders at the anchor condition). Inputs: normal data of std 1 at
|mean| 0, 1e2, 1e4, 1e5 and post-ReLU half-normal data; NHWC cells hold the same values as NCHW
ones (their seed leaves the layout out).

Tables (parquet columns, kept stable for the notebooks that read them):

- ``frameworks``: implementation, kind, framework, used_by, algorithm, version, ddof, norm,
  groups, subset, layout, distribution, mean, std, condition, shape, input_dtype, kappa_median,
  group_count, constant_groups, underflow_groups, negative_count, zero_count, nonfinite_count,
  max_rel_error, median_rel_error, max_rel_error_u (u = 2⁻²⁴), min_lre, mean_max_rel_error
  (worst relative error of the mean), plus the runner's slice and seed columns;
- ``frameworks_recipe_check``: recipe, implementation (the real one it stands in for), norm,
  groups, subset, layout, condition, same_bits (None where the two return different ddof),
  max_rel_difference (between the two, groups of nonzero variance), recipe_max_rel_error,
  implementation_max_rel_error;
- ``frameworks_orders``: topology, max_rel_error of the naive float32 rule at the anchor.
"""
import math

import numpy as np
import pandas as pd

import numerics
from numerics import data, implementations, metrics, reference
from studies import errors, report
from studies.engine import Slice, Study

SHAPES = {"smoke": "2x64x14x14", "default": "8x64x56x56", "full": "8x64x56x56"}
SUBSETS = (("batch", None), ("layer", None), ("instance", None), ("group", 32))
CONDITIONS = {"smoke": (("normal", 1e4),),
              "default": (("normal", 0.0), ("normal", 1e2), ("normal", 1e4), ("normal", 1e5),
                          ("half_normal", 0.0))}
#: the anchor case: GroupNorm G = 32, float32, mean 1e4, std 1
ANCHOR = ("normal", 1e4, "group", 32)
ORDERS = ("sequential", numerics.DEFAULT_TOPOLOGY, "pairwise")
#: the top of the figure's error axis: non-finite errors are drawn there
FIGURE_TOP = 1e4


def condition_label(distribution, mean):
    return f"{distribution}, mean {mean:g}, std 1"


def grid(profile):
    conditions = CONDITIONS.get(profile, CONDITIONS["default"])
    shape = SHAPES[profile]
    slices = [Slice(f"conditions {distribution} {mean:g}", {
        "shape": (shape,), "distribution": (distribution,), "mean": (mean,),
        "norm": tuple(norm for norm, _ in SUBSETS), "groups": (None, 32),
        "layout": ("NCHW", "NHWC")}, keep=lambda settings: (settings["norm"] == "group")
        == (settings["groups"] is not None)) for distribution, mean in conditions]
    slices.append(Slice("orders", {"shape": (shape,), "distribution": (ANCHOR[0],),
                                   "mean": (ANCHOR[1],), "norm": (ANCHOR[2],),
                                   "groups": (ANCHOR[3],), "layout": ("NCHW",),
                                   "topology": ORDERS}))
    return tuple(slices)


def make_input(settings, seed):
    shape = tuple(int(extent) for extent in settings["shape"].split("x"))
    values = data.generate(shape, "float32", settings["distribution"], mean=settings["mean"],
                           std=1.0, seed=seed)
    # NHWC holds the same values channels last: the groups are identical, only the order differs
    return values if settings["layout"] == "NCHW" else np.ascontiguousarray(np.moveaxis(values, 1, -1))


def implementation_row(implementation, mean, var, exact, settings):
    summary = errors.variance_errors(var, exact["var", implementation.ddof], "float32")
    mean_error = metrics.relative_error(mean, exact["mean"])
    return {"implementation": implementation.name, "kind": implementation.kind,
            "framework": implementation.framework, "used_by": implementation.used_by,
            "algorithm": implementation.algorithm, "version": implementation.version(),
            "ddof": implementation.ddof, "subset": report.subset_label(settings["norm"],
                                                                       settings["groups"]),
            "std": 1.0, "condition": condition_label(settings["distribution"], settings["mean"]),
            "input_dtype": "float32", "kappa_median": exact["kappa_median"], **summary,
            "mean_max_rel_error": float(np.nanmax(np.where(np.isnan(mean_error), np.inf,
                                                           mean_error)))}


def recipe_checks(results, exact, settings):
    """Each recipe against every real implementation it stands in for that ran in this cell."""
    rows = []
    for recipe, stand_ins in implementations.STANDS_IN_FOR.items():
        if recipe not in results:
            continue
        recipe_var = results[recipe][1]
        for name, layouts in stand_ins:
            if name not in results or (layouts is not None and settings["layout"] not in layouts):
                continue
            ddof = implementations.by_name(name).ddof
            real_var = results[name][1]
            comparable = recipe_var
            if ddof:  # recipes return the biased variance
                n = numerics.canonical_view(settings["input_shape"], settings["norm"],
                                            settings["groups"], settings["layout"]).group_size
                comparable = recipe_var * n / (n - 1)
            difference = metrics.relative_error(comparable, real_var)
            rows.append({"table": "frameworks_recipe_check", "recipe": recipe, "implementation": name,
                         "subset": report.subset_label(settings["norm"], settings["groups"]),
                         "condition": condition_label(settings["distribution"], settings["mean"]),
                         "same_bits": None if ddof else bool(np.array_equal(recipe_var, real_var,
                                                                            equal_nan=True)),
                         "max_rel_difference": float(np.nanmax(np.where(
                             np.isnan(difference), np.inf, difference))),
                         "recipe_max_rel_error": errors.variance_errors(
                             recipe_var, exact["var", 0], "float32")["max_rel_error"],
                         "implementation_max_rel_error": errors.variance_errors(
                             real_var, exact["var", ddof], "float32")["max_rel_error"]})
    return rows


def exact_statistics(x, norm, groups, layout):
    mean, var = reference.moments(x, norm, groups=groups, layout=layout)
    _, unbiased = reference.moments(x, norm, groups=groups, layout=layout, ddof=1)
    kappa = reference.condition_number(x, norm, groups=groups, layout=layout)
    return {"mean": mean, ("var", 0): var, ("var", 1): unbiased,
            "kappa_median": float(np.median(kappa))}


def order_rows(x, settings, exact):
    result = numerics.moments(x, settings["norm"], groups=settings["groups"], algorithm="naive",
                              acc_dtype="float32", topology=settings["topology"])
    return [{"table": "frameworks_orders",
             "max_rel_error": errors.variance_errors(result.var, exact["var", 0],
                                                     "float32")["max_rel_error"]}]


def cell(cell):
    settings = dict(cell.settings)
    x = make_input(settings, cell.seed)
    settings["input_shape"] = x.shape
    norm, groups, layout = settings["norm"], settings["groups"], settings["layout"]
    exact = exact_statistics(x, norm, groups, layout)
    if "topology" in settings:
        return order_rows(x, settings, exact)
    rows, results = [], {}
    for implementation in implementations.select(norm=norm, layout=layout):
        mean, var = implementation.statistics(x, norm, groups=groups, layout=layout)
        results[implementation.name] = (mean, var)
        rows.append(implementation_row(implementation, mean, var, exact, settings))
    return rows + recipe_checks(results, exact, settings)




# ---- the report -------------------------------------------------------------------------------

def anchor_cells(frame):
    distribution, mean, norm, groups = ANCHOR
    return frame[(frame["condition"] == condition_label(distribution, mean))
                 & (frame["subset"] == report.subset_label(norm, groups))]


def registry_table():
    rows = [{"implementation": item.name, "kind": item.kind, "layers": ", ".join(item.norms),
             "layouts": ", ".join(item.layouts), "ddof": item.ddof,
             "version": item.version() if item.available() else "not installed",
             "how it is read": item.used_by, "algorithm": item.algorithm}
            for item in implementations.IMPLEMENTATIONS]
    return pd.DataFrame(rows)


def pivot(cells, columns):
    table = cells.pivot_table(index="implementation", columns=columns, values="max_rel_error",
                              aggfunc="max", sort=False)
    table.columns = [" ".join(map(str, column)) if isinstance(column, tuple) else str(column)
                     for column in table.columns]
    return table.reset_index()


def likely_cause(row):
    """What the data say about a recipe/framework difference (a rule applied to the errors)."""
    if row["same_bits"] is True:
        return "same bits"
    recipe, real = row["recipe_max_rel_error"], row["implementation_max_rel_error"]
    if not (math.isfinite(recipe) and math.isfinite(real)):
        return "one of them returned a non-finite variance"
    if max(recipe, real) <= 10 * max(min(recipe, real), 2.0 ** -24):
        return "same accuracy (within 10×): reduction order or recovery, not the rule"
    # more than 10× apart: a different rule or accumulator, or a much deeper (or shallower)
    # summation order than the recipe's; the errors alone do not tell which
    return ("the framework is far more accurate than the recipe: a different rule, accumulator "
            "or reduction order" if real < recipe else "the framework is far less accurate than "
            "the recipe: a different rule, accumulator or reduction order")


def recipe_check_table(checks):
    summary = checks.groupby(["recipe", "implementation"], sort=False).agg(
        cells=("same_bits", "size"),
        same_bits=("same_bits", lambda values: int(sum(value is True for value in values))),
        max_rel_difference=("max_rel_difference", "max"),
        recipe_max_rel_error=("recipe_max_rel_error", "max"),
        implementation_max_rel_error=("implementation_max_rel_error", "max")).reset_index()
    summary["same_bits"] = summary["same_bits"].astype(int)
    summary["likely cause (worst cells)"] = [
        likely_cause({"same_bits": row.same_bits == row.cells if row.same_bits else False,
                      "recipe_max_rel_error": row.recipe_max_rel_error,
                      "implementation_max_rel_error": row.implementation_max_rel_error})
        for row in summary.itertuples()]
    return summary


def layout_penalties(frame, factor=10.0):
    cells = frame[(frame["kind"] == "framework")
                  & (frame["condition"] == condition_label(ANCHOR[0], ANCHOR[1]))]
    by_layout = cells.pivot_table(index=["implementation", "subset"], columns="layout",
                                  values="max_rel_error", sort=False).dropna()
    worse = by_layout[by_layout["NHWC"] > factor * by_layout["NCHW"]]
    return [(name, subset, row["NCHW"], row["NHWC"]) for (name, subset), row in worse.iterrows()]


def figure_anchor(results, frame):
    import matplotlib.pyplot as plt
    cells = frame[frame["condition"] == condition_label(ANCHOR[0], ANCHOR[1])]
    subsets = list(dict.fromkeys(cells["subset"]))
    figure, axes = plt.subplots(1, len(subsets), figsize=(5.2 * len(subsets), 9), squeeze=False)
    for axis, subset in zip(axes.flat, subsets):
        panel = cells[cells["subset"] == subset]
        names = list(dict.fromkeys(panel["implementation"]))
        for offset, layout, color in ((-0.2, "NCHW", "C0"), (0.2, "NHWC", "C1")):
            by_name = panel[panel["layout"] == layout].set_index("implementation")["max_rel_error"]
            # exact results (0) are drawn at 1e-17, non-finite errors at the top of the axis
            heights = [min(max(by_name.get(name, np.nan), 1e-17), FIGURE_TOP) for name in names]
            axis.barh(np.arange(len(names)) + offset, heights, height=0.4, color=color,
                      label=layout, log=True)
        axis.set_yticks(range(len(names)), names, fontsize=6)
        axis.invert_yaxis()
        axis.axvline(2.0 ** -24, color="0.5", ls=":", lw=0.8)
        axis.set_title(subset, fontsize=9)
        axis.set_xlim(1e-17, FIGURE_TOP)
        axis.set_xlabel("worst-group relative error of var (dotted: u of float32)", fontsize=8)
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    return results.figure("frameworks_anchor_condition", figure,
                          "Worst-group relative error of the variance per implementation, both "
                          f"layouts, {condition_label(ANCHOR[0], ANCHOR[1])}; an infinite or NaN "
                          f"error is drawn at {FIGURE_TOP:g}.")


def findings(results, frame, checks):
    anchor = anchor_cells(frame)
    framework = anchor[anchor["kind"] == "framework"]
    worst = framework.loc[framework["max_rel_error"].idxmax()]
    best = framework.loc[framework["max_rel_error"].idxmin()]
    lines = [results.finding(
        "- At the anchor condition (GroupNorm G = 32, {condition}), the worst framework is "
        "{worst} ({worst_layout}: worst-group relative error {worst_error}), the best {best} "
        "({best_layout}: {best_error}).", condition=condition_label(ANCHOR[0], ANCHOR[1]),
        worst=worst["implementation"], worst_layout=worst["layout"],
        worst_error=worst["max_rel_error"], best=best["implementation"],
        best_layout=best["layout"], best_error=best["max_rel_error"])]
    negatives = frame[(frame["kind"] == "framework") & (frame["negative_count"] > 0)]
    if len(negatives):
        lines.append(results.finding(
            "- Negative variances from frameworks' own code: {cells} cells, in {names}.",
            cells=len(negatives), names=", ".join(sorted(set(negatives["implementation"])))))
    penalties = layout_penalties(frame)
    lines.append(results.finding(
        "- Where a framework errs more than 10× more on the same values stored channels last "
        "(anchor condition, NCHW → NHWC): {penalties}.", penalties="; ".join(
            f"{name} on {subset}: {report.format_number(nchw)} → {report.format_number(nhwc)}"
            for name, subset, nchw, nhwc in penalties) or "nowhere"))
    same = checks[checks["same_bits"] == True]  # noqa: E712 (None means "not comparable")
    lines.append(results.finding(
        "- Recipes against their real frameworks: {same} of {comparable} comparable cells give the "
        "same bits; the largest relative difference is {difference} ({recipe} against {real}).",
        same=len(same), comparable=int(checks["same_bits"].notna().sum()),
        difference=checks["max_rel_difference"].max(),
        recipe=checks.loc[checks["max_rel_difference"].idxmax(), "recipe"],
        real=checks.loc[checks["max_rel_difference"].idxmax(), "implementation"]))
    return "\n".join(lines)


def report_section(results):
    frame = results.tables["frameworks"]
    checks = results.tables["frameworks_recipe_check"]
    orders = results.tables["frameworks_orders"]
    shape = frame["shape"].iloc[0]
    conditions = "; ".join(dict.fromkeys(frame["condition"]))
    group_cells = frame[(frame["subset"] == "group32") & (frame["layout"] == "NCHW")]
    body = f"""Float32 tensors {shape} ({conditions}; NCHW and the same values stored NHWC) through
every installed framework beside numpy, the numerics recipes and the textbook expression. Error:
the worst group's relative error of the variance against the exact variance of the stored input,
with the ddof the implementation returns; `data/frameworks.parquet` holds every cell (columns in
studies/frameworks.py). An error of inf for an implementation read from its output means that its
output at eps = 0 was not finite in some group: its variance there was 0 or negative (every digit
lost), which the output does not tell apart. How each implementation is read, and its version:

{results.table(registry_table())}

Findings (from this run's data):

{findings(results, frame, checks)}

### Every layer at {condition_label(ANCHOR[0], ANCHOR[1])}

{figure_anchor(results, frame)}

{results.table(pivot(frame[frame["condition"] == condition_label(ANCHOR[0], ANCHOR[1])], ["subset", "layout"]))}

The naive float32 rule in three orders on the anchor (GroupNorm G = 32, NCHW):
{", ".join(f"{row.topology}: {report.format_number(row.max_rel_error)}" for row in orders.itertuples())}.

### GroupNorm G = 32 (NCHW) across conditions

{results.table(pivot(group_cells, "condition"))}

### Recipes against the real frameworks

Each recipe against the installed framework it stands in for, over every cell where both ran
(same bits: cells with bitwise equal variances; relative difference between the two variances;
each one's worst error against the exact variance; the likely cause follows from those errors):

{results.table(recipe_check_table(checks))}
"""
    return results.section(body)


STUDY = Study("frameworks", "Frameworks", grid, cell, report_section,
              seed_factors=("shape", "distribution", "mean"))
