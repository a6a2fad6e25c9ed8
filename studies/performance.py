"""Performance of the CPU kernels beside numpy and PyTorch: ``python -m studies.performance``
(``make bench``), options ``--output DIR`` (default reports/) and ``--quick`` (or
NUMERICS_BENCH_QUICK=1: tiny shapes, a few cells, for the smoke test).

Writes DIR/performance.md and DIR/data/performance.parquet (one row per timed cell, provenance in
``pandas.read_parquet(path).attrs["provenance"]``). A benchmark reports; it never fails on seconds.

Method. Every cell is timed on buffers that rotate (two tensors of the cell's shape, each larger
than the 32 MiB L3, used in turn), so no call finds its input in cache. Bandwidth on this shared
machine drifts over seconds, so a streaming-read kernel (SIMD loads and adds over a float32 buffer,
split over the same number of threads) is timed right before and right after every cell, and the
cell's throughput is reported as a share of the mean of those two probes. numerics runs at its
default topology ("blocked") for every rule; numpy computes ``mean`` + ``var`` (single-threaded);
PyTorch runs ``torch.var_mean`` and the training-mode statistics of its normalization layers
(``aten.native_batch_norm`` / ``native_layer_norm`` / ``native_group_norm``, which return them;
``F.instance_norm``, which does not expose them, whole), each with ``torch.set_num_threads`` equal
to the cell's thread count. Those layer calls also write the normalized output: that is the price a
user pays for PyTorch's statistics.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import pandas as pd

import numerics
from numerics import simd
from studies import reference_throughput as reference_throughput_study
from studies import report

QUICK_ENVIRONMENT_VARIABLE = "NUMERICS_BENCH_QUICK"

SUBSETS = (("batch", None), ("layer", None), ("instance", None), ("group", 32))
LAYOUTS = ("NCHW", "NHWC")
ONE_PASS_RULES = ("naive", "shifted", "welford", "parallel_merge")
#: (input dtype, accumulator dtype): the targets are on float32 input with either accumulator
PRECISIONS = (("float32", "float32"), ("float32", "float64"), ("float16", "float32"),
              ("float64", "float64"))
#: share of the read bandwidth each rule should reach (2 threads, float32 input), issue 4
TARGETS = {"naive": 0.8, "shifted": 0.8, "welford": 0.8, "parallel_merge": 0.8,
           "two_pass": 0.7, "corrected_two_pass": 0.7}

STREAM_LANES = 8  # float32 lanes of one AVX2 register


@numba.njit(nogil=True)
def stream_read(x, lo, hi):
    """Sum of x[lo:hi] (float32, flat) by four independent vector accumulators: a load and an add
    per eight elements, the least work a reduction over the data can do."""
    acc0 = simd.splat(np.float32(0), STREAM_LANES)
    acc1, acc2, acc3 = acc0, acc0, acc0
    j = lo
    while j + 4 * STREAM_LANES <= hi:
        acc0 = acc0 + simd.load(x, j, STREAM_LANES)
        acc1 = acc1 + simd.load(x, j + STREAM_LANES, STREAM_LANES)
        acc2 = acc2 + simd.load(x, j + 2 * STREAM_LANES, STREAM_LANES)
        acc3 = acc3 + simd.load(x, j + 3 * STREAM_LANES, STREAM_LANES)
        j += 4 * STREAM_LANES
    total = acc0 + acc1 + acc2 + acc3
    result = np.float32(0)
    for lane in range(STREAM_LANES):
        result += simd.extract(total, lane)
    while j < hi:
        result += x[j]
        j += 1
    return result


class ReadProbe:
    """Read bandwidth of the machine right now, with a given number of threads, on rotating
    float32 buffers of ``nbytes`` each."""

    def __init__(self, nbytes, seed):
        rng = np.random.default_rng(seed)
        count = max(nbytes // 4, 4 * STREAM_LANES)
        self.buffers = [rng.standard_normal(count, dtype=np.float32) for _ in range(2)]
        self.pool = ThreadPoolExecutor(max(2, numba.config.NUMBA_NUM_THREADS))
        self.turn = 0
        stream_read(self.buffers[0], 0, 4 * STREAM_LANES)

    def measure(self, threads, repetitions=3):
        seconds = []
        for _ in range(repetitions):
            buffer = self.buffers[self.turn % 2]
            self.turn += 1
            bounds = [buffer.size * t // threads for t in range(threads + 1)]
            start = time.perf_counter()
            list(self.pool.map(lambda t: stream_read(buffer, bounds[t], bounds[t + 1]),
                               range(threads)))
            seconds.append(time.perf_counter() - start)
        return buffer.nbytes / statistics.median(seconds) / 1e9


# ---- the implementations ----------------------------------------------------------------------

def numerics_call(algorithm, acc_dtype, norm, groups, layout):
    def call(x):
        return numerics.moments(x, norm, groups=groups, layout=layout, algorithm=algorithm,
                                acc_dtype=acc_dtype)
    return call


def numpy_call(norm, groups, layout):
    def call(x):
        x4 = x.reshape(numerics.canonical_view(x.shape, norm, groups, layout).view_shape)
        return x4.mean(axis=(1, 3)), x4.var(axis=(1, 3))
    return call


def torch_tensor(x, layout):
    """The logical (N, C, *spatial) tensor over x's memory (channels_last strides for NHWC)."""
    import torch
    tensor = torch.from_numpy(x)
    if layout == "NCHW":
        return tensor
    return tensor.permute(0, tensor.dim() - 1, *range(1, tensor.dim() - 1))


def torch_var_mean_call(norm, groups, layout):
    import torch

    def call(x):
        x4 = torch.from_numpy(x.reshape(numerics.canonical_view(x.shape, norm, groups,
                                                                layout).view_shape))
        return torch.var_mean(x4, dim=(1, 3), correction=0)
    return call


def torch_layer_call(norm, groups, layout):
    """PyTorch's training-mode statistics of the layer (and the normalized output it writes)."""
    import torch
    import torch.nn.functional as F
    aten = torch.ops.aten

    def call(x):
        tensor = torch_tensor(x, layout)
        if norm == "batch":
            return aten.native_batch_norm(tensor, None, None, None, None, True, 0.1, 1e-5)
        if norm == "layer":
            return aten.native_layer_norm(tensor, list(tensor.shape[1:]), None, None, 1e-5)
        if norm == "group":
            batch, channels = tensor.shape[:2]
            return aten.native_group_norm(tensor, None, None, batch, channels,
                                          tensor[0, 0].numel(), groups, 1e-5)
        return F.instance_norm(tensor)
    return call


TORCH_LAYER_NAMES = {"batch": "torch native_batch_norm", "layer": "torch native_layer_norm",
                     "group": "torch native_group_norm", "instance": "torch F.instance_norm"}


# ---- measuring --------------------------------------------------------------------------------

def time_cell(call, buffers, repetitions):
    """Median seconds of ``call`` on the rotating buffers (a first call on a small slice loads or
    compiles what it needs and is not timed)."""
    call(buffers[0][:2])
    seconds = []
    for repetition in range(repetitions):
        x = buffers[repetition % len(buffers)]
        start = time.perf_counter()
        call(x)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), seconds


def set_threads(threads):
    numba.set_num_threads(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass


def implementations(norm, groups, layout, input_dtype, acc_dtype, rules, with_peers):
    """(implementation, kind, algorithm, call) of one (subset, layout, precision)."""
    cells = [("numerics", "numerics", rule, numerics_call(rule, acc_dtype, norm, groups, layout))
             for rule in rules]
    if not with_peers:
        return cells
    cells.append(("numpy mean + var", "peer", None, numpy_call(norm, groups, layout)))
    try:
        import torch  # noqa: F401
    except ImportError:
        return cells
    cells.append(("torch.var_mean", "peer", None, torch_var_mean_call(norm, groups, layout)))
    cells.append((TORCH_LAYER_NAMES[norm], "peer", None, torch_layer_call(norm, groups, layout)))
    return cells


def make_buffers(shape, layout, dtype, seed):
    """Two tensors of the shape in the layout (NHWC: channels last in memory)."""
    rng = np.random.default_rng(seed)
    memory_shape = shape if layout == "NCHW" else (shape[0], *shape[2:], shape[1])
    return [rng.standard_normal(memory_shape, dtype=np.float32).astype(dtype, copy=False)
            for _ in range(2)]


def run_grid(grid, probe, log):
    rows = []
    for shape in grid["shapes"]:
        for input_dtype in sorted({precision[0] for precision in grid["precisions"]}):
            accumulators = [acc for inp, acc in grid["precisions"] if inp == input_dtype]
            for layout in LAYOUTS:
                buffers = make_buffers(shape, layout, input_dtype, grid["seed"])
                nbytes = buffers[0].nbytes
                for norm, groups in SUBSETS:
                    for threads in grid["threads"]:
                        set_threads(threads)
                        for position, acc_dtype in enumerate(accumulators):
                            cells = implementations(norm, groups, layout, input_dtype, acc_dtype,
                                                    grid["rules"], with_peers=position == 0)
                            for implementation, kind, algorithm, call in cells:
                                before = probe.measure(threads)
                                try:
                                    median, seconds = time_cell(call, buffers,
                                                                grid["repetitions"])
                                    error = ""
                                except (RuntimeError, TypeError, ValueError) as caught:
                                    median, seconds, error = float("nan"), [], str(caught)[:200]
                                after = probe.measure(threads)
                                read = (before + after) / 2
                                rows.append({
                                    "implementation": implementation, "kind": kind,
                                    "algorithm": algorithm,
                                    "topology": (numerics.DEFAULT_TOPOLOGY
                                                 if kind == "numerics" else None),
                                    "norm": norm, "groups": groups,
                                    "subset": report.subset_label(norm, groups),
                                    "layout": layout, "shape": "x".join(map(str, shape)),
                                    "input_dtype": input_dtype,
                                    "acc_dtype": acc_dtype if kind == "numerics" else None,
                                    "threads": threads, "bytes": nbytes,
                                    "median_seconds": median, "seconds": seconds,
                                    "gb_per_s": nbytes / median / 1e9,
                                    "read_gb_per_s_before": before,
                                    "read_gb_per_s_after": after,
                                    "share_of_read": nbytes / median / 1e9 / read,
                                    "error": error})
                                log(f"{rows[-1]['shape']} {layout} {rows[-1]['subset']} "
                                    f"{input_dtype}->{acc_dtype if kind == 'numerics' else '-'} "
                                    f"t{threads} {implementation} {algorithm or ''}: "
                                    f"{rows[-1]['gb_per_s']:.1f} GB/s, "
                                    f"{100 * rows[-1]['share_of_read']:.0f}% of {read:.1f}")
                del buffers
    frame = pd.DataFrame(rows)
    return with_peer_ratios(frame)


def with_peer_ratios(frame):
    """For numerics rows: each peer's median time over ours, measured on the same cell (shape,
    layout, subset, input dtype, threads)."""
    keys = ["shape", "layout", "subset", "input_dtype", "threads"]
    peers = frame[frame.kind == "peer"]
    frame = frame.copy()
    for implementation in sorted(peers.implementation.unique()):
        column = {"numpy mean + var": "speedup_vs_numpy",
                  "torch.var_mean": "speedup_vs_torch_var_mean"}.get(implementation,
                                                                      "speedup_vs_torch_layer")
        times = peers[peers.implementation == implementation].set_index(keys)["median_seconds"]
        joined = frame.join(times.rename("peer_seconds"), on=keys)
        ratio = joined["peer_seconds"] / frame["median_seconds"]
        frame[column] = ratio.where(frame.kind == "numerics")
    speedups = [column for column in ("speedup_vs_numpy", "speedup_vs_torch_var_mean",
                                      "speedup_vs_torch_layer") if column in frame]
    frame["speedup_vs_fastest_peer"] = frame[speedups].min(axis=1) if speedups else np.nan
    return frame


def first_call_latency(log):
    """Seconds of the import and of the first numerics.moments call in a fresh process, twice on
    an empty kernel cache of its own: the first process compiles what the call needs, the second
    loads it from the disk cache."""
    script = ("import time; t0 = time.perf_counter(); import numpy as np, numerics; "
              "t1 = time.perf_counter(); x = np.ones((8, 64, 16, 16), np.float32); "
              "numerics.moments(x, 'group', groups=32); t2 = time.perf_counter(); "
              "print(t1 - t0, t2 - t1)")
    results = []
    with tempfile.TemporaryDirectory() as cache:
        environment = {**os.environ, "NUMERICS_CACHE_DIR": cache}
        for _ in range(2):
            completed = subprocess.run([sys.executable, "-c", script], cwd=report.REPOSITORY,
                                       env=environment, capture_output=True, text=True)
            if completed.returncode != 0:
                log(f"first-call probe failed: {completed.stderr[-300:]}")
                return None
            results.append(tuple(float(value) for value in completed.stdout.split()))
    (_, cold_seconds), (import_seconds, call_seconds) = results
    log(f"fresh process: import {import_seconds:.2f} s; first call {cold_seconds:.2f} s on an "
        f"empty cache, {call_seconds:.2f} s on a warm one")
    return {"import_seconds": import_seconds, "first_call_seconds": call_seconds,
            "cold_first_call_seconds": cold_seconds}


def reference_throughput(quick, log):
    """The exact reference's elements per second (studies.reference_throughput.measure)."""
    result = reference_throughput_study.measure(elements=200_000 if quick else 10_000_000,
                                                repetitions=2 if quick else 3)
    log(f"exact reference: {result['elements_per_second'] / 1e6:.1f} M elements/s")
    return result


# ---- the report -------------------------------------------------------------------------------

def percent(value):
    return "–" if value is None or pd.isna(value) else f"{100 * value:.0f}"


def target_cells(frame, shape, acc_dtype):
    """The numerics cells the targets are about: float32 input, the most threads measured (2)."""
    return frame[(frame.kind == "numerics") & (frame["shape"] == shape)
                 & (frame.input_dtype == "float32") & (frame.acc_dtype == acc_dtype)
                 & (frame.threads == frame.threads.max())]


def target_table(frame, shape, acc_dtype):
    """Rules x (subset, layout): share of the read bandwidth, 2 threads (or the most measured),
    float32 input; a cell below its target is marked."""
    cells = target_cells(frame, shape, acc_dtype)
    if cells.empty:
        return ""
    columns = [f"{subset} {layout}" for subset in cells.subset.unique() for layout in LAYOUTS]
    lines = []
    for rule in cells.algorithm.unique():
        line = {"rule": rule, "target": percent(TARGETS[rule])}
        for _, cell in cells[cells.algorithm == rule].iterrows():
            share = cell.share_of_read
            mark = "" if share >= TARGETS[rule] else " ✗"
            slower = "" if cell.speedup_vs_fastest_peer > 1 else " ▼"
            line[f"{cell.subset} {cell.layout}"] = f"{percent(share)}{mark}{slower}"
        lines.append(line)
    return report.markdown_table(pd.DataFrame(lines, columns=["rule", "target", *columns]),
                                 formats={column: str for column in ["rule", "target", *columns]})


def speedup_table(frame, shape, acc_dtype):
    cells = target_cells(frame, shape, acc_dtype)
    if cells.empty:
        return ""
    table = cells.pivot_table(index="algorithm", columns=["subset", "layout"],
                              values="speedup_vs_fastest_peer", sort=False)
    table.columns = [f"{subset} {layout}" for subset, layout in table.columns]
    # the column order of target_table
    columns = [f"{subset} {layout}" for subset in cells.subset.unique() for layout in LAYOUTS]
    table = table[[column for column in columns if column in table.columns]]
    return report.markdown_table(table.reset_index().rename(columns={"algorithm": "rule"}),
                                 formats={column: lambda value: f"{value:.1f}×"
                                          for column in table.columns})


def peer_table(frame):
    threads = frame.threads.max()
    peers = frame[(frame.kind == "peer") & (frame.input_dtype == "float32")
                  & (frame.threads == threads)]
    if peers.empty:
        return "(no peers measured)"
    table = peers.pivot_table(index=["implementation"], columns=["subset", "layout"],
                              values="share_of_read", aggfunc="median", sort=False)
    table.columns = [f"{subset} {layout}" for subset, layout in table.columns]
    return report.markdown_table(table.reset_index(),
                                 formats={column: percent for column in table.columns})


def summary_table(frame):
    """Median and minimum share per rule, for every precision and thread count."""
    cells = frame[frame.kind == "numerics"]
    grouped = cells.groupby(["input_dtype", "acc_dtype", "threads", "algorithm"], sort=False)
    table = grouped.agg(median_share=("share_of_read", "median"),
                        min_share=("share_of_read", "min"),
                        median_gb_per_s=("gb_per_s", "median"),
                        min_speedup_vs_fastest_peer=("speedup_vs_fastest_peer", "min"))
    return report.markdown_table(
        table.reset_index(),
        formats={"median_share": percent, "min_share": percent,
                 "median_gb_per_s": lambda value: f"{value:.1f}",
                 "min_speedup_vs_fastest_peer": lambda value: f"{value:.1f}×"})


#: why a cell misses its target, by what the cell is (the measured shares tell which apply)
CAUSES = (
    ("two-pass, BatchNorm channels last",
     lambda cell: cell.algorithm in ("two_pass", "corrected_two_pass") and cell.subset == "batch"
     and cell.layout == "NHWC",
     "every BatchNorm group spans the whole tensor when channels are last (the view has one "
     "kept_outer slice), so pass 2 cannot start before pass 1 has read all of it, and the "
     "tensor is three times the L3: both passes come from memory, a ceiling of 50 % of the read "
     "bandwidth. Closing it needs a one-pass rule (parallel_merge already is the pairwise "
     "two-pass-quality one) or a tensor that fits in L3."),
    ("float64 accumulation",
     lambda cell: cell.acc_dtype == "float64",
     "arithmetic-bound: an AVX2 register holds 4 float64 lanes against 8 float32 ones, so every "
     "push costs twice the vector instructions per element, plus the conversion of each float32 "
     "element. The measured shares fall with the operations per push (naive, shifted, "
     "parallel_merge, welford in the table of every precision below), as arithmetic-bound code "
     "does and memory-bound code would not. An estimate, not a measurement: a Zen 3 core (this "
     "machine's AMD EPYC, family 25, AVX2 and no AVX-512) retires 2 float64 additions and 2 "
     "multiplications of 4 lanes per cycle, and a float64 Welford push is 6 operations and a "
     "divide. Closing it needs wider vectors (AVX-512), more cores, or float32 accumulation."),
    ("Welford's divide",
     lambda cell: cell.algorithm == "welford",
     "each element needs a correctly rounded division by its lane's count, and a vector divide "
     "is several times slower than an addition (instruction tables for Zen 3: one 8-lane float32 "
     "divide per about 3.5 cycles; an estimate, not measured here), so Welford trails the other "
     "one-pass rules in every table. A reciprocal times the delta is not the same number; an "
     "exact Markstein division (reciprocal, two FMAs, a fallback for non-finite and subnormal "
     "deltas) would keep the bits and cost less."),
    ("two passes of arithmetic",
     lambda cell: cell.algorithm in ("two_pass", "corrected_two_pass"),
     "the two-pass rules read every group twice. Pass 2 re-reads it from cache (groups go "
     "through both passes a few hundred KiB at a time, larger LayerNorm groups one at a time "
     "through the L3), so what pass 2 adds is its cache reads and its arithmetic; how the time "
     "splits between them was not profiled."),
    ("per-block bookkeeping (segments kernel)",
     lambda cell: True,
     "not profiled; the likely cause is the fixed work of every block of 8192 elements that no "
     "load overlaps: zeroing its lane states, the first levels of the lane tree, copies into the "
     "batch whose lane tree runs on vectors, and the tree itself. It weighs more the smaller the "
     "group (InstanceNorm: 3136 elements per group, one block each). BatchNorm NCHW also reads "
     "each channel as 32 separate runs of 12.5 KB, each a new stream for the hardware "
     "prefetcher. What might close it: the whole lane tree of a block in registers (shuffles for "
     "the levels below one vector), software prefetch of the next run, and blocks of 16384 "
     "elements (twice the per-lane depth, so a different accuracy trade-off)."),
)


def gaps_section(frame):
    threads = frame.threads.max()
    cells = frame[(frame.kind == "numerics") & (frame.input_dtype == "float32")
                  & (frame.threads == threads)].copy()
    if cells.empty:
        return "No float32 cells measured."
    cells["target"] = cells.algorithm.map(TARGETS)
    misses = cells[cells.share_of_read < cells.target]
    slower = cells[~(cells.speedup_vs_fastest_peer > 1)]
    lines = [f"{len(cells) - len(misses)} of {len(cells)} target cells (float32 input, "
             f"{threads} threads) reach their share of the read bandwidth; "
             f"{len(cells) - len(slower)} of {len(cells)} are ahead of every peer."]
    if not slower.empty:
        listed = ", ".join(f"{cell.algorithm} {cell.subset} {cell.layout} {cell['shape']} "
                           f"({cell.speedup_vs_fastest_peer:.2f}×)"
                           for _, cell in slower.iterrows())
        lines.append(f"\nBehind a peer: {listed}.")
    assigned = pd.Series(False, index=misses.index)
    for title, applies, explanation in CAUSES:
        mask = misses.apply(applies, axis=1) & ~assigned if not misses.empty else assigned
        if not mask.any():
            continue
        assigned |= mask
        group = misses[mask]
        worst = group.loc[(group.target - group.share_of_read).idxmax()]
        lines.append(f"\n**{title}** ({mask.sum()} cells; largest gap: {worst.algorithm} "
                     f"{worst.subset} {worst.layout} {worst['shape']} acc {worst.acc_dtype}, "
                     f"{percent(worst.share_of_read)} % against {percent(worst.target)} %, "
                     f"{percent(worst.target - worst.share_of_read)} points short): "
                     f"{explanation}")
    return "\n".join(lines)


def markdown(frame, extras, settings, seconds):
    record = settings.provenance
    packages = ", ".join(f"{name} {version}" for name, version in record["packages"].items()
                         if version)
    dirty = " (with uncommitted changes to tracked files)" if record["git_dirty"] else ""
    topology = numerics.TOPOLOGIES[numerics.DEFAULT_TOPOLOGY]
    read_lines = []
    for threads, values in frame.groupby("threads"):
        probes = pd.concat([values.read_gb_per_s_before, values.read_gb_per_s_after])
        read_lines.append(f"{threads} thread{'s' if threads > 1 else ''}: median "
                          f"{probes.median():.1f} GB/s (range {probes.min():.1f} to "
                          f"{probes.max():.1f})")
    read_lines = "; ".join(read_lines)
    latency = extras.get("latency")
    latency_line = ("not measured" if latency is None else
                    f"{latency['first_call_seconds']:.2f} s for the first `numerics.moments` call "
                    f"(GroupNorm, float32, cache warm; target < 2 s), after "
                    f"{latency['import_seconds']:.2f} s of `import numerics`; on an empty cache "
                    f"the same call compiles its kernels in "
                    f"{latency['cold_first_call_seconds']:.1f} s")
    reference = extras.get("reference")
    reference_line = (f"{reference['elements_per_second'] / 1e6:.1f} M float32 elements/s on one "
                      f"core ({reference['elements']:,} elements, median of "
                      f"{len(reference['seconds'])}; target ≥ 10 M/s)")
    sections = []
    for shape in frame["shape"].unique():
        for acc_dtype in ("float32", "float64"):
            table = target_table(frame, shape, acc_dtype)
            if table:
                sections.append(f"### {shape}, float32 input, {acc_dtype} accumulation\n\n"
                                f"Share of the read bandwidth (%), ✗ below target, ▼ behind a "
                                f"peer:\n\n{table}\n\nSpeed-up over the fastest peer of the same "
                                f"cell (numpy, torch.var_mean, PyTorch's layer):\n\n"
                                f"{speedup_table(frame, shape, acc_dtype)}")
    targets = "\n\n".join(sections)
    return f"""# Performance of the CPU kernels

Generated by `make bench` (`python -m studies.performance`); do not edit by hand.

- Code: commit `{record['git_commit']}`{dirty}; numerics source hash `{record['numerics_source_hash']}`,
  studies source hash `{record['studies_source_hash']}`
- Date (UTC): {record['date_utc']}; mode: {record['mode']}; run time {seconds:.0f} s
- Python {record['python']}; {packages}; {record['machine']}; numba threads used:
  {sorted(frame.threads.unique().tolist())}, torch threads set to the same, numpy single-threaded
- numerics topology for every rule: "{numerics.DEFAULT_TOPOLOGY}" = {topology.lanes} lanes,
  blocks of {topology.block} elements
- Read bandwidth (streaming-read probe around every cell): {read_lines}. On a quiet machine the
  probe reads about 40 GB/s with one thread and 79 GB/s with two (research/accuracy.md); other
  jobs share this machine, so compare shares, not GB/s, between runs
- Data: `data/performance.parquet`, one row per timed cell (median of
  {extras['repetitions']} calls on rotating buffers, each call's seconds, the probes before and after)

## Targets (issue 4)

naive, shifted, welford, parallel_merge ≥ 80 % of the read bandwidth, two_pass and
corrected_two_pass ≥ 70 %, on 2 threads with float32 input, every cell ahead of numpy and
PyTorch. Shares are of the probe's bandwidth measured around the same cell.

{targets}

## Where the targets are missed, and why

{gaps_section(frame)}

## Peers

Share of the read bandwidth (%), float32 input, {frame.threads.max()} threads:

{peer_table(frame)}

## Every precision and thread count

{summary_table(frame)}

## Exact reference and first call

- Exact reference (`numerics.reference.moments`): {reference_line}
- Fresh process: {latency_line}
"""


def grid_for(quick, seed):
    if quick:
        return {"shapes": [(2, 64, 8, 8)], "precisions": (("float32", "float32"),),
                "rules": ("naive", "welford", "two_pass"), "threads": (1, 2), "repetitions": 2,
                "seed": seed}
    return {"shapes": [(32, 256, 56, 56), (8, 64, 224, 224)], "precisions": PRECISIONS,
            "rules": tuple(TARGETS), "threads": (1, 2), "repetitions": 5, "seed": seed}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=report.REPOSITORY / "reports",
                        help="directory for performance.md and data/ (default: reports/)")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny shapes and few cells (also {QUICK_ENVIRONMENT_VARIABLE}=1)")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    quick = arguments.quick or os.environ.get(QUICK_ENVIRONMENT_VARIABLE, "") not in ("", "0")
    settings = report.Settings(arguments.output, quick, arguments.seed,
                               report.provenance(arguments.seed, quick))

    def log(message):
        print(message, flush=True)

    start = time.perf_counter()
    grid = grid_for(quick, arguments.seed)
    probe = ReadProbe(max(int(np.prod(shape)) * 4 for shape in grid["shapes"]), arguments.seed)
    frame = run_grid(grid, probe, log)
    extras = {"repetitions": grid["repetitions"], "latency": first_call_latency(log),
              "reference": reference_throughput(quick, log)}
    seconds = time.perf_counter() - start
    report.write_parquet(frame, settings.data_directory / "performance.parquet", settings)
    report.write_text(settings.output / "performance.md",
                      markdown(frame, extras, settings, seconds))
    log(f"wrote {settings.output / 'performance.md'} in {seconds:.0f} s")


if __name__ == "__main__":
    main()
