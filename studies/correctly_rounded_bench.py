"""Throughput of ``algorithm="correctly_rounded"`` (numerics.correctly_rounded) against a streaming
read of the same array in the same run: ``python -m studies.correctly_rounded_bench`` prints the
table that ``throughput_table()`` returns (for ``make bench``).

Method: for each shape, layout and thread count, the rule, the default rule ("welford", its
float32 accumulator) and the streaming read
(studies.performance.stream_read: vector loads and adds, split over the threads) alternate on two
rotating float32 tensors larger than the L3 cache, each timed ``repetitions`` times after an
untimed first call; the share is the rule's median throughput over the read's median throughput,
both in elements per second of the same tensors. A benchmark reports; it never fails on seconds.
"""
import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pandas as pd

import numerics
from studies.performance import stream_read

#: (norm, groups, shape, layout): the issue's CNN tensor in both layouts, and LayerNorm rows
SHAPES = (("batch", None, (32, 256, 56, 56), "NCHW"), ("batch", None, (32, 256, 56, 56), "NHWC"),
          ("instance", None, (32, 256, 56, 56), "NCHW"), ("layer", None, (4096, 4096), "NCHW"))
#: the rule timed beside it on the same tensors: numerics.moments' default
DEFAULT_ALGORITHM = "welford"
SMOKE_SHAPES = (("batch", None, (4, 8, 16, 16), "NCHW"), ("layer", None, (64, 256), "NCHW"))


def _read_seconds(pool, flat, threads):
    bounds = [flat.size * t // threads for t in range(threads + 1)]
    start = time.perf_counter()
    list(pool.map(lambda t: stream_read(flat, bounds[t], bounds[t + 1]), range(threads)))
    return time.perf_counter() - start


def _rule_seconds(x, norm, groups, layout, output_format, algorithm="correctly_rounded"):
    start = time.perf_counter()
    result = numerics.moments(x, norm, groups=groups, layout=layout, acc_dtype=output_format,
                              algorithm=algorithm)
    return time.perf_counter() - start, dict(result.run.details)


def measure(norm, groups, shape, layout, threads, repetitions, seed=0, output_format="float32"):
    """One row of the table: median throughputs of the rule and the read, and the share."""
    rng = np.random.default_rng(seed)
    memory_shape = shape if layout == "NCHW" else (shape[0], *shape[2:], shape[1])
    buffers = [rng.standard_normal(memory_shape, dtype=np.float32) for _ in range(2)]
    numba.set_num_threads(threads)
    rule, read, default = [], [], []
    with ThreadPoolExecutor(threads) as pool:
        _rule_seconds(buffers[0], norm, groups, layout, output_format)
        _rule_seconds(buffers[0], norm, groups, layout, output_format, DEFAULT_ALGORITHM)
        _read_seconds(pool, buffers[0].reshape(-1), threads)
        for repetition in range(repetitions):
            x = buffers[repetition % 2]
            seconds, details = _rule_seconds(x, norm, groups, layout, output_format)
            rule.append(seconds)
            read.append(_read_seconds(pool, x.reshape(-1), threads))
            default.append(_rule_seconds(x, norm, groups, layout, output_format,
                                         DEFAULT_ALGORITHM)[0])
    elements = buffers[0].size
    rule_rate = elements / statistics.median(rule)
    read_rate = elements / statistics.median(read)
    return {"norm": norm, "layout": layout, "shape": "x".join(map(str, shape)), "threads": threads,
            "elements_per_s": rule_rate, "read_elements_per_s": read_rate,
            "share_of_read": rule_rate / read_rate,
            "default_elements_per_s": elements / statistics.median(default),
            "exact_groups": details["exact_groups"],
            "groups": details["exact_groups"] + details["certified_groups"]}


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
    table = throughput_table(arguments.profile, arguments.repetitions)
    with pd.option_context("display.width", 200, "display.float_format", "{:.3g}".format):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
