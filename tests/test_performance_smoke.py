"""`make bench` end to end in quick mode: tiny shapes, a few cells, into a temporary directory.
A benchmark reports and never fails on seconds: this checks that the report and its data are
written, not how fast anything ran."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPOSITORY = Path(__file__).resolve().parent.parent


def test_quick_bench_writes_the_report(tmp_path):
    environment = {**os.environ, "NUMERICS_BENCH_QUICK": "1"}
    completed = subprocess.run([sys.executable, "-m", "studies.performance", "--output",
                                str(tmp_path)], cwd=REPOSITORY, env=environment,
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    text = (tmp_path / "performance.md").read_text()
    for heading in ("# Performance of the CPU kernels", "## Targets", "## Peers",
                    "## Exact reference and first call"):
        assert heading in text
    frame = pd.read_parquet(tmp_path / "data" / "performance.parquet")
    assert {"implementation", "algorithm", "subset", "layout", "threads", "median_seconds",
            "gb_per_s", "share_of_read", "speedup_vs_fastest_peer"} <= set(frame.columns)
    assert set(frame[frame.kind == "numerics"].threads) == {1, 2}
    assert frame.attrs["provenance"]["git_commit"]
