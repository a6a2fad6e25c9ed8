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
    assert (latency[["numerics_us", "numerics_floor_us", "torch_layer_us",
                     "torch_var_mean_us"]] > 0).all().all()
    assert "call floor µs" in text and "cause of a miss" in text
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


def test_a_latency_miss_is_named_by_the_part_that_exceeds_pytorch():
    from studies.performance import floor_shape, latency_cause

    def cell(numerics_us, floor_us, torch_us):
        return {"numerics_us": numerics_us, "numerics_floor_us": floor_us,
                "torch_layer_us": torch_us, "ratio_to_layer": numerics_us / torch_us}

    assert latency_cause(cell(90, 20, 100)) == ""
    assert latency_cause(cell(120, 100, 100)) == "fixed cost"
    assert latency_cause(cell(300, 50, 100)) == "elements"
    assert latency_cause(cell(150, 75, 100)) == "both"
    assert floor_shape("group32", (8, 2048, 7, 7)) == (1, 32, 1, 1)
    assert floor_shape("layer", (8, 768)) == (1, 1)
