"""studies/gpu_check.py and the prepared device run (tools/gpu_run.py), the parts that run without a
GPU: the refusal without one, one correctness check per kernel under the simulator, the
frameworks' grouping of every subset (on CPU builds), the registry's rows, the clocks' arithmetic,
the report's verdicts, the choice of numba-cuda and the install of a carried wheel, and the whole
device run end to end under the simulator on the smoke profile. The timings themselves need a GPU
(tests/gpu/test_gpu_hardware.py)."""
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas
import pytest

import numerics
from gpu_cases import requires_kernels
from studies import gpu_check

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY / "tools"))
import gpu_run  # noqa: E402 (tools/ is not a package)


def without_simulator():
    return {name: value for name, value in os.environ.items() if name != "NUMBA_ENABLE_CUDASIM"}


def test_without_a_gpu_it_exits_2_and_says_what_runs_instead():
    has_gpu = subprocess.run([sys.executable, "-c", "from numba import cuda; "
                              "print(cuda.is_available())"], env=without_simulator(),
                             capture_output=True, text=True, timeout=120)
    if has_gpu.stdout.strip() == "True":
        pytest.skip("this machine has a GPU: the check would run")
    finished = subprocess.run([sys.executable, "-m", "studies.gpu_check"], cwd=REPOSITORY,
                              env=without_simulator(), capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2, finished.stderr
    assert "needs an NVIDIA GPU" in finished.stderr
    assert "make test-gpu-simulator" in finished.stderr and "make gpu-compile" in finished.stderr


def test_under_the_simulator_only_the_smoke_profile_runs(tmp_path):
    finished = subprocess.run([sys.executable, "-m", "studies.gpu_check", "--profile", "quick",
                               "--output", str(tmp_path)], cwd=REPOSITORY,
                              env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 1 and "only --profile smoke runs" in finished.stderr
    assert list(tmp_path.iterdir()) == []


@requires_kernels
@pytest.mark.parametrize("case", [
    ("separate", "float16", "float32", "welford", "segments", "NCHW", 1),
    ("fused", "float32", "bfloat16", "two_pass", "rows", "NHWC", 0),
])
def test_one_correctness_check_per_kernel(case):
    # a smaller tensor than the real run's: the simulator runs every CUDA thread in Python
    row = gpu_check.check_case(case, seed=0, shape=(2, 8, 4, 8), geometries=(32, 64))
    assert row["passed"], row
    assert row["kernel_ran"] == f"cuda_{case[4]}"
    assert row["geometry_bitwise"] and row["reproducible"]
    assert row.get("replay_bitwise", case[0] == "fused")


def test_every_specialization_is_checked_and_smoke_takes_one_per_kernel():
    cases = gpu_check.correctness_cases()
    assert len(cases) == len(set(cases)) == 2 * 14 * 6 * 2
    assert {case[4] for case in cases} == {"segments", "rows"}
    smoke = gpu_check.correctness_cases(gpu_check.PROFILES["smoke"])
    assert len(smoke) == 2 and {case[4] for case in smoke} == {"segments", "rows"}
    assert {case[0] for case in smoke} == {"separate", "fused"}


def test_the_default_profile_times_the_cnn_shapes_in_both_formats():
    profile = gpu_check.PROFILES["default"]
    assert profile.timing_shapes == ((32, 256, 56, 56), (8, 64, 224, 224))
    assert profile.timing_inputs == ("float32", "float16") and profile.rules is None
    assert profile.subsets == gpu_check.SUBSETS and len(set(profile.geometries)) >= 3
    assert gpu_check.correctness_cases(profile) == gpu_check.correctness_cases()


def logical_statistics(x, norm, groups, layout):
    """(variance, mean) of each group of ``x`` (stored in ``layout``) in float64, grouped by
    numerics.canonical_view: the grouping the frameworks' calls must reproduce."""
    view = numerics.canonical_view(x.shape, norm, groups, layout)
    values = np.asarray(x, np.float64).reshape(view.view_shape)
    return (values.var(axis=(1, 3)).reshape(view.stats_shape),
            values.mean(axis=(1, 3)).reshape(view.stats_shape))


def stored_sample(layout):
    x = np.random.default_rng(0).standard_normal((2, 64, 3, 5)).astype(np.float32) + 3
    return gpu_check.stored(x, layout)


@pytest.mark.parametrize("layout", numerics.LAYOUTS)
@pytest.mark.parametrize("norm, groups", gpu_check.SUBSETS)
def test_torch_statistics_reduce_the_same_groups(norm, groups, layout):
    torch = pytest.importorskip("torch")
    x = stored_sample(layout)
    expected_var, expected_mean = logical_statistics(x, norm, groups, layout)
    calls = gpu_check.torch_statistics(torch, torch.from_numpy(x), norm, groups, layout)
    assert [label for label, _ in calls][0] == "torch.var_mean"
    # torch.batch_norm_stats has a CUDA kernel only: the hardware run checks it
    for label, call in calls[:1]:
        var, mean = (np.asarray(value.double()) for value in call())
        np.testing.assert_allclose(var.reshape(expected_var.shape), expected_var, rtol=1e-5)
        np.testing.assert_allclose(mean.reshape(expected_mean.shape), expected_mean, rtol=1e-6)


def test_the_registrys_frameworks_become_rows_with_their_accuracy(monkeypatch):
    """registry_rows and attach_accuracy on the CPU entries of numerics.implementations (the GPU
    run asks for device "cuda"): every entry that computes the subset gives a timed row whose
    errors are measured against the exact statistics with its own ddof. PyTorch's entries only:
    asking the others for their devices imports TensorFlow, which alone takes seconds."""
    pytest.importorskip("torch")
    from numerics import implementations
    select = implementations.select
    monkeypatch.setattr(implementations, "select", lambda **options: tuple(
        item for item in select(**options) if item.framework == "PyTorch"))
    shape, cell = (2, 8, 2, 4), ("batch", None, "NCHW")
    x = gpu_check.timing_input(shape, "float32", "NCHW")
    common = {"shape": "2x8x2x4", "input_dtype": "float32", "layout": "NCHW", "bytes": x.nbytes,
              "subset": "batch"}
    rows = gpu_check.registry_rows(x, common, cell, gpu_check.Repeats(0, 1, 1), device="cpu")
    names = [row["implementation"] for row in rows]
    assert "torch.var_mean" in names and "torch batch_norm" in names
    exact = {("2x8x2x4", "float32", "NCHW", "batch"): gpu_check.exact_and_bounds(
        shape, "float32", "NCHW", "batch", None, (), (0, 1))}
    gpu_check.attach_accuracy(rows, exact)
    for row in rows:
        assert "error" not in row, row
        assert row["clock"] == "host clock, synchronized calls" and row["device_ms"] > 0
        # a wrong ddof would be off by n/(n-1) = 32/31
        assert row["var_max_relative_error"] < 1e-4, row
    assert {row["ddof"] for row in rows} == {0, 1}


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
    repeats = gpu_check.Repeats(warm_up=2, batches=5, per_batch=4)
    clock = gpu_check.DeviceClock(holds.append, lambda: (FakeEvent(), FakeEvent()), lambda: None,
                                  repeats)
    device_ms, latency_ms = clock.time(lambda: calls.append(1))
    assert device_ms == 50.0 / 4
    assert latency_ms >= 0 and len(holds) == 5 and min(holds) >= 20.0
    assert len(calls) == 2 + 4 + 5 * 4


def test_host_events_wait_for_the_device_then_read_the_clock():
    waits = []
    start, end = gpu_check.HostEvent(lambda: waits.append(1)), gpu_check.HostEvent(lambda: None)
    start.record()
    sum(range(100000))
    end.record()
    assert waits == [1] and end.elapsed_time(start) < 0 < start.elapsed_time(end)


COMMON = {"shape": "8x64x56x56", "input_dtype": "float32", "layout": "NCHW", "bytes": 8e8,
          "copy_gbs": 3000.0}


def timed(implementation, passes, device_ms, **checks):
    row = gpu_check.timing_row(COMMON, "batch", implementation, passes, device_ms,
                               device_ms + 0.1, "cuda events")
    return {**row, "var_max_relative_error": 1e-7, "mean_max_relative_error": 1e-8, **checks}


def test_the_report_states_every_target(tmp_path):
    good = dict(reproducible=True, geometry_bitwise=True, within_bound=True)
    rows = [timed("numerics welford", 1, 0.4, **good),
            timed("numerics two_pass", 2, 0.8, **{**good, "geometry_bitwise": False}),
            timed("torch.var_mean", 1, 0.5)]
    text = "\n".join(gpu_check.targets_section(rows))
    # 8e8 bytes in 0.4 ms: 2000 GB/s, 0.67 of the copy; two_pass 1000 GB/s
    assert "0 of 2 cells" in text and "welford 0.67" in text and "two_pass 0.33" in text
    assert "1 of 2 cells" in text and "two_pass 1" in text
    assert "Bitwise reproducible (first and last timed call): 2 of 2" in text
    assert "The same bits at every launch geometry: 1 of 2" in text
    assert gpu_check.failures(None, rows) == 1
    correctness_rows = [dict(fma="separate", input_dtype="float32", acc_dtype="float32",
                             algorithm="naive", kernel="rows", layout="NHWC", ddof=0,
                             reproducible=True, geometry_bitwise=True, replay_bitwise=False,
                             variance_error_over_bound=0.1, mean_error_over_bound=0.1,
                             passed=False)]
    device = {"gpu": "test GPU", "compute_capability": "9.0", "driver": "13.0", "numba": "x"}
    # as the report step reads them: back from parquet
    gpu_check.write_table(tmp_path / "rows.parquet", rows, gpu_check.PROFILES["default"])
    rows = gpu_check.read_rows(tmp_path / "rows.parquet")
    assert rows[2]["reproducible"] is None and not gpu_check.truthy(rows[2]["reproducible"])
    markdown = gpu_check.render(device, gpu_check.PROFILES["default"], correctness_rows, rows)
    assert "The same bits at every launch geometry: 1 of 2" in markdown
    assert "| numerics welford | 0.5 | 0.5 |" in markdown  # latency medians
    assert "0 passed, 1 failed" in markdown and "Failed checks" in markdown
    assert "### 8x64x56x56, float32 input (copy: NCHW 3000 GB/s)" in markdown
    assert "Not measured on a GPU" not in markdown


def test_a_simulator_report_claims_no_gpu_figure():
    rows = [timed("numerics welford", 1, 0.4, reproducible=True, geometry_bitwise=True,
                  within_bound=True)]
    device = {"gpu": "numba-cuda simulator (no GPU)", "simulator": True}
    markdown = gpu_check.render(device, gpu_check.PROFILES["smoke"], None, rows)
    assert markdown.startswith("# GPU check\n\n**Not measured on a GPU")
    assert "GB/s" not in markdown and "Not evaluated" in markdown and "| ran |" in markdown
    assert "No result: the step did not run" in markdown  # no correctness rows


def test_the_frameworks_section_shows_each_run_and_each_error():
    ran = {**timed("torch layer_norm", 1, 0.5), "subset": "layer", "ddof": 0,
           "exposes_variance": True}
    recovered = {**timed("flax LayerNorm fast", 1, 0.7), "subset": "layer", "ddof": 0,
                 "exposes_variance": False, "var_max_relative_error": 3e-3}
    failed = {**COMMON, "subset": "layer", "implementation": "jax.nn.standardize fast",
              "ddof": 0, "exposes_variance": False, "error": "UnsupportedError: no"}
    lines = "\n".join(gpu_check.frameworks_section([ran, recovered, failed], "missing"))
    assert "2 runs of 3 implementations" in lines
    assert "recovered from the layer's output: flax LayerNorm fast." in lines
    assert "| torch layer_norm | 0.5 ms / 1.0e-07 |" in lines
    assert "| flax LayerNorm fast | 0.7 ms / 3.0e-03 |" in lines
    assert "- `jax.nn.standardize fast` layer NCHW float32: UnsupportedError: no" in lines
    assert gpu_check.frameworks_section(None, "missing")[-2] == "missing"


# ---- the prepared device run (tools/gpu_run.py) ----------------------------------------------------

def test_the_pins_are_read_from_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["numba==0.68.1", "numpy>=2"]\n'
                         '[project.optional-dependencies]\n'
                         'gpu = ["numba_cuda == 0.30.4", "cuda-core==1.2.2; python_version>\'3\'"]\n')
    assert gpu_run.pins(pyproject) == {"numba": "0.68.1", "numba-cuda": "0.30.4",
                                       "cuda-core": "1.2.2"}
    assert "numba-cuda" in gpu_run.pins()


class Machine:
    """A fake device: which probes pass, and whether pip can install the carried wheel."""

    def __init__(self, carried_ok=True, own_ok=True, installs=True):
        self.carried_ok, self.own_ok, self.installs = carried_ok, own_ok, installs
        self.installed = []

    def try_install(self, wheel):
        self.installed.append(wheel)
        return self.installs, "" if self.installs else "no space", Path("/tmp/site")

    def try_probe(self, site):
        ok = self.own_ok if site is None else self.carried_ok
        return {"ok": ok} if ok else {"ok": False, "error": "CudaAPIError: boom"}

    def choose(self, installed, wheel):
        return gpu_run.choose_numba_cuda("0.30.4", installed, wheel, self.try_probe,
                                         self.try_install)


WHEEL = Path("numba_cuda-0.30.4-cp312-cp312-manylinux_2_28_x86_64.whl")


def test_the_pinned_numba_cuda_on_the_machine_is_used_as_it_is():
    machine = Machine()
    decision = machine.choose("0.30.4", WHEEL)
    assert decision["ok"] and decision["used"] == "0.30.4" and decision["site"] is None
    assert machine.installed == [] and "is the pinned one" in decision["reason"]


def test_another_numba_cuda_installs_the_carried_wheel():
    machine = Machine()
    decision = machine.choose("0.31.0", WHEEL)
    assert decision["ok"] and decision["used"] == "0.30.4" and decision["site"] == "/tmp/site"
    assert machine.installed == [WHEEL] and "installed into /tmp/site" in decision["reason"]


@pytest.mark.parametrize("carried_ok, installs", [(False, True), (True, False)])
def test_a_carried_wheel_that_fails_falls_back_to_the_machines(carried_ok, installs):
    decision = Machine(carried_ok=carried_ok, installs=installs).choose("0.31.0", WHEEL)
    assert decision["ok"] and decision["used"] == "0.31.0" and decision["site"] is None
    assert [probe["ok"] for probe in decision["probes"]] == [False, True]
    assert "carried pinned wheel failed" in decision["reason"]


def test_without_a_carried_wheel_the_reason_says_how_to_carry_it():
    decision = Machine().choose("0.31.0", None)
    assert decision["ok"] and decision["used"] == "0.31.0"
    assert "gpu_run.py download" in decision["reason"]
    failed = Machine(own_ok=False).choose("0.31.0", None)
    assert not failed["ok"] and "CudaAPIError: boom" in failed["reason"]


def test_only_the_pinned_wheel_is_carried(tmp_path):
    for name in ("numba_cuda-0.29.0-cp312-cp312-x.whl", "numba_cuda-0.30.4-cp312-cp312-x.whl"):
        (tmp_path / name).write_bytes(b"")
    assert gpu_run.pinned_wheel(tmp_path, "0.30.4").name == "numba_cuda-0.30.4-cp312-cp312-x.whl"
    assert gpu_run.pinned_wheel(tmp_path, "0.31.0") is None
    assert gpu_run.pinned_wheel(None, "0.30.4") is None


def test_a_carried_wheel_installs_into_its_folder_and_comes_first(tmp_path):
    """pip install --target of a wheel (built here: a module and its dist-info), then the
    module imports from that folder through with_path's PYTHONPATH."""
    wheel = tmp_path / "carried_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("carried_probe.py", "ORIGIN = 'carried'\n")
        archive.writestr("carried_probe-1.0.dist-info/METADATA",
                         "Metadata-Version: 2.1\nName: carried-probe\nVersion: 1.0\n")
        archive.writestr("carried_probe-1.0.dist-info/WHEEL",
                         "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n")
        archive.writestr("carried_probe-1.0.dist-info/RECORD", "")
    site = tmp_path / "site"
    ok, message = gpu_run.install(sys.executable, wheel, site)
    assert ok, message
    environment = gpu_run.with_path(without_simulator(), site)
    assert environment["PYTHONPATH"].split(os.pathsep)[0] == str(site)
    seen = gpu_run.versions(sys.executable, environment, ("carried-probe", "not-a-package"))
    assert seen == {"carried-probe": "1.0", "not-a-package": None}


def test_the_device_run_end_to_end_under_the_simulator(tmp_path):
    """The one command of a GPU session, on the smoke profile: every step passes, every file lands
    in the one folder under names the device tool brings back, and the report says that nothing
    was measured on a GPU. Stale files of an earlier run are removed first."""
    (tmp_path / gpu_check.FILES["timings"]).write_text("stale, and not parquet")
    finished = subprocess.run([sys.executable, "tools/gpu_run.py", "run", "--profile", "smoke",
                               "--output", str(tmp_path), "--wheels", str(tmp_path / "none")],
                              cwd=REPOSITORY, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted(gpu_check.FILES.values())
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in names) and len(names) <= 7
    record = json.loads((tmp_path / gpu_check.FILES["run"]).read_text())
    assert [step["step"] for step in record["steps"]] == [
        "environment", "correctness", "timings", "tests", "frameworks", "report"]
    assert all(step["status"] == "passed" for step in record["steps"]), record["steps"]
    assert record["numba_cuda"]["used"] == metadata.version("numba-cuda")
    assert record["packages"]["numba-cuda"] == metadata.version("numba-cuda")
    markdown = (tmp_path / gpu_check.FILES["report"]).read_text()
    assert "**Not measured on a GPU" in markdown and "GB/s" not in markdown
    assert "2 passed, 0 failed" in markdown and "No framework of numerics.implementations" in markdown
    hardware_tests = re.search(r"`pytest tests/gpu`: (\d+) tests, 0 passed, 0 failed, 0 errors, "
                               r"(\d+) skipped", markdown)
    assert hardware_tests and hardware_tests[1] == hardware_tests[2] != "0"
    timings = pandas.read_parquet(tmp_path / gpu_check.FILES["timings"])
    assert len(timings) == 2 * 2  # subsets x layouts of the smoke profile's one rule
    assert timings.attrs["provenance"]["profile"] == "smoke"
    assert timings["geometry_bitwise"].all() and timings["within_bound"].all()


def test_a_step_out_of_time_is_stopped_with_its_workers(tmp_path):
    """run_step ends the step's whole process group: a worker the step started goes too."""
    pid_file = tmp_path / "worker.pid"
    step = ("import subprocess, sys, time\n"
            "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(worker.pid))\n"
            "time.sleep(120)\n")
    result = gpu_run.run_step("sleeper", [sys.executable, "-c", step], without_simulator(), 3)
    assert result["status"] == "ran out of time" and result["seconds"] < 30
    stat = Path(f"/proc/{pid_file.read_text()}/stat")

    def stopped():
        # gone, or a zombie waiting for init to reap it: not running either way
        try:
            return stat.read_text().split(")")[-1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    # SIGKILL is delivered when the worker is next scheduled: on a loaded machine it can still
    # read as running for a moment; it sleeps 120 s, so still running after 10 s means not killed
    deadline = time.monotonic() + 10
    while not stopped() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stopped()
