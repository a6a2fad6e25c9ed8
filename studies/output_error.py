"""The output study: what a rule's, a precision's and eps's errors do to the normalized output.

For LayerNorm groups of condition number κ (numerics.data.with_condition: unit root mean square,
so var = 1/κ², times an exact power-of-two ``rms`` scale), every rule × topology × input/accumulator
precision × Bessel convention computes y = numerics.normalize(...) for each eps and output format,
and compares it with numerics.reference.normalize, the exact output correctly rounded to the same
format. Per cell and (rule, eps, output): the worst distance in units in the last place of the
output format, the share of elements not correctly rounded, the NaN count (outputs that are NaN
where the exact output is not), the worst relative error of the variance and the number of groups
whose computed variance is negative. Frameworks normalize with the biased variance (ddof 0) and
keep the unbiased one as the running variance that inference then normalizes with: both are
measured, each against the exact output of its own convention.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import numerics  # noqa: E402
from numerics import data, metrics, precision, reference  # noqa: E402
from numerics.normalization import normalize  # noqa: E402
from studies import engine  # noqa: E402

TITLE = "Normalized-output error"
EPSILONS = (0.0, 1e-12, 1e-6, 1e-5, 1e-3)
OUTPUTS = ("float32", "bfloat16", "float16")
RULES = tuple(numerics.ALGORITHMS)

PROFILES = {
    # groups x elements per group, condition numbers, precisions, topologies, rms scales
    "smoke": dict(shape=(2, 64), kappas=(1.0, 1e4), pairs=(("float32", "float32"),),
                  topologies=("blocked",), scales=(1.0,)),
    "default": dict(shape=(4, 512), kappas=(1.0, 1e2, 1e3, 1e4, 1e6),
                    pairs=(("float32", "float32"), ("bfloat16", "float32"),
                           ("float16", "float32"), ("bfloat16", "bfloat16"),
                           ("float32", "float64")),
                    topologies=("sequential", "blocked"), scales=(1.0, 16.0)),
    "full": dict(shape=(8, 2048), kappas=(1.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6, 1e8),
                 pairs=(("float32", "float32"), ("bfloat16", "float32"), ("float16", "float32"),
                        ("bfloat16", "bfloat16"), ("float16", "float16"),
                        ("float32", "float64"), ("float64", "float64")),
                 topologies=("sequential", "blocked", "pairwise"), scales=(1 / 16, 1.0, 16.0)),
}

#: the cells the figure and the findings read: the everyday precision and order
MAIN_PAIR = ("float32", "float32")
#: what the elementwise roundings alone can cost, in ulp(1): about 4u·|y| before the output's
#: own half ulp, with |y| up to 5 for these group sizes: 4·5/2 + 5/2 < 16. An error above this
#: comes from the statistics
ELEMENTWISE_FLOOR = 16


def grid(profile):
    settings = PROFILES[profile]
    factors, keep = engine.paired("input_dtype", "acc_dtype", settings["pairs"])
    return (engine.Slice("sweep", {"kappa": settings["kappas"], "rms": settings["scales"],
                                   **factors, "topology": settings["topologies"],
                                   "ddof": (0, 1), "groups": (settings["shape"][0],),
                                   "group_size": (settings["shape"][1],)}, keep=keep),)


def ulps_apart(computed, exact):
    """Steps through the format's values between two arrays of one 16- or 32-bit format (±0 one
    value), as float64; NaN where either is NaN. A vectorised numerics.metrics.ulp_distance for
    arrays already in the format (that one takes any values, through mpmath, element by element:
    too slow for the sweep)."""
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[computed.dtype.itemsize]
    sign_bit = 1 << (8 * computed.dtype.itemsize - 1)

    def ordinals(values):
        bits = np.ascontiguousarray(values).view(unsigned).astype(np.int64)
        return np.where(bits & sign_bit, -(bits & (sign_bit - 1)), bits)

    distance = np.abs(ordinals(computed) - ordinals(exact)).astype(np.float64)
    distance[np.isnan(computed.astype(np.float32)) | np.isnan(exact.astype(np.float32))] = np.nan
    return distance


def output_row(y, exact):
    """The three output measures of one (rule, eps, output format)."""
    computed_nan = np.isnan(y.astype(np.float32))
    exact_nan = np.isnan(exact.astype(np.float32))
    distance = ulps_apart(y, exact)
    both = ~computed_nan & ~exact_nan
    # |y − exact| (exact: the correctly rounded reference) in units of the format's spacing at
    # 1 (y has unit variance): the ulps of outputs near 0 are tiny, so "worst ulps" alone is
    # ruled by them
    spacing_at_one = 2.0 * numerics.unit_roundoff(y.dtype)
    absolute = np.abs(y.astype(np.float64) - exact.astype(np.float64))
    return {"worst_ulps": float(distance[both].max()) if both.any() else np.nan,
            "worst_error_in_ulp_of_one": float(absolute[both].max() / spacing_at_one)
            if both.any() else np.nan,
            "share_not_correctly_rounded": float((distance[both] > 0).mean()) if both.any()
            else np.nan,
            "nan_count": int((computed_nan & ~exact_nan).sum()),
            "exact_nan_count": int(exact_nan.sum())}


def cell(cell):
    settings = cell.settings
    shape = (settings["groups"], settings["group_size"])
    x = data.with_condition(shape, settings["kappa"], "float64", seed=cell.seed, norm="layer")
    x = precision.convert(x * settings["rms"], settings["input_dtype"])  # power of two: exact
    ddof, acc_dtype, topology = settings["ddof"], settings["acc_dtype"], settings["topology"]
    exact_var = reference.moments(x, "layer", ddof=ddof)[1]
    exact = {(eps, output): reference.normalize(x, "layer", eps=eps, ddof=ddof,
                                                output_dtype=output)
             for eps in EPSILONS for output in OUTPUTS}
    rows = []
    for rule in RULES:
        var = numerics.moments(x, "layer", algorithm=rule, ddof=ddof, acc_dtype=acc_dtype,
                               topology=topology).var
        variance = {"var_relative_error": float(np.nanmax(metrics.relative_error(var, exact_var))),
                    "negative_var_groups": int((np.asarray(var, np.float64) < 0).sum()),
                    "zero_var_groups": int((np.asarray(var, np.float64) == 0).sum()),
                    "exact_var_min": float(min(exact_var.tolist()))}
        for (eps, output), expected in exact.items():
            y = normalize(x, "layer", eps=eps, algorithm=rule, ddof=ddof, acc_dtype=acc_dtype,
                          topology=topology, output_dtype=output)
            rows.append({"algorithm": rule, "eps": eps, "output_dtype": output, **variance,
                         **output_row(y, expected)})
    return rows


# ---- report --------------------------------------------------------------------------------------

def main_cells(frame):
    """The figure's and findings' cells: float32 data and accumulator, ddof 0, the default order,
    rms 1."""
    topology = "blocked" if "blocked" in set(frame["topology"]) else frame["topology"].iloc[0]
    chosen = ((frame["input_dtype"] == MAIN_PAIR[0]) & (frame["acc_dtype"] == MAIN_PAIR[1])
              & (frame["ddof"] == 0) & (frame["topology"] == topology) & (frame["rms"] == 1.0))
    return frame[chosen]


def figure_of(results, frame):
    main = main_cells(frame)
    figure, axes = plt.subplots(1, len(EPSILONS), figsize=(4 * len(EPSILONS), 3.6), sharey=True)
    for axis, eps in zip(axes, EPSILONS):
        part = main[(main["eps"] == eps) & (main["output_dtype"] == "float32")]
        for rule in RULES:
            line = part[part["algorithm"] == rule].sort_values("kappa")
            worst = line["worst_error_in_ulp_of_one"].astype(float).fillna(np.inf).clip(upper=1e9)
            axis.loglog(line["kappa"], worst + 1, marker="o", label=rule)
        axis.set_title(f"eps = {eps:g}")
        axis.set_xlabel("κ")
    axes[0].set_ylabel("1 + worst |ŷ − y| / ulp(1), float32 y")
    axes[-1].legend(fontsize=7)
    figure.tight_layout()
    return results.figure("output_error", figure,
                          "Worst absolute error of the float32 output, in units of ulp(1) = 2⁻²³, "
                          "against κ, one panel per eps (float32 data and accumulator, ddof 0; "
                          "clipped at 10⁹).")


def eps_hiding_finding(results, main):
    """The (rule, κ) where eps = 1e-3 shrinks the worst float32 output error the most."""
    part = main[main["output_dtype"] == "float32"]
    column = "worst_error_in_ulp_of_one"
    without = part[part["eps"] == 0.0].set_index(["algorithm", "kappa"])[column]
    with_eps = part[part["eps"] == 1e-3].set_index(["algorithm", "kappa"])[column]
    ratio = (without.astype(float) / (with_eps.astype(float) + 1)).dropna()
    infinite = int(np.isinf(ratio).sum())
    ratio = ratio[np.isfinite(ratio)]
    if ratio.empty:
        return "No cell had a finite output both with eps = 0 and with eps = 1e-3."
    rule, kappa = ratio.idxmax()
    return results.finding(
        "eps hides the variance's error: with {rule} at κ = {kappa} (var = 1/κ² = {var}), the "
        "worst float32 output error is {without} ulp(1) with eps = 0 and {with_eps} ulp(1) with "
        "eps = 1e-3, which outweighs the variance there. In {infinite} (rule, κ) pairs the "
        "output was infinite with eps = 0 (a computed variance of 0) and finite with eps = 1e-3.",
        rule=rule, kappa=float(kappa), var=1 / float(kappa) ** 2,
        without=float(without[(rule, kappa)]), with_eps=float(with_eps[(rule, kappa)]),
        infinite=infinite)


def mean_finding(results, frame):
    """two_pass's output error in a float32 and a float64 accumulator at the largest κ where
    both are finite (eps 0: nothing hides the statistics)."""
    part = frame[(frame["algorithm"] == "two_pass") & (frame["input_dtype"] == "float32")
                 & (frame["eps"] == 0.0) & (frame["output_dtype"] == "float32")
                 & (frame["ddof"] == 0) & (frame["rms"] == 1.0)]
    worst = part.pivot_table(index="kappa", columns="acc_dtype", aggfunc="max",
                             values=["worst_error_in_ulp_of_one", "var_relative_error"])
    if not {"float32", "float64"} <= set(part["acc_dtype"]):
        return ""
    errors = worst["worst_error_in_ulp_of_one"]
    finite = errors[np.isfinite(errors["float32"]) & np.isfinite(errors["float64"])]
    if finite.empty:
        return ""
    kappa = float(finite.index.max())
    return results.finding(
        "The mean matters as much as the variance: at κ = {kappa}, two_pass's variance is off by "
        "at most {var_error} (relative) in a float32 accumulator, yet its worst float32 output "
        "error is {single} ulp(1), against {double} ulp(1) with a float64 accumulator (eps = 0): "
        "the rounding of the float32 mean, about u·|mean|, is divided by the standard deviation, "
        "|mean|/κ.", kappa=kappa, var_error=float(worst["var_relative_error"]["float32"][kappa]),
        single=float(finite["float32"][kappa]), double=float(finite["float64"][kappa]))


def reaching_finding(results, main):
    """Per rule, the smallest κ at which the float32 output (eps 1e-5) is off by more than 1 ulp."""
    part = main[(main["output_dtype"] == "float32") & (main["eps"] == 1e-5)]
    phrases = []
    for rule in RULES:
        line = part[part["algorithm"] == rule].sort_values("kappa")
        reached = line[(line["worst_error_in_ulp_of_one"].astype(float) > ELEMENTWISE_FLOOR)
                       | (line["nan_count"] > 0)]
        phrases.append(results.finding("{rule}: κ = {kappa}", rule=rule,
                                       kappa=float(reached["kappa"].iloc[0]))
                       if len(reached) else results.finding("{rule}: never up to κ = {kappa}",
                                                            rule=rule,
                                                            kappa=float(line["kappa"].max())))
    return (results.finding("The statistics' error reaches the output (worst float32 error "
                            "above {floor} ulp(1), what the elementwise roundings alone can "
                            "cost, or NaN; eps = 1e-5, float32 accumulator) from: ",
                            floor=ELEMENTWISE_FLOOR) + "; ".join(phrases) + ".")


def nan_finding(results, frame):
    nan_cells = frame[frame["nan_count"] > 0]
    if nan_cells.empty:
        return "No computed output was NaN where the exact one is not."
    by_eps = nan_cells.groupby("eps")["nan_count"].sum()
    return results.finding(
        "A negative variance becomes NaN: {cells} of {total} (cell, rule, eps, output) "
        "combinations have NaN outputs where the exact output is finite, all from the rules "
        "{rules}; {negative} of them had a negative computed variance. NaN outputs summed by eps: "
        "{by_eps}. {zero} had no negative but a zero computed variance with eps = 0, which "
        "makes 0·inf = NaN at the elements equal to the mean.", cells=len(nan_cells),
        total=len(frame), rules=", ".join(sorted(set(nan_cells["algorithm"]))),
        negative=int((nan_cells["negative_var_groups"] > 0).sum()),
        zero=int(((nan_cells["negative_var_groups"] == 0) & (nan_cells["zero_var_groups"] > 0)
                  & (nan_cells["eps"] == 0)).sum()),
        by_eps=", ".join(f"{eps:g}: {int(count)}" for eps, count in by_eps.items()))


def summary_table(results, frame, column, output_format, number_format):
    """``column`` per precision pair and rule (rows) and κ (columns) for ``output_format``,
    eps 1e-5, ddof 0, rms 1, worst over the topologies; 'NaN' marks cells with NaN outputs."""
    part = frame[(frame["eps"] == 1e-5) & (frame["ddof"] == 0) & (frame["rms"] == 1.0)
                 & (frame["output_dtype"] == output_format)].copy()
    part["precision"] = part["input_dtype"] + "/" + part["acc_dtype"]
    part["worst"] = part[column].astype(float).where(part["nan_count"] == 0, np.inf)
    pivot = part.pivot_table(index=["precision", "algorithm"], columns="kappa", values="worst",
                             aggfunc="max").reset_index()
    pivot.columns = [str(name) if not isinstance(name, float) else f"κ = {name:g}"
                     for name in pivot.columns]
    formats = {name: (lambda value: "NaN" if np.isinf(value) else format(value, number_format))
               for name in pivot.columns[2:]}
    return results.table(pivot, formats)


def report(results):
    frame = results.tables["output_error"]
    main = main_cells(frame)
    body = "\n\n".join(paragraph for paragraph in (
        results.finding("LayerNorm over {groups} groups of {size} elements, ", groups=int(
            frame["groups"].iloc[0]), size=int(frame["group_size"].iloc[0])) +
        "unit root mean square times `rms`, so var = rms²/κ²; y = numerics.normalize against "
        "numerics.reference.normalize (the exact output, correctly rounded to the same format). "
        "Every rule × topology × input/accumulator precision × ddof (0: how frameworks normalize; "
        "1: the unbiased running variance) × eps × output format is in "
        "`data/output_error.parquet`.",
        figure_of(results, frame),
        eps_hiding_finding(results, main),
        reaching_finding(results, main),
        nan_finding(results, frame),
        mean_finding(results, frame),
        "Worst |ŷ − y| in ulp(1) of a float32 output (eps = 1e-5, ddof 0, rms 1; worst over the "
        "topologies; NaN: some output NaN where the exact one is finite):",
        summary_table(results, frame, "worst_error_in_ulp_of_one", "float32", ".3g"),
        "Share of the bfloat16 outputs that are not correctly rounded (same cells):",
        summary_table(results, frame, "share_not_correctly_rounded", "bfloat16", ".3f"),
        results.finding(
            "`worst_ulps` in the data counts steps through the output format's values; near a "
            "zero crossing a tiny absolute error spans many of them (an output of 1e-30 is "
            "{steps} float32 values away from 0), so the tables use the absolute error in ulp(1) "
            "instead.", steps=int(np.float32(1e-30).view(np.uint32)))) if paragraph)
    return results.section(body)


STUDY = engine.Study("output_error", TITLE, grid, cell, report,
                     seed_factors=("kappa", "rms", "input_dtype", "groups", "group_size"),
                     description="the normalized output's error in ulps against κ, eps and "
                                 "the output format")
