"""`make bench` end to end on the smoke profile: tiny shapes, a few cells, into a temporary
directory. A benchmark reports and never fails on seconds: this checks that the report and its
data are written through the study engine, not how fast anything ran."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPOSITORY = Path(__file__).resolve().parent.parent


def test_smoke_bench_writes_the_report(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "studies.performance", "--profile", "smoke",
                                "--output", str(tmp_path)], cwd=REPOSITORY,
                               env={**os.environ, "MPLBACKEND": "Agg"}, capture_output=True,
                               text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    text = (tmp_path / "performance.md").read_text()
    for heading in ("# Performance of the CPU kernels", "## Targets", "## Peers",
                    "## In-cache throughput against the streaming read",
                    "## Where the targets are missed, and why",
                    "## Latency against PyTorch", "## Exact reference and first call",
                    "profile: smoke"):
        assert heading in text
    frame = pd.read_parquet(tmp_path / "data" / "performance.parquet")
    assert {"implementation", "algorithm", "subset", "layout", "threads", "median_seconds",
            "gb_per_s", "share_of_read", "speedup_vs_fastest_peer"} <= set(frame.columns)
    assert set(frame[frame.kind == "numerics"].threads) == {1, 2}
    assert {"numpy var float32", "torch.var_mean"} <= set(frame[frame.kind == "peer"].implementation)
    assert (frame["error"] == "").all(), frame.loc[frame["error"] != "", "error"].tolist()
    assert frame.attrs["provenance"]["git_commit"]
    latency = pd.read_parquet(tmp_path / "data" / "performance_latency.parquet")
    assert set(latency.threads) == {1, 2} and set(latency.subset) == {"layer", "group32", "batch"}
    assert (latency["error"] == "").all(), latency["error"].tolist()
    assert (latency[["numerics_us", "torch_layer_us", "torch_var_mean_us"]] > 0).all().all()
    in_cache = pd.read_parquet(tmp_path / "data" / "performance_in_cache.parquet")
    rules = set(frame[frame.kind == "numerics"].algorithm)
    assert set(in_cache.algorithm) == rules
    assert set(in_cache.subset) == {"batch", "layer", "instance", "group32"}
    assert set(in_cache.layout) == {"NCHW", "NHWC"}
    assert {("float32", "float32"), ("float16", "float32")} == set(
        zip(in_cache.input_dtype, in_cache.acc_dtype))
    assert len(in_cache) == len(rules) * 4 * 2 * 2
    assert (in_cache.large_bytes == 3 * in_cache.small_bytes).all()
    assert (in_cache.large_bytes <= 512 * 1024).all()  # the L2 of one core holds the tensor
    assert (in_cache[["read_elements_per_s", "small_seconds", "large_seconds"]] > 0).all().all()
    assert (in_cache["calls"] >= 5).all()
    for name in ("performance_first_call", "performance_reference"):
        assert len(pd.read_parquet(tmp_path / "data" / f"{name}.parquet")) == 1
