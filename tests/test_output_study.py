"""The output study (studies/output_error.py): its measures against numerics.metrics, its cells
deterministic, and a smoke run that writes the data, the figure and filled findings."""
import math

import numpy as np
import pandas as pd
import pytest

from numerics import metrics, precision, reference
from numerics.normalization import normalize
from studies import output_error, report
from studies.engine import Cell, runner


@pytest.mark.parametrize("output_format", ["float16", "bfloat16", "float32"])
def test_ulps_apart_is_the_metrics_ulp_distance(output_format):
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 3, 40), [0.0, -0.0, math.inf, -math.inf, math.nan,
                                                    1e-30, -1e-30]])
    left = precision.convert(values, output_format)
    right = precision.convert(values * (1 + rng.normal(0, 1e-2, values.size)), output_format)
    right = precision.convert(np.where(rng.random(values.size) < 0.2, -values, right),
                              output_format)
    expected = metrics.ulp_distance(left, right.astype(np.float64), output_format)
    np.testing.assert_array_equal(output_error.ulps_apart(left, right), expected)


def smoke_cell(kappa):
    settings = {"kappa": kappa, "rms": 1.0, "input_dtype": "float32", "acc_dtype": "float32",
                "topology": "blocked", "ddof": 0, "groups": 2, "group_size": 64}
    return Cell("output_error", "sweep", settings, seed=123)


def test_a_cell_measures_what_the_metrics_module_measures():
    cell = smoke_cell(1e4)
    rows = output_error.cell(cell)
    assert len(rows) == len(output_error.RULES) * len(output_error.EPSILONS) * len(
        output_error.OUTPUTS)
    x = output_error.data.with_condition((2, 64), 1e4, "float64", seed=123, norm="layer")
    x = precision.convert(x, "float32")
    for row in rows:
        if row["algorithm"] != "welford" or row["eps"] != 1e-5:
            continue
        y = normalize(x, "layer", eps=1e-5, algorithm="welford", output_dtype=row["output_dtype"])
        exact = reference.normalize(x, "layer", eps=1e-5, output_dtype=row["output_dtype"])
        distance = metrics.ulp_distance(y, exact.astype(np.float64), row["output_dtype"])
        assert row["worst_ulps"] == np.nanmax(distance)
        assert row["share_not_correctly_rounded"] == np.mean(distance > 0)
        assert row["nan_count"] == 0 == row["exact_nan_count"]


def test_cells_are_deterministic():
    assert output_error.cell(smoke_cell(1.0)) == output_error.cell(smoke_cell(1.0))


def test_smoke_run_writes_data_figure_and_filled_findings(tmp_path):
    options = runner.RunOptions(tmp_path, "smoke", 0, 1)
    section, _ = runner.run_study(output_error, options, report.provenance(0, "smoke"))
    frame = pd.read_parquet(tmp_path / "data" / "output_error.parquet")
    assert {"kappa", "rms", "input_dtype", "acc_dtype", "topology", "ddof", "algorithm", "eps",
            "output_dtype", "worst_ulps", "worst_error_in_ulp_of_one",
            "share_not_correctly_rounded", "nan_count", "var_relative_error",
            "negative_var_groups"} <= set(frame.columns)
    assert set(frame["eps"]) == set(output_error.EPSILONS)
    assert set(frame["ddof"]) == {0, 1}
    assert (tmp_path / "figures" / "output_error.png").exists()
    assert "eps hides" in section.body and "reaches the output" in section.body
    assert "NaN" in section.body and "{" not in section.body
