"""Study: the conformance cases of numerics.conformance (inputs that broke frameworks in their
issue trackers) run through every numerics rule × accumulator (float16, bfloat16, float32,
float64) and every installed framework and recipe, by numerics.audits.audit.

One cell per case. Table ``conformance`` (parquet columns): case, source, url, framework (whose
tracker reported it), norm, groups, layout, eps (the case's), shape, implementation, kind
("numerics", "framework", "recipe"), min_correct_digits_mean, min_correct_digits_var (the worst
group's LRE, capped at 17), max_relative_error_var, negative_variances (None where the framework
only returns its output), nan_outputs (NaN output elements at the layer's own default eps; see
numerics/audits.py), bound (numerics rules), unrecovered_groups (groups whose statistics could
not be recovered from the output), error (an implementation that raised), and
exact_mean_worst / exact_var_worst / kappa_max (the exact statistics of the worst-conditioned
group). The smoke profile runs each case at its ``smoke_shape``; the default profile at the size
the tracker reported.
"""
import math

import pandas as pd

from numerics import audits, conformance, precision
from studies.engine import Slice, Study

SIZES = {"smoke": "smoke", "default": "default", "full": "default"}


def grid(profile):
    return (Slice("cases", {"case": tuple(case.name for case in conformance.CASES),
                            "size": (SIZES[profile],)}),)


def worst_group(result):
    finite = [group for group in result.groups if math.isfinite(group["exact_var"])]
    if not finite:
        return {"exact_mean_worst": math.nan, "exact_var_worst": math.nan, "kappa_max": math.nan}
    worst = max(finite, key=lambda group: group["kappa"])
    return {"exact_mean_worst": worst["exact_mean"], "exact_var_worst": worst["exact_var"],
            "kappa_max": worst["kappa"]}


def cell(cell):
    case = conformance.case(cell.settings["case"])
    shape = case.shape if cell.settings["size"] == "default" else case.smoke_shape
    x = case.make(shape, cell.seed)
    result = audits.audit(x, case.norm, groups=case.groups, layout=case.layout, eps=None,
                          accumulator_formats=precision.FORMATS)
    described = {"source": case.source, "url": case.url, "framework": case.framework,
                 "norm": case.norm, "groups": case.groups, "layout": case.layout,
                 "eps": case.eps, "shape": "x".join(map(str, shape)), **worst_group(result)}
    return [{**described, **row} for row in result.implementations]


def cell_text(row):
    """One table cell: correct digits of mean/var, then "neg" and "NaN" where they occurred."""
    if isinstance(row.error, str):
        return "failed"
    text = "/".join("–" if value is None or pd.isna(value) else f"{value:.1f}"
                    for value in (row.min_correct_digits_mean, row.min_correct_digits_var))
    if not pd.isna(row.negative_variances) and row.negative_variances > 0:
        text += " neg"
    if not pd.isna(row.nan_outputs) and row.nan_outputs > 0:
        text += " NaN"
    if not pd.isna(row.unrecovered_groups) and row.unrecovered_groups > 0:
        text += " ?"
    return text


def case_table(frame):
    frame = frame.assign(text=[cell_text(row) for row in frame.itertuples()])
    table = frame.pivot_table(index=["kind", "implementation"], columns="case", values="text",
                              aggfunc="first", sort=False)
    return table.reset_index()


def sources_table(frame):
    cases = frame.drop_duplicates("case")
    return pd.DataFrame([{
        "case": row.case, "source": f"[{row.source}]({row.url})" if row.url else row.source,
        "what broke": conformance.case(row.case).what_broke,
        "input": f"{row.shape}, {row.layout}, {row.norm}" + (f" G = {int(row.groups)}"
                                                             if not pd.isna(row.groups) else ""),
        "expected": conformance.case(row.case).expected,
        "exact (worst group)": f"mean {row.exact_mean_worst:.9g}, var {row.exact_var_worst:.6g}, "
                               f"κ {row.kappa_max:.3g}"} for row in cases.itertuples()])


def broken(rows):
    """The rows of implementations that fail a case: NaN in the normalized output, or not one
    correct digit of the variance (whether a cancelled E[x²] − E[x]² comes out negative, hence NaN,
    or small and positive is a coin flip of its rounding, which differs between CPUs)."""
    return rows[(rows["nan_outputs"] > 0) | (rows["min_correct_digits_var"] < 1)]


def failures_finding(results, frame):
    lines = []
    for case_name, rows in frame.groupby("case", sort=False):
        ran = rows[rows["error"].isna()]
        broken_rows = broken(ran)
        reporter = ran[(ran["kind"] == "framework")
                       & (ran["implementation"].map(framework_of) == rows["framework"].iloc[0])]
        reporter_broken = reporter[reporter["implementation"].isin(broken_rows["implementation"])]
        lines.append(results.finding(
            "- {case}: {broken} of {ran} implementations give NaN outputs or less than one "
            "correct digit of the variance; of the reporting framework's ({framework}) "
            "{reporter} implementations, {reporter_broken} do{names}.",
            case=case_name, broken=len(broken_rows), ran=len(ran),
            framework=rows["framework"].iloc[0],
            reporter=len(reporter), reporter_broken=len(reporter_broken),
            names=(": " + ", ".join(reporter_broken["implementation"])) if len(reporter_broken)
            else ""))
    return "\n".join(lines)


def framework_of(name):
    from numerics import implementations
    try:
        return implementations.by_name(name).framework
    except ValueError:
        return "numerics"


def report(results):
    frame = results.tables["conformance"]
    failed = frame[frame["error"].notna()]
    failures = ("" if failed.empty else "Implementations that raised: " + "; ".join(
        f"{row.implementation} on {row.case} ({row.error})" for row in failed.itertuples()) + ".")
    body = f"""Inputs that broke frameworks in their issue trackers, reproduced as named cases
(numerics/conformance.py) and run through every numerics rule × accumulator format, every
installed framework and every recipe (numerics/audits.py). Profile: {results.profile}.

{results.table(sources_table(frame))}

Findings (from this run's data):

{failures_finding(results, frame)}

Each cell: the worst group's correct digits of the mean / of the variance (LRE, capped at 17;
0 means no correct digit or a NaN), then "neg" where a variance came out negative and "NaN" where
the normalized output at the layer's own default eps held a NaN (numerics rules and
statistics-only frameworks: a group whose var + eps is not positive); "?" where some groups'
statistics could not be recovered from a layer's output (its variance there was 0 or negative,
which makes the output at eps = 0 non-finite: those groups are left out of the digits). "–": not
observable.

{results.table(case_table(frame))}

{failures}
"""
    return results.section(body)


STUDY = Study("conformance", "Conformance cases", grid, cell, report, seed_factors=("case",))
