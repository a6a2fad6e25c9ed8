"""The arithmetic rate of every rule against the streaming read (issue 12): the ``in_cache`` slice
of the performance study (studies/performance.py, ``make bench``).

Method. One thread. Each cell (rule at topology "blocked", subset, layout, input and accumulator
formats) times ``numerics.moments`` on two tensors small enough to stay together in the 512 KiB
L2 of a core: batches 1 and 3 of a sample (C, H, W) of about 25 000 elements, 98 and 294 KiB in
float32. The sample keeps the runs and groups of the bandwidth cells' (32, 256, 56, 56) (SAMPLES):
per-group work (a group's lane tree) costs as much per element here as there, except GroupNorm,
whose 32 groups per sample hold 784 elements here against 25 088 there (its ratio errs low), and
InstanceNorm channels last, whose groups step over 8 channels here against 256 there.
A call on such a tensor also pays 50 to 100 µs of fixed cost (Python, argument checks, dispatch,
the thread pool), more than its arithmetic, so the cell's in-cache rate is the slope between the
two sizes: Δelements / Δseconds of the two sizes' median calls, taken in turn
(studies.performance.interleaved_medians): the marginal cost of an element already in cache,
i.e. the rate of the kernels' arithmetic. Around the cell, the single-thread streaming read
(studies.performance.stream_read over two rotating buffers of twice the L3) gives the memory's
rate in elements of the cell's input format per second (bytes per second / item size); the ratio
in-cache rate / streaming read has the target ≥ 2: then a rule is memory-bound whatever state the
machine's memory is in.
"""
import numpy as np
import pandas as pd

import numerics
from numerics import precision
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
CHANNELS_LAST_SAMPLES = {"batch": (256, 7, 14)}
SMOKE_SAMPLES = {"batch": (8, 8, 8), "layer": (8, 8, 8), "instance": (8, 8, 8),
                 "group32": (64, 2, 4)}
BATCHES = (1, 3)
#: bytes of each of the streaming read's two buffers: twice the 32 MiB L3
PROBE_BYTES = 64 * 2**20
SMOKE_PROBE_BYTES = 4 * 2**20
TARGET_RATIO = 2.0


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


def tensors(sample, layout, input_dtype, seed):
    """The large tensor (the last batch) and the small one, a view of its first sample(s), in the
    layout's memory order (NHWC: channels last)."""
    channels, *spatial = sample
    memory_shape = ((BATCHES[-1], channels, *spatial) if layout == "NCHW"
                    else (BATCHES[-1], *spatial, channels))
    rng = np.random.default_rng(seed)
    large = rng.standard_normal(memory_shape, dtype=np.float32).astype(
        precision.NUMPY_DTYPES[input_dtype])
    return large[:BATCHES[0]], large


def measure(settings, seed):
    """One in-cache row: the two sizes' median seconds, the marginal elements per second, the
    streaming read around it and their ratio."""
    from studies import performance
    from studies.performance import interleaved_medians
    input_dtype, acc_dtype = settings["formats"].split(">")
    norm, groups = performance.subset_arguments(settings["subset"])
    sample = sample_shape(settings["subset"], settings["layout"], settings["profile"])
    small, large = tensors(sample, settings["layout"], input_dtype, seed)
    calls = [lambda x=x: numerics.moments(x, norm, groups=groups, layout=settings["layout"],
                                          algorithm=settings["algorithm"], acc_dtype=acc_dtype)
             for x in (small, large)]
    probe = performance.read_probe(settings["probe_bytes"], seed)
    performance.set_threads(1)
    before = probe.measure(1)
    medians, calls_timed = interleaved_medians({"small": calls[0], "large": calls[1]},
                                                settings["seconds"])
    after = probe.measure(1)
    read = (before + after) / 2 * 1e9 / small.itemsize
    small_seconds, large_seconds = medians["small"], medians["large"]
    # a slope is only measured when the large tensor took longer (not so on a busy machine
    # when the sizes are tiny, as in the smoke profile)
    in_cache = ((large.size - small.size) / (large_seconds - small_seconds)
                if large_seconds > small_seconds else float("nan"))
    return {"table": "performance_in_cache", "input_dtype": input_dtype, "acc_dtype": acc_dtype,
            "sample": "x".join(map(str, sample)),
            "small_bytes": small.nbytes, "large_bytes": large.nbytes,
            "calls": calls_timed, "small_seconds": small_seconds, "large_seconds": large_seconds,
            "in_cache_elements_per_s": in_cache, "call_elements_per_s": large.size / large_seconds,
            "read_gb_per_s_before": before, "read_gb_per_s_after": after,
            "read_elements_per_s": read, "in_cache_ratio": in_cache / read}


def section(frame):
    """One table per format pair: rules x (subset, layout), in-cache rate / streaming read."""
    if frame is None or frame.empty:
        return "(not measured)"
    met = (frame.in_cache_ratio >= TARGET_RATIO).sum()
    probes = pd.concat([frame.read_gb_per_s_before, frame.read_gb_per_s_after])
    lines = [f"In-cache rate of every rule (topology \"{numerics.DEFAULT_TOPOLOGY}\", one "
             f"thread) over the single-thread streaming read of the same input format from "
             f"memory, measured around each cell (method: studies/in_cache_bench.py). The "
             f"in-cache rate is the slope between two L2-resident tensors, batches "
             f"{BATCHES[0]} and {BATCHES[-1]} of one sample (C, H, W) per subset "
             f"({sample_list(frame)}): Δelements / Δseconds of the "
             f"median calls of each size, the marginal cost of an element in cache without the "
             f"call's fixed cost, i.e. the rate of the arithmetic. Target ≥ {TARGET_RATIO:g}×: "
             f"{met} of {len(frame)} cells meet it; {frame.in_cache_ratio.isna().sum()} slopes "
             f"not measured (–: the larger tensor's median call was not the slower). "
             f"Streaming read (one thread): median "
             f"{probes.median():.1f} GB/s (range {probes.min():.1f} to {probes.max():.1f})."]
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
    return "\n".join(lines)


def sample_list(frame):
    """"batch NCHW 8x56x56, ..." for the report."""
    samples = frame.drop_duplicates(["subset", "layout"])
    return ", ".join(f"{row.subset} {row.layout} {row.sample}" for row in samples.itertuples())


def ratio_mark(value):
    if pd.isna(value):
        return "–"
    return f"{value:.1f}{'' if value >= TARGET_RATIO else ' ✗'}"
