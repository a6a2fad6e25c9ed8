"""Throughput of the exact reference (numerics.reference.moments) in elements per second.

A script, not a test: ``python -m studies.reference_throughput`` (from the repository root, so that
it imports this checkout's numerics) prints the figures; benchmarks reuse ``measure``. The
reference is single-threaded (one compiled loop plus per-group Python), so the figure is a one-core
figure; the target is 100 M float32 elements/s for the whole call. Elements go to per-exponent
integer buckets (numerics/reference.py): a float32 element costs two integer adds, a float64
element seven; float16 and bfloat16 are widened to float32 first. The first call compiles (or
loads) the kernels and is not timed.
"""
import statistics
import time

import numpy as np

from numerics import precision, reference


def measure(elements=20_000_000, repetitions=5, shape=None, norm=None, groups=None, layout="NCHW",
            dtype="float32", seed=0):
    """Time ``reference.moments`` on standard-normal data stored in ``dtype``; returns a dict with
    the shape, the per-repetition seconds, the median and the median throughput in elements per
    second.

    ``shape`` defaults to ``(elements,)`` (norm None: one group); pass a tensor shape and ``norm``
    to time a layer's grouping instead.
    """
    if isinstance(repetitions, bool) or not isinstance(repetitions, int) or repetitions < 1:
        raise ValueError(f"repetitions must be a positive integer, got {repetitions!r}")
    dtype = precision.format_name(dtype, "dtype")
    shape = (int(elements),) if shape is None else tuple(shape)
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    x = x.astype(precision.NUMPY_DTYPES[dtype])
    reference.moments(x[:16] if norm is None else x, norm, groups=groups, layout=layout)
    seconds = []
    for _ in range(repetitions):
        start = time.perf_counter()
        reference.moments(x, norm, groups=groups, layout=layout)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"shape": shape, "norm": norm, "groups": groups, "layout": layout, "dtype": dtype,
            "elements": x.size, "seconds": seconds, "median_seconds": median,
            "elements_per_second": x.size / median}


CASES = (
    {"elements": 20_000_000},
    {"shape": (32, 256, 56, 56), "norm": "batch"},
    {"shape": (32, 56, 56, 256), "norm": "batch", "layout": "NHWC"},
    {"shape": (32, 256, 56, 56), "norm": "instance"},
    {"shape": (32, 256, 56, 56), "norm": "group", "groups": 32},
    {"elements": 20_000_000, "dtype": "float16"},
    {"elements": 20_000_000, "dtype": "bfloat16"},
    {"elements": 20_000_000, "dtype": "float64"},
    {"shape": (32, 256, 56, 56), "norm": "instance", "dtype": "float64"},
)


def main():
    for case in CASES:
        result = measure(**case)
        print(f"{result['dtype']} shape={result['shape']} norm={result['norm']} "
              f"groups={result['groups']} layout={result['layout']}: median "
              f"{result['median_seconds']:.3f} s of {len(result['seconds'])}, "
              f"{result['elements_per_second'] / 1e6:.1f} M elements/s", flush=True)


if __name__ == "__main__":
    main()
