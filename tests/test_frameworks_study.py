"""The frameworks and conformance studies: their cell functions on smoke-sized inputs, and one run
of each through the study engine on a reduced grid (tables, parquet columns, report section)."""
import dataclasses

import pandas as pd
import pytest

from studies import conformance, frameworks, report
from studies.engine import Cell, Slice, runner

# one worker imports the frameworks once (TensorFlow alone takes seconds)
pytestmark = pytest.mark.xdist_group("frameworks")

FRAMEWORK_COLUMNS = {"implementation", "kind", "framework", "used_by", "version", "ddof", "norm",
                     "groups", "subset", "layout", "distribution", "mean", "condition", "shape",
                     "max_rel_error", "max_rel_error_u", "min_lre", "negative_count",
                     "mean_max_rel_error"}
CHECK_COLUMNS = {"recipe", "implementation", "same_bits", "max_rel_difference",
                 "recipe_max_rel_error", "implementation_max_rel_error"}
CONFORMANCE_COLUMNS = {"case", "source", "url", "implementation", "kind", "min_correct_digits_mean",
                       "min_correct_digits_var", "negative_variances", "nan_outputs"}


def anchor_cell(layout):
    return Cell("frameworks", "test", {"shape": "2x64x14x14", "distribution": "normal",
                                       "mean": 1e4, "norm": "group", "groups": 32,
                                       "layout": layout}, seed=7)


def test_frameworks_cell_measures_every_installed_implementation():
    rows = frameworks.cell(anchor_cell("NHWC"))
    measured = {row["implementation"]: row for row in rows if "table" not in row}
    assert {"torch group_norm", "flax GroupNorm fast", "keras GroupNormalization",
            "tf.nn.moments", "recipe: naive f32 + clamp"} <= set(measured)
    # the toolkit's finding: PyTorch's channels-last CPU GroupNorm keeps no digit at mean 1e4
    assert measured["torch group_norm"]["max_rel_error"] > 1
    assert measured["torch.var_mean"]["max_rel_error"] < 1e-6
    checks = [row for row in rows if row.get("table") == "frameworks_recipe_check"]
    pairs = {(row["recipe"], row["implementation"]) for row in checks}
    assert ("recipe: naive f32 + clamp", "torch group_norm") in pairs
    assert ("recipe: welford f32, torch CPU chunks", "torch group_norm") not in pairs  # NCHW only


def reduced(module, grid, monkeypatch):
    monkeypatch.setattr(module, "STUDY", dataclasses.replace(module.STUDY, grid=grid))
    return module


def run(module, tmp_path):
    options = runner.RunOptions(tmp_path, "smoke", workers=1)
    return runner.run_study(module, options, report.provenance(0, "smoke"))[0]


def test_frameworks_study_through_the_engine(tmp_path, monkeypatch):
    def grid(profile):
        return (Slice("conditions", {"shape": ("2x32x6x6",), "distribution": ("normal",),
                                     "mean": (1e4,), "norm": ("group",), "groups": (32,),
                                     "layout": ("NCHW", "NHWC")}),
                Slice("orders", {"shape": ("2x32x6x6",), "distribution": ("normal",),
                                 "mean": (1e4,), "norm": ("group",), "groups": (32,),
                                 "layout": ("NCHW",), "topology": frameworks.ORDERS}))
    section = run(reduced(frameworks, grid, monkeypatch), tmp_path)
    table = pd.read_parquet(tmp_path / "data" / "frameworks.parquet")
    checks = pd.read_parquet(tmp_path / "data" / "frameworks_recipe_check.parquet")
    assert FRAMEWORK_COLUMNS <= set(table.columns) and CHECK_COLUMNS <= set(checks.columns)
    assert "torch 2.13" in " ".join(table["version"])
    assert "Recipes against the real frameworks" in section.body
    assert "torch group_norm on group32" in section.body  # the channels-last penalty finding
    assert (tmp_path / "figures" / "frameworks_anchor_condition.png").exists()


def test_conformance_study_through_the_engine(tmp_path, monkeypatch):
    def grid(profile):
        return (Slice("cases", {"case": ("onnxruntime-28463", "tensorflow-118701"),
                                "size": ("smoke",)}),)
    section = run(reduced(conformance, grid, monkeypatch), tmp_path)
    table = pd.read_parquet(tmp_path / "data" / "conformance.parquet")
    assert CONFORMANCE_COLUMNS <= set(table.columns)
    case = table[table["case"] == "tensorflow-118701"]
    # TensorFlow #118701 reproduces: XLA's E[x²] − E[x]² keeps no digit (NaN where it went negative)
    assert "tf XLA fused_batch_norm" in set(conformance.broken(case)["implementation"])
    assert "tf fused_batch_norm" not in set(conformance.broken(case)["implementation"])
    assert "[TensorFlow #118701](https://github.com/tensorflow/tensorflow/issues/118701)" in section.body
    assert "tensorflow-118701:" in section.body
