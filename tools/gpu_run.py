"""The prepared GPU device run: one command, every result in one folder, inside a time budget.

    python3 tools/gpu_run.py run [--profile default] [--output DIR] [--wheels DIR] [--budget S]
    python3 tools/gpu_run.py download [--wheels DIR]   # here, where pip reaches PyPI

``run`` works with the machine's own python3 and packages, with nothing built there first. Each
step runs in its own process (its own process group, killed when its time is up, so that a hang
costs that step only) and writes its own file, atomically, into the output folder ($OUT when set,
else reports/gpu/):

0. ``environment``: the machine's numba-cuda against the pinned one (pyproject.toml). A probe
   (a fresh process) compiles and runs both streaming kernels on the GPU and compares them bit for
   bit with the plain-Python replay. With another numba-cuda on the machine and the pinned wheel
   carried (``--wheels``, filled here by ``download``), the wheel is installed into a --target
   folder and put first on PYTHONPATH, if the probe passes with it; otherwise the machine's own
   numba-cuda runs if its probe passes. Which one ran, and why, is recorded.
1. ``correctness``, 2. ``timings``: ``python -m studies.gpu_check correctness|timings``.
3. ``tests``: pytest of tests/gpu on the hardware (the simulator variable removed), JUnit XML.
4. ``frameworks``: ``python -m studies.gpu_check frameworks`` (the registry's PyTorch and JAX/Flax
   layers; last, as the one whose cost is least known: it keeps the tensors it finished).
5. ``report``: gpu_check.md from whatever the steps wrote, with this run's record
   (gpu_run.json: versions, the numba-cuda decision, each step's status and seconds).

Exits 0 when every step passed, 1 when a step failed or ran out of time, 3 when no numba-cuda
passes the probe (the report still says why).

On a lent GPU (the device tool's ``run``: one command of at most 2,000 characters and 600 s), after
``python3 tools/gpu_run.py download`` here, with ``carry: ["build/gpu-wheels"]`` and ``timeout_s:
570`` (440 s of steps, 40 s of report, the rest for start-up and slack; 7 files come back)::

    set -o pipefail; python3 tools/gpu_run.py run 2>&1 | tee $OUT/gpu_run.log

A rerun in what is left of the session's 15 minutes: add ``--profile quick`` (one mid-sized shape).
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))  # run as a script: studies and numerics import from the tree

from studies import gpu_check  # noqa: E402 (the path above first)

WHEELS = REPOSITORY / "build" / "gpu-wheels"
SITE = Path("/tmp/numerics-gpu-site")
#: pip download's target: the lent GPU machines' python3 (Python 3.12, x86-64; docs/architecture.md,
#: section 8)
WHEEL_PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
                  "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                  "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
PACKAGES = ("numba", "numba-cuda", "llvmlite", "numpy", "cuda-bindings", "cuda-core",
            "cuda-pathfinder", "mpmath", "ml_dtypes", "pandas", "pytest", "pytest-xdist", "torch",
            "jax", "jaxlib")
#: each step's most seconds (the budget caps them; the report's comes on top of the budget)
LIMITS = {"environment": 150, "correctness": 150, "timings": 150, "tests": 150,
          "frameworks": 150, "report": 40}
#: what the tests step runs per profile: the whole GPU suite on a GPU; under the simulator (smoke)
#: the hardware tests only, which skip there (the rest of tests/gpu is the simulator suite itself)
TESTS = {"smoke": ["tests/gpu/test_gpu_hardware.py"], "quick": ["tests/gpu", "-n", "8"],
         "default": ["tests/gpu", "-n", "8"]}

PROBE = """
import json, sys
import numpy as np
record = {"ok": False}
try:
    from importlib import metadata
    import numba.cuda
    record["numba_cuda"] = metadata.version("numba-cuda")
    record["numba_cuda_file"] = numba.cuda.__file__
    import numerics
    from numerics import data, gpu, replay
    x = data.generate((2, 8, 16, 16), "float32", "normal", mean=3.0, std=1.0, seed=0)
    topology = gpu.TOPOLOGIES[gpu.FAST_TOPOLOGY]
    for layout, values in (("NCHW", x), ("NHWC", np.ascontiguousarray(np.moveaxis(x, 1, -1)))):
        options = dict(groups=2, layout=layout, algorithm="welford", topology=topology)
        result = numerics.moments(values, "group", device="cuda", **options)
        mean, var = replay.moments(values, "group", **options)
        if result.var.tobytes() != var.tobytes() or result.mean.tobytes() != mean.tobytes():
            raise AssertionError(f"{result.run.kernel} differs from the replay")
    record["ok"] = True
except Exception as error:
    record["error"] = f"{type(error).__name__}: {error}"[:400]
print("PROBE " + json.dumps(record))
"""


def pins(pyproject=REPOSITORY / "pyproject.toml"):
    """{package: pinned version} of every ``name==version`` in pyproject.toml."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    found = (re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^;\s]+)\s*(;.*)?", requirement)
             for requirement in requirements)
    return {normalized(match[1]): match[2] for match in found if match}


def normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def versions(python, environment, packages=PACKAGES):
    """{package: version or None} as ``python`` with ``environment`` sees them."""
    program = ("import json; from importlib import metadata\n"
               "def version(name):\n"
               "    try:\n        return metadata.version(name)\n"
               "    except metadata.PackageNotFoundError:\n        return None\n"
               f"print(json.dumps({{name: version(name) for name in {list(packages)!r}}}))")
    finished = subprocess.run([python, "-c", program], env=environment, capture_output=True,
                              text=True, timeout=60)
    return json.loads(finished.stdout)


def probe(python, environment, limit):
    """The probe's record ({"ok", "numba_cuda", "numba_cuda_file", "error"}) in ``environment``."""
    try:
        finished = subprocess.run([python, "-c", PROBE], cwd=REPOSITORY, env=environment,
                                  capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the probe ran out of time ({limit} s)"}
    for line in finished.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[len("PROBE "):])
    return {"ok": False, "error": (finished.stderr.strip().splitlines() or ["no output"])[-1][:400]}


def pinned_wheel(wheels, version):
    """The carried wheel of numba-cuda ``version`` in ``wheels``, or None."""
    matches = sorted(Path(wheels).glob(f"numba_cuda-{version}-*.whl")) if wheels else []
    return matches[0] if matches else None


def install(python, wheel, target):
    """pip install ``wheel`` (no index, no dependencies) into ``target``; (ok, message)."""
    finished = subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                               "--no-compile", "--no-cache-dir", "--upgrade", "--target",
                               str(target), str(wheel)], capture_output=True, text=True,
                              timeout=120)
    return finished.returncode == 0, (finished.stderr.strip().splitlines() or [""])[-1][:300]


def with_path(environment, site):
    """``environment`` with ``site`` first on PYTHONPATH."""
    paths = [str(site)] + [path for path in [environment.get("PYTHONPATH")] if path]
    return {**environment, "PYTHONPATH": os.pathsep.join(paths)}


def choose_numba_cuda(pinned, installed, wheel, try_probe, try_install):
    """Which numba-cuda the run uses (module docstring, step 0). ``try_probe(site)`` probes with
    ``site`` first on the path (None: the machine's packages); ``try_install(wheel)`` installs the
    carried wheel and returns (ok, message, site). Returns the decision record; its "site" is the
    folder to put first on PYTHONPATH (None: the machine's own), "ok" whether a probe passed."""
    record = {"pinned": pinned, "installed": installed, "site": None, "probes": []}
    if installed != pinned and wheel is not None:
        installed_ok, message, site = try_install(wheel)
        if installed_ok:
            result = try_probe(site)
            record["probes"].append({"with": f"carried {wheel.name}", **result})
            if result["ok"]:
                return {**record, "ok": True, "used": pinned, "site": str(site),
                        "reason": f"the machine has {installed}; the carried pinned wheel was "
                                  f"installed into {site} and passed the probe"}
        else:
            record["probes"].append({"with": f"carried {wheel.name}", "ok": False,
                                     "error": f"pip install failed: {message}"})
    result = try_probe(None)
    record["probes"].append({"with": "the machine's packages", **result})
    if installed == pinned:
        reason = "the machine's numba-cuda is the pinned one"
    elif wheel is None:
        reason = (f"the machine has {installed}, not the pinned {pinned}, and no pinned wheel was "
                  "carried (python3 tools/gpu_run.py download, then carry its folder)")
    else:
        reason = f"the carried pinned wheel failed (see probes); the machine has {installed}"
    if not result["ok"]:
        reason += f"; the probe failed: {result.get('error')}"
    return {**record, "ok": bool(result["ok"]), "used": installed, "reason": reason}


def run_step(name, command, environment, limit):
    """Run one step in its own process group; {"step", "status", "seconds", "limit_s"}."""
    print(f"== {name} (at most {limit:.0f} s): {' '.join(command)}", flush=True)
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPOSITORY, env=environment, start_new_session=True)
    try:
        code = process.wait(timeout=max(1.0, limit))
        status = "passed" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        # the step's pool workers and pytest workers are in its group: end them all
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        status = "ran out of time"
    seconds = time.perf_counter() - began
    print(f"== {name}: {status} after {seconds:.0f} s", flush=True)
    return {"step": name, "status": status, "seconds": round(seconds, 1), "limit_s": round(limit)}


def environment_step(python, environment, wheels, limit):
    """Step 0: (decision record, environment for the other steps, package versions)."""
    pinned = pins()["numba-cuda"]
    installed = versions(python, environment)

    def try_install(wheel):
        ok, message = install(python, wheel, SITE)
        return ok, message, SITE

    def try_probe(site):
        # at most two probes and an install share the step's limit
        return probe(python, environment if site is None else with_path(environment, site),
                     limit / 3)
    decision = choose_numba_cuda(pinned, installed["numba-cuda"],
                                 pinned_wheel(wheels, pinned), try_probe, try_install)
    if decision["site"]:
        environment = with_path(environment, decision["site"])
    return decision, environment, versions(python, environment)


def machine():
    """The GPU's name and driver as nvidia-smi reports them (None without it)."""
    try:
        finished = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                   "--format=csv,noheader"], capture_output=True, text=True,
                                  timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return finished.stdout.strip() or None


def step_commands(python, profile, output):
    common = ["--profile", profile, "--output", str(output)]
    return {
        "correctness": [python, "-m", "studies.gpu_check", "correctness", *common],
        "timings": [python, "-m", "studies.gpu_check", "timings", *common],
        "frameworks": [python, "-m", "studies.gpu_check", "frameworks", *common],
        "tests": [python, "-m", "pytest", *TESTS[profile], "-q", "-rfE", "-p", "no:cacheprovider",
                  f"--junitxml={output / gpu_check.FILES['tests']}"],
        "report": [python, "-m", "studies.gpu_check", "report", *common],
    }


def run(arguments):
    from studies import report
    began = time.perf_counter()
    output = arguments.output
    output.mkdir(parents=True, exist_ok=True)
    for name in gpu_check.FILES.values():  # no result of an earlier run may pass for this one's
        (output / name).unlink(missing_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    record = {"profile": arguments.profile, "machine": machine(), "steps": []}

    def left():
        return arguments.budget - (time.perf_counter() - began)

    step_began = time.perf_counter()
    decision, environment, record["packages"] = environment_step(
        arguments.python, environment, arguments.wheels, min(LIMITS["environment"], left()))
    record["numba_cuda"] = decision
    record["steps"].append({"step": "environment", "status": "passed" if decision["ok"] else
                            "failed (no numba-cuda passes the probe)",
                            "seconds": round(time.perf_counter() - step_began, 1),
                            "limit_s": LIMITS["environment"]})
    print(f"== numba-cuda: {decision['used']} ({decision['reason']})", flush=True)
    commands = step_commands(arguments.python, arguments.profile, output)
    if decision["ok"]:
        # the hardware suite runs without the simulator, the steps under the caller's setting
        hardware = {name: value for name, value in environment.items()
                    if name != "NUMBA_ENABLE_CUDASIM" or arguments.profile == "smoke"}
        for name in ("correctness", "timings", "tests", "frameworks"):
            limit = min(LIMITS[name], left())
            if limit < 10:
                record["steps"].append({"step": name, "status": "not run: budget spent",
                                        "seconds": 0, "limit_s": 0})
                continue
            record["steps"].append(run_step(name, commands[name],
                                            hardware if name == "tests" else environment, limit))
            report.remove_orphans(output)
    record["seconds"] = round(time.perf_counter() - began, 1)
    report.write_text(output / gpu_check.FILES["run"], json.dumps(record, indent=1))
    record["steps"].append(run_step("report", commands["report"], environment, LIMITS["report"]))
    report.write_text(output / gpu_check.FILES["run"], json.dumps(record, indent=1))
    if not decision["ok"]:
        return 3
    return 0 if all(step["status"] == "passed" for step in record["steps"]) else 1


def download(arguments):
    """pip download the pinned numba-cuda wheel for the device's python3 into ``--wheels``."""
    pinned = pins()["numba-cuda"]
    arguments.wheels.mkdir(parents=True, exist_ok=True)
    command = [arguments.python, "-m", "pip", "download", "--no-deps", *WHEEL_PLATFORM,
               "-d", str(arguments.wheels), f"numba-cuda=={pinned}"]
    print(" ".join(command), flush=True)
    code = subprocess.run(command).returncode
    wheel = pinned_wheel(arguments.wheels, pinned)
    if code or wheel is None:
        print(f"no numba-cuda {pinned} wheel in {arguments.wheels}", file=sys.stderr)
        return 1
    print(f"{wheel} ({wheel.stat().st_size / 2 ** 20:.1f} MiB): carry {arguments.wheels} with "
          "the device run (the device tool carries ignored paths of the tree, such as build/)")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "download"))
    parser.add_argument("--profile", choices=tuple(gpu_check.PROFILES), default="default")
    parser.add_argument("--output", type=Path,
                        default=Path(os.environ.get("OUT") or gpu_check.OUTPUT_DIRECTORY))
    parser.add_argument("--wheels", type=Path, default=WHEELS,
                        help="carried wheels (run) or where to download them (download)")
    parser.add_argument("--budget", type=float, default=440.0,
                        help="seconds for the steps before the report (each step's limit fits "
                             "inside it; the report has 40 s more: 8 minutes in all)")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter of the steps (default: this one)")
    arguments = parser.parse_args(argv)
    if arguments.budget < 60:
        parser.error(f"--budget must be at least 60 seconds, got {arguments.budget:g}")
    arguments.wheels = arguments.wheels.resolve()
    return run(arguments) if arguments.command == "run" else download(arguments)


if __name__ == "__main__":
    sys.exit(main())
