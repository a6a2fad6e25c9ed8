"""``make gpu-check``: the GPU kernels on a real GPU (``python -m studies.gpu_check``).

1. Correctness of every kernel specialization: each rule x (input, accumulator) format pair x FMA
   mode x kernel (channels-first GroupNorm runs the segments kernel, channels-last the rows
   kernel) on a (2, 8, 32, 32) tensor at the fast topology (4 units per group): its variance and
   mean within the rule's a-priori bound of the exact reference (numerics.bounds,
   numerics.reference), in "separate" mode bit for bit the plain-Python replay (numerics.replay),
   and the same bits on a second run. In worker processes: each compiles its share of kernels.
2. Timings of every rule at its fast topology (numerics.gpu.FAST_TOPOLOGY) on the four subsets
   (GroupNorm G = 32), both layouts, float32 and float16 input, shapes (32, 256, 56, 56) and
   (8, 64, 224, 224), device arrays in and out; with PyTorch's CUDA statistics (torch.var_mean,
   torch.batch_norm_stats) on the same memory where torch is installed, and a device-to-device
   copy of the same tensor as the bandwidth yardstick.

How time is measured (CUDA events, warm-up, median). Each batch of calls is queued behind a
kernel that holds the GPU until the host has queued the whole batch, so the events time the GPU's
work back to back, not the host's launch overhead; ``device_ms`` is the median over batches of the
mean time per call. ``latency_ms`` is the median time of single calls, each synchronized: what one
call costs a caller, launch overhead included. GB/s = tensor bytes / device time (a two-pass rule
reads the tensor twice); the copy's GB/s counts bytes read and written. ``share`` = GB/s over the
copy's GB/s. The targets (ISSUE 3): share >= 0.8 for every rule, subset and layout, and no slower
than PyTorch.

Writes reports/gpu/gpu_check.md, gpu_check.csv (timings) and gpu_correctness.csv. Exits 1 if any
check fails, 2 without a GPU.
"""
import argparse
import csv
import io
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parent.parent
OUTPUT_DIRECTORY = REPOSITORY / "reports" / "gpu"

CHECK_SHAPE = (2, 8, 32, 32)
CHECK_LAYOUTS = (("segments", "NCHW"), ("rows", "NHWC"))
TIMING_SHAPES = ((32, 256, 56, 56), (8, 64, 224, 224))
QUICK_TIMING_SHAPES = ((8, 64, 56, 56),)
TIMING_INPUTS = ("float32", "float16")
SUBSETS = (("batch", None), ("layer", None), ("instance", None), ("group", 32))
LAYOUTS = ("NCHW", "NHWC")
#: the "small constant" of the tests: numerics.bounds gives leading terms without constants
BOUND_FACTOR = 2.0
TARGET_SHARE = 0.8
#: batches of calls per timing (the median is taken over batches) and calls per batch
BATCHES = 7
CALLS_PER_BATCH = 10
WARM_UP_CALLS = 3


def gpu_or_exit():
    """The GPU's description, or exit 2 with a message saying what runs without one."""
    from numba import config, cuda
    if config.ENABLE_CUDASIM:
        sys.exit("studies.gpu_check times a real GPU; NUMBA_ENABLE_CUDASIM=1 is set (the simulator "
                 "is for the tests: make test-gpu-simulator). Unset it.")
    if not cuda.is_available():
        print("studies.gpu_check needs an NVIDIA GPU, and numba.cuda finds none on this machine. "
              "Run `make gpu-check PYTHON=python3` where one is; without one, `make "
              "test-gpu-simulator` runs the kernels under the simulator and `make gpu-compile` "
              "builds their PTX.", file=sys.stderr)
        sys.exit(2)
    from importlib import metadata
    from numba.cuda.cudadrv import driver
    device = cuda.get_current_device()
    versions = {}
    for package in ("numba", "numba-cuda", "numpy", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    return {"gpu": name, "compute_capability": "%d.%d" % device.compute_capability,
            "driver": ".".join(map(str, driver.get_version())), **versions}


# ---- 1. correctness -------------------------------------------------------------------------------

def correctness_cases():
    """(fma, input format, accumulator format, rule, kernel, layout, ddof) of every check."""
    from numerics import ALGORITHMS, gpu, targets
    cases = []
    for fma in targets.FMA_MODES:
        for input_format, acc_format in gpu.FORMAT_PAIRS:
            for index, algorithm in enumerate(ALGORITHMS):
                for kernel, layout in CHECK_LAYOUTS:
                    cases.append((fma, input_format, acc_format, algorithm, kernel, layout,
                                  index % 2))
    return cases


def check_input(input_format, layout, seed, shape):
    """Mean 3, standard deviation 1: every group has a spread, no format overflows."""
    from numerics import data
    x = data.generate(shape, input_format, "normal", mean=3.0, std=1.0, seed=seed)
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)) if layout == "NHWC" else x


def check_case(case, seed, shape=CHECK_SHAPE):
    """One row of the correctness table (errors are rows too: the run goes on)."""
    import numerics
    from numerics import bounds, gpu, metrics, precision, reference, replay
    fma, input_format, acc_format, algorithm, kernel, layout, ddof = case
    row = dict(zip(("fma", "input_dtype", "acc_dtype", "algorithm", "kernel", "layout", "ddof"),
                   case))
    try:
        x = check_input(input_format, layout, seed, shape)
        topology = gpu.TOPOLOGIES[gpu.FAST_TOPOLOGY]
        options = dict(groups=2, layout=layout, algorithm=algorithm, ddof=ddof,
                       acc_dtype=acc_format, topology=topology)
        first = numerics.moments(x, "group", device="cuda", fma=fma, **options)
        second = numerics.moments(x, "group", device="cuda", fma=fma, **options)
        row["kernel_ran"] = first.run.kernel
        row["reproducible"] = bool(same_bits(first.var, second.var)
                                   and same_bits(first.mean, second.mean))
        if fma == "separate":
            replay_mean, replay_var = replay.moments(x, "group", **options)
            row["replay_bitwise"] = bool(same_bits(first.var, replay_var)
                                         and same_bits(first.mean, replay_mean))
        view = numerics.canonical_view(x.shape, "group", 2, layout)
        where = dict(groups=2, layout=layout)
        kappa = reference.condition_number(x, "group", **where)
        rule_kappa = (reference.shifted_condition_number(x, "group", **where)
                      if algorithm == "shifted" else kappa)
        u = numerics.unit_roundoff(acc_format)
        narrowed = precision.SIGNIFICAND_BITS[input_format] > precision.SIGNIFICAND_BITS[acc_format]
        variance_bound = BOUND_FACTOR * bounds.variance_bound(
            algorithm, view.group_size, rule_kappa, u, topology.lanes, topology.block,
            input_rounding_u=u if narrowed else 0.0, data_kappa=kappa)
        values = np.moveaxis(np.asarray(x, np.float64).reshape(view.view_shape), 2, 1)
        values = values.reshape(view.group_count, view.group_size)
        # the shifted rule's mean is d + sum(x - d)/n: its summation condition counts |x - d| too
        mean_condition = ((np.abs(values).sum(axis=1) + np.abs(values - values[:, :1]).sum(axis=1))
                          / np.abs(values.sum(axis=1))).reshape(view.stats_shape)
        mean_bound = BOUND_FACTOR * (bounds.mean_bound(view.group_size, mean_condition, u,
                                                       topology.lanes, topology.block)
                                     + (u if narrowed else 0.0) * mean_condition)
        exact_mean, exact_var = reference.moments(x, "group", ddof=ddof, **where)
        row["variance_error_over_bound"] = float(np.max(
            metrics.relative_error(first.var, exact_var) / variance_bound))
        row["mean_error_over_bound"] = float(np.max(
            metrics.relative_error(first.mean, exact_mean) / mean_bound))
    except Exception as error:  # a failing specialization is a finding, not the end of the run
        row["error"] = f"{type(error).__name__}: {error}"[:300]
    row["passed"] = passed(row)
    return row


def same_bits(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def passed(row):
    return ("error" not in row and row["reproducible"] and row.get("replay_bitwise", True)
            and row["variance_error_over_bound"] <= 1 and row["mean_error_over_bound"] <= 1)


def check_share(cases):
    """A worker: one process's share of the cases (cases of one format pair share kernels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [check_case(case, seed=index) for index, case in cases]


def correctness(workers):
    cases = list(enumerate(correctness_cases()))
    by_formats = {}
    for index, case in cases:
        by_formats.setdefault(case[:3], []).append((index, case))
    shares = list(by_formats.values())
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = [row for share in pool.map(check_share, shares) for row in share]
    return sorted(rows, key=lambda row: correctness_cases().index(tuple(
        row[key] for key in ("fma", "input_dtype", "acc_dtype", "algorithm", "kernel", "layout",
                             "ddof"))))


# ---- 2. timings -----------------------------------------------------------------------------------

class DeviceClock:
    """Times a call on the GPU (module docstring): ``hold`` keeps the GPU busy while the host
    queues a batch, ``events`` makes start/end event pairs, ``synchronize`` waits for the GPU."""

    def __init__(self, hold, events, synchronize):
        self.hold, self.events, self.synchronize = hold, events, synchronize

    def time(self, call):
        """(device ms per call, latency ms per call): medians over batches and single calls."""
        for _ in range(WARM_UP_CALLS):
            call()
        self.synchronize()
        latencies = []
        for _ in range(CALLS_PER_BATCH):
            began = time.perf_counter()
            call()
            self.synchronize()
            latencies.append((time.perf_counter() - began) * 1e3)
        # the hold must outlast the host's queuing of a batch
        hold_ms = max(20.0, 3 * CALLS_PER_BATCH * statistics.median(latencies))
        per_call = []
        for _ in range(BATCHES):
            start, end = self.events()
            self.hold(hold_ms)
            start.record()
            for _ in range(CALLS_PER_BATCH):
                call()
            end.record()
            end.synchronize()
            per_call.append(start.elapsed_time(end) / CALLS_PER_BATCH)
        return statistics.median(per_call), statistics.median(latencies)


def numba_clock():
    from numba import cuda

    @cuda.jit
    def hold(nanoseconds):
        if cuda.grid(1) == 0:
            for _ in range(nanoseconds // 1000):
                cuda.nanosleep(1000)

    def hold_for(milliseconds):
        hold[1, 1](int(milliseconds * 1e6))

    return DeviceClock(hold_for, lambda: (cuda.event(), cuda.event()), cuda.synchronize)


def torch_clock(torch):
    # torch.cuda._sleep spins for a number of GPU cycles: calibrate cycles per millisecond
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    end.synchronize()
    cycles_per_ms = 10_000_000 / start.elapsed_time(end)

    def hold_for(milliseconds):
        torch.cuda._sleep(int(milliseconds * cycles_per_ms))

    def events():
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    return DeviceClock(hold_for, events, torch.cuda.synchronize)


def timing_tensor(shape, input_format, layout, seed):
    """A device tensor of ``shape`` (N, C, *spatial), stored channels last for NHWC."""
    from numba import cuda
    values = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) + 3
    values = values.astype(input_format)
    if layout == "NHWC":
        values = np.ascontiguousarray(np.moveaxis(values, 1, -1))
    return cuda.to_device(values)


def torch_statistics(torch, t, norm, groups, layout):
    """(label, call) of PyTorch's statistics of tensor ``t``, given in storage order ((N, C, H, W)
    for NCHW, (N, H, W, C) for NHWC), each call returning (variance, mean) of the groups (or
    torch.batch_norm_stats's (mean, 1/std))."""
    logical = t.permute(0, 3, 1, 2) if layout == "NHWC" else t  # N, C, H, W either way
    n, c = logical.shape[:2]
    if norm == "group":
        grouped = (t.view(n, -1, groups, c // groups) if layout == "NHWC"
                   else t.view(n, groups, -1))
        dims = (1, 3) if layout == "NHWC" else (2,)
    else:
        grouped = logical
        dims = {"batch": (0, 2, 3), "layer": (1, 2, 3), "instance": (2, 3)}[norm]
    calls = [("torch.var_mean", lambda: torch.var_mean(grouped, dim=dims, correction=0))]
    if norm == "batch" and hasattr(torch, "batch_norm_stats"):
        calls.append(("torch.batch_norm_stats", lambda: torch.batch_norm_stats(logical, 0.0)))
    return calls


def timings(shapes, include_torch):
    from numba import cuda
    import numerics
    from numerics import gpu
    clock = numba_clock()
    torch = None
    if include_torch:
        try:
            import torch
            if not torch.cuda.is_available():
                torch = None
        except ImportError:
            torch = None
    torch_timer = torch_clock(torch) if torch is not None else None
    topology = gpu.TOPOLOGIES[gpu.FAST_TOPOLOGY]
    rows = []
    for shape in shapes:
        for input_format in TIMING_INPUTS:
            for layout in LAYOUTS:
                device_x = timing_tensor(shape, input_format, layout, seed=len(rows))
                nbytes = device_x.nbytes
                copy = cuda.device_array_like(device_x)
                copy_ms, _ = clock.time(lambda: copy.copy_to_device(device_x))
                copy_gbs = 2 * nbytes / copy_ms / 1e6
                common = {"shape": "x".join(map(str, shape)), "input_dtype": input_format,
                          "layout": layout, "bytes": nbytes, "copy_gbs": copy_gbs}
                for norm, groups in SUBSETS:
                    subset = norm if groups is None else f"{norm}{groups}"
                    for algorithm, rule in numerics.ALGORITHMS.items():
                        def call():
                            return numerics.moments(device_x, norm, groups=groups, layout=layout,
                                                    algorithm=algorithm, topology=topology,
                                                    device="cuda")
                        first = call()
                        device_ms, latency_ms = clock.time(call)
                        last = call()
                        reproducible = (same_bits(first.var.copy_to_host(), last.var.copy_to_host())
                                        and same_bits(first.mean.copy_to_host(),
                                                      last.mean.copy_to_host()))
                        rows.append(timing_row(common, subset, f"numerics {algorithm}", rule.passes,
                                               device_ms, latency_ms, reproducible))
                    if torch_timer is not None:
                        same_memory = torch.as_tensor(device_x, device="cuda")
                        for label, call in torch_statistics(torch, same_memory, norm, groups,
                                                            layout):
                            device_ms, latency_ms = torch_timer.time(call)
                            rows.append(timing_row(common, subset, label, 1, device_ms, latency_ms,
                                                   None))
                del device_x, copy
    return rows


def timing_row(common, subset, implementation, passes, device_ms, latency_ms, reproducible):
    gbs = common["bytes"] / device_ms / 1e6
    return {**common, "subset": subset, "implementation": implementation, "passes": passes,
            "device_ms": device_ms, "latency_ms": latency_ms, "gbs": gbs,
            "share": gbs / common["copy_gbs"], "reproducible": reproducible}


# ---- report ---------------------------------------------------------------------------------------

def write_csv(path, rows):
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(rows)
    from studies import report
    report.write_text(path, buffer.getvalue())


def correctness_section(rows):
    import pandas as pd
    from studies import report
    frame = pd.DataFrame(rows)
    failed = frame[~frame["passed"]]
    lines = ["## Correctness of every specialization", "",
             f"{len(frame)} checks ({frame['algorithm'].nunique()} rules x "
             f"{len(frame[['input_dtype', 'acc_dtype']].drop_duplicates())} format pairs x "
             f"{frame['fma'].nunique()} FMA modes x {frame['kernel'].nunique()} kernels, "
             f"GroupNorm G = 2 on "
             f"{'x'.join(map(str, CHECK_SHAPE))} at the fast topology): {int(frame['passed'].sum())} "
             f"passed, {len(failed)} failed. A check passes when the variance and the mean are "
             f"within {BOUND_FACTOR:g} x the rule's a-priori bound of the exact reference, the "
             f"result is the same on a second run, and (fma \"separate\") it is bit for bit the "
             f"plain-Python replay of the same topology.", ""]
    worst = (frame.dropna(subset=["variance_error_over_bound"])
             .groupby(["fma", "kernel"], as_index=False)
             .agg(worst_variance_error_over_bound=("variance_error_over_bound", "max"),
                  worst_mean_error_over_bound=("mean_error_over_bound", "max"),
                  checks=("passed", "size"), passed=("passed", "sum")))
    lines += [report.markdown_table(worst), ""]
    if len(failed):
        shown = [column for column in ("fma", "input_dtype", "acc_dtype", "algorithm", "kernel",
                                       "reproducible", "replay_bitwise", "variance_error_over_bound",
                                       "mean_error_over_bound", "error") if column in failed]
        lines += ["Failed checks:", "", report.markdown_table(failed[shown].reset_index(drop=True)),
                  ""]
    return lines


def timing_section(rows):
    import pandas as pd
    from studies import report
    frame = pd.DataFrame(rows)
    lines = ["## Timings", "",
             f"Every rule at the fast topology `{fast_topology_text()}`, device arrays in and out. "
             "Cells: GB/s (share of the device-to-device copy's GB/s, measured on the same tensor "
             "in the same run); device time per call from CUDA events with the host's launch "
             "overhead hidden behind a hold kernel, median of "
             f"{BATCHES} batches of {CALLS_PER_BATCH} calls after {WARM_UP_CALLS} warm-up calls "
             "(module docstring of studies/gpu_check.py). Two-pass rules read the tensor twice.",
             ""]
    frame["cell"] = [f"{gbs:.0f} ({share:.2f})" for gbs, share in zip(frame["gbs"], frame["share"])]
    frame["column"] = frame["subset"] + " " + frame["layout"]
    for (shape, input_dtype), block in frame.groupby(["shape", "input_dtype"], sort=False):
        copies = block.drop_duplicates("layout")
        copy_text = ", ".join(f"{layout} {gbs:.0f} GB/s" for layout, gbs in
                              zip(copies["layout"], copies["copy_gbs"]))
        table = block.pivot(index="implementation", columns="column", values="cell")
        table = table[list(dict.fromkeys(block["column"]))].reset_index()
        lines += [f"### {shape}, {input_dtype} input (copy: {copy_text})", "",
                  report.markdown_table(table, {column: str for column in table.columns}), ""]
    latency = (frame.groupby("implementation", sort=False, as_index=False)
               .agg(median_latency_ms=("latency_ms", "median"), max_latency_ms=("latency_ms", "max")))
    lines += ["Latency of one synchronized call (launch overhead included), over all cells:", "",
              report.markdown_table(latency), ""]
    return lines


def targets_section(rows):
    import pandas as pd
    frame = pd.DataFrame(rows)
    ours = frame[frame["implementation"].str.startswith("numerics ")]
    below = ours[ours["share"] < TARGET_SHARE]
    lines = ["## Targets", "",
             f"- Share of copy bandwidth >= {TARGET_SHARE:g}: {len(ours) - len(below)} of {len(ours)} "
             "cells (rule x subset x layout x input x shape) reach it."]
    if len(below):
        worst = below.groupby("implementation")["share"].min().sort_values()
        lines.append("  Below it (lowest share per rule): " + ", ".join(
            f"{name.split(' ', 1)[1]} {share:.2f}" for name, share in worst.items()) + ".")
    keys = ["shape", "input_dtype", "layout", "subset"]
    torch_rows = frame[frame["implementation"].str.startswith("torch.")]
    if len(torch_rows):
        fastest_torch = torch_rows.groupby(keys, as_index=False)["device_ms"].min()
        compared = ours.merge(fastest_torch, on=keys, suffixes=("", "_torch"))
        slower = compared[compared["device_ms"] > compared["device_ms_torch"]]
        lines.append(f"- At least as fast as PyTorch's fastest statistics on the same tensor: "
                     f"{len(compared) - len(slower)} of {len(compared)} cells.")
        if len(slower):
            by_rule = slower.groupby("implementation").size()
            lines.append("  Slower cells per rule: " + ", ".join(
                f"{name.split(' ', 1)[1]} {count}" for name, count in by_rule.items()) + ".")
    else:
        lines.append("- PyTorch with CUDA is not installed here: no comparison.")
    unreproducible = ours[ours["reproducible"] == False]  # noqa: E712 (a column of bools)
    lines.append(f"- Bitwise reproducible (first and last timed call): "
                 f"{len(ours) - len(unreproducible)} of {len(ours)} cells.")
    return lines + [""]


def fast_topology_text():
    from numerics import gpu
    topology = gpu.TOPOLOGIES[gpu.FAST_TOPOLOGY]
    return f"{topology.name}: {topology.lanes} lanes, units of {topology.block} elements"


def render(device, correctness_rows, timing_rows):
    from studies import report
    stamp = report.provenance_stamp(report.provenance(seed=0, quick=False))
    versions = ", ".join(f"{name} {version}" for name, version in device.items()
                         if name not in ("gpu", "compute_capability", "driver") and version)
    lines = ["# GPU check", "",
             f"{device['gpu']} (compute capability {device['compute_capability']}), CUDA driver "
             f"{device['driver']}; {versions}.", "", f"*{stamp}*", ""]
    lines += correctness_section(correctness_rows)
    if timing_rows:
        lines += timing_section(timing_rows) + targets_section(timing_rows)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT_DIRECTORY)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes for the correctness checks (each compiles its kernels)")
    parser.add_argument("--quick", action="store_true",
                        help=f"time one small shape {QUICK_TIMING_SHAPES[0]} only")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    arguments = parser.parse_args(argv)
    if arguments.workers < 1:
        parser.error(f"--workers must be at least 1, got {arguments.workers}")
    device = gpu_or_exit()
    began = time.perf_counter()
    correctness_rows = correctness(arguments.workers)
    failures = sum(not row["passed"] for row in correctness_rows)
    print(f"correctness: {len(correctness_rows) - failures} of {len(correctness_rows)} checks "
          f"passed ({time.perf_counter() - began:.0f} s)", flush=True)
    shapes = QUICK_TIMING_SHAPES if arguments.quick else TIMING_SHAPES
    timing_rows = timings(shapes, include_torch=not arguments.no_torch)
    print(f"timings: {len(timing_rows)} cells ({time.perf_counter() - began:.0f} s)", flush=True)
    arguments.output.mkdir(parents=True, exist_ok=True)
    write_csv(arguments.output / "gpu_correctness.csv", correctness_rows)
    write_csv(arguments.output / "gpu_check.csv", timing_rows)
    from studies import report
    markdown = render(device, correctness_rows, timing_rows)
    report.write_text(arguments.output / "gpu_check.md", markdown)
    print(markdown)
    unreproducible = sum(row["reproducible"] is False for row in timing_rows)
    return 1 if failures or unreproducible else 0


if __name__ == "__main__":
    sys.exit(main())
