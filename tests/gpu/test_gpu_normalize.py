"""normalize on the GPU: bitwise the CPU's output (fma="separate") under the simulator or on a GPU,
and the elementwise kernel compiled to real PTX: IEEE square root and reciprocal, products that
are never fused (docs/architecture.md traps 2 and 7)."""
import numpy as np
import pytest

from numerics import data
from numerics.normalization import normalize
from gpu_cases import printed_builds, requires_kernels
from helpers import assert_bitwise_equal


CASES = [("batch", "NCHW", None), ("layer", "NHWC", None), ("instance", "NCHW", None),
         ("group", "NHWC", 2)]
FORMAT_PAIRS = [("float32", "float32"), ("float16", "float32"), ("bfloat16", "bfloat16"),
                ("float32", "float16"), ("float64", "float64"), ("float64", "bfloat16")]


#: every format pair and every layer once (the simulator runs a kernel thread by thread)
COMBINATIONS = [pair + CASES[index % len(CASES)] for index, pair in enumerate(FORMAT_PAIRS)]


@requires_kernels
@pytest.mark.parametrize("input_format, acc_format, norm, layout, groups", COMBINATIONS)
def test_gpu_output_is_bitwise_the_cpu_output(input_format, acc_format, norm, layout, groups):
    x = data.generate((3, 4, 5, 4), input_format, "normal", mean=3.0, std=2.0, seed=11)
    rng = np.random.default_rng(5)
    channels = 4
    arguments = dict(groups=groups, layout=layout, eps=1e-3, acc_dtype=acc_format,
                     weight=rng.normal(1, 0.2, channels).astype(np.float32),
                     bias=rng.normal(0, 1, channels).astype(np.float16) if norm != "layer" else None,
                     output_dtype="bfloat16" if input_format == "float64" else None,
                     algorithm="welford", topology="tree")
    on_cpu = normalize(x, norm, **arguments)
    # 32 threads per CUDA block: the 240 elements take several blocks
    on_gpu = normalize(x, norm, device="cuda", threads_per_block=32, **arguments)
    assert on_gpu.dtype == on_cpu.dtype
    assert_bitwise_equal(on_gpu, on_cpu)


@requires_kernels
def test_gpu_negative_variance_gives_nan_like_the_cpu():
    x = data.with_condition((8, 2, 16), 1e5, "float32", "normal", seed=1, norm="instance")
    arguments = dict(eps=0.0, algorithm="naive", topology="sequential")
    on_cpu = normalize(x, "instance", **arguments)
    assert np.isnan(on_cpu).any()
    on_gpu = normalize(x, "instance", device="cuda", **arguments)
    # NaN is NaN: numpy's square root of a negative sets the sign bit, the GPU's does not
    np.testing.assert_array_equal(np.isnan(on_gpu), np.isnan(on_cpu))
    finite = ~np.isnan(on_cpu)
    assert_bitwise_equal(on_gpu[finite], on_cpu[finite])


@requires_kernels
@pytest.mark.parametrize("input_format, acc_format, norm, layout, groups",
                         [("float32", "float32", "layer", "NCHW", None),
                          ("bfloat16", "float16", "group", "NHWC", 2)])
def test_correctly_rounded_statistics_normalize_on_the_gpu_as_on_the_cpu(input_format, acc_format,
                                                                          norm, layout, groups):
    """The correctly rounded rule's GPU statistics (numerics.gpu_correctly_rounded) feed the
    elementwise kernel as the CPU's feed numpy: the same bits."""
    x = data.generate((3, 4, 5, 4), input_format, "normal", mean=3.0, std=2.0, seed=12)
    arguments = dict(groups=groups, layout=layout, eps=1e-3, acc_dtype=acc_format,
                     algorithm="correctly_rounded")
    on_cpu = normalize(x, norm, **arguments)
    on_gpu = normalize(x, norm, device="cuda", threads_per_block=32, **arguments)
    assert on_gpu.dtype == on_cpu.dtype
    assert_bitwise_equal(on_gpu, on_cpu)


COMPILE = """
import re
from numerics import gpu_compile, gpu_normalize
wanted = {"normalize/float32->float32", "normalize/bfloat16->bfloat16", "normalize/float64->float64"}
for label, fma, function, signature in gpu_normalize.specializations():
    if label in wanted:
        for cc, ptx in gpu_compile.ptx_by_cc(function, signature).items():
            operations = sorted(set(re.findall(r"\\b(fma\\.rn|mul\\.rn|sqrt\\.rn|rcp\\.rn|div\\.rn)", ptx)))
            print(label, f"{cc[0]}.{cc[1]}", ",".join(operations))
"""


def test_the_kernel_compiles_to_ptx_without_fused_multiply_adds():
    builds = printed_builds(COMPILE)
    assert len(builds) == 6
    for label, cc, operations in builds:
        found = set(operations.split(","))
        assert "fma.rn" not in found, (label, cc)
        assert {"mul.rn", "sqrt.rn"} <= found, (label, cc, found)
        assert found & {"rcp.rn", "div.rn"}, (label, cc, found)  # IEEE 1/x, not rcp.approx


def test_every_format_pair_has_a_specialization():
    from numerics import gpu, gpu_normalize
    labels = [label for label, *_ in gpu_normalize.specializations()]
    assert labels == [f"normalize/{pair[0]}->{pair[1]}" for pair in gpu.FORMAT_PAIRS]
