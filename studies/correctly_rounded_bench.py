"""Throughput of ``algorithm="correctly_rounded"`` (numerics.correctly_rounded) against a streaming
read of the same array in the same run: ``python -m studies.correctly_rounded_bench`` prints the
table that ``throughput_table()`` returns (for ``make bench``).

Method: for each shape, layout and thread count, the rule, the default rule ("welford", its
float32 accumulator) and the streaming read
(studies.performance.read_seconds: vector loads and adds, split over the threads) alternate on two
rotating float32 tensors larger than the L3 cache, each timed ``repetitions`` times after an
untimed first call; the share is the rule's median throughput over the read's median throughput,
both in elements per second of the same tensors. A benchmark reports; it never fails on seconds.

Where the time goes, measured in the same turns: the rule's three parts run alone on the same
tensors (numerics.correctly_rounded: the fast float64 sums, their certification, the exact path
of the groups left undecided), and the fast sums again on a slice of the tensor that stays in the
cache (``IN_CACHE_ELEMENTS``), which tells arithmetic from memory. ``cause`` states, for a cell
under the target, the parts that take the rule's time beyond the read's, largest first.
"""
import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pandas as pd

import numerics
from numerics import correctly_rounded
from studies.performance import read_seconds

#: (norm, groups, shape, layout): the issue's CNN tensor in both layouts, and LayerNorm rows
SHAPES = (("batch", None, (32, 256, 56, 56), "NCHW"), ("batch", None, (32, 256, 56, 56), "NHWC"),
          ("instance", None, (32, 256, 56, 56), "NCHW"), ("layer", None, (4096, 4096), "NCHW"))
#: the rule timed beside it on the same tensors: numerics.moments' default
DEFAULT_ALGORITHM = "welford"
SMOKE_SHAPES = (("batch", None, (4, 8, 16, 16), "NCHW"), ("layer", None, (64, 256), "NCHW"))
#: the fast sums "in cache" run on the leading samples of the tensor, at most this many elements
#: (8 MiB of float32: within this machine's 32 MiB L3 with both threads' share of it)
IN_CACHE_ELEMENTS = 1 << 21
#: a cell meets the target at this share of the read
TARGET_SHARE = 0.8
#: in-cache over from-memory rates from which the fast sums count as limited by memory access
HEADROOM = 1.5
#: a part of the rule costing less than this fraction of the read's time is not named as a cause
NEGLIGIBLE = 0.02


def _rule_seconds(x, norm, groups, layout, output_format, algorithm="correctly_rounded"):
    start = time.perf_counter()
    result = numerics.moments(x, norm, groups=groups, layout=layout, acc_dtype=output_format,
                              algorithm=algorithm)
    return time.perf_counter() - start, dict(result.run.details)


def _parts_seconds(x4, output_format):
    """(fast sums, certification, exact path) seconds of the rule on a canonical view, run
    alone in the order numerics.correctly_rounded.moments runs them, and how many groups took
    the exact path."""
    start = time.perf_counter()
    shifts, first_sums, second_sums, depth, _ = correctly_rounded.cpu_fast_sums(x4)
    fast = time.perf_counter()
    n = x4.shape[1] * x4.shape[3]
    _, mean_certain, _, var_certain = correctly_rounded.certify(
        n, 0, depth, shifts, first_sums, second_sums, output_format)
    certified = time.perf_counter()
    undecided = np.flatnonzero(~(mean_certain & var_certain))
    if undecided.size:
        correctly_rounded.exact_statistics(correctly_rounded.group_rows(x4, undecided), 0,
                                           output_format)
    return fast - start, certified - fast, time.perf_counter() - certified, undecided.size


def _in_cache_rate(x, norm, groups, layout, repetitions):
    """Elements per second of the fast sums on the leading samples of ``x`` (at most
    IN_CACHE_ELEMENTS, at least one sample), which stay in the cache: the call's own overhead
    included."""
    part = x[:max(1, IN_CACHE_ELEMENTS // x[:1].size)]
    part4 = part.reshape(numerics.canonical_view(part.shape, norm, groups, layout).view_shape)
    calls = 10
    correctly_rounded.cpu_fast_sums(part4)
    seconds = []
    for _ in range(repetitions):
        start = time.perf_counter()
        for _ in range(calls):
            correctly_rounded.cpu_fast_sums(part4)
        seconds.append((time.perf_counter() - start) / calls)
    return part.size / statistics.median(seconds)


def measure(norm, groups, shape, layout, threads, repetitions, seed=0, output_format="float32"):
    """One row of the table: median throughputs of the rule and the read, the share, and the
    rule's parts timed alone in the same turns."""
    rng = np.random.default_rng(seed)
    memory_shape = shape if layout == "NCHW" else (shape[0], *shape[2:], shape[1])
    buffers = [rng.standard_normal(memory_shape, dtype=np.float32) for _ in range(2)]
    view_shape = numerics.canonical_view(memory_shape, norm, groups, layout).view_shape
    numba.set_num_threads(threads)
    rule, read, default, parts = [], [], [], []
    with ThreadPoolExecutor(threads) as pool:
        _rule_seconds(buffers[0], norm, groups, layout, output_format)
        _rule_seconds(buffers[0], norm, groups, layout, output_format, DEFAULT_ALGORITHM)
        read_seconds(pool, buffers[0].reshape(-1), threads)
        for repetition in range(repetitions):
            x = buffers[repetition % 2]
            seconds, details = _rule_seconds(x, norm, groups, layout, output_format)
            rule.append(seconds)
            read.append(read_seconds(pool, x.reshape(-1), threads))
            default.append(_rule_seconds(x, norm, groups, layout, output_format,
                                         DEFAULT_ALGORITHM)[0])
            parts.append(_parts_seconds(x.reshape(view_shape), output_format))
        in_cache = _in_cache_rate(buffers[0], norm, groups, layout, repetitions)
    elements = buffers[0].size
    rule_seconds, read_median = statistics.median(rule), statistics.median(read)
    fast, certify, exact = (statistics.median(part) for part in list(zip(*parts))[:3])
    row = {"norm": norm, "layout": layout, "shape": "x".join(map(str, shape)),
           "threads": threads, "elements_per_s": elements / rule_seconds,
           "read_elements_per_s": elements / read_median,
           "share_of_read": read_median / rule_seconds,
           "default_elements_per_s": elements / statistics.median(default),
           "exact_groups": details["exact_groups"],
           "groups": details["exact_groups"] + details["certified_groups"],
           "fast_share_of_read": read_median / fast,
           "fast_in_cache_elements_per_s": in_cache,
           "certify_share_of_rule": certify / rule_seconds,
           "exact_share_of_rule": exact / rule_seconds,
           "exact_groups_alone": sum(part[3] for part in parts) / repetitions,
           "rest_share_of_rule": max(rule_seconds - fast - certify - exact, 0.0) / rule_seconds}
    return {**row, "cause": miss_cause(row)}


def miss_cause(row):
    """For a cell under TARGET_SHARE: the parts of the rule's time beyond the read's, largest
    first, from the row's own measurements ("" for a cell that meets the target)."""
    if row["share_of_read"] >= TARGET_SHARE:
        return ""
    rule_share = 1 / row["share_of_read"]  # the rule's seconds in units of the read's
    fast_share = 1 / row["fast_share_of_read"]
    headroom = row["fast_in_cache_elements_per_s"] / row["read_elements_per_s"]
    if headroom >= HEADROOM:
        bound = f"memory access: in cache it runs at {headroom:.1f}× the read's rate from memory"
    elif headroom >= 1:
        bound = (f"arithmetic and memory: in cache it runs at only {headroom:.1f}× the read's "
                 f"rate from memory, too little to hide the memory's latency")
    else:
        bound = f"arithmetic: even in cache it runs at {headroom:.2f}× the read's rate from memory"
    costs = [(fast_share - 1, f"fast sums at {100 * row['fast_share_of_read']:.0f} % of the read "
                              f"from memory ({bound})"),
             (row["certify_share_of_rule"] * rule_share,
              f"certification {100 * row['certify_share_of_rule']:.0f} % of the call"),
             (row["exact_share_of_rule"] * rule_share,
              f"exact path ({row['exact_groups_alone']:.1f} group(s) a call) "
              f"{100 * row['exact_share_of_rule']:.0f} % of the call"),
             (row["rest_share_of_rule"] * rule_share,
              f"the rest of the call (outside these parts) "
              f"{100 * row['rest_share_of_rule']:.0f} %")]
    return "; ".join(text for cost, text in sorted(costs, key=lambda item: -item[0])
                     if cost > NEGLIGIBLE)


def section_table(frame):
    """The markdown table of the throughput rows, with the cause of each miss (for the report of
    ``make bench``: studies.performance)."""
    from studies import report
    table = pd.DataFrame({
        "subset": frame["norm"], "layout": frame["layout"], "shape": frame["shape"],
        "threads": frame["threads"],
        "correctly_rounded M/s": frame["elements_per_s"] / 1e6,
        "read M/s": frame["read_elements_per_s"] / 1e6,
        "share of read %": 100 * frame["share_of_read"],
        "welford M/s": frame["default_elements_per_s"] / 1e6,
        "exact groups": frame["exact_groups"].astype(str) + " of " + frame["groups"].astype(str),
        "fast sums: share of read %": 100 * frame["fast_share_of_read"],
        "fast sums in cache M/s": frame["fast_in_cache_elements_per_s"] / 1e6,
        "cause of a miss": frame["cause"]})
    number = lambda value: f"{value:,.0f}"
    return report.markdown_table(table, formats={
        "correctly_rounded M/s": number, "read M/s": number, "welford M/s": number,
        "fast sums in cache M/s": number, "share of read %": number,
        "fast sums: share of read %": number, "cause of a miss": str})


def throughput_table(profile="default", repetitions=5, threads=(1, 2)):
    """A DataFrame: shape, threads, elements/s of float32 -> float32 correctly rounded moments,
    and its share of the same-run read bandwidth."""
    shapes = SMOKE_SHAPES if profile == "smoke" else SHAPES
    before = numba.get_num_threads()
    try:
        rows = [measure(norm, groups, shape, layout, count, repetitions)
                for norm, groups, shape, layout in shapes for count in threads
                if count <= numba.config.NUMBA_NUM_THREADS]
    finally:
        numba.set_num_threads(before)
    return pd.DataFrame(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("smoke", "default"), default="default")
    parser.add_argument("--repetitions", type=int, default=5)
    arguments = parser.parse_args(argv)
    print(section_table(throughput_table(arguments.profile, arguments.repetitions)))


if __name__ == "__main__":
    main()
