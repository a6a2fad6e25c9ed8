"""What the GPU tests share: whether kernels can run here, and the two checks every kernel run gets:
bitwise agreement with the CPU replay of the same topology, and the rule's a-priori bound against
the exact reference of the stored values."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import config, cuda

import numerics
from numerics import bounds, data, metrics, precision, reference, replay
from helpers import assert_bitwise_equal

#: kernels run under numba-cuda's simulator (make test-gpu-simulator) or on a real GPU
requires_kernels = pytest.mark.skipif(
    not (config.ENABLE_CUDASIM or cuda.is_available()),
    reason="no GPU, and NUMBA_ENABLE_CUDASIM=1 is not set (make test-gpu-simulator sets it)")

REPOSITORY = Path(__file__).resolve().parents[2]


def printed_builds(script):
    """The whitespace-split lines ``script`` prints, run in a fresh process outside the simulator
    (PTX compilation needs the real numba-cuda compiler, not the simulator's stand-in)."""
    environment = {name: value for name, value in os.environ.items()
                   if name != "NUMBA_ENABLE_CUDASIM"}
    finished = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, env=environment,
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return [line.split() for line in finished.stdout.splitlines()]


#: the "small constant" of the CPU accuracy tests: bounds.py gives leading terms without constants
BOUND_FACTOR = 2.0
#: accumulators that hold every value of the input format exactly (no rounding on the way in)
EXACT_WIDENINGS = {("float16", "float32"), ("float16", "float64"), ("bfloat16", "float32"),
                   ("bfloat16", "float64"), ("float32", "float64")}


def sample(shape, input_format, seed):
    """Mean 3, standard deviation 1 (kappa about 3): float16 sums and squares stay far from
    overflow, and every group has a spread (no S = 0 group)."""
    return data.generate(shape, input_format, "normal", mean=3.0, std=1.0, seed=seed)


def input_rounding(input_format, acc_format):
    if input_format == acc_format or (input_format, acc_format) in EXACT_WIDENINGS:
        return 0.0
    return numerics.unit_roundoff(acc_format)


def gpu_and_replay(x, norm, groups, layout, algorithm, topology, acc_format, ddof,
                   threads_per_block, fma="separate", with_cpu_kernels=False):
    """The GPU result, after checking (fma "separate") that the plain-Python replay of the same
    topology (numerics.replay, the specification every kernel reproduces) gives the same bits,
    and with ``with_cpu_kernels`` the compiled CPU kernels too. The CPU kernels compile per rule
    family, format pair and vector or scalar path (seconds each), so the big matrices compare with the replay,
    which tests/test_replay.py in turn holds the CPU kernels to."""
    options = dict(groups=groups, layout=layout, algorithm=algorithm, ddof=ddof,
                   acc_dtype=acc_format, topology=topology)
    on_gpu = numerics.moments(x, norm, device="cuda", fma=fma, threads_per_block=threads_per_block,
                              **options)
    if fma == "separate":
        replay_mean, replay_var = replay.moments(x, norm, **options)
        assert_bitwise_equal(on_gpu.mean, replay_mean)
        assert_bitwise_equal(on_gpu.var, replay_var)
    if with_cpu_kernels:
        on_cpu = numerics.moments(x, norm, device="cpu", **options)
        assert_bitwise_equal(on_gpu.mean, on_cpu.mean)
        assert_bitwise_equal(on_gpu.var, on_cpu.var)
    return on_gpu


def assert_within_bound(result, x, norm, groups, layout):
    """The rule's bound (numerics.bounds, with the topology's summation depth) on the variance and
    the mean against the exact reference of the stored values."""
    run = result.run
    view = numerics.canonical_view(x.shape, norm, groups, layout)
    n = view.group_size
    input_format = precision.format_name(x.dtype, "x")
    u = numerics.unit_roundoff(run.acc_dtype)
    epsilon = input_rounding(input_format, run.acc_dtype)
    kappa = reference.condition_number(x, norm, groups=groups, layout=layout)
    rule_kappa = (reference.shifted_condition_number(x, norm, groups=groups, layout=layout)
                  if run.algorithm == "shifted" else kappa)
    assert np.all(np.isfinite(kappa)), "every test group needs a spread"
    values = np.moveaxis(np.asarray(x, np.float64).reshape(view.view_shape), 2, 1)
    values = values.reshape(view.group_count, n)
    # the shifted rule's mean is d + sum(x - d)/n: its summation condition counts |x - d| too
    mean_condition = ((np.abs(values).sum(axis=1) + np.abs(values - values[:, :1]).sum(axis=1))
                      / np.abs(values.sum(axis=1))).reshape(view.stats_shape)
    lanes, block = run.topology.lanes, run.topology.block
    var_bound = BOUND_FACTOR * bounds.variance_bound(run.algorithm, n, rule_kappa, u, lanes, block,
                                                     input_rounding_u=epsilon, data_kappa=kappa)
    mean_bound = BOUND_FACTOR * (bounds.mean_bound(n, mean_condition, u, lanes, block)
                                 + epsilon * mean_condition)
    exact_mean, exact_var = reference.moments(x, norm, groups=groups, layout=layout, ddof=run.ddof)
    var_error = metrics.relative_error(result.var, exact_var)
    mean_error = metrics.relative_error(result.mean, exact_mean)
    assert np.all(var_error <= var_bound), (var_error / var_bound).max()
    assert np.all(mean_error <= mean_bound), (mean_error / mean_bound).max()
