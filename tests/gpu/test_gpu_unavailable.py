"""Without a GPU (and without the simulator) numerics imports, and device="cuda" fails with an error
that says so and names the simulator. Run in a subprocess: this suite itself runs under the
simulator, and numba reads NUMBA_ENABLE_CUDASIM once, at import."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]

WITHOUT_GPU = """
import numpy as np
from numba import cuda
if cuda.is_available():
    print("a GPU is present")
    raise SystemExit(0)
import numerics, numerics.gpu
try:
    numerics.moments(np.ones((2, 3), np.float32), "layer", device="cuda")
except numerics.gpu.NoGPUError as error:
    print("NoGPUError:", error)
    raise SystemExit(3)
"""


def test_device_cuda_without_a_gpu_names_the_simulator():
    environment = {name: value for name, value in os.environ.items()
                   if name != "NUMBA_ENABLE_CUDASIM"}
    finished = subprocess.run([sys.executable, "-c", WITHOUT_GPU], cwd=REPOSITORY,
                              env=environment, capture_output=True, text=True, timeout=120)
    if "a GPU is present" in finished.stdout:
        pytest.skip("this machine has a GPU")
    assert finished.returncode == 3, finished.stdout + finished.stderr
    message = finished.stdout
    assert "needs an NVIDIA GPU" in message and "finds none" in message
    assert "NUMBA_ENABLE_CUDASIM=1" in message
