"""Performance of the CPU kernels beside numpy and PyTorch: ``python -m studies.performance``
(``make bench``), options ``--profile smoke|default|full`` (smoke: tiny shapes, a few cells, for the
smoke test), ``--output DIR`` (default reports/), ``--cache DIR`` (resume a killed run), ``--seed``.

A study of the engine (studies/engine/) whose cells are timings, run one at a time in this process
(``serial``). Writes DIR/performance.md (the provenance header of REPORT.md, then this study's
section) and DIR/data/performance*.parquet (one row per timed cell, provenance in
``pandas.read_parquet(path).attrs["provenance"]``). A benchmark reports; it never fails on seconds.

Method. Every cell is timed on buffers that rotate (two tensors of the cell's shape, each larger
than the 32 MiB L3, used in turn), so no call finds its input in cache. Bandwidth on this shared
machine drifts over seconds, so a streaming-read kernel (SIMD loads and adds over a float32 buffer,
split over the same number of threads) is timed right before and right after every cell, and the
cell's throughput is reported as a share of the mean of those two probes. numerics runs at its
default topology ("blocked") for every rule. The peers are the numpy and PyTorch entries of the
implementations registry (numerics.implementations): numpy's ``mean`` + ``var`` (single-threaded),
``torch.var_mean`` and the training-mode statistics of PyTorch's normalization layers, each timed
as the registry's ``run`` of an input it has prepared (the framework call alone), with
``torch.set_num_threads`` equal to the cell's thread count. The layer calls also write the
normalized output: that is the price a user pays for PyTorch's statistics.

In-cache rate (the ``in_cache`` slice, studies/in_cache_bench.py): every rule's elements per second
on L2-resident tensors, one thread, as the slope between two sizes, against the single-thread
streaming read measured around it; the ``geometry`` slice measures the same slope on tensors
that keep each cell shape's geometry where the in-cache samples do not (GroupNorm channels first:
whole groups of the cell, in the L2; GroupNorm, InstanceNorm and BatchNorm channels last: one
sample of the cell shape, in the L3). The gaps section uses both to give each missed cell a
measured cause. The ``push`` slice times the kernels' streaming loop alone (each family's push
over a run in the L2), the ceiling of the in-cache rate, which says whether an in-cache miss is the
push itself or the rest of the kernel.

Latency (the ``latency`` slice): small and mid-sized tensors, where a call's fixed cost shows, are
timed in cache on one tensor, numerics and the PyTorch calls in turn (``interleaved_medians``).
"""
import argparse
import functools
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
from numerics import implementations, precision, simd
from studies import engine, in_cache_bench, report
from studies import reference_throughput as reference_throughput_study
from studies.engine import runner

SUBSETS = (("batch", None), ("layer", None), ("instance", None), ("group", 32))
LAYOUTS = ("NCHW", "NHWC")
ONE_PASS_RULES = ("naive", "shifted", "welford", "parallel_merge")
#: (input dtype, accumulator dtype): the targets are on float32 input with either accumulator
PRECISIONS = (("float32", "float32"), ("float32", "float64"), ("float16", "float32"),
              ("float64", "float64"))
#: share of the read bandwidth each rule should reach (1 and 2 threads, float32 input; issue 12)
#: (docs/architecture.md section 9)
TARGETS = {"naive": 0.8, "shifted": 0.8, "welford": 0.8, "parallel_merge": 0.8,
           "two_pass": 0.8, "corrected_two_pass": 0.8}
#: the thread counts the targets are about
TARGET_THREADS = (1, 2)

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
            seconds.append(read_seconds(self.pool, buffer, threads))
        return buffer.nbytes / statistics.median(seconds) / 1e9


def read_seconds(pool, flat, threads):
    """Seconds of one streaming read of the flat float32 array ``flat``, cut into ``threads``
    contiguous ranges read at once on ``pool``."""
    bounds = [flat.size * t // threads for t in range(threads + 1)]
    start = time.perf_counter()
    list(pool.map(lambda t: stream_read(flat, bounds[t], bounds[t + 1]), range(threads)))
    return time.perf_counter() - start


# ---- the implementations ----------------------------------------------------------------------

#: the peers timed beside numerics: the frameworks of the implementations registry
#: (numerics.implementations) whose own code runs on this CPU
PEER_FRAMEWORKS = ("numpy", "PyTorch")
#: a peer's speed-up column: numerics' time against the fastest entry of the group
PEER_GROUPS = {"speedup_vs_numpy": lambda item: item.framework == "numpy",
               "speedup_vs_torch_var_mean": lambda item: item.name == "torch.var_mean",
               "speedup_vs_torch_layer": lambda item: (item.framework == "PyTorch"
                                                       and item.name != "torch.var_mean")}
NUMERICS_PREFIX = "numerics "


def peers(input_dtype=None, norm=None, layout=None):
    """The registry's numpy and PyTorch entries (installed ones) that run this cell."""
    return tuple(item for item in implementations.select(kind="framework", norm=norm,
                                                         layout=layout)
                 if item.framework in PEER_FRAMEWORKS
                 and (input_dtype is None or input_dtype in item.dtypes))


def timed_calls(name, acc_dtype, norm, groups, layout, buffers):
    """A first call on a small slice (it loads or compiles what the others need, untimed), and
    one call per buffer that runs the implementation and nothing else."""
    if name.startswith(NUMERICS_PREFIX):
        rule = name[len(NUMERICS_PREFIX):]

        def call(x):
            return lambda: numerics.moments(x, norm, groups=groups, layout=layout,
                                            algorithm=rule, acc_dtype=acc_dtype)
    else:
        item = implementations.by_name(name)

        def call(x):
            prepared = item.prepare(x, norm, groups, layout, "cpu")
            return lambda: item.run(prepared)
    return call(buffers[0][:2]), [call(x) for x in buffers]


# ---- measuring --------------------------------------------------------------------------------

def time_cell(first_call, calls, repetitions):
    """Median seconds of the calls, taken in turn (rotating buffers) after the untimed first one."""
    first_call()
    seconds = []
    for repetition in range(repetitions):
        call = calls[repetition % len(calls)]
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), seconds


def subset_arguments(label):
    """(norm, groups) of numerics.moments for a subset label of studies.report.subset_label."""
    return ("group", int(label[5:])) if label.startswith("group") else (label, None)


def set_threads(threads):
    numba.set_num_threads(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass


# consecutive cells time the same tensors: they are drawn once per process
@functools.lru_cache(maxsize=1)
def make_buffers(shape, layout, dtype, seed):
    """Two tensors of the shape in the layout (NHWC: channels last in memory)."""
    rng = np.random.default_rng(seed)
    memory_shape = shape if layout == "NCHW" else (shape[0], *shape[2:], shape[1])
    return [rng.standard_normal(memory_shape, dtype=np.float32).astype(dtype, copy=False)
            for _ in range(2)]


@functools.lru_cache(maxsize=1)
def read_probe(nbytes, seed):
    return ReadProbe(nbytes, seed)


def timing_cell(settings, seed):
    """One implementation on one (shape, format, layout, subset, thread count), between two
    read-bandwidth probes."""
    shape = tuple(int(size) for size in settings["shape"].split("x"))
    norm, groups = subset_arguments(settings["subset"])
    name, layout, threads = settings["implementation"], settings["layout"], settings["threads"]
    numerics_cell = name.startswith(NUMERICS_PREFIX)
    acc_dtype = settings["acc_dtype"] if numerics_cell else None
    buffers = make_buffers(shape, layout, settings["input_dtype"], seed)
    probe = read_probe(int(np.prod(shape)) * 4, seed)
    nbytes = buffers[0].nbytes
    set_threads(threads)
    before = probe.measure(threads)
    try:
        median, seconds = time_cell(*timed_calls(name, acc_dtype, norm, groups, layout, buffers),
                                    settings["repetitions"])
        error = ""
    except (RuntimeError, TypeError, ValueError) as caught:
        median, seconds, error = float("nan"), [], str(caught)[:200]
    after = probe.measure(threads)
    read = (before + after) / 2
    return [{"implementation": "numerics" if numerics_cell else name,
             "kind": "numerics" if numerics_cell else "peer",
             "algorithm": name[len(NUMERICS_PREFIX):] if numerics_cell else None,
             "topology": numerics.DEFAULT_TOPOLOGY if numerics_cell else None,
             "norm": norm, "groups": groups, "acc_dtype": acc_dtype, "bytes": nbytes,
             "median_seconds": median, "seconds": seconds, "gb_per_s": nbytes / median / 1e9,
             "read_gb_per_s_before": before, "read_gb_per_s_after": after,
             "share_of_read": nbytes / median / 1e9 / read, "error": error}]


def with_peer_ratios(tables):
    """For numerics rows: the fastest peer of each group's median time over ours, measured on the
    same cell (shape, layout, subset, input dtype, threads)."""
    frame = tables["performance"].copy()
    keys = ["shape", "layout", "subset", "input_dtype", "threads"]
    peer_rows = frame[frame.kind == "peer"]
    groups = {name: column for column, belongs in PEER_GROUPS.items()
              for name in peer_rows.implementation.unique()
              if belongs(implementations.by_name(name))}
    speedups = []
    for column in PEER_GROUPS:
        times = peer_rows[peer_rows.implementation.map(groups) == column]
        if times.empty:
            continue
        fastest = times.groupby(keys)["median_seconds"].min().rename("peer_seconds")
        ratio = frame.join(fastest, on=keys)["peer_seconds"] / frame["median_seconds"]
        frame[column] = ratio.where(frame.kind == "numerics")
        speedups.append(column)
    frame["speedup_vs_fastest_peer"] = frame[speedups].min(axis=1) if speedups else np.nan
    return {**tables, "performance": frame}


#: the first calls measured in a fresh process: one per way the CPU kernels compile (the segments
#: kernel block by block or with small groups side by side, the rows kernel), float32, welford;
#: then the two that compile the most: runs gathered into whole chunks with the block tree, and
#: both passes of a two-pass rule fused (a kernel that links the unit kernel and optimizes it
#: again, docs/architecture.md 2.7). Each: (what the report calls it, the statement after
#: ``import numpy as np, numerics``)
FIRST_CALLS = {
    "group_blocks": ("GroupNorm (8, 64, 16, 16), G = 32 (segments kernel, block by block)",
                     "numerics.moments(np.ones((8, 64, 16, 16), np.float32), 'group', groups=32)"),
    "instance_small_groups": ("InstanceNorm (8, 64, 16, 16) (segments kernel, small groups side "
                              "by side)",
                              "numerics.moments(np.ones((8, 64, 16, 16), np.float32), "
                              "'instance')"),
    "batch_channels_last": ("BatchNorm (8, 28, 28, 64), channels last (rows kernel)",
                            "numerics.moments(np.ones((8, 28, 28, 64), np.float32), 'batch', "
                            "layout='NHWC')"),
    "batch_gathered": ("BatchNorm (32, 64, 28, 28), channels first (segments kernel, short runs "
                       "gathered, several blocks a group)",
                       "numerics.moments(np.ones((32, 64, 28, 28), np.float32), 'batch')"),
    "group_two_pass": ("GroupNorm (8, 64, 16, 16), G = 32, two_pass (both passes fused)",
                       "numerics.moments(np.ones((8, 64, 16, 16), np.float32), 'group', groups=32, "
                       "algorithm='two_pass')"),
}


def first_call_latency(case):
    """Seconds of the import and of the first numerics.moments call of ``case`` (FIRST_CALLS) in a
    fresh process, twice on an empty kernel cache of its own: the first process compiles what
    the call needs, the second loads it from the disk cache."""
    script = ("import time; t0 = time.perf_counter(); import numpy as np, numerics; "
              f"t1 = time.perf_counter(); {FIRST_CALLS[case][1]}; t2 = time.perf_counter(); "
              "print(t1 - t0, t2 - t1)")
    results = []
    with tempfile.TemporaryDirectory() as cache:
        environment = {**os.environ, "NUMERICS_CACHE_DIR": cache}
        for _ in range(2):
            completed = subprocess.run([sys.executable, "-c", script], cwd=report.REPOSITORY,
                                       env=environment, capture_output=True, text=True)
            if completed.returncode != 0:
                return {"table": "performance_first_call", "case": case,
                        "error": completed.stderr[-300:]}
            results.append(tuple(float(value) for value in completed.stdout.split()))
    (_, cold_seconds), (import_seconds, call_seconds) = results
    return {"table": "performance_first_call", "case": case, "import_seconds": import_seconds,
            "first_call_seconds": call_seconds, "cold_first_call_seconds": cold_seconds,
            "error": ""}


def reference_row(elements, repetitions):
    """The exact reference's elements per second (studies.reference_throughput.measure)."""
    result = reference_throughput_study.measure(elements=elements, repetitions=repetitions)
    return {"table": "performance_reference", "elements_per_second":
            result["elements_per_second"], "median_seconds": result["median_seconds"],
            "seconds": list(result["seconds"])}


def cell(cell):
    if cell.slice == "first_call":
        return [first_call_latency(cell.settings["case"])]
    if cell.slice == "reference":
        return [reference_row(cell.settings["elements"], cell.settings["repetitions"])]
    if cell.slice == "latency":
        return latency_cell(cell.settings, cell.seed)
    if cell.slice == "correctly_rounded":
        return [correctly_rounded_row(cell.settings, cell.seed)]
    if cell.slice == "in_cache":
        return [in_cache_bench.measure(cell.settings, cell.seed)]
    if cell.slice == "geometry":
        return [in_cache_bench.measure_geometry(cell.settings, cell.seed)]
    if cell.slice == "push":
        return [in_cache_bench.measure_push(cell.settings, cell.seed)]
    return timing_cell(cell.settings, cell.seed)


# ---- the correctly rounded rule against the same-run read (issue 12) ---------------------------

def correctly_rounded_cases(profile):
    """label -> (norm, groups, shape, layout) of the correctly rounded rule's cells."""
    from studies import correctly_rounded_bench
    shapes = (correctly_rounded_bench.SMOKE_SHAPES if profile == "smoke"
              else correctly_rounded_bench.SHAPES)
    return {f"{norm} {layout} {'x'.join(map(str, shape))}": (norm, groups, shape, layout)
            for norm, groups, shape, layout in shapes}


def correctly_rounded_row(settings, seed):
    """One row: float32 -> float32 correctly rounded moments, the default rule and a streaming
    read alternating on the same tensors (studies.correctly_rounded_bench.measure). Imported
    here: that module takes its streaming read from this one."""
    from studies import correctly_rounded_bench
    norm, groups, shape, layout = correctly_rounded_cases(settings["profile"])[settings["case"]]
    row = correctly_rounded_bench.measure(norm, groups, shape, layout, settings["threads"],
                                          settings["repetitions"], seed)
    return {"table": "performance_correctly_rounded", **row}


def correctly_rounded_section(frame):
    if frame is None or frame.empty:
        return "(not measured)"
    from studies import correctly_rounded_bench
    met = (frame["share_of_read"] >= 0.8).sum()
    return (f"`algorithm=\"correctly_rounded\"`, float32 input to float32 output, against a "
            f"streaming read of the same tensors and the default rule (welford) in the same run "
            f"(medians of calls taken in turn; elements per second); each turn also times the "
            f"rule's parts alone (the fast sums from memory and in cache, the certification, the "
            f"exact path), which name the cause of a miss. Target: ≥ 80 % of the read. "
            f"{met} of {len(frame)} cells meet it.\n\n"
            + correctly_rounded_bench.section_table(frame))


# ---- latency: small tensors against PyTorch's layers (issue 12) -------------------------------

#: LayerNorm over (tokens, hidden); GroupNorm (32 groups) and BatchNorm on the stage shapes of
#: ResNet-50 (C, H, W) at batch 1, 8 and 64
LATENCY_LAYER_SHAPES = ((8, 768), (512, 1024), (4096, 4096), (16384, 8192))
RESNET_STAGES = ((256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7))
RESNET_BATCHES = (1, 8, 64)
#: the PyTorch layer (implementations registry) whose statistics each subset's call replaces
LATENCY_LAYERS = {"layer": "torch layer_norm", "group32": "torch group_norm",
                  "batch": "torch batch_norm"}
#: the implementations of a latency cell, timed in turn: (column prefix, registry name or None
#: for numerics); "numerics_floor" is numerics.moments on the layer's smallest tensor
#: (floor_shape), the cost of a call that reads almost nothing
LATENCY_COLUMNS = (("numerics", None), ("numerics_floor", None), ("torch_layer", "layer"),
                   ("torch_var_mean", "torch.var_mean"))


def floor_shape(subset, shape):
    """The smallest tensor of a latency cell's layer: every size 1 but the channels GroupNorm's
    groups need (one element per group)."""
    _, groups = subset_arguments(subset)
    return (1, groups or 1) + (1,) * (len(shape) - 2)


def latency_cases(profile):
    """(subset label, shape) of every latency cell; smoke: one small tensor per layer."""
    if profile == "smoke":
        return (("layer", (8, 768)), ("group32", (1, 2048, 7, 7)), ("batch", (1, 2048, 7, 7)))
    cases = [("layer", shape) for shape in LATENCY_LAYER_SHAPES]
    for subset in ("group32", "batch"):
        cases += [(subset, (batch, *stage)) for batch in RESNET_BATCHES for stage in RESNET_STAGES]
    return tuple(cases)


def latency_calls(x, subset):
    """The calls of a latency cell: numerics.moments at its defaults (welford, "blocked") on the
    cell's tensor and on the layer's smallest tensor, the registry's prepared PyTorch layer and
    torch.var_mean over the same groups (each the framework call alone)."""
    norm, groups = subset_arguments(subset)
    calls = {}
    for column, name in LATENCY_COLUMNS:
        if column == "numerics_floor":
            smallest = np.ones(floor_shape(subset, x.shape), np.float32)
            calls[column] = functools.partial(numerics.moments, smallest, norm, groups=groups)
        elif name is None:
            calls[column] = functools.partial(numerics.moments, x, norm, groups=groups)
        else:
            item = implementations.by_name(LATENCY_LAYERS[subset] if name == "layer" else name)
            calls[column] = functools.partial(item.run, item.prepare(x, norm, groups, "NCHW", "cpu"))
    return calls


def interleaved_medians(calls, seconds):
    """Median seconds of each call, timed in turn (one call of each, then again) so that all see
    the same state of the machine; after an untimed first call, as many rounds as fit in about
    ``seconds`` (at least 5, at most 1000)."""
    rounds = {name: [] for name in calls}
    for call in calls.values():
        call()
    start = time.perf_counter()
    for name, call in calls.items():
        begin = time.perf_counter()
        call()
        rounds[name].append(time.perf_counter() - begin)
    count = int(min(1000, max(5, seconds / (time.perf_counter() - start))))
    for _ in range(count - 1):
        for name, call in calls.items():
            begin = time.perf_counter()
            call()
            rounds[name].append(time.perf_counter() - begin)
    return {name: statistics.median(values) for name, values in rounds.items()}, count


def latency_cell(settings, seed):
    """numerics.moments against PyTorch's layer and torch.var_mean on one float32 NCHW tensor,
    with the cell's thread count for numba and torch alike."""
    shape = tuple(int(size) for size in settings["shape"].split("x"))
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    set_threads(settings["threads"])
    row = {"table": "performance_latency", "calls": 0, "error": ""}
    try:
        medians, row["calls"] = interleaved_medians(latency_calls(x, settings["subset"]),
                                                    settings["seconds"])
    except (ImportError, RuntimeError, TypeError, ValueError) as caught:
        medians, row["error"] = {}, str(caught)[:200]
    for column, _ in LATENCY_COLUMNS:
        row[f"{column}_us"] = medians.get(column, float("nan")) * 1e6
    row["ratio_to_layer"] = row["numerics_us"] / row["torch_layer_us"]
    return [row]


# ---- the report -------------------------------------------------------------------------------

def percent(value):
    return "–" if value is None or pd.isna(value) else f"{100 * value:.0f}"


def target_cells(frame, shape, acc_dtype, threads):
    """The numerics cells the targets are about: float32 input, the given thread counts."""
    return frame[(frame.kind == "numerics") & (frame["shape"] == shape)
                 & (frame.input_dtype == "float32") & (frame.acc_dtype == acc_dtype)
                 & frame.threads.isin(threads)]


def target_table(frame, shape, acc_dtype):
    """Rules x (subset, layout): share of the read bandwidth on 1 / 2 threads, float32 input; a
    share below its target is marked ✗, a cell behind a peer on any thread count ▼."""
    cells = target_cells(frame, shape, acc_dtype, TARGET_THREADS)
    if cells.empty:
        return ""
    columns = [f"{subset} {layout}" for subset in cells.subset.unique() for layout in LAYOUTS]
    lines = []
    for rule in cells.algorithm.unique():
        line = {"rule": rule, "target": percent(TARGETS[rule])}
        for (subset, layout), runs in cells[cells.algorithm == rule].groupby(
                ["subset", "layout"], sort=False):
            runs = runs.sort_values("threads")
            shares = " / ".join(f"{percent(share)}{'' if share >= TARGETS[rule] else ' ✗'}"
                                for share in runs.share_of_read)
            slower = "" if (runs.speedup_vs_fastest_peer > 1).all() else " ▼"
            line[f"{subset} {layout}"] = shares + slower
        lines.append(line)
    return report.markdown_table(pd.DataFrame(lines, columns=["rule", "target", *columns]),
                                 formats={column: str for column in ["rule", "target", *columns]})


def target_sections(frame):
    """One subsection per shape and accumulator: the target table and the speed-up table."""
    sections = []
    for shape in frame["shape"].unique():
        for acc_dtype in ("float32", "float64"):
            table = target_table(frame, shape, acc_dtype)
            if table:
                sections.append(f"### {shape}, float32 input, {acc_dtype} accumulation\n\n"
                                f"Share of the read bandwidth (%) on 1 / 2 threads, ✗ below "
                                f"target, ▼ behind a peer:\n\n{table}\n\nSpeed-up over the "
                                f"fastest peer of the same cell (numpy, torch.var_mean, "
                                f"PyTorch's layer), {frame.threads.max()} threads:\n\n"
                                f"{speedup_table(frame, shape, acc_dtype)}")
    return "\n\n".join(sections)


def speedup_table(frame, shape, acc_dtype):
    """Rules x (subset, layout): speed-up over the fastest peer on the most threads measured."""
    cells = target_cells(frame, shape, acc_dtype, (frame.threads.max(),))
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


TWO_PASS_RULES = ("two_pass", "corrected_two_pass")

#: why a cell misses its target, decided by its headroom (with_headroom: the arithmetic's rate
#: measured in cache in the same run, over the cell's own read rate), then by what the cell is;
#: (title, test on a missed cell, explanation), the first test that holds names the cause
CAUSES = (
    ("not measured in cache",
     lambda cell: pd.isna(cell.headroom),
     "neither the in-cache nor the geometry slice has a measured slope for this rule, subset, "
     "layout, formats and shape in this run."),
    ("undecided: faster than in cache",
     lambda cell: cell.share_of_read > cell.headroom,
     "the cell streamed its elements from memory faster than the same rule ran in cache (share "
     "of the read above the headroom): the machine's state changed between the two measures, "
     "which run minutes apart; the measure then does not decide this cell's cause."),
    ("undecided: the L3 may limit the measure",
     lambda cell: cell.headroom < in_cache_bench.TARGET_RATIO and cell.l3_read_ratio < 2,
     "the headroom is under 2, but the streaming read of the same L3-resident tensors ran "
     "less than twice as fast as the rule, so the rate measured at the cell's geometry may be "
     "the L3's, not the arithmetic's: the measure does not show that the arithmetic limits the "
     "cell."),
    ("arithmetic-bound (measured)",
     lambda cell: cell.headroom < in_cache_bench.TARGET_RATIO,
     "the rule's arithmetic, measured in cache on the same rule, subset, layout and formats "
     "(one thread; for GroupNorm, InstanceNorm channels last and BatchNorm channels last at "
     "the cell's own geometry: GroupNorm channels first on whole groups of the cell from the "
     "L2, the others on one sample of the cell's shape from the L3, where the streaming read "
     "of the same tensors ran at least twice as fast), runs at less than twice the read rate "
     "measured around the cell (headroom = threads × that rate / read rate, elements per "
     "second), so the cell is limited by its arithmetic whatever the loads do; below 1 no "
     "overlap of loads and arithmetic could reach the read. "
     "What the arithmetic is per element: a vector add and multiply per push (naive, shifted), "
     "a correctly rounded divide (welford), a merge (parallel_merge), two passes (two_pass, "
     "corrected_two_pass); float64 accumulation holds 4 lanes per AVX2 register against 8 and "
     "converts every float32 element; each group ends with its lane tree, which weighs more the "
     "smaller the group."),
    ("two-pass, BatchNorm channels last: both passes from memory",
     lambda cell: cell.algorithm in TWO_PASS_RULES and cell.subset == "batch"
     and cell.layout == "NHWC",
     "the arithmetic has headroom (measured), but every BatchNorm group spans the whole tensor "
     "when channels are last (the view has one kept_outer slice), so pass 2 cannot start before "
     "pass 1 has read all of it, and the tensor is three times the L3: both passes come from "
     "memory, a ceiling of 50 % of the read bandwidth. Closing it needs a one-pass rule "
     "(parallel_merge is the pairwise two-pass-quality one) or a tensor that fits in L3."),
    ("two-pass: the second pass",
     lambda cell: cell.algorithm in TWO_PASS_RULES,
     "the arithmetic of both passes has headroom (measured in cache, where the second pass "
     "reads what the first left in L2); in the cell, pass 2 re-reads each stretch of groups "
     "from the L2 or the L3 after pass 1 has streamed it from memory, and the two do not "
     "overlap: the time is the read plus the second pass."),
    ("the reading of memory (per-block work, prefetch)",
     lambda cell: True,
     "the arithmetic has headroom (measured), so the loss is in how the kernel meets memory: "
     "work that no load overlaps (each block of 8192 elements zeroes its lane states and runs "
     "its lane tree) and streams the hardware prefetcher restarts (BatchNorm NCHW reads each "
     "channel as one run per sample). A headroom h with loads and arithmetic in series gives "
     "a share of h / (1 + h): 80 % needs h ≥ 4."),
)


def with_headroom(cells, in_cache, geometry):
    """The cells with ``headroom``: threads × the rule's elements per second in cache (one thread,
    same run) over the cell's read rate in elements of its input format per second (the probes
    around it). The rate is the geometry slice's, at the cell's own geometry, where it has the
    cell (in_cache_bench.GEOMETRY_SUBSETS), else the in-cache slice's, of the same rule, subset,
    layout and formats; ``l3_read_ratio``: the streaming read's rate on an L3-resident geometry
    sample over the rule's (NaN for L2-resident rates: there the L3 is not read). NaN where
    neither has a rate."""
    cells = cells.copy()
    keys = ["algorithm", "subset", "layout", "input_dtype", "acc_dtype"]
    cells["rate"] = cells["l3_read_ratio"] = np.nan
    if in_cache is not None and not in_cache.empty:
        rates = in_cache.groupby(keys)["in_cache_elements_per_s"].median().rename("l2_rate")
        cells["rate"] = cells.join(rates, on=keys)["l2_rate"]
    if geometry is not None and not geometry.empty:
        keys = keys + ["shape"]
        measured = geometry.groupby(keys)[["geometry_elements_per_s",
                                           "geometry_read_ratio"]].median()
        measured["in_l3"] = geometry.groupby(keys)["resident"].first() == "L3"
        own = cells.join(measured, on=keys)
        has_own = own.geometry_elements_per_s.notna()
        cells.loc[has_own, "rate"] = own.geometry_elements_per_s[has_own]
        cells["l3_read_ratio"] = own.geometry_read_ratio.where(own.in_l3.eq(True))
    itemsize = cells.input_dtype.map(lambda name: precision.NUMPY_DTYPES[name].itemsize)
    read = (cells.read_gb_per_s_before + cells.read_gb_per_s_after) / 2 * 1e9 / itemsize
    cells["headroom"] = cells.threads * cells.rate / read
    return cells


def gaps_section(frame, in_cache, geometry):
    cells = frame[(frame.kind == "numerics") & (frame.input_dtype == "float32")
                  & frame.threads.isin(TARGET_THREADS)]
    if cells.empty:
        return "No float32 cells measured."
    cells = with_headroom(cells, in_cache, geometry)
    cells["target"] = cells.algorithm.map(TARGETS)
    misses = cells[cells.share_of_read < cells.target]
    slower = cells[~(cells.speedup_vs_fastest_peer > 1)]
    lines = [f"{len(cells) - len(misses)} of {len(cells)} target cells (float32 input, "
             f"{' and '.join(map(str, sorted(cells.threads.unique())))} threads) reach their "
             f"share of the read bandwidth; {len(cells) - len(slower)} of {len(cells)} are "
             f"ahead of every peer. Each miss gets the first cause below that its measured "
             f"headroom and what it is select. The headroom is threads × the rule's rate in "
             f"cache over the cell's read rate: the in-cache rate above of the same rule, "
             f"subset, layout and formats, except where that sample does not keep the cell's "
             f"geometry (GroupNorm's groups, InstanceNorm's and BatchNorm's channels-last rows): "
             f"for those, the slope between two "
             f"sizes of tensors that keep it, GroupNorm channels first's on one and three whole "
             f"groups of the cell (one and two where three do not fit) in the L2, the others' on "
             f"batches 1 and 3 of one sample of the cell's own shape in the L3, timed in turn with "
             f"the streaming read of the same tensors (one thread; "
             f"`data/performance_geometry.parquet`; method: studies/in_cache_bench.py)."]
    if not slower.empty:
        listed = ", ".join(f"{cell.algorithm} {cell.subset} {cell.layout} {cell['shape']} "
                           f"{cell.threads}t ({cell.speedup_vs_fastest_peer:.2f}×)"
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
        low, high = group.headroom.min(), group.headroom.max()
        headroom = ("" if group.headroom.isna().all() else f"; headroom {low:.1f}"
                    + ("" if f"{low:.1f}" == f"{high:.1f}" else f" to {high:.1f}"))
        count = f"{mask.sum()} cell{'s' if mask.sum() > 1 else ''}"
        lines.append(f"\n**{title}** ({count}{headroom}; largest gap: "
                     f"{worst.algorithm} {worst.subset} {worst.layout} {worst['shape']} acc "
                     f"{worst.acc_dtype} {worst.threads}t, {percent(worst.share_of_read)} % "
                     f"against {percent(worst.target)} %, headroom {worst.headroom:.1f}): "
                     f"{explanation}")
    return "\n".join(lines)


#: why a latency cell misses, from what the same run measured (latency_cause)
LATENCY_CAUSES = {
    "fixed cost": "the call floor (`numerics.moments` on the layer's smallest tensor, read in "
                  "the same turns) alone takes at least PyTorch's whole layer: the cost is the "
                  "call (argument checks, the view, the kernel dispatches, the output arrays: "
                  "docs/architecture.md section 2.8), not the elements",
    "elements": "the time beyond the call floor alone exceeds PyTorch's whole layer: the "
                "kernels' rate on this shape is the limit (column M/s: elements per second "
                "beyond the floor, against PyTorch's elements per second)",
    "both": "neither the call floor nor the time beyond it alone exceeds PyTorch's layer; "
            "their sum does",
}


def latency_cause(row):
    """Which part of numerics' time makes a cell miss (ratio > 1): "fixed cost", "elements",
    "both", or "" where it does not miss."""
    if not row["ratio_to_layer"] > 1:
        return ""
    if row["numerics_floor_us"] >= row["torch_layer_us"]:
        return "fixed cost"
    if row["numerics_us"] - row["numerics_floor_us"] >= row["torch_layer_us"]:
        return "elements"
    return "both"


def latency_section(frame):
    """The latency table: every cell's median microseconds, numerics' time over PyTorch's layer
    (the target: at most 1) and, for a miss, its measured cause."""
    if frame is None or frame.empty:
        return "(not measured)"
    elements = frame["shape"].map(lambda shape: np.prod([int(size) for size in shape.split("x")]))
    beyond_floor = (frame["numerics_us"] - frame["numerics_floor_us"]).clip(lower=1e-3)
    causes = frame.apply(latency_cause, axis=1)
    table = pd.DataFrame({
        "shape": frame["shape"].str.replace("x", "×"), "layer": frame["subset"],
        "threads": frame["threads"], "numerics µs": frame["numerics_us"],
        "call floor µs": frame["numerics_floor_us"],
        "PyTorch layer µs": frame["torch_layer_us"],
        "torch.var_mean µs": frame["torch_var_mean_us"], "ratio": frame["ratio_to_layer"],
        "numerics M/s beyond floor": elements / beyond_floor,
        "PyTorch M/s": elements / frame["torch_layer_us"], "cause of a miss": causes})
    microseconds = lambda value: "–" if pd.isna(value) else f"{value:,.1f}"
    rate = lambda value: "–" if pd.isna(value) else f"{value:,.0f}"
    met = (frame["ratio_to_layer"] <= 1).sum()
    errors = frame.loc[frame["error"] != "", "error"].unique().tolist()
    lines = [f"`numerics.moments` (welford, topology \"{numerics.DEFAULT_TOPOLOGY}\", float32, "
             f"NCHW) against the PyTorch layer that computes the same statistics (the registry's "
             f"native call: `native_layer_norm`, `native_group_norm` with 32 groups, "
             f"`native_batch_norm` in training) and `torch.var_mean` over the same groups; "
             f"median of calls taken in turn in the same process, threads set alike for numba "
             f"and torch (numerics runs on as many as its measured work pays for, and after "
             f"PyTorch's calls it shares the cores with PyTorch's spinning OpenMP threads: "
             f"docs/architecture.md section 2.8). ratio = numerics / PyTorch layer; target ≤ 1. "
             f"{met} of {len(frame)} cells meet it."]
    for cause, explanation in LATENCY_CAUSES.items():
        count = int((causes == cause).sum())
        if count:
            lines.append(f"\n- **{cause}** ({count} cell{'s' if count != 1 else ''}): "
                         f"{explanation}.")
    lines += ["", report.markdown_table(table, formats={
        "numerics µs": microseconds, "call floor µs": microseconds,
        "PyTorch layer µs": microseconds, "torch.var_mean µs": microseconds,
        "ratio": lambda value: "–" if pd.isna(value) else f"{value:.2f}",
        "numerics M/s beyond floor": rate, "PyTorch M/s": rate})]
    if errors:
        lines.append(f"\nErrors: {'; '.join(errors)}")
    return "\n".join(lines)


def read_line(frame):
    """The read probes' medians and ranges, per thread count."""
    lines = []
    for threads, values in frame.groupby("threads"):
        probes = pd.concat([values.read_gb_per_s_before, values.read_gb_per_s_after])
        lines.append(f"{threads} thread{'s' if threads > 1 else ''}: median "
                     f"{probes.median():.1f} GB/s (range {probes.min():.1f} to "
                     f"{probes.max():.1f})")
    return "; ".join(lines)


def first_call_and_reference_lines(results):
    """The lines of the first calls in a fresh process and of the exact reference's
    throughput."""
    latency_lines = []
    for _, latency in results.tables["performance_first_call"].iterrows():
        name = FIRST_CALLS[latency["case"]][0]
        latency_lines.append(
            f"{name}: not measured ({latency['error']})" if latency["error"] else
            f"{name}: on an empty kernel cache the first `numerics.moments` call compiles its "
            f"kernels in {latency['cold_first_call_seconds']:.1f} s (target < 3 s); with the "
            f"kernels cached, {latency['first_call_seconds']:.2f} s (target < 2 s), after "
            f"{latency['import_seconds']:.2f} s of `import numerics`")
    reference = results.tables["performance_reference"].iloc[0]
    reference_line = (f"{reference['elements_per_second'] / 1e6:.1f} M float32 elements/s on one "
                      f"core ({reference['elements']:,} elements, median of "
                      f"{len(reference['seconds'])}; target ≥ 100 M/s)")
    return latency_lines, reference_line


def report_section(results):
    frame = results.tables["performance"]
    in_cache = results.tables.get("performance_in_cache")
    topology = numerics.TOPOLOGIES[numerics.DEFAULT_TOPOLOGY]
    latency_lines, reference_line = first_call_and_reference_lines(results)
    first_calls = "\n".join(f"- Fresh process, {line}" for line in latency_lines)
    peer_names = ", ".join(item.name for item in peers())
    body = f"""- numba threads used: {sorted(frame.threads.unique().tolist())}, torch threads set to
  the same, numpy single-threaded; peers (numerics.implementations): {peer_names}
- numerics topology for every rule: "{numerics.DEFAULT_TOPOLOGY}" = {topology.lanes} lanes,
  blocks of {topology.block} elements
- Read bandwidth (streaming-read probe around every cell): {read_line(frame)}. On a quiet machine the
  probe reads about 40 GB/s with one thread and 79 GB/s with two (docs/architecture.md section 9); other
  jobs share this machine, so compare shares, not GB/s, between runs
- Data: `data/performance.parquet`, one row per timed cell (median of
  {frame["repetitions"].iloc[0]} calls on rotating buffers, each call's seconds, the probes before
  and after); `data/performance_latency.parquet` (the latency table),
  `data/performance_correctly_rounded.parquet` (the correctly rounded rule),
  `data/performance_in_cache.parquet` (in-cache rates and the streaming read around each),
  `data/performance_geometry.parquet` (the rates at each cell shape's own geometry where the
  in-cache samples do not keep it), `data/performance_push.parquet` (the push alone),
  `data/performance_first_call.parquet`, `data/performance_reference.parquet`

## Targets

Every rule ≥ 80 % of the read bandwidth, the two-pass rules included (one read from memory, the
second pass served from cache), on 1 and 2 threads with float32 input and either accumulator,
every cell ahead of numpy and PyTorch; and every rule's in-cache rate ≥ 2× the single-thread
streaming read (next section). Shares are of the probe's bandwidth measured around the same
cell.

{target_sections(frame)}

## In-cache throughput against the streaming read (issue 12)

{in_cache_bench.section(in_cache, results.tables.get("performance_push"))}

## Where the targets are missed, and why

{gaps_section(frame, in_cache, results.tables.get("performance_geometry"))}

## Peers

Share of the read bandwidth (%), float32 input, {frame.threads.max()} threads:

{peer_table(frame)}

## Every precision and thread count

{summary_table(frame)}

## Latency against PyTorch (issue 12)

{latency_section(results.tables.get("performance_latency"))}

## The correctly rounded rule (issue 12)

{correctly_rounded_section(results.tables.get("performance_correctly_rounded"))}

## Exact reference and first call

- Exact reference (`numerics.reference.moments`): {reference_line}
{first_calls}
"""
    return results.section(body)


def grid(profile):
    """Timing cells: every rule and peer on each (shape, format pair, layout, subset, threads);
    the peers once per input format (they have no accumulator setting)."""
    smoke = profile == "smoke"
    shapes = ((2, 64, 8, 8),) if smoke else ((32, 256, 56, 56), (8, 64, 224, 224))
    precisions = (("float32", "float32"),) if smoke else PRECISIONS
    rules = ("naive", "welford", "two_pass") if smoke else tuple(TARGETS)
    threads = (1, 2, 4) if profile == "full" else (1, 2)
    first_accumulator = {}
    for input_dtype, acc_dtype in precisions:
        first_accumulator.setdefault(input_dtype, acc_dtype)
    formats, keep_pair = engine.paired("input_dtype", "acc_dtype", precisions)
    names = (*(NUMERICS_PREFIX + rule for rule in rules), *(item.name for item in peers()))

    def keep(settings):
        if not keep_pair(settings):
            return False
        if settings["implementation"].startswith(NUMERICS_PREFIX):
            return True
        norm = "group" if settings["subset"].startswith("group") else settings["subset"]
        item = implementations.by_name(settings["implementation"])
        return (first_accumulator[settings["input_dtype"]] == settings["acc_dtype"]
                and item.supports(norm, settings["layout"])
                and settings["input_dtype"] in item.dtypes)

    timings = engine.Slice("timings", {
        "shape": tuple("x".join(map(str, shape)) for shape in shapes), **formats,
        "layout": LAYOUTS, "subset": tuple(report.subset_label(*subset) for subset in SUBSETS),
        "threads": threads, "implementation": names, "repetitions": (2 if smoke else 5,)},
        keep=keep)
    cases = latency_cases(profile)
    latency = engine.Slice("latency", {
        "subset": tuple(dict.fromkeys(subset for subset, _ in cases)),
        "shape": tuple(dict.fromkeys("x".join(map(str, shape)) for _, shape in cases)),
        "threads": threads, "seconds": (0.05 if smoke else 0.5,)},
        keep=lambda settings: (settings["subset"], tuple(
            int(size) for size in settings["shape"].split("x"))) in cases)
    in_cache = engine.Slice("in_cache", in_cache_bench.factors(profile, rules))
    geometry = engine.Slice("geometry", in_cache_bench.geometry_factors(
        profile, rules, tuple("x".join(map(str, shape)) for shape in shapes)),
        keep=in_cache_bench.keeps_geometry)
    push = engine.Slice("push", in_cache_bench.push_factors(profile))
    correctly_rounded = engine.Slice("correctly_rounded", {
        "case": tuple(correctly_rounded_cases(profile)), "profile": (profile,),
        "threads": threads, "repetitions": (2 if smoke else 5,)})
    return (timings, in_cache, geometry, push, latency, correctly_rounded,
            engine.Slice("first_call", {"case": (("group_blocks",) if smoke
                                                 else tuple(FIRST_CALLS))}),
            engine.Slice("reference", {"elements": (200_000 if smoke else 10_000_000,),
                                       "repetitions": (2 if smoke else 3,)}))


TIMING_COLUMNS = ("median_seconds", "seconds", "gb_per_s", "read_gb_per_s_before",
                  "read_gb_per_s_after", "share_of_read", *PEER_GROUPS, "speedup_vs_fastest_peer",
                  "import_seconds", "first_call_seconds", "cold_first_call_seconds",
                  "elements_per_second", "calls", "numerics_us", "torch_layer_us",
                  "torch_var_mean_us", "ratio_to_layer", "elements_per_s", "read_elements_per_s",
                  "default_elements_per_s", "small_seconds", "large_seconds",
                  "in_cache_elements_per_s", "call_elements_per_s", "in_cache_ratio",
                  "geometry_elements_per_s", "geometry_read_elements_per_s",
                  "geometry_read_ratio", "push_seconds", "push_elements_per_s", "push_ratio")
STUDY = engine.Study("performance", "Performance of the CPU kernels", grid, cell, report_section,
                     seed_factors=("shape",), timing_columns=TIMING_COLUMNS, serial=True,
                     derive=with_peer_ratios)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=engine.PROFILES, default="default",
                        help="smoke: tiny shapes and few cells; default; full: more threads")
    parser.add_argument("--output", type=Path, default=report.REPOSITORY / "reports",
                        help="directory for performance.md and data/ (default: reports/)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cell cache directory, to resume a killed run (default: none: "
                             "timings describe the machine now, so every run times afresh)")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    output = arguments.output.resolve()
    record = report.provenance(arguments.seed, arguments.profile)
    options = runner.RunOptions(output, arguments.profile, arguments.seed, workers=1,
                                cache_directory=arguments.cache)
    section, seconds = runner.run_study(sys.modules[__name__], options, record)
    path = report.write_text(output / "performance.md", f"""# {section.title}

Generated by `make bench` (`python -m studies.performance`); do not edit by hand.

{report.provenance_header(record)}
- Run time: {seconds:.0f} s
{section.body}""")
    print(f"wrote {path} in {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
