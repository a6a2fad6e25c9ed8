"""What only a real GPU can show (each test skips under the simulator and without a GPU; the
prepared device run, tools/gpu_run.py, runs them with the rest of tests/gpu on the hardware):
launch geometry against the compiled CPU kernels on a realistic tensor, 64-bit indexing past
2**31 elements, PyTorch tensors in and out, and the timing code of studies/gpu_check.py with real
CUDA events and the hold kernel."""
import numpy as np
import pytest
from numba import config, cuda

import numerics
from numerics import gpu
from studies import gpu_check
from helpers import assert_bitwise_equal

pytestmark = pytest.mark.skipif(
    config.ENABLE_CUDASIM or not cuda.is_available(),
    reason="needs a real GPU: the simulator runs Python, not the compiled kernels")

FAST = gpu.TOPOLOGIES[gpu.FAST_TOPOLOGY]


@pytest.mark.parametrize("layout", numerics.LAYOUTS)
def test_every_geometry_gives_the_cpu_kernels_bits(layout):
    """Threads per CUDA block from one warp to 1024 threads: the same bits, and those of the
    compiled CPU kernels replaying the same topology, for every rule on a (8, 64, 56, 56) tensor."""
    x = gpu_check.check_input("float32", layout, seed=1, shape=(8, 64, 56, 56))
    for algorithm in numerics.ALGORITHMS:
        options = dict(groups=32, layout=layout, algorithm=algorithm, topology=FAST)
        on_cpu = numerics.moments(x, "group", device="cpu", **options)
        for threads in (32, 64, 256, 1024):
            on_gpu = numerics.moments(x, "group", device="cuda", threads_per_block=threads,
                                      **options)
            assert_bitwise_equal(on_gpu.mean, on_cpu.mean)
            assert_bitwise_equal(on_gpu.var, on_cpu.var)


def test_a_tensor_past_2_to_the_31_elements():
    """Two InstanceNorm groups of 2**30 + 8 float16 values: the second group's offsets pass
    2**31. The GPU gives the compiled CPU kernels' bits (4.3 GB on each side)."""
    n = 2 ** 30 + 8
    rng = np.random.default_rng(0)
    x = np.empty((1, 2, n), np.float16)
    for channel in range(2):
        x[0, channel] = rng.random(n, dtype=np.float32) + np.float32(3 * channel)
    options = dict(algorithm="welford", topology=FAST)
    on_gpu = numerics.moments(cuda.to_device(x), "instance", device="cuda", **options)
    on_cpu = numerics.moments(x, "instance", device="cpu", **options)
    assert_bitwise_equal(on_gpu.mean.copy_to_host(), on_cpu.mean)
    assert_bitwise_equal(on_gpu.var.copy_to_host(), on_cpu.var)
    # uniform on [3c, 3c + 1): mean 3c + 1/2, variance 1/12, to float16 input resolution
    np.testing.assert_allclose(on_cpu.mean.ravel(), [0.5, 3.5], rtol=1e-3)
    np.testing.assert_allclose(on_cpu.var.ravel(), [1 / 12] * 2, rtol=1e-2)


def test_torch_tensors_in_device_arrays_out():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    x = gpu_check.check_input("float16", "NHWC", seed=2, shape=(4, 64, 8, 8))
    on_device = numerics.moments(torch.from_numpy(x).cuda(), "batch", layout="NHWC",
                                 topology=FAST, device="cuda")
    on_host = numerics.moments(x, "batch", layout="NHWC", topology=FAST)
    assert_bitwise_equal(on_device.var.copy_to_host(), on_host.var)
    assert_bitwise_equal(on_device.mean.copy_to_host(), on_host.mean)


def test_the_timing_code_on_the_gpu(tmp_path):
    """Real events, the hold kernel, the copy yardstick, PyTorch on the same memory, the accuracy
    and bit checks of every timed rule, and the registry's frameworks on the GPU."""
    profile = gpu_check.Profile("hardware-test", (2, 8, 32, 32), (), (256, 64),
                                ((4, 64, 16, 16),), ("float32", "float16"),
                                (("batch", None), ("group", 32)), ("welford", "two_pass"),
                                gpu_check.Repeats(1, 2, 3))
    rows = gpu_check.timings(profile, True, 1)
    ours = [row for row in rows if row["implementation"].startswith("numerics ")]
    assert len(ours) == 2 * 2 * 2 * 2
    for row in ours:
        assert row["device_ms"] > 0 and row["copy_gbs"] > 0 and row["share"] > 0, row
        assert row["reproducible"] and row["geometry_bitwise"] and row["within_bound"], row
    for row in rows:
        # float16 results (torch.var_mean of float16 input) carry 2**-11 of rounding
        assert row["var_max_relative_error"] < 1e-3, row
    framework_rows = gpu_check.frameworks(profile, 1, tmp_path)
    ran = {row["implementation"] for row in framework_rows if "error" not in row}
    assert {"torch batch_norm", "flax BatchNorm fast"} <= ran, framework_rows
    for row in framework_rows:
        if "error" not in row:
            # variances recovered from a float16 output carry a few float16 units
            assert row["device_ms"] > 0 and row["var_max_relative_error"] < 1e-2, row
    markdown = gpu_check.render({"gpu": "test", "compute_capability": "9.0", "driver": "x"},
                                profile, None, rows, framework_rows=framework_rows)
    assert "## Targets" in markdown and "not measured on a GPU" not in markdown
