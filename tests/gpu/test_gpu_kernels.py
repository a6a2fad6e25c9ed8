"""The GPU kernels, under numba-cuda's simulator (or on a GPU): every rule, subset, layout, input and
accumulator format and ddof, each run checked bit for bit against the CPU replay of the same
topology (numerics.replay everywhere, the compiled CPU kernels of numerics.moments(device="cpu")
on a covering subset) and against the exact reference within the rule's bound.

The simulator runs every CUDA thread as a Python thread (about 3 ms each), so the tensors are small
and the topologies are too: lanes of 4 to 16 with units of 2 lanes' worth, so that every group
spans several units, several units share a CUDA block, and last units are partial. A full product
of rule x subset x layout x format pair x ddof (1344 runs) would take an hour; the matrix below
covers every rule x subset x layout, and every rule family x format pair, with ddof, spatial rank
and topology rotating through both. Tests with 64 and 128 lanes run the cross-warp merge."""
import numpy as np
import pytest
from numba import cuda

import numerics
from numerics import gpu, replay
from numerics.topology import Topology
from gpu_cases import assert_within_bound, gpu_and_replay, requires_kernels, sample
from helpers import assert_bitwise_equal

pytestmark = requires_kernels

SUBSET_LAYOUTS = [(norm, groups, layout) for norm, groups in
                  (("batch", None), ("layer", None), ("instance", None), ("group", 2))
                  for layout in numerics.LAYOUTS]
#: (topology, threads per block): several units per group (groups of 15 to 60 elements), several
#: units per CUDA block, partial units, and 5 or 6 elements per lane, so that a thread runs the
#: four-loads-in-flight loop and the loop after it
SMALL_TOPOLOGIES = [(Topology(4, 20), 16), (Topology(2, 12), 8), (Topology(8, 40), 32)]
#: N = 2, C = 4 (GroupNorm: 2 groups of 2 channels, so Q = 2 in channels last), 15 positions in
#: 1, 2 or 3 spatial dimensions
SPATIAL_SHAPES = [(15,), (3, 5), (3, 1, 5)]


def tensor_shape(layout, spatial):
    return (2, 4, *spatial) if layout == "NCHW" else (2, *spatial, 4)


def run_case(index, algorithm, input_format, acc_format, norm, groups, layout):
    """One run of the matrix: ddof, spatial rank and topology rotate with ``index``."""
    topology, threads_per_block = SMALL_TOPOLOGIES[index % len(SMALL_TOPOLOGIES)]
    ddof = (index // 2) % 2
    x = sample(tensor_shape(layout, SPATIAL_SHAPES[index % len(SPATIAL_SHAPES)]), input_format,
               seed=index)
    result = gpu_and_replay(x, norm, groups, layout, algorithm, topology, acc_format, ddof,
                            threads_per_block)
    assert_within_bound(result, x, norm, groups, layout)
    return result


RULE_CASES = [(algorithm, norm, groups, layout)
              for algorithm in numerics.ALGORITHMS for norm, groups, layout in SUBSET_LAYOUTS]


@pytest.mark.parametrize("index", range(len(RULE_CASES)),
                         ids=["-".join(str(part) for part in case if part is not None)
                              for case in RULE_CASES])
def test_every_rule_subset_and_layout(index):
    algorithm, norm, groups, layout = RULE_CASES[index]
    # 5 is prime to the 14 format pairs: each rule meets 8 different pairs
    input_format, acc_format = gpu.FORMAT_PAIRS[(5 * index) % len(gpu.FORMAT_PAIRS)]
    run_case(index, algorithm, input_format, acc_format, norm, groups, layout)


RULES_BY_FAMILY = {family: [name for name, rule in numerics.ALGORITHMS.items()
                            if rule.family == family] for family in gpu.FAMILIES}
FORMAT_CASES = [(family, input_format, acc_format) for family in gpu.FAMILIES
                for input_format, acc_format in gpu.FORMAT_PAIRS]


@pytest.mark.parametrize("index", range(len(FORMAT_CASES)),
                         ids=["-".join(case) for case in FORMAT_CASES])
def test_every_format_pair_of_every_rule_family(index):
    family, input_format, acc_format = FORMAT_CASES[index]
    rules = RULES_BY_FAMILY[family]
    norm, groups, layout = SUBSET_LAYOUTS[(3 * index) % len(SUBSET_LAYOUTS)]
    run_case(index, rules[index % len(rules)], input_format, acc_format, norm, groups, layout)


@pytest.mark.parametrize("algorithm, input_format, norm, groups, layout, shape, topology, threads", [
    # segments kernel: 2 and 4 warps per unit, 2 to 4 units per group
    ("welford", "float32", "layer", None, "NCHW", (2, 4, 16, 16), Topology(64, 320), 64),
    ("corrected_two_pass", "float16", "layer", None, "NCHW", (2, 4, 8, 16), Topology(128, 256), 128),
    ("parallel_merge", "bfloat16", "group", 2, "NCHW", (2, 4, 8, 8), Topology(64, 64), 128),
    # rows kernel: 64 lane-rows of one column (Q = 1), 16 lane-rows of 4 columns (GroupNorm, Q = 4)
    ("naive", "float32", "batch", None, "NHWC", (2, 8, 8, 4), Topology(64, 64), 64),
    ("shifted", "float64", "group", 2, "NHWC", (2, 16, 16, 8), Topology(64, 320), 64),
    ("two_pass", "float32", "instance", None, "NHWC", (2, 16, 16, 4), Topology(128, 128), 128),
])
def test_several_warps_per_unit(algorithm, input_format, norm, groups, layout, shape, topology,
                                threads):
    """Above 32 lanes the lane tree halves inside each warp first, then over the warp results."""
    x = sample(shape, input_format, seed=topology.lanes)
    result = gpu_and_replay(x, norm, groups, layout, algorithm, topology, "float32", 1, threads,
                            with_cpu_kernels=True)
    assert dict(result.run.details)["units_per_group"] >= 2
    assert_within_bound(result, x, norm, groups, layout)


@pytest.mark.parametrize("algorithm, input_format, acc_format, norm, groups, layout", [
    ("two_pass", "float32", "float32", "group", 2, "NCHW"),
    ("welford", "float16", "float32", "layer", None, "NHWC"),
    ("parallel_merge", "float64", "float64", "batch", None, "NCHW"),
    ("corrected_two_pass", "bfloat16", "bfloat16", "batch", None, "NHWC"),
    ("welford", "float32", "float16", "instance", None, "NHWC"),
    ("shifted", "float64", "float32", "group", 2, "NHWC"),
])
def test_the_cpu_kernels_replay_the_gpu(algorithm, input_format, acc_format, norm, groups, layout):
    """numerics.moments(device="cpu") with the GPU's topology: each rule family on both kernels,
    vector and emulated 16-bit CPU paths, 32 lanes (one warp) in units of 64 elements."""
    x = sample(tensor_shape(layout, (4, 8)), input_format, seed=len(algorithm))
    result = gpu_and_replay(x, norm, groups, layout, algorithm, Topology(32, 64), acc_format, 1, 64,
                            with_cpu_kernels=True)
    assert_within_bound(result, x, norm, groups, layout)


@pytest.mark.parametrize("layout", numerics.LAYOUTS)
def test_threads_per_block_does_not_change_the_bits(layout):
    """CUDA block size is launch geometry, not topology: 1, 2 or 8 units per CUDA block (segments),
    or fewer threads each owning more lanes (rows), give the same bits."""
    x = sample(tensor_shape(layout, (3, 5)), "float32", seed=7)
    results = [numerics.moments(x, "group", groups=2, layout=layout, algorithm="parallel_merge",
                                topology=Topology(16, 32), device="cuda", threads_per_block=threads)
               for threads in (16, 32, 128)]
    for result in results[1:]:
        assert_bitwise_equal(result.mean, results[0].mean)
        assert_bitwise_equal(result.var, results[0].var)
    assert [dict(r.run.details)["threads_per_block"] for r in results] != [16, 16, 16]


@pytest.mark.parametrize("topology", ["sequential", "pairwise", "lanes", "blocked"])
def test_the_cpu_presets_run_on_the_gpu(topology):
    """Any topology runs: one lane (one thread per unit), one element per unit (the pairwise tree
    entirely in the second pass), one unit per group."""
    x = sample((2, 3, 5), "float32", seed=11)
    result = gpu_and_replay(x, "instance", None, "NCHW", "welford", topology, "float32", 0, 32)
    assert_within_bound(result, x, "instance", None, "NCHW")


def test_the_fast_topology():
    x = sample((2, 4, 40, 40), "float16", seed=3)
    result = gpu_and_replay(x, "layer", None, "NCHW", "welford", gpu.TOPOLOGIES[gpu.FAST_TOPOLOGY],
                            "float32", 0, 256, with_cpu_kernels=True)
    assert_within_bound(result, x, "layer", None, "NCHW")


def test_fused_multiply_add_is_recorded_and_within_bound():
    """The simulator's FMA rounds twice, so a fused run can only be checked against its bound
    here; numerics.gpu_compile shows the fma.rn of the real build."""
    x = sample((2, 4, 3, 5), "float32", seed=5)
    for algorithm in ("naive", "welford", "parallel_merge"):
        result = gpu_and_replay(x, "group", 2, "NCHW", algorithm, Topology(8, 16), "float32", 0,
                                32, fma="fused")
        assert dict(result.run.details)["fma"] == "fused"
        assert_within_bound(result, x, "group", 2, "NCHW")


def test_the_run_records_the_gpu_launch():
    x = sample((2, 4, 3, 5), "float32", seed=1)
    run = numerics.moments(x, "batch", topology=Topology(8, 16), device="cuda",
                           threads_per_block=32).run
    assert run.device == "cuda" and run.kernel == "cuda_segments"
    assert dict(run.details) == {"fma": "separate", "lanes": 8, "block": 16,
                                 "kernel": "cuda_segments", "threads_per_block": 32,
                                 "cuda_blocks": 2, "units_per_group": 2}
    assert run.as_dict()["details"]["fma"] == "separate"


def test_device_arrays_stay_on_the_device():
    """Device arrays in, device arrays out (compute dtype, no copy back); clamp runs there too."""
    # |mean|/std = 1e4 in float32: the naive rule's S goes negative in some groups
    x = numerics.data.generate((4, 4, 4, 8), "float32", "normal", mean=1e4, std=1.0, seed=2)
    options = dict(groups=2, algorithm="naive", topology=Topology(16, 32), device="cuda",
                   threads_per_block=32)
    on_host = numerics.moments(x, "group", **options)
    assert np.any(on_host.var < 0), "the clamp needs a negative variance to act on"
    on_device = numerics.moments(cuda.to_device(x), "group", **options)
    assert not isinstance(on_device.mean, np.ndarray) and on_device.mean.shape == (4, 2)
    assert_bitwise_equal(on_device.mean.copy_to_host(), on_host.mean)
    assert_bitwise_equal(on_device.var.copy_to_host(), on_host.var)
    clamped = numerics.moments(cuda.to_device(x), "group", clamp=True, **options)
    assert_bitwise_equal(clamped.var.copy_to_host(), np.maximum(on_host.var, 0))
    half = numerics.data.generate((2, 4, 3, 5), "float16", "normal", mean=3.0, std=1.0, seed=4)
    from_device = numerics.moments(cuda.to_device(half), "layer", topology=Topology(8, 16),
                                   device="cuda", threads_per_block=32)
    from_host = numerics.moments(half, "layer", topology=Topology(8, 16))
    assert_bitwise_equal(from_device.var.copy_to_host(), from_host.var)


# the simulator computes in its own threads, where statistics.moments' np.errstate does not reach
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_and_inf_stay_in_their_group_and_too_few_elements_give_nan():
    x = sample((2, 3, 2, 2), "float32", seed=9)
    x[0, 0, 1, 1] = np.nan
    x[1, 2, 0, 0] = np.inf
    for algorithm in numerics.ALGORITHMS:
        options = dict(algorithm=algorithm, topology=Topology(2, 2))
        on_gpu = numerics.moments(x, "instance", device="cuda", threads_per_block=4, **options)
        replay_mean, replay_var = replay.moments(x, "instance", **options)
        # NaN payloads may differ between a GPU and x86 (canonical NaN): compare as values
        np.testing.assert_array_equal(on_gpu.mean, replay_mean)
        np.testing.assert_array_equal(on_gpu.var, replay_var)
        assert np.isnan(on_gpu.var[0, 0]) and np.all(np.isfinite(on_gpu.var[0, 1:]))
    single = sample((2, 3, 1), "float32", seed=10)
    with pytest.warns(RuntimeWarning, match="degrees of freedom"):
        result = numerics.moments(single, "instance", ddof=1, topology=Topology(2, 2),
                                  device="cuda", threads_per_block=4)
    assert np.all(np.isnan(result.var)) and np.array_equal(result.mean, single[..., 0])


@pytest.mark.parametrize("option, value, message", [
    ("fma", "contracted", "fma must be one of"),
    ("threads_per_block", 48, "threads_per_block must be a power of two"),
    ("threads_per_block", 2048, "threads_per_block must be a power of two"),
])
def test_bad_device_options_name_the_argument(option, value, message):
    with pytest.raises(ValueError, match=message):
        numerics.moments(np.ones(4, np.float32), device="cuda", **{option: value})


def test_device_arrays_on_the_cpu_are_refused():
    with pytest.raises(ValueError, match="device array"):
        numerics.moments(cuda.to_device(np.ones(4, np.float32)), device="cpu")
    with pytest.raises(ValueError, match="float64 device array"):
        numerics.moments(cuda.to_device(np.ones(4)), acc_dtype="float16", device="cuda")
