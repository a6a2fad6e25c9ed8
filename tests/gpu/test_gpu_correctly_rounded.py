"""algorithm="correctly_rounded" on the GPU: the same bits as the CPU (both are the correctly
rounded exact values), under the simulator or on a GPU; the fast-path kernel compiled to real PTX
outside the simulator."""
import numpy as np
import pytest
from numba import cuda

import numerics
from numerics import precision
from gpu_cases import printed_builds, requires_kernels
from helpers import assert_bitwise_equal


CASES = [("batch", "NCHW", None), ("layer", "NHWC", None), ("instance", "NHWC", None),
         ("group", "NCHW", 2), ("batch", "NHWC", None)]
FORMAT_PAIRS = [("float32", "float32"), ("float16", "float16"), ("bfloat16", "float32"),
                ("float64", "bfloat16"), ("float64", "float64"), ("float32", "float16")]


def both_devices(x, norm, **arguments):
    on_cpu = numerics.moments(x, norm, algorithm="correctly_rounded", **arguments)
    on_gpu = numerics.moments(x, norm, algorithm="correctly_rounded", device="cuda",
                              threads_per_block=32, **arguments)
    assert_bitwise_equal(on_gpu.mean, on_cpu.mean)
    assert_bitwise_equal(on_gpu.var, on_cpu.var)
    assert on_gpu.run.kernel == "correctly_rounded.cuda"
    return on_cpu, on_gpu


@requires_kernels
@pytest.mark.parametrize("index", range(len(FORMAT_PAIRS)))
def test_gpu_is_bitwise_the_cpu(index):
    input_format, output_format = FORMAT_PAIRS[index]
    norm, layout, groups = CASES[index % len(CASES)]
    rng = np.random.default_rng(index)
    x = precision.convert(rng.normal(1e3 if index % 2 else 0.5, 1.0, (3, 4, 5, 2)), input_format)
    for ddof in (0, 1):
        _, on_gpu = both_devices(x, norm, groups=groups, layout=layout, ddof=ddof,
                                 acc_dtype=output_format)
        if output_format != "float64":  # the GPU's fast path certifies, not only the exact path
            assert dict(on_gpu.run.details)["certified_groups"] > 0


@requires_kernels
def test_gpu_ties_nonfinite_and_device_arrays():
    # a float16 mean tie (1 and 1 + 2**-10: the midpoint of two float16 neighbours), a NaN group,
    # a group past float16's range
    x = np.array([[1.0, 1.0 + 2.0 ** -10], [1.0, np.nan], [7e4, 7.001e4]], np.float32)
    both_devices(x, "layer", acc_dtype="float16")
    x = np.random.default_rng(7).normal(3.0, 1.0, (2, 3, 4)).astype(np.float32)
    on_cpu = numerics.moments(x, "instance", algorithm="correctly_rounded")
    on_gpu = numerics.moments(cuda.to_device(x), "instance", algorithm="correctly_rounded",
                              device="cuda")
    assert_bitwise_equal(on_gpu.mean, on_cpu.mean)
    assert_bitwise_equal(on_gpu.var, on_cpu.var)


@requires_kernels
def test_gpu_bad_options():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="threads_per_block"):
        numerics.moments(x, "layer", algorithm="correctly_rounded", device="cuda",
                         threads_per_block=48)
    with pytest.raises(TypeError, match="fma"):
        numerics.moments(x, "layer", algorithm="correctly_rounded", device="cuda", fma="fused")
    with pytest.raises(ValueError, match="float32 or float64"):
        numerics.moments(cuda.to_device(x.astype(np.float16)), "layer", algorithm="correctly_rounded",
                         device="cuda")


COMPILE = """
from numerics import gpu_compile, gpu_correctly_rounded
for label, function, signature in gpu_correctly_rounded.specializations():
    for cc, ptx in gpu_compile.ptx_by_cc(function, signature).items():
        print(label, f"{cc[0]}.{cc[1]}", ".entry" in ptx)
"""


def test_kernel_compiles_to_ptx():
    builds = printed_builds(COMPILE)
    assert len(builds) == 2 * 2 and all(entry == "True" for *_, entry in builds), builds

