"""studies/gpu_check.py, the parts that run without a GPU: its refusal without one, one correctness
check per kernel under the simulator, PyTorch's grouping of every subset (on the CPU build of
torch), the clock's arithmetic and the report's verdicts. The timings themselves need a GPU."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numerics
from gpu_cases import requires_kernels
from studies import gpu_check

REPOSITORY = Path(__file__).resolve().parents[2]


def test_without_a_gpu_it_exits_2_and_says_what_runs_instead():
    environment = {name: value for name, value in os.environ.items()
                   if name != "NUMBA_ENABLE_CUDASIM"}
    finished = subprocess.run([sys.executable, "-m", "studies.gpu_check"], cwd=REPOSITORY,
                              env=environment, capture_output=True, text=True, timeout=120)
    if finished.returncode == 0:
        pytest.skip("this machine has a GPU")
    assert finished.returncode == 2, finished.stderr
    assert "needs an NVIDIA GPU" in finished.stderr
    assert "make test-gpu-simulator" in finished.stderr and "make gpu-compile" in finished.stderr


@requires_kernels
@pytest.mark.parametrize("case", [
    ("separate", "float16", "float32", "welford", "segments", "NCHW", 1),
    ("fused", "float32", "bfloat16", "two_pass", "rows", "NHWC", 0),
])
def test_one_correctness_check_per_kernel(case):
    # a smaller tensor than the real run's: the simulator runs every CUDA thread in Python
    row = gpu_check.check_case(case, seed=0, shape=(2, 8, 4, 8))
    assert row["passed"], row
    assert row["kernel_ran"] == f"cuda_{case[4]}"
    assert row.get("replay_bitwise", case[0] == "fused")


def test_every_specialization_is_checked():
    cases = gpu_check.correctness_cases()
    assert len(cases) == len(set(cases)) == 2 * 14 * 6 * 2
    assert {case[4] for case in cases} == {"segments", "rows"}


@pytest.mark.parametrize("layout", numerics.LAYOUTS)
@pytest.mark.parametrize("norm, groups", gpu_check.SUBSETS)
def test_torch_statistics_reduce_the_same_groups(norm, groups, layout):
    torch = pytest.importorskip("torch")
    shape = (2, 64, 3, 5)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) + 3
    if layout == "NHWC":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    label, call = gpu_check.torch_statistics(torch, torch.from_numpy(x), norm, groups, layout)[0]
    assert label == "torch.var_mean"
    var, mean = call()
    expected = numerics.moments(x.astype(np.float64), norm, groups=groups, layout=layout)
    np.testing.assert_allclose(var.numpy().reshape(expected.var.shape), expected.var, rtol=1e-5)
    np.testing.assert_allclose(mean.numpy().reshape(expected.mean.shape), expected.mean, rtol=1e-6)


class FakeEvent:
    """An event whose elapsed time to any other is 50 ms."""

    def record(self):
        pass

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return 50.0


def test_the_clock_divides_a_batch_by_its_calls():
    holds, calls = [], []
    clock = gpu_check.DeviceClock(holds.append, lambda: (FakeEvent(), FakeEvent()), lambda: None)
    device_ms, latency_ms = clock.time(lambda: calls.append(1))
    assert device_ms == 50.0 / gpu_check.CALLS_PER_BATCH
    assert latency_ms >= 0 and len(holds) == gpu_check.BATCHES and min(holds) >= 20.0
    assert len(calls) == (gpu_check.WARM_UP_CALLS + gpu_check.CALLS_PER_BATCH
                          + gpu_check.BATCHES * gpu_check.CALLS_PER_BATCH)


def test_the_report_states_both_targets():
    common = {"shape": "8x64x56x56", "input_dtype": "float32", "layout": "NCHW", "bytes": 8e8,
              "copy_gbs": 3000.0}
    rows = [gpu_check.timing_row(common, "batch", "numerics welford", 1, 0.4, 0.5, True),
            gpu_check.timing_row(common, "batch", "numerics two_pass", 2, 0.8, 0.9, True),
            gpu_check.timing_row(common, "batch", "torch.var_mean", 1, 0.5, 0.6, None)]
    text = "\n".join(gpu_check.targets_section(rows))
    # 8e8 bytes in 0.4 ms: 2000 GB/s, 0.67 of the copy; two_pass 1000 GB/s
    assert "0 of 2 cells" in text and "welford 0.67" in text and "two_pass 0.33" in text
    assert "1 of 2 cells" in text and "two_pass 1" in text
    assert "Bitwise reproducible (first and last timed call): 2 of 2" in text
    correctness_rows = [dict(fma="separate", input_dtype="float32", acc_dtype="float32",
                             algorithm="naive", kernel="rows", layout="NHWC", ddof=0,
                             reproducible=True, replay_bitwise=False,
                             variance_error_over_bound=0.1, mean_error_over_bound=0.1,
                             passed=False)]
    device = {"gpu": "test GPU", "compute_capability": "9.0", "driver": "13.0", "numba": "x"}
    markdown = gpu_check.render(device, correctness_rows, rows)
    assert "0 passed, 1 failed" in markdown and "Failed checks" in markdown
    assert "### 8x64x56x56, float32 input (copy: NCHW 3000 GB/s)" in markdown
