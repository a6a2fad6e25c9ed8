import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPOSITORY = Path(__file__).resolve().parent.parent
#: the studies whose smoke-profile data the study and notebook tests read
SMOKE_STUDIES = ("accuracy", "frameworks", "nist_strd", "bessel")

# the suite runs on 2 cores in CI; hypothesis examples are kept few and deadline-free because the
# first call of a specialization compiles it
settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Tests of one input format run on one worker (`--dist loadgroup`): the kernels are
    specialised per (rule family, input format, accumulator format), so the workers compile
    mostly disjoint sets and find the other's in the shared disk cache (numerics/cache.py makes
    concurrent writes safe); compilation is most of the suite's time on a cold cache."""
    for item in items:
        parameters = getattr(item, "callspec", None)
        if parameters is not None and "input_format" in parameters.params:
            item.add_marker(pytest.mark.xdist_group(parameters.params["input_format"]))


@pytest.fixture(scope="session")
def smoke_reports(tmp_path_factory):
    """`python -m studies.run_all --profile smoke` of SMOKE_STUDIES into a temporary directory,
    without the cell cache (a test must not read or fill the user's). Computed once per test run:
    the pytest-xdist workers of one run share their base directory's parent, and the first to
    take the lock computes the reports while the others wait for them."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent
    output = root / "smoke_reports"
    with open(root / "smoke_reports.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (output / "REPORT.md").is_file():
            command = [sys.executable, "-m", "studies.run_all", "--profile", "smoke", "--only",
                       ",".join(SMOKE_STUDIES), "--output", str(output), "--no-cache",
                       "--workers", "1"]
            completed = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True,
                                       env={**os.environ, "MPLBACKEND": "Agg"})
            assert completed.returncode == 0, completed.stdout + completed.stderr
    return output
