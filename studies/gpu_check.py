"""``make gpu-check``: the GPU kernels on a real GPU (``python -m studies.gpu_check [STEP]``).

The prepared device run (tools/gpu_run.py) calls the steps one by one, each in its own process and
time budget; ``all`` (the default) runs every step but the test suite in one process.

- ``correctness``: every kernel specialization: each rule x (input, accumulator) format pair x FMA
  mode x kernel (channels-first GroupNorm runs the segments kernel, channels-last the rows kernel)
  on a small tensor at the fast topology (several units per group): its variance and mean within
  the rule's a-priori bound of the exact reference (numerics.bounds, numerics.reference), in
  "separate" mode bit for bit the plain-Python replay (numerics.replay), the same bits on a second
  run and at every launch geometry of the profile (threads per CUDA block: the topology defines
  the result, the geometry must not change it). In worker processes: each compiles its kernels.
- ``timings``: every rule at its fast topology (numerics.gpu.FAST_TOPOLOGY) on the four subsets,
  both layouts, float32 and float16 input, the profile's shapes ((32, 256, 56, 56) and
  (8, 64, 224, 224) by default), device arrays in and out; PyTorch's CUDA statistics
  (torch.var_mean, torch.batch_norm_stats) on the same memory, timed the same way; a
  device-to-device copy of the tensor as the bandwidth yardstick. Every row's variance and mean
  are compared with the exact reference of the same tensor; each rule's result is also checked
  for the same bits on a last call and at the profile's other geometries.
- ``frameworks``: every framework of numerics.implementations that runs on the GPU here (PyTorch's
  BatchNorm, InstanceNorm, LayerNorm, GroupNorm and var_mean; Flax's BatchNorm, LayerNorm,
  InstanceNorm and GroupNorm in both variance modes; jax.nn.standardize) on the same values: the
  accuracy of their statistics against the exact reference with each one's ddof, and their time
  per call on the host clock (each call waits for the GPU, so launch and wait are included).
- ``report``: gpu_check.md from whatever the steps wrote (a step that did not finish is named).

How time is measured (CUDA events, warm-up, median). Each batch of calls is queued behind a
kernel that holds the GPU until the host has queued the whole batch, so the events time the GPU's
work back to back, not the host's launch overhead; ``device_ms`` is the median over batches of the
mean time per call. ``latency_ms`` is the median time of single calls, each synchronized: what one
call costs a caller, launch overhead included. The ``clock`` column says which clock timed a row.
GB/s = tensor bytes /
device time (a two-pass rule reads the tensor twice); the copy's GB/s counts bytes read and
written. ``share`` = GB/s over the copy's GB/s. The targets: share >= 0.8 for every rule, subset
and layout, no slower than PyTorch, the same bits across runs and geometries, within the bound.

Under numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1) only the smoke profile runs, to test this
code end to end: its times are the host's, the report says that nothing was measured on a GPU and
evaluates no target. Exits 1 if any check fails, 2 without a GPU.
"""
import argparse
import functools
import json
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parent.parent
OUTPUT_DIRECTORY = REPOSITORY / "reports" / "gpu"
#: the files of one run, all in one folder (the device tool brings back at most 8 files)
FILES = {"correctness": "gpu_correctness.parquet", "timings": "gpu_timings.parquet",
         "frameworks": "gpu_frameworks.parquet", "report": "gpu_check.md",
         "tests": "gpu_tests.xml", "run": "gpu_run.json"}

CASE_KEYS = ("fma", "input_dtype", "acc_dtype", "algorithm", "kernel", "layout", "ddof")
CHECK_LAYOUTS = (("segments", "NCHW"), ("rows", "NHWC"))
SUBSETS = (("batch", None), ("layer", None), ("instance", None), ("group", 32))
LAYOUTS = ("NCHW", "NHWC")
#: the "small constant" of the tests: numerics.bounds gives leading terms without constants
BOUND_FACTOR = 2.0
TARGET_SHARE = 0.8
SIMULATOR_NOTE = ("Not measured on a GPU: this run used numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1) "
                  "to test the prepared run end to end. Its times are the host's running Python, "
                  "no figure below is a GPU figure, and no GPU target is evaluated.")


@dataclass(frozen=True)
class Repeats:
    """How often the clock calls: warm-up calls, then batches of calls (median over batches)."""
    warm_up: int = 3
    batches: int = 7
    per_batch: int = 10


@dataclass(frozen=True)
class Profile:
    """The size of a run. ``cases``: indices into correctness_cases() (None: every one);
    ``geometries``: threads per CUDA block, the first is the one timed; ``rules``: None for all."""
    name: str
    check_shape: tuple
    cases: tuple | None
    geometries: tuple
    timing_shapes: tuple
    timing_inputs: tuple
    subsets: tuple
    rules: tuple | None
    repeats: Repeats
    #: the registry's frameworks are timed on the host clock, synchronized per call: fewer calls
    framework_repeats: Repeats = Repeats(1, 3, 3)


PROFILES = {
    # under the simulator: one check per kernel, a tensor of 512 elements, one call per timing
    "smoke": Profile("smoke", (2, 8, 4, 8), ("separate/float16/float32/welford/segments",
                                             "fused/float32/bfloat16/two_pass/rows"),
                     (32, 64), ((2, 8, 4, 8),), ("float32",), (("batch", None), ("group", 2)),
                     ("welford",), Repeats(0, 1, 1)),
    # a first look on a GPU: every check, one mid-sized shape
    "quick": Profile("quick", (2, 8, 32, 32), None, (256, 32, 1024), ((8, 64, 56, 56),),
                     ("float32", "float16"), SUBSETS, None, Repeats()),
    # every shape and check: fits the device run's budget on an H200 (docs/architecture.md,
    # section 8)
    "default": Profile("default", (2, 8, 32, 32), None, (256, 32, 1024),
                       ((32, 256, 56, 56), (8, 64, 224, 224)), ("float32", "float16"), SUBSETS,
                       None, Repeats()),
}


def device_description(profile):
    """The GPU (or the simulator, smoke profile only) and the package versions; exit 2 with a
    message saying what runs without a GPU."""
    from numba import config, cuda
    from importlib import metadata
    versions = {}
    for package in ("numba", "numba-cuda", "numpy", "torch", "jax", "jaxlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    if config.ENABLE_CUDASIM:
        if profile.name != "smoke":
            sys.exit("studies.gpu_check times a real GPU; under NUMBA_ENABLE_CUDASIM=1 only "
                     "--profile smoke runs (a test of this code, not a measurement). Unset it.")
        return {"gpu": "numba-cuda simulator (no GPU)", "simulator": True,
                "compute_capability": None, "driver": None, **versions}
    if not cuda.is_available():
        print("studies.gpu_check needs an NVIDIA GPU, and numba.cuda finds none on this machine. "
              "Run `make gpu-check PYTHON=python3` where one is; without one, `make "
              "test-gpu-simulator` runs the kernels under the simulator and `make gpu-compile` "
              "builds their PTX.", file=sys.stderr)
        sys.exit(2)
    from numba.cuda.cudadrv import driver
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    return {"gpu": name, "simulator": False,
            "compute_capability": "%d.%d" % device.compute_capability,
            "driver": ".".join(map(str, driver.get_version())), **versions}


# ---- correctness ----------------------------------------------------------------------------------

def correctness_cases(profile=None):
    """(fma, input format, accumulator format, rule, kernel, layout, ddof) of every check, or of
    the profile's."""
    from numerics import ALGORITHMS, gpu, targets
    cases = []
    for fma in targets.FMA_MODES:
        for input_format, acc_format in gpu.FORMAT_PAIRS:
            for index, algorithm in enumerate(ALGORITHMS):
                for kernel, layout in CHECK_LAYOUTS:
                    cases.append((fma, input_format, acc_format, algorithm, kernel, layout,
                                  index % 2))
    if profile is None or profile.cases is None:
        return cases
    return [case for case in cases if "/".join(map(str, case[:5])) in profile.cases]


def check_input(input_format, layout, seed, shape):
    """Mean 3, standard deviation 1: every group has a spread, no format overflows."""
    from numerics import data
    x = data.generate(shape, input_format, "normal", mean=3.0, std=1.0, seed=seed)
    return stored(x, layout)


def stored(x, layout):
    """(N, C, *spatial) values as stored in ``layout``."""
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)) if layout == "NHWC" else x


def error_bounds(x, norm, groups, layout, algorithms, acc_format, topology):
    """{rule: (variance bound, mean bound)} per group: BOUND_FACTOR x each rule's a-priori bound
    (numerics.bounds, with the topology's summation depth), input rounding included."""
    import numerics
    from numerics import bounds, precision, reference
    view = numerics.canonical_view(x.shape, norm, groups, layout)
    where = dict(groups=groups, layout=layout)
    kappa = reference.condition_number(x, norm, **where)
    shifted_kappa = (reference.shifted_condition_number(x, norm, **where)
                     if "shifted" in algorithms else None)
    u = numerics.unit_roundoff(acc_format)
    input_format = precision.format_name(x.dtype, "x")
    narrowed = precision.SIGNIFICAND_BITS[input_format] > precision.SIGNIFICAND_BITS[acc_format]
    values = np.moveaxis(np.asarray(x, np.float64).reshape(view.view_shape), 2, 1)
    values = values.reshape(view.group_count, view.group_size)
    # the shifted rule's mean is d + sum(x - d)/n: its summation condition counts |x - d| too
    mean_condition = ((np.abs(values).sum(axis=1) + np.abs(values - values[:, :1]).sum(axis=1))
                      / np.abs(values.sum(axis=1))).reshape(view.stats_shape)
    mean_bound = BOUND_FACTOR * (bounds.mean_bound(view.group_size, mean_condition, u,
                                                   topology.lanes, topology.block)
                                 + (u if narrowed else 0.0) * mean_condition)
    return {algorithm: (BOUND_FACTOR * bounds.variance_bound(
        algorithm, view.group_size, shifted_kappa if algorithm == "shifted" else kappa, u,
        topology.lanes, topology.block, input_rounding_u=u if narrowed else 0.0, data_kappa=kappa),
        mean_bound) for algorithm in algorithms}


def check_case(case, seed, shape, geometries):
    """One row of the correctness table (errors are rows too: the run goes on)."""
    import numerics
    from numerics import gpu, metrics, reference, replay
    fma, input_format, acc_format, algorithm, kernel, layout, ddof = case
    row = dict(zip(CASE_KEYS, case))
    try:
        x = check_input(input_format, layout, seed, shape)
        topology = gpu.TOPOLOGIES[gpu.FAST_TOPOLOGY]
        options = dict(groups=2, layout=layout, algorithm=algorithm, ddof=ddof,
                       acc_dtype=acc_format, topology=topology)
        first, second, *others = [
            numerics.moments(x, "group", device="cuda", fma=fma, threads_per_block=threads,
                             **options) for threads in (geometries[0], *geometries)]
        row["kernel_ran"] = first.run.kernel
        row["reproducible"] = same_results(first, second)
        row["geometry_bitwise"] = all(same_results(first, other) for other in others)
        if fma == "separate":
            replay_mean, replay_var = replay.moments(x, "group", **options)
            row["replay_bitwise"] = bool(same_bits(first.var, replay_var)
                                         and same_bits(first.mean, replay_mean))
        variance_bound, mean_bound = error_bounds(x, "group", 2, layout, [algorithm], acc_format,
                                                  topology)[algorithm]
        exact_mean, exact_var = reference.moments(x, "group", groups=2, layout=layout, ddof=ddof)
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


def same_results(a, b):
    """Same bits of mean and variance; device arrays are copied to the host."""
    def host(array):
        return array if isinstance(array, np.ndarray) else array.copy_to_host()
    return bool(same_bits(host(a.var), host(b.var)) and same_bits(host(a.mean), host(b.mean)))


def passed(row):
    return ("error" not in row and row["reproducible"] and row["geometry_bitwise"]
            and row.get("replay_bitwise", True)
            and row["variance_error_over_bound"] <= 1 and row["mean_error_over_bound"] <= 1)


def check_share(cases, shape, geometries):
    """A worker: one process's share of the cases (cases of one format pair share kernels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [check_case(case, index, shape, geometries) for index, case in cases]


def correctness(profile, workers):
    """Every row of the correctness table, in correctness_cases() order."""
    every_case = correctness_cases()
    chosen = correctness_cases(profile)
    by_formats = {}
    for case in chosen:
        by_formats.setdefault(case[:3], []).append((every_case.index(case), case))
    shares = list(by_formats.values())
    share = functools.partial(check_share, shape=profile.check_shape, geometries=profile.geometries)
    if workers == 1:
        return [row for cases in shares for row in share(cases)]
    with ProcessPoolExecutor(min(workers, len(shares)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = [row for rows in pool.map(share, shares) for row in rows]
    return sorted(rows, key=lambda row: every_case.index(tuple(row[key] for key in CASE_KEYS)))


# ---- clocks --------------------------------------------------------------------------------------

class DeviceClock:
    """Times a call on the GPU (module docstring): ``hold`` keeps the GPU busy while the host
    queues a batch, ``events`` makes start/end event pairs, ``synchronize`` waits for the GPU."""

    def __init__(self, hold, events, synchronize, repeats=Repeats(), label="cuda events"):
        self.hold, self.events, self.synchronize = hold, events, synchronize
        self.repeats, self.label = repeats, label

    def time(self, call):
        """(device ms per call, latency ms per call): medians over batches and single calls."""
        for _ in range(self.repeats.warm_up):
            call()
        self.synchronize()
        latencies = []
        for _ in range(self.repeats.per_batch):
            began = time.perf_counter()
            call()
            self.synchronize()
            latencies.append((time.perf_counter() - began) * 1e3)
        # the hold must outlast the host's queuing of a batch
        hold_ms = max(20.0, 3 * self.repeats.per_batch * statistics.median(latencies))
        per_call = []
        for _ in range(self.repeats.batches):
            start, end = self.events()
            self.hold(hold_ms)
            start.record()
            for _ in range(self.repeats.per_batch):
                call()
            end.record()
            end.synchronize()
            per_call.append(start.elapsed_time(end) / self.repeats.per_batch)
        return statistics.median(per_call), statistics.median(latencies)


class HostEvent:
    """An event on the host clock, for work without CUDA events (JAX; the simulator, whose
    events record no time): ``record`` waits for the device work queued so far, then reads the
    clock."""

    def __init__(self, synchronize):
        self.synchronize, self.at = synchronize, None

    def record(self):
        self.synchronize()
        self.at = time.perf_counter()

    def elapsed_time(self, end):
        return (end.at - self.at) * 1e3


def host_clock(synchronize, repeats, label):
    def events():
        return HostEvent(synchronize), HostEvent(synchronize)
    return DeviceClock(lambda milliseconds: None, events, synchronize, repeats, label)


def numba_clock(repeats):
    from numba import config, cuda
    if config.ENABLE_CUDASIM:
        return host_clock(cuda.synchronize, repeats, "host clock (simulator)")

    @cuda.jit
    def hold(nanoseconds):
        if cuda.grid(1) == 0:
            for _ in range(nanoseconds // 1000):
                cuda.nanosleep(1000)

    def hold_for(milliseconds):
        hold[1, 1](int(milliseconds * 1e6))

    return DeviceClock(hold_for, lambda: (cuda.event(), cuda.event()), cuda.synchronize, repeats)


def torch_clock(torch, repeats):
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

    return DeviceClock(hold_for, events, torch.cuda.synchronize, repeats)


# ---- the frameworks' statistics -------------------------------------------------------------------

def grouping(storage_shape, norm, groups, layout):
    """(view shape, reduced axes) of a 4-D tensor in storage order ((N, C, H, W) for NCHW,
    (N, H, W, C) for NHWC) whose reduction over the axes gives the statistics of ``norm``, in the
    order of numerics.canonical_view's statistics shape."""
    if norm == "group":
        n, c = storage_shape[0], storage_shape[1 if layout == "NCHW" else -1]
        if layout == "NHWC":
            return (n, -1, groups, c // groups), (1, 3)
        return (n, groups, -1), (2,)
    axes = {("batch", "NCHW"): (0, 2, 3), ("batch", "NHWC"): (0, 1, 2),
            ("layer", "NCHW"): (1, 2, 3), ("layer", "NHWC"): (1, 2, 3),
            ("instance", "NCHW"): (2, 3), ("instance", "NHWC"): (1, 2)}[norm, layout]
    return tuple(storage_shape), axes


def torch_statistics(torch, t, norm, groups, layout):
    """(label, call) of PyTorch's statistics of tensor ``t`` in storage order, each call returning
    (variance, mean) of the groups (torch.batch_norm_stats: eps 0, variance = 1/invstd^2)."""
    view_shape, dims = grouping(t.shape, norm, groups, layout)
    grouped = t.view(view_shape)
    calls = [("torch.var_mean", lambda: torch.var_mean(grouped, dim=dims, correction=0))]
    if norm == "batch" and hasattr(torch, "batch_norm_stats"):
        logical = t.permute(0, 3, 1, 2) if layout == "NHWC" else t  # N, C, H, W either way

        def batch_norm_stats():
            mean, inverse_std = torch.batch_norm_stats(logical, 0.0)
            return 1.0 / (inverse_std.double() ** 2), mean
        calls.append(("torch.batch_norm_stats", batch_norm_stats))
    return calls


def gpu_torch(wanted):
    """PyTorch, where it is installed with CUDA (and wanted), else None."""
    if not wanted:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def registry_entries(norm, layout, input_format, device="cuda"):
    """The frameworks of numerics.implementations that run this subset, layout and input format
    on ``device`` here (on the GPU: PyTorch's and JAX/Flax's layers and reductions)."""
    from numerics import implementations
    return [item for item in implementations.select(kind="framework", norm=norm, layout=layout)
            if input_format in item.dtypes and device in item.devices()]


# ---- timings --------------------------------------------------------------------------------------

def timing_seed(shape):
    """One tensor per shape: its float16 and float32 versions round the same float64 draws."""
    from studies import report
    return report.seed_for(0, "gpu_check", *shape)


def timing_input(shape, input_format, layout):
    """The timed tensor (mean 3, standard deviation 1) as stored in ``layout``."""
    return check_input(input_format, layout, timing_seed(shape), shape)


def exact_and_bounds(shape, input_format, layout, norm, groups, algorithms, ddofs):
    """({ddof: (exact mean, exact variance)}, {rule: bounds}) of one timed tensor and subset (a
    worker's task)."""
    from numerics import gpu, reference
    x = timing_input(shape, input_format, layout)
    exact = {ddof: reference.moments(x, norm, groups=groups, layout=layout, ddof=ddof)
             for ddof in ddofs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rule_bounds = error_bounds(x, norm, groups, layout, algorithms, "float32",
                                   gpu.TOPOLOGIES[gpu.FAST_TOPOLOGY]) if algorithms else {}
    return exact, rule_bounds


def timing_cells(profile):
    """(shape, input format, layout, norm, groups) of every timed tensor and subset."""
    return [(shape, input_format, layout, norm, groups) for shape in profile.timing_shapes
            for input_format in profile.timing_inputs for layout in LAYOUTS
            for norm, groups in profile.subsets]


def rules_of(profile):
    import numerics
    return list(profile.rules or numerics.ALGORITHMS)


def timing_row(common, subset, implementation, passes, device_ms, latency_ms, clock):
    gbs = common["bytes"] / device_ms / 1e6
    copy_gbs = common.get("copy_gbs")
    return {**common, "subset": subset, "implementation": implementation, "passes": passes,
            "clock": clock, "device_ms": device_ms, "latency_ms": latency_ms, "gbs": gbs,
            "share": gbs / copy_gbs if copy_gbs else float("nan")}


def rule_rows(clock, device_x, common, cell, profile):
    """Every rule's timing row, with its results (``statistics``) and its bit checks."""
    import numerics
    from numerics import gpu
    norm, groups, layout = cell
    rows = []
    for algorithm in rules_of(profile):
        def call(threads=profile.geometries[0]):
            return numerics.moments(device_x, norm, groups=groups, layout=layout,
                                    algorithm=algorithm,
                                    topology=gpu.TOPOLOGIES[gpu.FAST_TOPOLOGY],
                                    device="cuda", threads_per_block=threads)
        first = call()
        device_ms, latency_ms = clock.time(call)
        last = call()
        others = [call(threads) for threads in profile.geometries[1:]]
        row = timing_row(common, common["subset"], f"numerics {algorithm}",
                         numerics.ALGORITHMS[algorithm].passes, device_ms, latency_ms, clock.label)
        row.update(reproducible=same_results(first, last),
                   geometry_bitwise=all(same_results(first, other) for other in others),
                   algorithm=algorithm,
                   statistics=(first.var.copy_to_host(), first.mean.copy_to_host()))
        rows.append(row)
    return rows


def torch_rows(torch, clock, device_x, common, cell):
    """PyTorch's statistics on the same device memory, timed like the rules (CUDA events behind
    a hold kernel): the comparison of the speed target."""
    norm, groups, layout = cell
    rows = []
    same_memory = torch.as_tensor(device_x, device="cuda")
    for label, call in torch_statistics(torch, same_memory, norm, groups, layout):
        device_ms, latency_ms = clock.time(call)
        var, mean = call()
        rows.append({**timing_row(common, common["subset"], label, 1, device_ms, latency_ms,
                                  clock.label), "ddof": 0,
                     "statistics": (var.double().cpu().numpy(), mean.double().cpu().numpy())})
    return rows


def registry_rows(host_x, common, cell, repeats, device="cuda"):
    """Every registry framework's row: host-timed synchronized calls (each entry's ``call`` waits
    for the GPU), its statistics, its ddof. A failing entry is a row with its error."""
    norm, groups, layout = cell
    rows = []
    for item in registry_entries(norm, layout, common["input_dtype"], device):
        row = {**common, "implementation": item.name, "ddof": item.ddof,
               "exposes_variance": item.exposes_variance}
        try:
            prepared = item.prepare(host_x, norm, groups, layout, device)
            clock = host_clock(lambda: None, repeats, "host clock, synchronized calls")
            device_ms, latency_ms = clock.time(prepared.call)
            mean, var = prepared.finish(prepared.call())
            row.update(timing_row(common, common["subset"], item.name, 1, device_ms, latency_ms,
                                  clock.label), statistics=(var, mean))
        except Exception as error:  # an entry that cannot run is a finding, not the end
            row["error"] = f"{type(error).__name__}: {error}"[:300]
        rows.append(row)
    return rows


def attach_accuracy(rows, exact):
    """Each row's worst relative error of the variance and the mean over the groups, against the
    exact reference of the same tensor with the row's ddof; a rule's also against its bound."""
    from numerics import metrics
    for row in rows:
        if "statistics" not in row:
            continue
        var, mean = row.pop("statistics")
        by_ddof, rule_bounds = exact[row["shape"], row["input_dtype"], row["layout"],
                                     row["subset"]]
        exact_mean, exact_var = by_ddof[row.get("ddof", 0)]
        var_error = metrics.relative_error(np.reshape(var, exact_var.shape), exact_var)
        mean_error = metrics.relative_error(np.reshape(mean, exact_mean.shape), exact_mean)
        row["var_max_relative_error"] = float(np.max(var_error))
        row["mean_max_relative_error"] = float(np.max(mean_error))
        algorithm = row.pop("algorithm", None)
        if algorithm is not None:
            variance_bound, mean_bound = rule_bounds[algorithm]
            row["within_bound"] = bool(np.all(var_error <= variance_bound)
                                       and np.all(mean_error <= mean_bound))
    return rows


def exact_references(profile, workers, algorithms, ddofs):
    """A function returning {(shape text, input, layout, subset): exact_and_bounds(...)} of every
    timed cell, computed in worker processes while the GPU is timed."""
    from studies import report
    cells = timing_cells(profile)
    keys = [("x".join(map(str, shape)), input_format, layout, report.subset_label(norm, groups))
            for shape, input_format, layout, norm, groups in cells]
    if workers == 1:
        return lambda: {key: exact_and_bounds(*cell, algorithms, ddofs)
                        for key, cell in zip(keys, cells)}
    pool = ProcessPoolExecutor(min(workers, len(cells)),
                               mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(exact_and_bounds, *cell, algorithms, ddofs) for cell in cells]

    def collect():
        try:
            return {key: future.result() for key, future in zip(keys, futures)}
        finally:
            pool.shutdown()
    return collect


def timed_tensors(profile):
    """(common row fields, host tensor, device tensor, copy GB/s) of every timed tensor, the copy
    measured on the device tensor itself; each device tensor is freed before the next."""
    from numba import cuda
    clock = numba_clock(profile.repeats)
    for shape in profile.timing_shapes:
        for input_format in profile.timing_inputs:
            for layout in LAYOUTS:
                host_x = timing_input(shape, input_format, layout)
                device_x = cuda.to_device(host_x)
                copy = cuda.device_array_like(device_x)
                copy_ms, _ = clock.time(lambda: copy.copy_to_device(device_x))
                common = {"shape": "x".join(map(str, shape)), "input_dtype": input_format,
                          "layout": layout, "bytes": device_x.nbytes,
                          "copy_gbs": 2 * device_x.nbytes / copy_ms / 1e6}
                yield common, host_x, device_x, clock
                del device_x, copy


def timings(profile, include_torch, workers):
    """Every rule's timing rows, and PyTorch's on the same memory, with their accuracy."""
    from studies import report
    exact = exact_references(profile, workers, rules_of(profile), (0,))
    torch = gpu_torch(include_torch)
    torch_timer = torch_clock(torch, profile.repeats) if torch is not None else None
    rows = []
    for common, host_x, device_x, clock in timed_tensors(profile):
        for norm, groups in profile.subsets:
            common["subset"] = report.subset_label(norm, groups)
            cell = (norm, groups, common["layout"])
            rows += rule_rows(clock, device_x, common, cell, profile)
            if torch is not None:
                rows += torch_rows(torch, torch_timer, device_x, common, cell)
    return attach_accuracy(rows, exact())


def frameworks(profile, workers, output):
    """The registry's frameworks on the GPU (numerics.implementations), on the timed tensors'
    values: their statistics against the exact reference (each with its ddof) and their time per
    synchronized call. The table is rewritten after every tensor, so a run stopped at its time limit
    keeps the tensors it finished, whole (the report counts them)."""
    from studies import report
    # JAX takes most of the GPU's memory at start unless told not to
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    exact = exact_references(profile, workers, (), (0, 1))
    rows, finished = [], None
    for shape in profile.timing_shapes:
        for input_format in profile.timing_inputs:
            for layout in LAYOUTS:
                host_x = timing_input(shape, input_format, layout)
                common = {"shape": "x".join(map(str, shape)), "input_dtype": input_format,
                          "layout": layout, "bytes": host_x.nbytes}
                for norm, groups in profile.subsets:
                    common["subset"] = report.subset_label(norm, groups)
                    rows += registry_rows(host_x, dict(common), (norm, groups, layout),
                                          profile.framework_repeats)
                finished = finished or exact()
                write_table(output / FILES["frameworks"], attach_accuracy(rows, finished), profile)
    return rows


# ---- report ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stamped:
    """What report.write_parquet reads from a run: the provenance record it stamps a file with."""
    provenance: dict


def write_table(path, rows, profile):
    """``rows`` as parquet (report.write_parquet: atomic, the run's provenance in its attrs)."""
    import pandas as pd
    from studies import report
    frame = pd.DataFrame(rows)
    # a column with gaps (an entry that failed has no timings) goes to parquet as nulls
    frame = frame.astype(object).where(frame.notna(), None)
    report.write_parquet(frame, path, Stamped(report.provenance(seed=0, profile=profile.name)))


def read_rows(path):
    """The rows of a table this module wrote (None if the step wrote none)."""
    import pandas as pd
    if not Path(path).exists():
        return None
    return pd.read_parquet(path).to_dict("records")


def test_results(path):
    """{"tests", "failures", "errors", "skipped", "failed": [(name, message)]} of a JUnit XML
    file (pytest --junitxml), or None if there is none."""
    import xml.etree.ElementTree as ElementTree
    if not Path(path).exists():
        return None
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {key: sum(int(suite.get(key, 0)) for suite in suites)
              for key in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        for problem in list(case.findall("failure")) + list(case.findall("error")):
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            failed.append((f"{case.get('classname')}::{case.get('name')}",
                           message[0][:200] if message else ""))
    return {**totals, "failed": failed}


def truthy(value):
    """A check's value as read back: True (None or NaN, the gap of a failed row, is not)."""
    return value is not None and bool(value == 1)


def run_section(run):
    from studies import report
    import pandas as pd
    choice = run.get("numba_cuda", {})
    lines = ["## The run", "",
             f"Profile `{run.get('profile')}`, {run.get('seconds', 0):.0f} s in all. numba-cuda: "
             f"pinned {choice.get('pinned')}, on the machine {choice.get('installed')}, used "
             f"{choice.get('used')} ({choice.get('reason')}).", ""]
    steps = pd.DataFrame(run.get("steps", []))
    if len(steps):
        lines += [report.markdown_table(steps), ""]
    return lines


def tests_section(results):
    lines = ["## The GPU test suite on this machine", ""]
    if results is None:
        return lines + ["No result: the step did not run or did not finish (see the run).", ""]
    passed_count = (results["tests"] - results["failures"] - results["errors"]
                    - results["skipped"])
    lines += [f"`pytest tests/gpu`: {results['tests']} tests, {passed_count} passed, "
              f"{results['failures']} failed, {results['errors']} errors, "
              f"{results['skipped']} skipped.", ""]
    lines += [f"- `{name}`: {message}" for name, message in results["failed"][:30]]
    return lines + [""]


def correctness_section(rows, shape_text):
    import pandas as pd
    from studies import report
    frame = pd.DataFrame(rows)
    frame["passed"] = frame["passed"].map(truthy)
    failed = frame[~frame["passed"]]
    lines = ["## Correctness of every specialization", "",
             f"{len(frame)} checks ({frame['algorithm'].nunique()} rules x "
             f"{len(frame[['input_dtype', 'acc_dtype']].drop_duplicates())} format pairs x "
             f"{frame['fma'].nunique()} FMA modes x {frame['kernel'].nunique()} kernels, "
             f"GroupNorm G = 2 on {shape_text} at the fast topology): {int(frame['passed'].sum())} "
             f"passed, {len(failed)} failed. A check passes when the variance and the mean are "
             f"within {BOUND_FACTOR:g} x the rule's a-priori bound of the exact reference, the "
             f"result is the same on a second run and at every launch geometry, and (fma "
             f"\"separate\") it is bit for bit the plain-Python replay of the same topology.", ""]
    worst = (frame.dropna(subset=["variance_error_over_bound"])
             .groupby(["fma", "kernel"], as_index=False)
             .agg(worst_variance_error_over_bound=("variance_error_over_bound", "max"),
                  worst_mean_error_over_bound=("mean_error_over_bound", "max"),
                  checks=("passed", "size"), passed=("passed", "sum")))
    lines += [report.markdown_table(worst), ""]
    if len(failed):
        shown = [column for column in ("fma", "input_dtype", "acc_dtype", "algorithm", "kernel",
                                       "reproducible", "geometry_bitwise", "replay_bitwise",
                                       "variance_error_over_bound", "mean_error_over_bound",
                                       "error") if column in failed]
        lines += ["Failed checks:", "", report.markdown_table(failed[shown].reset_index(drop=True)),
                  ""]
    return lines


def pivot_tables(frame, cell, title):
    """One markdown table per (shape, input): implementations x (subset, layout) of ``cell``."""
    from studies import report
    frame = frame.assign(cell=[cell(row) for row in frame.to_dict("records")],
                         column=frame["subset"] + " " + frame["layout"])
    lines = []
    for (shape, input_dtype), block in frame.groupby(["shape", "input_dtype"], sort=False):
        table = block.pivot(index="implementation", columns="column", values="cell")
        table = table[list(dict.fromkeys(block["column"]))].reset_index()
        lines += [title(shape, input_dtype, block), "",
                  report.markdown_table(table, {column: str for column in table.columns}), ""]
    return lines


def timing_section(rows, profile, simulator):
    import pandas as pd
    from studies import report
    frame = pd.DataFrame(rows)
    repeats = profile.repeats

    def title(shape, input_dtype, block):
        copies = block.drop_duplicates("layout")
        copy_text = ", ".join(f"{layout} {gbs:.0f} GB/s" for layout, gbs in
                              zip(copies["layout"], copies["copy_gbs"]))
        return f"### {shape}, {input_dtype} input (copy: {copy_text})"

    if simulator:
        # the simulator's times are Python's: say which cells ran, show no figure
        return ["## Timings (not measured on a GPU)", "", "Cells that ran under the simulator "
                "(the timing code end to end; no time or bandwidth is shown):", ""] + pivot_tables(
                    frame, lambda row: "ran",
                    lambda shape, input_dtype, block: f"### {shape}, {input_dtype} input")
    heading = "## Timings"
    lines = [heading, "",
             f"Every rule at the fast topology `{fast_topology_text()}`, device arrays in and out. "
             "Cells: GB/s (share of the device-to-device copy's GB/s, measured on the same tensor "
             "in the same run); device time per call from CUDA events with the host's launch "
             f"overhead hidden behind a hold kernel, median of {repeats.batches} batches of "
             f"{repeats.per_batch} calls after {repeats.warm_up} warm-up calls (JAX: host clock; "
             "module docstring of studies/gpu_check.py). Two-pass rules read the tensor twice.", ""]
    lines += pivot_tables(frame, lambda row: f"{row['gbs']:.0f} ({row['share']:.2f})", title)
    latency = (frame.groupby("implementation", sort=False, as_index=False)
               .agg(median_latency_ms=("latency_ms", "median"), max_latency_ms=("latency_ms", "max")))
    lines += ["Latency of one synchronized call (launch overhead included), over all cells:", "",
              report.markdown_table(latency), ""]
    return lines


def accuracy_section(rows):
    import pandas as pd
    from studies import report
    frame = pd.DataFrame(rows)
    lines = ["## Accuracy on the timed tensors", "",
             "Worst relative error of the variance over the groups against the exact variance of "
             "the stored values (numerics.reference), population variance (ddof 0); float32 "
             "accumulation for every rule. torch.batch_norm_stats returns 1/std: its variance is "
             "recovered as 1/invstd^2 in float64, which adds a few float32 units.", ""]
    lines += pivot_tables(frame, lambda row: report.format_number(row["var_max_relative_error"]),
                          lambda shape, input_dtype, block: f"### {shape}, {input_dtype} input")
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
    for column, text in (("reproducible", "Bitwise reproducible (first and last timed call)"),
                         ("geometry_bitwise", "The same bits at every launch geometry"),
                         ("within_bound", "Within the rule's bound of the exact reference")):
        if column in ours:
            good = int(ours[column].map(truthy).sum())
            lines.append(f"- {text}: {good} of {len(ours)} cells.")
    return lines + [""]


def fast_topology_text():
    from numerics import gpu
    topology = gpu.TOPOLOGIES[gpu.FAST_TOPOLOGY]
    return f"{topology.name}: {topology.lanes} lanes, units of {topology.block} elements"


def render(device, profile, correctness_rows, timing_rows, run=None, tests=None,
           framework_rows=None):
    """gpu_check.md. Sections whose step wrote nothing say so; a simulator run claims no GPU
    figure and evaluates no target."""
    from studies import report
    header = report.provenance_header(report.provenance(seed=0, profile=profile.name))
    versions = ", ".join(f"{name} {version}" for name, version in device.items()
                         if name not in ("gpu", "compute_capability", "driver", "simulator")
                         and version)
    simulator = bool(device.get("simulator"))
    where = (device["gpu"] if simulator else f"{device['gpu']} (compute capability "
             f"{device['compute_capability']}), CUDA driver {device['driver']}")
    lines = ["# GPU check", ""] + ([f"**{SIMULATOR_NOTE}**", ""] if simulator else [])
    lines += [f"{where}; {versions}.", "", header, ""]
    if run is not None:
        lines += run_section(run) + tests_section(tests)
    missing = "No result: the step did not run or did not finish (see the run)."
    lines += (correctness_section(correctness_rows, "x".join(map(str, profile.check_shape)))
              if correctness_rows else ["## Correctness of every specialization", "", missing, ""])
    if timing_rows:
        lines += timing_section(timing_rows, profile, simulator) + accuracy_section(timing_rows)
    else:
        lines += ["## Timings", "", missing, ""]
    lines += frameworks_section(framework_rows, missing)
    if simulator:
        lines += ["## Targets", "", "Not evaluated: nothing here was measured on a GPU.", ""]
    elif timing_rows:
        lines += targets_section(timing_rows)
    return "\n".join(lines)


def frameworks_section(rows, missing):
    """The registry's frameworks on the GPU: time per synchronized call and accuracy."""
    import pandas as pd
    lines = ["## The frameworks' own statistics on the GPU", ""]
    if rows is None:
        return lines + [missing, ""]
    if not rows:
        return lines + ["No framework of numerics.implementations runs on a GPU here.", ""]
    frame = pd.DataFrame(rows)
    failed = frame[frame["error"].notna()] if "error" in frame else frame.iloc[:0]
    ran = frame.drop(failed.index)
    recovered = sorted(set(ran.loc[~ran["exposes_variance"].map(truthy), "implementation"]))
    lines += [f"{len(ran)} runs of {frame['implementation'].nunique()} implementations "
              "(numerics.implementations) on the timed tensors' values. Cells: milliseconds per "
              "call on the host clock, each call synchronized (launch and wait included: not "
              "comparable with the device times above) / worst relative error of the variance "
              "against the exact variance with the implementation's ddof. Variances recovered "
              "from the layer's output: " + (", ".join(recovered) or "none") + ".", ""]
    if len(ran):
        lines += pivot_tables(ran, lambda row: f"{row['device_ms']:.3g} ms / "
                              f"{row['var_max_relative_error']:.1e}",
                              lambda shape, input_dtype, block: f"### {shape}, {input_dtype} input")
    lines += [f"- `{row['implementation']}` {row['subset']} {row['layout']} {row['input_dtype']}: "
              f"{row['error']}" for row in failed.to_dict("records")[:20]]
    return lines + [""]


def failures(correctness_rows, timing_rows):
    """How many checks failed (a rule's timed cell fails on a bit or bound check)."""
    failed = sum(not truthy(row["passed"]) for row in correctness_rows or [])
    for row in timing_rows or []:
        if str(row["implementation"]).startswith("numerics "):
            failed += not all(truthy(row.get(key)) for key in
                              ("reproducible", "geometry_bitwise", "within_bound"))
    return failed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", nargs="?", default="all",
                        choices=("all", "correctness", "timings", "frameworks", "report"))
    parser.add_argument("--profile", choices=tuple(PROFILES), default="default")
    parser.add_argument("--output", type=Path, default=Path(os.environ.get("OUT") or
                                                            OUTPUT_DIRECTORY),
                        help="folder of every file of the run ($OUT when set, else reports/gpu)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for the correctness checks and exact references (default: "
                             "1 for the smoke profile, else one per CPU up to 12)")
    parser.add_argument("--no-frameworks", action="store_true",
                        help="leave PyTorch and the registry's frameworks out")
    arguments = parser.parse_args(argv)
    profile = PROFILES[arguments.profile]
    if arguments.workers is None:
        arguments.workers = 1 if profile.name == "smoke" else min(12, os.cpu_count() or 1)
    if arguments.workers < 1:
        parser.error(f"--workers must be at least 1, got {arguments.workers}")
    device = device_description(profile)
    output = arguments.output
    output.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    if arguments.step in ("all", "correctness"):
        rows = correctness(profile, arguments.workers)
        write_table(output / FILES["correctness"], rows, profile)
        print(f"correctness: {sum(truthy(row['passed']) for row in rows)} of {len(rows)} checks "
              f"passed ({time.perf_counter() - began:.0f} s)", flush=True)
    if arguments.step in ("all", "timings"):
        rows = timings(profile, not arguments.no_frameworks, arguments.workers)
        write_table(output / FILES["timings"], rows, profile)
        print(f"timings: {len(rows)} cells ({time.perf_counter() - began:.0f} s)", flush=True)
    if arguments.step in ("all", "frameworks") and not arguments.no_frameworks:
        rows = frameworks(profile, arguments.workers, output)
        write_table(output / FILES["frameworks"], rows, profile)
        print(f"frameworks: {len(rows)} rows ({time.perf_counter() - began:.0f} s)", flush=True)
    correctness_rows = read_rows(output / FILES["correctness"])
    timing_rows = read_rows(output / FILES["timings"])
    if arguments.step in ("all", "report"):
        run_path = output / FILES["run"]
        run = json.loads(run_path.read_text()) if run_path.exists() else None
        from studies import report
        markdown = render(device, profile, correctness_rows, timing_rows, run,
                          test_results(output / FILES["tests"]),
                          read_rows(output / FILES["frameworks"]))
        report.write_text(output / FILES["report"], markdown)
        print(markdown)
    if arguments.step == "report":
        return 0  # the report's findings are the steps' exit codes
    checked = {"correctness": (correctness_rows, None), "timings": (None, timing_rows)}
    return 1 if failures(*checked.get(arguments.step, (correctness_rows, timing_rows))) else 0


if __name__ == "__main__":
    sys.exit(main())
