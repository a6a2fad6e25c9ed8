"""The study engine (studies/engine/) on a tiny synthetic study defined here: the same data from a
serial run, two local worker processes, a Dask LocalCluster and a run killed with SIGKILL and
resumed from the cell cache; a damaged cache entry is recomputed; the results helpers."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from studies import report
from studies.engine import Results, Slice, Study, runner

REPOSITORY = Path(__file__).resolve().parent.parent
#: seconds each cell sleeps, so that a run can be killed while cells are in flight
SLEEP_VARIABLE = "NUMERICS_TEST_CELL_SLEEP"


def grid(profile):
    sizes = (3, 5) if profile == "smoke" else (3, 5, 8, 13)
    return (Slice("sums", {"n": sizes, "dtype": ("float16", "float32", "float64")}),
            Slice("odd", {"n": sizes, "dtype": ("float32",)}, keep=lambda s: s["n"] % 2 == 1))


def cell(cell):
    """Rounding of the mean of n normal draws; a second table gets one row per odd cell."""
    start = time.perf_counter()
    time.sleep(float(os.environ.get(SLEEP_VARIABLE, "0")))
    values = np.random.default_rng(cell.seed).standard_normal(cell.settings["n"])
    stored = values.astype(cell.settings["dtype"])
    rows = [{"error": float(abs(stored.astype(np.float64).mean() - values.mean())),
             "first": float(values[0]), "seconds": time.perf_counter() - start}]
    if cell.slice == "odd":
        rows.append({"table": "toy_odd", "middle": float(values[cell.settings["n"] // 2]),
                     "label": None if cell.settings["n"] == 3 else cell.settings["n"]})
    return rows


def report_section(results):
    frame = results.tables["toy"]
    worst = frame.loc[frame["error"].idxmax()]
    return results.section(results.finding("Largest error {error} at n = {n} ({dtype}).",
                                            error=worst["error"], n=worst["n"],
                                            dtype=worst["dtype"]))


STUDY = Study("toy", "Toy study", grid, cell, report_section, seed_factors=("n",),
              timing_columns=("seconds",))
MODULE = sys.modules[__name__]


def run(output, cache_directory=None, **options):
    provenance = report.provenance(0, "smoke")
    section, _ = runner.run_study(MODULE, runner.RunOptions(
        output, "smoke", cache_directory=cache_directory, **options), provenance)
    return section


def tables(output):
    return {path.stem: pd.read_parquet(path) for path in sorted((output / "data").glob("*.parquet"))}


def assert_same_data(first, second):
    """Every column but the timing ones, row by row (row order is cell order)."""
    assert first.keys() == second.keys()
    for name in first:
        keep = [column for column in first[name].columns if column not in STUDY.timing_columns]
        pd.testing.assert_frame_equal(first[name][keep], second[name][keep], check_exact=True)


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    output = tmp_path_factory.mktemp("serial")
    section = run(output, workers=1)
    return output, section


def test_serial_run_writes_tables_in_cell_order(serial):
    output, section = serial
    data = tables(output)
    toy = data["toy"]
    assert list(toy["slice"]) == ["sums"] * 6 + ["odd"] * 2
    assert list(zip(toy["n"], toy["dtype"]))[:3] == [(3, "float16"), (3, "float32"), (3, "float64")]
    # the seed depends on n alone: every format rounds the same draws
    assert toy.groupby("n")["first"].nunique().eq(1).all()
    assert list(data["toy_odd"]["n"]) == [3, 5] and str(data["toy_odd"]["label"].dtype) == "Int64"
    assert toy.attrs["provenance"]["profile"] == "smoke"
    assert section.anchor == "toy" and "Largest error" in section.body
    assert {Path(path).name for path in section.files} == {"toy.parquet", "toy_odd.parquet"}


def test_two_local_workers_give_the_serial_data(serial, tmp_path):
    run(tmp_path, workers=2)
    assert_same_data(tables(serial[0]), tables(tmp_path))


def test_a_dask_local_cluster_gives_the_serial_data(serial, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(processes=True, host="127.0.0.1", n_workers=2,
                                  threads_per_worker=1, dashboard_address=None) as cluster:
        run(tmp_path, scheduler=cluster.scheduler_address)
    assert_same_data(tables(serial[0]), tables(tmp_path))


def test_a_rerun_reads_every_cell_from_the_cache(serial, tmp_path):
    run(tmp_path / "first", tmp_path / "cache")
    run(tmp_path / "second", tmp_path / "cache")
    first, second = tables(tmp_path / "first"), tables(tmp_path / "second")
    assert_same_data(tables(serial[0]), first)
    # the timing column too: the second run computed nothing
    pd.testing.assert_frame_equal(first["toy"], second["toy"], check_exact=True)


def test_a_damaged_cache_entry_is_recomputed(serial, tmp_path, capsys):
    run(tmp_path / "first", tmp_path / "cache")
    entries = sorted((tmp_path / "cache").rglob("*.pickle"))
    assert len(entries) == 8
    entries[0].write_bytes(entries[0].read_bytes()[:-5] + b"junk!")
    run(tmp_path / "second", tmp_path / "cache")
    assert "damaged entry" in capsys.readouterr().err
    assert_same_data(tables(serial[0]), tables(tmp_path / "second"))


KILLED_RUN = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
import test_engine
test_engine.run(Path(sys.argv[1]), Path(sys.argv[2]), workers=1)
"""


def test_a_run_killed_with_sigkill_resumes_to_the_same_data(serial, tmp_path):
    cache_directory = tmp_path / "cache"
    environment = {**os.environ, SLEEP_VARIABLE: "0.3"}
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path / "killed"),
                                str(cache_directory), str(Path(__file__).parent)],
                               cwd=REPOSITORY, env=environment)
    deadline = time.monotonic() + 60
    while len(list(cache_directory.rglob("*.pickle"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored = len(list(cache_directory.rglob("*.pickle")))
    assert 3 <= stored < 8, "the run was not killed mid-run"
    assert not (tmp_path / "killed" / "data").exists()
    run(tmp_path / "resumed", cache_directory)
    assert_same_data(tables(serial[0]), tables(tmp_path / "resumed"))
    assert not list(tmp_path.rglob("*.tmp")), "a partial file was left"
    assert len(list(cache_directory.rglob("*.pickle"))) == 8


def test_finding_formats_every_number_the_same_way(serial):
    results = Results(STUDY, {}, "smoke", {}, serial[0])
    text = results.finding("{a} and {b:.1f}, {c}, {d}", a=0.000123456, b=2.25, c=np.float32(3.5),
                           d=np.int64(7))
    assert text == "1.2e-04 and 2.2, 3.5, 7"
    with pytest.raises(KeyError, match="missing"):
        results.finding("{missing}")


def test_settings_must_be_json_scalars():
    study = Study("bad", "Bad", lambda profile: (Slice("s", {"shape": ((2, 3),)}),), cell,
                  report_section)
    with pytest.raises(TypeError, match="JSON-able"):
        runner.cells_of(study, study.grid("smoke"), 0)
