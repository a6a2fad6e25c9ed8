"""Study (d): Bessel's correction on small groups, where frameworks disagree (frameworks.md).

Every framework normalizes with the biased variance (ddof 0) while training; for the running
(inference) variance PyTorch, TF fused, Caffe, cuDNN and apex use n − 1, Keras 3, Flax and MXNet
native use n. On small groups the two differ by the factor n/(n − 1), far beyond any rounding
error. This study measures both on many groups of standard normal data (population variance 1),
and records what each library does with a single value and ddof = 1.
"""
import warnings

import numpy as np
import pandas as pd

import numerics
from numerics import data
from studies import report

TITLE = "Bessel's correction"
ANCHOR = "bessel"

GROUP_SIZES = tuple(range(1, 17))
GROUPS = 20000
QUICK_GROUPS = 500


def size_row(size, groups, seed):
    # LayerNorm over (groups, n): one group per row, n elements each
    x = data.generate((groups, size), "float32", "normal", mean=0.0, std=1.0, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # n = 1, ddof = 1: NaN by definition
        biased = np.asarray(numerics.moments(x, "layer", ddof=0).var, dtype=np.float64)
        unbiased = np.asarray(numerics.moments(x, "layer", ddof=1).var, dtype=np.float64)
    return {
        "n": size, "groups": groups, "seed": seed,
        "mean_var_ddof0": biased.mean(), "expected_ddof0": (size - 1) / size,
        "mean_var_ddof1": unbiased.mean(), "expected_ddof1": 1.0 if size > 1 else np.nan,
        "median_ratio_ddof1_to_ddof0": np.median(unbiased / biased) if size > 1 else np.nan,
        "n_over_n_minus_1": size / (size - 1) if size > 1 else np.nan,
        # inference with PyTorch's running variance (n − 1) against Flax's (n), same statistics
        "output_scale_torch_vs_flax": np.median(np.sqrt(biased / unbiased)) if size > 1 else np.nan,
    }


def single_value_behaviour():
    """What each library returns for one value per group with ddof = 1 (measured, not quoted)."""
    import torch

    x = np.ones((4, 1), np.float32)
    cases = (
        ("numerics.moments(ddof=1)", lambda: numerics.moments(x, "layer", ddof=1).var),
        ("numpy.var(ddof=1)", lambda: np.var(x, axis=1, ddof=1)),
        ("torch.var(correction=1)", lambda: torch.var(torch.from_numpy(x), dim=1, correction=1)),
        ("torch F.batch_norm, training, N = 1",
         lambda: torch.nn.functional.batch_norm(torch.ones(1, 3), None, None, training=True)),
        ("torch F.instance_norm, one spatial element",
         lambda: torch.nn.functional.instance_norm(torch.ones(2, 3, 1))),
    )
    rows = []
    for name, call in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = np.asarray(call(), dtype=np.float64).reshape(-1)
                outcome = "NaN" if np.isnan(result).all() else f"{result[0]:g}"
            except (ValueError, RuntimeError) as error:
                outcome = f"raises {type(error).__name__}: {error}"
        warning = "; ".join(dict.fromkeys(str(item.message).split(" (Triggered")[0]
                                          for item in caught))
        rows.append({"call": name, "result": outcome, "warning": warning or "none"})
    return pd.DataFrame(rows)


def run(settings):
    groups = QUICK_GROUPS if settings.quick else GROUPS
    frame = pd.DataFrame([size_row(size, groups, settings.seed_for("bessel", size))
                          for size in GROUP_SIZES])
    behaviour = single_value_behaviour()
    files = [report.write_parquet(frame, settings.data_directory / "bessel.parquet", settings),
             report.write_parquet(behaviour, settings.data_directory / "bessel_single_value.parquet",
                                  settings)]
    table = frame[["n", "mean_var_ddof0", "expected_ddof0", "mean_var_ddof1", "expected_ddof1",
                   "median_ratio_ddof1_to_ddof0", "n_over_n_minus_1", "output_scale_torch_vs_flax"]]
    table = table.rename(columns={
        "mean_var_ddof0": "mean var, ddof 0", "expected_ddof0": "(n−1)/n",
        "mean_var_ddof1": "mean var, ddof 1", "expected_ddof1": "expected",
        "median_ratio_ddof1_to_ddof0": "var₁/var₀", "n_over_n_minus_1": "n/(n−1)",
        "output_scale_torch_vs_flax": "output scale, n−1 vs n running var"})
    three = {column: (lambda value: "NaN" if np.isnan(value) else f"{value:.3f}")
             for column in table.columns[1:]}
    body = f"""{groups} groups (rows) of n standard-normal float32 values each (population variance
1), numerics' default rule; "mean var" averages over the groups, var₁/var₀ is the median ratio of the
unbiased to the biased variance of a group (n/(n − 1) up to rounding). The last column is how much
a network's inference output changes between a framework that keeps an unbiased running variance
(PyTorch, TF fused, Caffe, cuDNN, apex) and one that keeps the biased one (Keras 3, Flax, MXNet
native), for the same batch statistics: sqrt(var₀/var₁) = sqrt((n − 1)/n). Even at n = 16 the two
conventions differ by {100 * (16 / 15 - 1):.1f} % in the variance, orders of magnitude more than the
rounding errors of the stable rules in the accuracy study.

{report.markdown_table(table, three)}

One value per group with ddof = 1 (the unbiased estimate is 0/0), as each library handles it on
this machine:

{report.markdown_table(behaviour)}
"""
    return report.Section(TITLE, ANCHOR, body, tuple(files))
