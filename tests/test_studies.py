"""The study pipeline end to end: `python -m studies.run_all --profile smoke` into a temporary
directory (tests/conftest.py), then the report, the parquet files and the figures. The frameworks
study's data are tested with that study (tests/test_frameworks_study.py), the notebooks in
tests/test_notebooks.py."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPOSITORY = Path(__file__).resolve().parent.parent

#: the columns readers (REPORT.md's tables, the notebooks) rely on, per data file
EXPECTED_COLUMNS = {
    "accuracy": {"slice", "algorithm", "topology", "lanes", "block", "norm", "groups", "subset",
                 "layout", "shape", "input_dtype", "acc_dtype", "ddof", "distribution",
                 "mean_over_std", "kappa_target", "kappa_median", "shifted_kappa_median",
                 "group_size", "group_count", "constant_groups", "underflow_groups",
                 "count_overflows", "u", "max_rel_error",
                 "median_rel_error", "max_rel_error_u", "min_lre", "bound_median",
                 "max_bound_ratio", "groups_over_bound", "negative_count", "zero_count",
                 "nonfinite_count", "seed"},
    "accuracy_constant": {"value", "stored_value", "input_dtype", "acc_dtype", "algorithm",
                          "topology", "clamp", "group_size", "group_count", "negative_count",
                          "zero_count", "positive_count", "nonfinite_count", "min_var",
                          "rstd_nan_count"},
    "nist_strd": {"dataset", "difficulty", "n", "precision", "algorithm", "topology", "kappa",
                  "lre_sd_certified", "lre_sd_stored_exact", "lre_mean_certified",
                  "lre_mean_stored_exact"},
    "bessel": {"n", "mean_var_ddof0", "mean_var_ddof1", "median_ratio_ddof1_to_ddof0",
               "n_over_n_minus_1", "output_scale_torch_vs_flax"},
    "bessel_single_value": {"call", "result", "warning"},
}


@pytest.fixture
def reports(smoke_reports):
    return smoke_reports


def read(reports, name):
    return pd.read_parquet(reports / "data" / f"{name}.parquet")


def test_report_links_only_files_that_exist(reports):
    text = (reports / "REPORT.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", text)
    data_files = re.findall(r"`(data/[^`]+\.parquet)`", text)
    assert len(figures) >= 4 and set(EXPECTED_COLUMNS) <= {Path(path).stem for path in data_files}
    for relative in figures + data_files:
        assert (reports / relative).is_file(), relative
    for title in ("Accuracy sweep", "NIST StRD", "Bessel's correction"):
        assert re.search(rf"^## \d+\. {re.escape(title)}$", text, re.MULTILINE), title
    assert "profile: smoke" in text and "seed: 0" in text


def test_no_partial_or_private_files_left(reports):
    for path in reports.rglob("*"):
        assert not path.name.endswith(".tmp"), path
        if path.is_file():
            assert path.stat().st_mode & 0o044, f"{path} is not readable by others"


@pytest.mark.parametrize("name", sorted(EXPECTED_COLUMNS))
def test_data_files_have_their_columns_and_provenance(reports, name):
    frame = read(reports, name)
    assert len(frame) > 0
    assert EXPECTED_COLUMNS[name] <= set(frame.columns), EXPECTED_COLUMNS[name] - set(frame.columns)
    record = frame.attrs["provenance"]
    assert record["seed"] == 0 and record["profile"] == "smoke"
    assert record["git_commit"] and record["date_utc"] and record["packages"]["numpy"]


def test_the_numbers_say_what_the_theory_says(reports):
    """A few results the quick grids must reproduce whatever else changes: these make the
    pipeline able to fail on wrong numbers, not only on missing files."""
    accuracy = read(reports, "accuracy")
    float32 = accuracy[(accuracy["slice"] == "condition") & (accuracy["distribution"] == "normal")
                       & (accuracy["input_dtype"] == "float32") & (accuracy["acc_dtype"] == "float32")]
    # |mean|/std = 1e4 is past κ²u = 1 in float32: the textbook rule keeps no digit; two-pass
    # keeps at least 4 (sequential order over n = 512: about n u = 3e-5)
    at_1e4 = float32[float32["mean_over_std"] == 1e4].set_index(["algorithm", "topology"])["min_lre"]
    assert (at_1e4.loc["naive"] == 0).all()
    assert (at_1e4.loc["two_pass"] > 4).all()
    constant = read(reports, "accuracy_constant")
    assert constant.loc[~constant["clamp"] & (constant["algorithm"] == "naive"), "negative_count"].sum() > 0
    assert constant.loc[constant["clamp"], "negative_count"].sum() == 0
    nist = read(reports, "nist_strd")
    exact = nist[nist["algorithm"] == "exact"].set_index(["dataset", "precision"])
    assert (exact["lre_sd_stored_exact"] == 15).all()
    assert exact.loc[("NumAcc4", "float32"), "lre_sd_certified"] == 0  # all values round to 1e7
    bessel = read(reports, "bessel").set_index("n")
    assert np.isnan(bessel.loc[1, "mean_var_ddof1"])
    assert bessel.loc[2:, "median_ratio_ddof1_to_ddof0"].to_numpy() == pytest.approx(
        bessel.loc[2:, "n_over_n_minus_1"].to_numpy(), rel=1e-6)


def test_runs_are_reproducible(tmp_path):
    """Two runs with the same seed give identical data (the NIST and Bessel studies: the cheap
    ones; every study draws its inputs through the same seeds, studies.report.seed_for), and a
    --workers 2 run gives the serial run's data."""
    for run, workers in (("first", "1"), ("second", "2")):
        completed = subprocess.run(
            [sys.executable, "-m", "studies.run_all", "--profile", "smoke", "--only",
             "bessel,nist_strd", "--output", str(tmp_path / run), "--no-cache", "--workers",
             workers], cwd=REPOSITORY, env={**os.environ, "MPLBACKEND": "Agg"},
            capture_output=True, text=True)
        assert completed.returncode == 0, completed.stderr
    for name in ("bessel", "bessel_single_value", "nist_strd"):
        first = pd.read_parquet(tmp_path / "first" / "data" / f"{name}.parquet")
        second = pd.read_parquet(tmp_path / "second" / "data" / f"{name}.parquet")
        pd.testing.assert_frame_equal(first, second, check_exact=True)


def test_bad_options_name_the_option():
    for arguments, message in ((["--only", "accuracy,nonsense"], "--only: unknown studies nonsense"),
                               (["--workers", "0"], "--workers must be at least 1"),
                               (["--profile", "huge"], "--profile: invalid choice")):
        completed = subprocess.run([sys.executable, "-m", "studies.run_all", *arguments],
                                   cwd=REPOSITORY, capture_output=True, text=True)
        assert completed.returncode == 2 and message in completed.stderr, completed.stderr


def test_provenance_counts_only_edits_outside_reports_as_uncommitted(tmp_path, monkeypatch):
    """studies.report.provenance: an edited tracked file makes a run "uncommitted", an edited
    report (an earlier run's output under reports/) does not."""
    import subprocess

    from studies import report

    def git(*arguments):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *arguments],
                       cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "REPORT.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "start")
    monkeypatch.setattr(report, "REPOSITORY", tmp_path)
    assert report.provenance(0, "smoke")["git_dirty"] is False
    (tmp_path / "reports" / "REPORT.md").write_text("new\n")
    assert report.provenance(0, "smoke")["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert report.provenance(0, "smoke")["git_dirty"] is True
