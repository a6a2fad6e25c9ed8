"""The arithmetic rate of every rule against the streaming read (issue 12): the ``in_cache`` slice
of the performance study (studies/performance.py, ``make bench``).

Method. One thread. Each cell (rule at topology "blocked", subset, layout, input and accumulator
formats) times ``numerics.moments`` on two tensors small enough to stay together in the 1 MiB L2
of a core (``getconf LEVEL2_CACHE_SIZE`` on the bench machine): batches 1 and 3 of a sample
(C, H, W) of about 25 000 elements, 98 and 294 KiB in float32. The sample keeps the runs and groups
of the bandwidth cells' (32, 256, 56, 56) (SAMPLES): per-group work (a group's lane tree) costs as
much per element here as there, except GroupNorm, whose 32 groups per sample hold 784 elements
here against 25 088 there (its ratio errs low), InstanceNorm channels last, whose groups step
over 8 channels here against 256 there, and BatchNorm channels last, whose rows hold 64 channels
(CHANNELS_LAST_SAMPLES).
A call on such a tensor also pays 20 to 100 µs of fixed cost (Python, argument checks, dispatch,
the thread pool, the lane trees), more than its arithmetic, so the cell's in-cache rate is the
slope between the
two sizes: Δelements / Δseconds of the two sizes' median calls, taken in turn
(studies.performance.interleaved_medians; timed again, up to SLOPE_MEASURES times, where the
larger tensor's median call was not the slower): the marginal cost of an element already in cache,
i.e. the rate of the kernels' arithmetic. Around the cell, the single-thread streaming read
(studies.performance.stream_read over two rotating buffers of twice the L3) gives the memory's
rate in elements of the cell's input format per second (bytes per second / item size); the ratio
in-cache rate / streaming read has the target ≥ 2: then a rule is memory-bound whatever state the
machine's memory is in.

The causes of the bandwidth misses need the arithmetic's rate at the cell's own geometry, which the
samples above do not keep for GroupNorm (its groups), InstanceNorm channels last (its rows of 256
channels) and BatchNorm channels last (its rows of 256 channels, thousands per lane row)
(GEOMETRY_SUBSETS). For those the
``geometry`` slice times the same slope on a sample that keeps the cell's geometry
(``geometry_sample``), float32 input:

- GroupNorm channels first: each group is one contiguous run of C/32 channels, so a sample of one
  whole group, batches 1 and 3 (1 and 2 where three would not fit in L2_SAMPLE_BYTES), keeps the
  cell's groups exactly and stays in the L2;
- the others: batches 1 and 3 of one sample of the bandwidth shape itself, cut to fewer rows where
  three samples would not sit in the L3 (256x56x56 whole: 3.2 and 9.6 MB; 64x224x224 as
  64x56x224): the channels, and so the channels-last rows, are the cell's, and GroupNorm's groups
  hold thousands of elements as there. Beside it the streaming read's slope on the same two
  tensors: where the read runs at least twice as fast, the L3 does not limit the rule's rate
  there, and the rate is its arithmetic at the cell's geometry (studies.performance.with_headroom).
"""
import functools
import math
from collections import namedtuple

import numba
import numpy as np
import pandas as pd

import numerics
from numerics import algorithms, cpu, precision
from numerics.cpu.scratch import aligned_zeros
from numerics.cpu.segments import stream_chunks
from studies import report

#: input format -> accumulator formats measured (16-bit input accumulates in float32)
PRECISIONS = (("float32", "float32"), ("float32", "float64"), ("float16", "float32"),
              ("bfloat16", "float32"))
SMOKE_PRECISIONS = (("float32", "float32"), ("float16", "float32"))
#: the sample shape (C, H, W) of each subset, a slice of the bandwidth cells' (32, 256, 56, 56)
#: with their runs and groups: 3136-element planes; 256 channels for GroupNorm and for BatchNorm
#: channels last (GroupNorm's 32 groups per sample then hold 784 elements, 25 088 in the cells)
SAMPLES = {"batch": (8, 56, 56), "layer": (8, 56, 56), "instance": (8, 56, 56),
           "group32": (256, 7, 14)}
#: BatchNorm channels last: rows of 64 channels (the (8, 64, 224, 224) cells'), 392 rows a sample.
#: With 256 channels a sample holds 98 rows, one or two for each of the 64 lane rows, and the
#: slope between batches 1 and 3 measured the lane rows' start (one to five rows each), not the
#: push: parallel_merge at 24-27 G elements/s, above its push alone (push_probe), against 8.6
#: with 392 rows (docs/architecture.md section 9)
CHANNELS_LAST_SAMPLES = {"batch": (64, 14, 28)}
SMOKE_SAMPLES = {"batch": (8, 8, 8), "layer": (8, 8, 8), "instance": (8, 8, 8),
                 "group32": (64, 2, 4)}
BATCHES = (1, 3)
#: bytes of each of the streaming read's two buffers: twice the 32 MiB L3
PROBE_BYTES = 64 * 2**20
SMOKE_PROBE_BYTES = 4 * 2**20
TARGET_RATIO = 2.0
#: a slope needs the larger tensor's median call to be the slower; on a busy machine one measure
#: can show the opposite, so a cell is timed again, up to this many times in all
SLOPE_MEASURES = 3
#: a slope whose two sizes' median calls differ by less than this share of the smaller call is
#: the least certain (the report says where)
WEAK_DIFFERENCE = 0.1


def factors(profile, rules):
    """The slice's factors: every rule, subset, layout and format pair, one thread."""
    from studies import performance
    smoke = profile == "smoke"
    return {"algorithm": rules,
            "subset": tuple(report.subset_label(*subset) for subset in performance.SUBSETS),
            "layout": performance.LAYOUTS,
            "formats": tuple(f"{inp}>{acc}" for inp, acc in (SMOKE_PRECISIONS if smoke
                                                           else PRECISIONS)),
            "profile": (profile,),
            "probe_bytes": (SMOKE_PROBE_BYTES if smoke else PROBE_BYTES,),
            "seconds": (0.02 if smoke else 0.5,)}


def sample_shape(subset, layout, profile):
    """(C, H, W) of one sample of the cell's tensors."""
    if profile == "smoke":
        return SMOKE_SAMPLES[subset]
    return (CHANNELS_LAST_SAMPLES.get(subset, SAMPLES[subset]) if layout == "NHWC"
            else SAMPLES[subset])


def tensors(sample, layout, input_dtype, seed, batches=BATCHES):
    """The large tensor (the last of ``batches``) and the small one, a view of its first
    sample(s), in the layout's memory order (NHWC: channels last)."""
    channels, *spatial = sample
    memory_shape = ((batches[-1], channels, *spatial) if layout == "NCHW"
                    else (batches[-1], *spatial, channels))
    rng = np.random.default_rng(seed)
    large = rng.standard_normal(memory_shape, dtype=np.float32).astype(
        precision.NUMPY_DTYPES[input_dtype])
    return large[:batches[0]], large


def sample_calls(settings, sample, seed, groups=None, batches=BATCHES):
    """The cell's tensors (``batches`` of ``sample``) and its rule's call on each, by name
    ("small", "large"), with the accumulator format of the cell's format pair; GroupNorm with the
    subset's group count unless ``groups`` says how many the sample holds."""
    from studies import performance
    input_dtype, acc_dtype = settings["formats"].split(">")
    norm, subset_groups = performance.subset_arguments(settings["subset"])
    groups = subset_groups if groups is None else groups
    small, large = tensors(sample, settings["layout"], input_dtype, seed, batches)
    calls = {name: functools.partial(numerics.moments, x, norm, groups=groups,
                                     layout=settings["layout"], algorithm=settings["algorithm"],
                                     acc_dtype=acc_dtype)
             for name, x in (("small", small), ("large", large))}
    return small, large, calls


def measured_slopes(small, large, calls, seconds, pairs):
    """``calls`` timed in turn (studies.performance.interleaved_medians) and the slope of each
    (smaller call, larger call) pair of their names in ``pairs``; timed again, up to
    SLOPE_MEASURES times in all, while a slope is not measured (NaN). Returns the medians, the
    calls timed, the slopes and how many measures were taken."""
    from studies import performance
    for measures in range(1, SLOPE_MEASURES + 1):
        medians, calls_timed = performance.interleaved_medians(calls, seconds)
        slopes = [slope(small, large, medians[first], medians[second]) for first, second in pairs]
        if not any(math.isnan(value) for value in slopes):
            break
    return medians, calls_timed, slopes, measures


def beside_read(probe_bytes, seed, itemsize, timing):
    """``timing()`` on one thread between two single-thread streaming reads from memory: its
    result, the reads before and after (GB/s) and their mean in elements of ``itemsize`` bytes
    per second."""
    from studies import performance
    probe = performance.read_probe(probe_bytes, seed)
    performance.set_threads(1)
    before = probe.measure(1)
    result = timing()
    after = probe.measure(1)
    return result, before, after, (before + after) / 2 * 1e9 / itemsize


def measure(settings, seed):
    """One in-cache row: the two sizes' median seconds, the marginal elements per second, the
    streaming read around it and their ratio."""
    input_dtype, acc_dtype = settings["formats"].split(">")
    sample = sample_shape(settings["subset"], settings["layout"], settings["profile"])
    small, large, calls = sample_calls(settings, sample, seed)
    (medians, calls_timed, (in_cache,), measures), before, after, read = beside_read(
        settings["probe_bytes"], seed, small.itemsize,
        lambda: measured_slopes(small, large, calls, settings["seconds"], [("small", "large")]))
    small_seconds, large_seconds = medians["small"], medians["large"]
    return {"table": "performance_in_cache", "input_dtype": input_dtype, "acc_dtype": acc_dtype,
            "sample": "x".join(map(str, sample)),
            "small_bytes": small.nbytes, "large_bytes": large.nbytes, "measures": measures,
            "calls": calls_timed, "small_seconds": small_seconds, "large_seconds": large_seconds,
            "in_cache_elements_per_s": in_cache, "call_elements_per_s": large.size / large_seconds,
            "read_gb_per_s_before": before, "read_gb_per_s_after": after,
            "read_elements_per_s": read, "in_cache_ratio": in_cache / read}


#: the (subset, layout) whose in-cache sample does not keep the cells' geometry: GroupNorm's
#: groups of 25 088 elements, InstanceNorm's channels-last rows of 256 channels, BatchNorm
#: channels last's rows of 256 channels and thousands of rows per lane
GEOMETRY_SUBSETS = (("group32", "NCHW"), ("group32", "NHWC"), ("instance", "NHWC"),
                    ("batch", "NHWC"))
#: the format pairs of the geometry slice: those of the bandwidth targets (float32 input)
GEOMETRY_PRECISIONS = (("float32", "float32"), ("float32", "float64"))
#: float32 bytes of the geometry slice's larger tensor (three samples) at most: well inside the
#: 32 MiB L3 (the streaming read beside it reads the same tensors, no copy)
GEOMETRY_BYTES = 12 * 2**20
#: float32 bytes of an L2-resident geometry sample's larger tensor at most: 80 % of the 1 MiB L2
#: of a core, the rest left to the kernels' work arrays
L2_SAMPLE_BYTES = 800 * 2**10

#: a geometry slice's tensors: ``batches`` of ``sample`` (C, H, W) holding ``groups`` GroupNorm
#: groups (None: the subset's own count), and the cache level they sit in ("L2" or "L3")
GeometrySample = namedtuple("GeometrySample", ["sample", "groups", "batches", "resident"])


def geometry_sample(subset, layout, shape):
    """The GeometrySample of the cell shape "NxCxHxW" for ``subset`` and ``layout``: one whole
    group of GroupNorm channels first, in the L2 (a group is one contiguous run of its channels,
    so fewer groups keep its geometry exactly); else one sample of the shape, its rows halved
    until three samples fit in GEOMETRY_BYTES, in the L3."""
    from studies import performance
    _, channels, height, width = (int(size) for size in shape.split("x"))
    _, groups = performance.subset_arguments(subset)
    if groups is not None and layout == "NCHW":
        group_bytes = channels // groups * height * width * 4
        batches = BATCHES if BATCHES[-1] * group_bytes <= L2_SAMPLE_BYTES else (1, 2)
        return GeometrySample((channels // groups, height, width), 1, batches, "L2")
    while 3 * channels * height * width * 4 > GEOMETRY_BYTES and height % 2 == 0:
        height //= 2
    return GeometrySample((channels, height, width), None, BATCHES, "L3")


def geometry_factors(profile, rules, shapes):
    """The geometry slice's factors (with ``keeps_geometry``): every rule at GEOMETRY_SUBSETS and
    each bandwidth shape's own sample, float32 input, one thread."""
    smoke = profile == "smoke"
    return {"algorithm": rules,
            "subset": tuple(dict.fromkeys(subset for subset, _ in GEOMETRY_SUBSETS)),
            "layout": tuple(dict.fromkeys(layout for _, layout in GEOMETRY_SUBSETS)),
            "shape": shapes,
            "formats": tuple(f"{inp}>{acc}" for inp, acc in (GEOMETRY_PRECISIONS[:1] if smoke
                                                           else GEOMETRY_PRECISIONS)),
            "seconds": (0.02 if smoke else 0.3,)}


def keeps_geometry(settings):
    return (settings["subset"], settings["layout"]) in GEOMETRY_SUBSETS


def slope(small, large, small_seconds, large_seconds):
    """Elements per second between two sizes; NaN unless the larger took longer (not so on a
    busy machine when the sizes are tiny, as in the smoke profile)."""
    if large_seconds <= small_seconds:
        return float("nan")
    return (large.size - small.size) / (large_seconds - small_seconds)


def measure_geometry(settings, seed):
    """One geometry row: the rule's slope between the two sizes of the cell's GeometrySample, and
    the streaming read's slope on the same tensors, timed in turn."""
    from studies import performance
    input_dtype, acc_dtype = settings["formats"].split(">")
    geometry = geometry_sample(settings["subset"], settings["layout"], settings["shape"])
    small, large, calls = sample_calls(settings, geometry.sample, seed, geometry.groups,
                                       geometry.batches)
    flat = {"small": small.reshape(-1), "large": large.reshape(-1)}
    calls.update({f"read_{name}": functools.partial(performance.stream_read, values, 0,
                                                    values.size)
                  for name, values in flat.items()})
    performance.set_threads(1)
    medians, calls_timed, (rate, read), measures = measured_slopes(
        small, large, calls, settings["seconds"],
        [("small", "large"), ("read_small", "read_large")])
    return {"table": "performance_geometry", "input_dtype": input_dtype, "acc_dtype": acc_dtype,
            "sample": "x".join(map(str, geometry.sample)), "resident": geometry.resident,
            "small_bytes": small.nbytes, "large_bytes": large.nbytes, "measures": measures,
            "calls": calls_timed, "small_seconds": medians["small"],
            "large_seconds": medians["large"], "geometry_elements_per_s": rate, "geometry_read_elements_per_s": read,
            "geometry_read_ratio": read / rate}


#: elements of the push probe's L2-resident run: 512 chunks of the topology's 64 lanes (128 KiB
#: of float32), the probe pushing it PUSH_REPEATS times a call
PUSH_ELEMENTS = 512 * 64
PUSH_REPEATS = 16


@numba.njit(nogil=True)
def push_probe(ctx, data, chunks, lanes, center, firsts, seconds, repeats):
    """The kernels' streaming loop alone (segments.stream_chunks: the family's push over whole
    chunks of lanes, the vectors in flight of the segments kernel), ``repeats`` times over
    ``data``: no block, no lane tree, no call around it. ``center`` is an argument, as in the
    kernels, so that LLVM cannot drop its subtraction. ``lanes`` is a whole number of sweeps of
    vectors in flight (the default topology's), so no partial sweep is compiled (None)."""
    for _ in range(repeats):
        stream_chunks(ctx, data, 0, chunks, 0, center, lanes, firsts, seconds, None)


def push_factors(profile):
    """The push slice's factors: each family of rules (algorithms.ALGORITHMS) and format pair."""
    smoke = profile == "smoke"
    return {"family": tuple(dict.fromkeys(rule.family for rule in algorithms.ALGORITHMS.values())),
            "formats": tuple(f"{inp}>{acc}" for inp, acc in (SMOKE_PRECISIONS if smoke
                                                           else PRECISIONS)),
            "probe_bytes": (SMOKE_PROBE_BYTES if smoke else PROBE_BYTES,),
            "seconds": (0.02 if smoke else 0.3,)}


def measure_push(settings, seed):
    """One push row: elements per second of push_probe on one thread (median of calls taken
    in turn), and the single-thread streaming read from memory around it."""
    from studies import performance
    input_dtype, acc_dtype = settings["formats"].split(">")
    topology = numerics.TOPOLOGIES[numerics.DEFAULT_TOPOLOGY]
    compute_type = precision.COMPUTE_DTYPES[acc_dtype]
    values = np.random.default_rng(seed).standard_normal(PUSH_ELEMENTS, dtype=np.float32)
    data = values.astype(precision.NUMPY_DTYPES[input_dtype])
    if data.itemsize == 2:  # the kernels read 16-bit formats as their bit patterns
        data = data.view(np.uint16)
    ctx = cpu.context(settings["family"], input_dtype, acc_dtype, True)
    call = functools.partial(
        push_probe, ctx, data, PUSH_ELEMENTS // topology.lanes, topology.lanes,
        compute_type.type(0), aligned_zeros((topology.lanes,), compute_type),
        aligned_zeros((topology.lanes,), compute_type), PUSH_REPEATS)
    (medians, calls_timed), before, after, read = beside_read(
        settings["probe_bytes"], seed, data.itemsize,
        lambda: performance.interleaved_medians({"push": call}, settings["seconds"]))
    push = PUSH_ELEMENTS * PUSH_REPEATS / medians["push"]
    return {"table": "performance_push", "input_dtype": input_dtype, "acc_dtype": acc_dtype,
            "calls": calls_timed, "push_seconds": medians["push"], "push_elements_per_s": push,
            "read_gb_per_s_before": before, "read_gb_per_s_after": after,
            "read_elements_per_s": read, "push_ratio": push / read}


def section(frame, push=None):
    """One table per format pair: rules x (subset, layout), in-cache rate / streaming read; then
    the push alone (``push``, the push slice's rows) and the cause of each miss it decides."""
    if frame is None or frame.empty:
        return "(not measured)"
    meets = frame.in_cache_ratio >= TARGET_RATIO
    met = meets.sum()
    weak_medians = weak_slopes(frame)
    weak = frame.set_index(["subset", "layout"]).index.isin(weak_medians.index)
    met_weakly = (f" ({(meets & weak).sum()} of them on the least certain slopes, below)"
                  if (meets & weak).any() else "")
    probes = pd.concat([frame.read_gb_per_s_before, frame.read_gb_per_s_after])
    lines = [f"In-cache rate of every rule (topology \"{numerics.DEFAULT_TOPOLOGY}\", one "
             f"thread) over the single-thread streaming read of the same input format from "
             f"memory, measured around each cell (method: studies/in_cache_bench.py). The "
             f"in-cache rate is the slope between two L2-resident tensors, batches "
             f"{BATCHES[0]} and {BATCHES[-1]} of one sample (C, H, W) per subset "
             f"({sample_list(frame)}): Δelements / Δseconds of the "
             f"median calls of each size, the marginal cost of an element in cache without the "
             f"call's fixed cost, i.e. the rate of the arithmetic. Target ≥ {TARGET_RATIO:g}×: "
             f"{met} of {len(frame)} cells meet it{met_weakly}; "
             f"{frame.in_cache_ratio.isna().sum()} slopes "
             f"not measured (–: the larger tensor's median call was not the slower in any of "
             f"{SLOPE_MEASURES} measures). "
             f"Streaming read (one thread): median "
             f"{probes.median():.1f} GB/s (range {probes.min():.1f} to {probes.max():.1f})."
             f"{conditioning_line(weak_medians)}"]
    for (input_dtype, acc_dtype), cells in frame.groupby(["input_dtype", "acc_dtype"],
                                                        sort=False):
        # every cell keeps its column, an unmeasured slope (NaN) too, in the cells' order
        table = cells.pivot_table(index="algorithm", columns=["subset", "layout"],
                                  values="in_cache_ratio", sort=False, dropna=False)
        table = table.reindex(columns=pd.MultiIndex.from_frame(
            cells[["subset", "layout"]].drop_duplicates()))
        table.columns = [f"{subset} {layout}" for subset, layout in table.columns]
        rates = cells.in_cache_elements_per_s / 1e9
        lines.append(f"\n### {input_dtype} input, {acc_dtype} accumulation\n\nIn-cache rate / "
                     f"streaming read (✗ below {TARGET_RATIO:g}); in-cache rates "
                     f"{rates.min():.2f} to {rates.max():.2f} G elements/s, streaming read "
                     f"{cells.read_elements_per_s.median() / 1e9:.2f} G elements/s (median):\n")
        lines.append(report.markdown_table(
            table.reset_index().rename(columns={"algorithm": "rule"}),
            formats={column: ratio_mark for column in table.columns}))
    lines.append(push_section(frame, push))
    return "\n".join(lines)


def push_section(frame, push):
    """The push slice's ratios (family x format pair), and the in-cache misses split by their
    rule's ceiling: its family's push alone over its passes, against the cell's own read."""
    if push is None or push.empty:
        return "\n### The push alone\n\n(not measured)"
    push = push.assign(pair=push.input_dtype + ">" + push.acc_dtype)
    table = push.pivot_table(index="family", columns="pair", values="push_ratio", sort=False)
    rules = {family: ", ".join(name for name, rule in algorithms.ALGORITHMS.items()
                               if rule.family == family) for family in table.index}
    table.index = [f"{family} ({rules[family]})" for family in table.index]
    rates = push.set_index(["family", "pair"]).push_elements_per_s
    rules_of = frame.algorithm.map(algorithms.ALGORITHMS)
    ceiling = pd.Series([rates.get((rule.family, f"{inp}>{acc}"), np.nan) / rule.passes
                         for rule, inp, acc in zip(rules_of, frame.input_dtype, frame.acc_dtype)],
                        index=frame.index) / frame.read_elements_per_s
    misses = frame.in_cache_ratio < TARGET_RATIO
    by_push = (misses & (ceiling < TARGET_RATIO)).sum()
    by_rest = (misses & (ceiling >= TARGET_RATIO)).sum()
    unmeasured = misses.sum() - by_push - by_rest
    return "\n".join([
        f"\n### The push alone\n\nThe kernels' streaming loop alone (`push_probe`: each family's "
        f"push over a run of {PUSH_ELEMENTS:,} elements in the L2, {PUSH_REPEATS} times a call, "
        f"without blocks, lane trees or the call around them; one thread), its elements per "
        f"second over the single-thread streaming read measured around it:\n",
        report.markdown_table(table.reset_index().rename(columns={"index": "family (rules)"}),
                              formats={column: ratio_mark for column in table.columns}),
        f"\nA rule's ceiling in cache is its family's push over its passes (two for the "
        f"two-pass rules). Of the {misses.sum()} measured in-cache misses above, **{by_push} are "
        f"the push itself**: the ceiling is under {TARGET_RATIO:g}× the read measured around the "
        f"cell, so the rule's arithmetic per element, in the order that fixes its bits, runs too "
        f"slowly for the target and no change around it can reach it; **{by_rest} lose it in "
        f"the rest of the kernel**: the ceiling reaches {TARGET_RATIO:g}×, and the blocks (each "
        f"zeroes its lane states and runs its lane tree), the gathering of short runs and the "
        f"groups' lane trees take the difference (docs/architecture.md section 9)"
        + (f"; {unmeasured} have no measured push." if unmeasured else ".")])


def weak_slopes(frame):
    """The median, over its cells, of how much the larger call took longer than the smaller (a
    share of the smaller call), for each (subset, layout) where it is under WEAK_DIFFERENCE:
    there a call's fixed work outweighs the elements between the two sizes, and the slope is
    least certain."""
    difference = (frame.large_seconds - frame.small_seconds) / frame.small_seconds
    medians = difference.groupby([frame.subset, frame.layout], sort=False).median()
    return medians[medians < WEAK_DIFFERENCE]


def conditioning_line(weak):
    """Where the slopes are least certain (``weak``: weak_slopes), for the report."""
    if weak.empty:
        return ""
    listed = ", ".join(f"{subset} {layout} (median {value:.0%})"
                       for (subset, layout), value in weak.items())
    return (f" Least certain: the slopes of {listed}, whose two sizes' calls differ by under "
            f"{WEAK_DIFFERENCE:.0%} of the smaller call (a call's fixed work outweighs the "
            f"elements between the sizes); the causes of the bandwidth misses take the rates of "
            f"{', '.join(f'{subset} {layout}' for subset, layout in GEOMETRY_SUBSETS)} from the "
            f"geometry slice instead.")


def sample_list(frame):
    """"batch NCHW 8x56x56, ..." for the report."""
    samples = frame.drop_duplicates(["subset", "layout"])
    return ", ".join(f"{row.subset} {row.layout} {row.sample}" for row in samples.itertuples())


def ratio_mark(value):
    if pd.isna(value):
        return "–"
    return f"{value:.1f}{'' if value >= TARGET_RATIO else ' ✗'}"
