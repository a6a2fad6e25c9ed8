"""Throughput of the exact reference (numerics.reference.moments) in float32 elements per second.

A script, not a test: ``python studies/reference_throughput.py`` prints the figures; benchmarks
reuse ``measure``. The reference is single-threaded (one compiled loop plus per-group Python), so
the figure is a one-core figure. The first call compiles (or loads) the kernels and is not timed.
"""
import statistics
import time

import numpy as np

from numerics import reference


def measure(elements=20_000_000, repetitions=5, shape=None, norm=None, groups=None, layout="NCHW",
            seed=0):
    """Time ``reference.moments`` on standard-normal float32 data; returns a dict with the shape,
    the per-repetition seconds, the median and the median throughput in elements per second.

    ``shape`` defaults to ``(elements,)`` (norm None: one group); pass a tensor shape and ``norm``
    to time a layer's grouping instead.
    """
    if isinstance(repetitions, bool) or not isinstance(repetitions, int) or repetitions < 1:
        raise ValueError(f"repetitions must be a positive integer, got {repetitions!r}")
    shape = (int(elements),) if shape is None else tuple(shape)
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    reference.moments(x[:16] if norm is None else x, norm, groups=groups, layout=layout)
    seconds = []
    for _ in range(repetitions):
        start = time.perf_counter()
        reference.moments(x, norm, groups=groups, layout=layout)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"shape": shape, "norm": norm, "groups": groups, "layout": layout, "elements": x.size,
            "seconds": seconds, "median_seconds": median, "elements_per_second": x.size / median}


def main():
    cases = [
        {"elements": 20_000_000},
        {"shape": (32, 256, 56, 56), "norm": "batch"},
        {"shape": (32, 56, 56, 256), "norm": "batch", "layout": "NHWC"},
        {"shape": (32, 256, 56, 56), "norm": "instance"},
        {"shape": (32, 256, 56, 56), "norm": "group", "groups": 32},
    ]
    for case in cases:
        result = measure(repetitions=3, **case)
        print(f"shape={result['shape']} norm={result['norm']} groups={result['groups']} "
              f"layout={result['layout']}: median {result['median_seconds']:.3f} s, "
              f"{result['elements_per_second'] / 1e6:.1f} M float32 elements/s")


if __name__ == "__main__":
    main()
