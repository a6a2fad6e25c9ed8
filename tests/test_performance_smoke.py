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
    geometry = pd.read_parquet(tmp_path / "data" / "performance_geometry.parquet")
    assert set(geometry.algorithm) == rules and set(geometry["shape"]) == set(frame["shape"])
    assert len(geometry) == len(rules) * 4 * frame["shape"].nunique()  # GEOMETRY_SUBSETS
    assert (geometry.large_bytes == 3 * geometry.small_bytes).all()
    in_l2 = (geometry.subset == "group32") & (geometry.layout == "NCHW")
    assert set(geometry.resident[in_l2]) == {"L2"} and set(geometry.resident[~in_l2]) == {"L3"}
    assert (geometry[["small_seconds", "large_seconds"]] > 0).all().all()
    push = pd.read_parquet(tmp_path / "data" / "performance_push.parquet")
    assert len(push) == 3 * 2  # the three families, the smoke profile's two format pairs
    assert (push[["push_elements_per_s", "read_elements_per_s"]] > 0).all().all()
    assert "### The push alone" in text and "measured in-cache misses above" in text
    assert "Each miss gets the first cause below" in text
    for name in ("performance_first_call", "performance_reference"):
        assert len(pd.read_parquet(tmp_path / "data" / f"{name}.parquet")) == 1
    assert "- Fresh process, GroupNorm (8, 64, 16, 16), G = 32" in text


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


def test_a_bandwidth_miss_is_named_by_its_measured_headroom():
    """headroom = threads × the rule's rate in cache / the cell's read rate, the rate from the
    geometry slice where it has the cell, from the L2 sample otherwise; a miss is
    arithmetic-bound below 2, undecided when the cell beat its own headroom or when the L3 read
    of an L3-resident geometry sample was not twice the rule's rate (an L2-resident one reads no
    L3), and a memory matter above 2."""
    from studies.performance import gaps_section

    def cell(algorithm, subset, share, rate, read_ratio, resident="L3"):
        settings = {"algorithm": algorithm, "subset": subset, "layout": "NCHW",
                    "input_dtype": "float32", "acc_dtype": "float32"}
        timing = {**settings, "shape": "4x64x16x16", "kind": "numerics", "threads": 2,
                  "share_of_read": share, "speedup_vs_fastest_peer": 3.0,
                  "read_gb_per_s_before": 8.0, "read_gb_per_s_after": 8.0}
        # the L2 sample of every cell runs at 1e9 elements/s: headroom 1.0 where it decides
        in_cache = {**settings, "in_cache_elements_per_s": 1e9}
        geometry = (None if subset != "group32" else
                    {**settings, "shape": "4x64x16x16", "geometry_elements_per_s": rate,
                     "geometry_read_ratio": read_ratio, "resident": resident})
        return timing, in_cache, geometry
    # the read: 8 GB/s = 2e9 float32 elements/s, so headroom = 2 × rate / 2e9 = rate / 1e9
    cells = [cell("naive", "group32", 0.5, 0.9e9, 5.0), cell("shifted", "group32", 0.6, 0.3e9, 5.0),
             cell("welford", "group32", 0.4, 1.5e9, 1.5),
             cell("corrected_two_pass", "group32", 0.4, 1.5e9, 1.5, resident="L2"),
             cell("parallel_merge", "group32", 0.7, 3.0e9, 5.0),
             cell("two_pass", "layer", 0.2, None, None)]
    frame, in_cache, geometry = (pd.DataFrame([row for row in column if row is not None])
                                 for column in zip(*cells))
    text = gaps_section(frame, in_cache, geometry)
    assert "0 of 6 target cells" in text
    assert "**arithmetic-bound (measured)** (3 cells; headroom 0.9 to 1.5;" in text
    assert "**undecided: faster than in cache** (1 cell; headroom 0.3;" in text
    assert "**undecided: the L3 may limit the measure** (1 cell; headroom 1.5;" in text
    assert "**the reading of memory (per-block work, prefetch)** (1 cell; headroom 3.0;" in text


def test_a_slope_is_timed_again_while_the_larger_call_is_not_the_slower(monkeypatch):
    """in_cache_bench.measured_slopes: a measure whose larger tensor did not take longer gives no
    slope (NaN), and the cell is timed again, up to SLOPE_MEASURES times in all."""
    import numpy as np

    from studies import in_cache_bench, performance

    small, large = np.zeros(100), np.zeros(300)

    def measures_of(*medians):
        rounds = iter(medians)
        monkeypatch.setattr(performance, "interleaved_medians",
                            lambda calls, seconds: (next(rounds), 7))
        return in_cache_bench.measured_slopes(small, large, {}, 0.1, [("small", "large")])

    inverted, right = {"small": 2.0, "large": 1.0}, {"small": 1.0, "large": 3.0}
    _, calls, (rate,), measures = measures_of(inverted, inverted, right)
    assert (rate, measures, calls) == (100.0, 3, 7)
    _, _, (rate,), measures = measures_of(right, inverted)
    assert (rate, measures) == (100.0, 1)
    _, _, (rate,), measures = measures_of(*[inverted] * in_cache_bench.SLOPE_MEASURES)
    assert np.isnan(rate) and measures == in_cache_bench.SLOPE_MEASURES


def test_a_geometry_sample_keeps_the_cells_geometry_in_its_cache_level():
    """in_cache_bench.geometry_sample: GroupNorm channels first gets whole groups of the cell
    (the same elements per group) small enough for the L2, two or three of them; every other
    subset one sample of the cell's channels, rows halved until three fit in the L3's budget."""
    from studies import in_cache_bench
    from studies.in_cache_bench import BATCHES, GEOMETRY_BYTES, L2_SAMPLE_BYTES, geometry_sample

    for shape in ("32x256x56x56", "8x64x224x224", "2x64x8x8"):
        _, channels, height, width = (int(size) for size in shape.split("x"))
        grouped = geometry_sample("group32", "NCHW", shape)
        assert grouped.resident == "L2" and grouped.groups == 1
        assert grouped.sample == (channels // 32, height, width)
        assert grouped.batches[-1] * 4 * channels // 32 * height * width <= L2_SAMPLE_BYTES
        for subset, layout in in_cache_bench.GEOMETRY_SUBSETS:
            if (subset, layout) == ("group32", "NCHW"):
                continue
            sample = geometry_sample(subset, layout, shape)
            assert (sample.resident, sample.groups, sample.batches) == ("L3", None, BATCHES)
            assert sample.sample[0] == channels and sample.sample[2] == width
            assert 3 * 4 * channels * sample.sample[1] * width <= GEOMETRY_BYTES
    assert geometry_sample("group32", "NCHW", "32x256x56x56").batches == (1, 3)
    assert geometry_sample("group32", "NCHW", "8x64x224x224").batches == (1, 2)
    assert geometry_sample("batch", "NHWC", "8x64x224x224").sample == (64, 56, 224)


def test_the_in_cache_section_names_the_least_certain_slopes():
    """in_cache_bench.section: a (subset, layout) whose larger calls take under WEAK_DIFFERENCE
    longer than the smaller (median over its cells) is named, and a target met there is counted
    as resting on such a slope."""
    from studies import in_cache_bench

    def row(subset, layout, small_seconds, large_seconds, ratio):
        return {"algorithm": "naive", "subset": subset, "layout": layout, "sample": "8x8x8",
                "input_dtype": "float32", "acc_dtype": "float32", "small_seconds": small_seconds,
                "large_seconds": large_seconds, "in_cache_ratio": ratio,
                "in_cache_elements_per_s": 1e9, "read_elements_per_s": 1e9,
                "read_gb_per_s_before": 4.0, "read_gb_per_s_after": 4.0}

    frame = pd.DataFrame([row("batch", "NHWC", 100e-6, 105e-6, 2.5),
                          row("layer", "NCHW", 100e-6, 150e-6, 2.5),
                          row("layer", "NHWC", 100e-6, 150e-6, 1.5)])
    assert list(in_cache_bench.weak_slopes(frame).index) == [("batch", "NHWC")]
    text = in_cache_bench.section(frame)
    assert "2 of 3 cells meet it (1 of them on the least certain slopes, below)" in text
    assert "Least certain: the slopes of batch NHWC (median 5%)" in text


def test_an_in_cache_miss_is_the_push_itself_where_its_ceiling_is_under_the_target():
    """in_cache_bench.push_section: a rule's ceiling is its family's push alone over its passes,
    against the read around its cell; a miss whose ceiling is under 2 is the push's, one whose
    ceiling reaches 2 the rest of the kernel's; an unmeasured slope is no miss."""
    from studies import in_cache_bench

    def row(algorithm, ratio):
        return {"algorithm": algorithm, "input_dtype": "float32", "acc_dtype": "float32",
                "in_cache_ratio": ratio, "read_elements_per_s": 1e9}

    frame = pd.DataFrame([row("naive", 1.5), row("two_pass", 1.0), row("welford", 1.2),
                          row("shifted", float("nan")), row("parallel_merge", 1.0)])
    push = pd.DataFrame([{"family": family, "input_dtype": "float32", "acc_dtype": "float32",
                          "push_elements_per_s": rate, "push_ratio": rate / 1e9}
                         for family, rate in (("centered_sums", 3e9), ("welford_updates", 1.5e9))])
    text = in_cache_bench.push_section(frame, push)
    # naive: ceiling 3, two_pass: 3 / 2 passes = 1.5, welford: 1.5; parallel_merge: no push
    assert "Of the 4 measured in-cache misses above, **2 are the push itself**" in text
    assert "**1 lose it in the rest of the kernel**" in text
    assert "; 1 have no measured push." in text
    assert "| centered_sums (naive, shifted, two_pass, corrected_two_pass) | 3.0 |" in text
