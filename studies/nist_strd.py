"""Study: the NIST StRD univariate datasets, every rule in float32 and float64.

The NIST values are decimal. Stored as binary floats (each decimal string rounded once, to nearest,
to the format: numerics.metrics.correctly_rounded), they already differ from the data NIST
certified, so every result gets two LREs (McCullough 1998, capped at NIST's 15 digits):
- against the certified value: what a user sees; capped by the rounding of the input itself;
- against the exact statistics of the stored binary values (numerics.reference): the rule alone.
The "exact" rows apply exact arithmetic to the stored values: their LRE against the certified value
is the cap no algorithm can beat in that format. The standard deviation (denominator n − 1, as
certified) is the square root of the computed variance taken exactly, so that its LRE measures the
variance rule and not one more float rounding.
"""
import itertools

import mpmath
import numpy as np

import numerics
from numerics import metrics, nist, reference
from studies import engine

TITLE = "NIST StRD"

PRECISIONS = ("float32", "float64")
TOPOLOGIES = ("sequential", numerics.DEFAULT_TOPOLOGY)
#: the LRE caps for inputs stored in float64 and float32 that docs/architecture.md, section 4.5,
#: quotes (for comparison with the "exact" column, which recomputes them)
QUOTED_CAPS = {"Mavro": (13.1, 4.7), "Michelso": (13.9, 4.7), "NumAcc2": (15, 6.4),
               "NumAcc3": (9.5, 1.2), "NumAcc4": (8.3, 0)}
#: bits of the exact square roots (numerics.reference's default precision)
SQRT_BITS = 256


def exact_sqrt(value):
    """sqrt of a variance (float or mpf) at SQRT_BITS; NaN for a negative or non-finite variance,
    which LRE then scores 0."""
    with mpmath.workprec(SQRT_BITS):
        value = mpmath.mpf(value)
        return mpmath.sqrt(value) if mpmath.isfinite(value) and value >= 0 else mpmath.mpf("nan")


def lre(computed, reference_value):
    return float(metrics.lre(computed, reference_value, digits=nist.CERTIFIED_DIGITS))


def dataset_rows(dataset):
    rows = []
    decimal_mean, decimal_var = reference.moments(np.array(dataset.values), ddof=1)
    base = {"dataset": dataset.name, "difficulty": dataset.difficulty, "n": dataset.n,
            "decimal_reference_lre_sd": lre(exact_sqrt(decimal_var[()]), dataset.certified_sd)}
    for precision in PRECISIONS:
        stored = metrics.correctly_rounded(np.array(dataset.values, dtype=object), precision)
        exact_mean, exact_var = (value[()] for value in reference.moments(stored, ddof=1))
        exact_sd = exact_sqrt(exact_var)
        columns = {**base, "precision": precision,
                   "kappa": float(reference.condition_number(stored)),
                   "stored_distinct_values": int(np.unique(stored).size)}

        def scores(mean, sd):
            return {"lre_sd_certified": lre(sd, dataset.certified_sd),
                    "lre_sd_stored_exact": lre(sd, exact_sd),
                    "lre_mean_certified": lre(mean, dataset.certified_mean),
                    "lre_mean_stored_exact": lre(mean, exact_mean)}

        rows.append({**columns, "algorithm": "exact", "topology": "exact",
                     **scores(exact_mean, exact_sd)})
        for algorithm, topology in itertools.product(numerics.ALGORITHMS, TOPOLOGIES):
            mean, var = numerics.moments(stored, None, algorithm=algorithm, ddof=1,
                                         acc_dtype=precision, topology=topology)
            rows.append({**columns, "algorithm": algorithm, "topology": topology,
                         "var": float(var), **scores(float(mean), exact_sqrt(float(var)))})
    return rows


def lre_table(frame, precision):
    """Per dataset: 'LRE vs certified / LRE vs stored binary' of the standard deviation, sequential
    order, for the exact arithmetic and every rule."""
    cells = frame[(frame["precision"] == precision)
                  & frame["topology"].isin(["exact", "sequential"])].copy()
    cells["cell"] = [f"{certified:.1f} / {stored:.1f}" for certified, stored in
                     zip(cells["lre_sd_certified"], cells["lre_sd_stored_exact"])]
    table = cells.pivot(index="dataset", columns="algorithm", values="cell")
    table = table[["exact", *numerics.ALGORITHMS]].reindex(list(nist.DATASETS))
    per_dataset = cells.drop_duplicates("dataset").set_index("dataset")
    index = 0 if precision == "float64" else 1
    quoted = {name: caps[index] for name, caps in QUOTED_CAPS.items()}
    table.insert(0, "n", [per_dataset.loc[name, "n"] for name in table.index])
    table.insert(1, "κ", [per_dataset.loc[name, "kappa"] for name in table.index])
    table.insert(2, "quoted cap", [quoted.get(name, np.nan) for name in table.index])
    return table.reset_index()


def topology_note(frame):
    """How far the default order moves the LREs from the sequential ones."""
    keyed = frame[frame["topology"] != "exact"].set_index(["dataset", "precision", "algorithm",
                                                           "topology"])["lre_sd_stored_exact"]
    change = (keyed.xs(numerics.DEFAULT_TOPOLOGY, level="topology")
              - keyed.xs("sequential", level="topology"))
    largest = change.abs().idxmax()
    return (f"The default order ({numerics.DEFAULT_TOPOLOGY}) changes the stored-binary LRE of the "
            f"standard deviation by at most {change.abs().max():.1f} digits ({largest[2]}, "
            f"{largest[1]}, {largest[0]}: {change[largest]:+.1f}); every row of the parquet file "
            f"has both orders. The decimal reference reproduces every certified standard "
            f"deviation to {frame['decimal_reference_lre_sd'].min():.1f} digits.")


def grid(profile):
    """Nine datasets, the same in every profile: the whole study takes about a second."""
    return (engine.Slice("datasets", {"dataset": tuple(nist.DATASETS)}),)


def cell(cell):
    return dataset_rows(nist.load(cell.settings["dataset"]))


def report_section(results):
    frame = results.tables["nist_strd"]
    cell_format = {"κ": lambda value: f"{value:.2g}"}
    body = f"""The nine NIST StRD univariate datasets; every rule, ddof = 1, sequential order,
accumulator = storage format. Each cell: LRE of the standard deviation **against the certified value / against the
exact standard deviation of the stored binary values** (15 = all certified digits; 0 = no digit, or
a negative variance). "exact": exact arithmetic on the stored values, so its first number is the cap
the input rounding sets; "quoted cap": the same cap as docs/architecture.md (section 4.5) quotes it.
κ: condition number of the stored data. `data/nist_strd.parquet` also has
the mean's LREs, the computed variances and the default order.

{topology_note(frame)}

**float64**

{results.table(lre_table(frame, 'float64'), cell_format)}

**float32**

{results.table(lre_table(frame, 'float32'), cell_format)}
"""
    return results.section(body)


STUDY = engine.Study("nist_strd", TITLE, grid, cell, report_section, seed_factors=(),
                     description="the NIST StRD univariate datasets, every rule")
