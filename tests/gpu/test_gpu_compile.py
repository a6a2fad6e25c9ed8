"""FMA contraction (docs/architecture.md trap 2), read in real PTX: a "separate" build has no fma.rn,
a "fused" one has it. Compiled in a subprocess, outside the simulator, with the NVVM wheel only
(the full sweep of every specialization is ``make gpu-compile``). Also the rules by which
gpu-compile judges a build."""
import os
import subprocess
import sys
from pathlib import Path

from numerics import gpu_compile

REPOSITORY = Path(__file__).resolve().parents[2]

COMPILE_BOTH_MODES = """
from numba import types
from numerics import gpu, gpu_compile
wanted = {"welford_updates/segments/float32->float32", "centered_sums/rows/float16->float32",
          "chan_updates/finalize/float64"}
for label, fma, function, signature in gpu.specializations():
    if label in wanted:
        # the parameters of the arguments after the context: a 1-D array is 7, a scalar 1
        others = sum(7 if isinstance(t, types.Array) else 1 for t in signature.args[1:])
        for cc, ptx in gpu_compile.ptx_by_cc(function, signature).items():
            entry = ptx[ptx.index(".entry"):]
            parameters = entry[:entry.index(")")].count(".param")
            print(label, fma, f"{cc[0]}.{cc[1]}", "fma.rn" in ptx, "mul.rn" in ptx,
                  str(signature.args[0]).startswith("GpuContext("), parameters == others)
"""


def test_separate_builds_never_fuse_and_fused_builds_do():
    environment = {name: value for name, value in os.environ.items()
                   if name != "NUMBA_ENABLE_CUDASIM"}
    finished = subprocess.run([sys.executable, "-c", COMPILE_BOTH_MODES], cwd=REPOSITORY,
                              env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    builds = [line.split() for line in finished.stdout.splitlines()]
    assert len(builds) == 3 * 2 * len(gpu_compile.COMPUTE_CAPABILITIES)
    for label, fma, cc, has_fma, has_mul_rn, context_first, context_is_no_parameter in builds:
        assert has_fma == str(fma == "fused"), (label, fma, cc)
        # the context is the first argument, and no kernel parameter (targets.ContextArguments)
        assert (context_first, context_is_no_parameter) == ("True", "True"), (label, fma, cc)
        if fma == "separate":
            # every product is an explicitly rounded mul.rn, which is never contracted
            assert has_mul_rn == "True", (label, fma, cc)


def test_findings_flag_contraction_missing_fusion_and_errors():
    results = [
        ("welford_updates/segments/float32->float32", "separate", (8, 0), None, False),
        ("welford_updates/segments/float32->float32", "separate", (9, 0), None, True),
        ("welford_updates/rows/float32->float32", "fused", (8, 0), None, False),
        ("welford_updates/rows/float32->float32", "fused", (9, 0), None, True),
        ("pass_one_means/float32", "none", (8, 0), None, True),
        ("first_elements/float32->float32", "none", (9, 0), None, False),
        ("chan_updates/finalize/float64", "fused", (9, 0), "TypingError: x", None),
    ]
    problems = gpu_compile.findings(results)
    assert [problem.split(":")[0] for problem in problems] == [
        "contracted", "not fused", "contracted", "compile error"]
    assert "welford_updates/segments" in problems[0] and "cc=9.0" in problems[0]
    assert "welford_updates/rows" in problems[1] and "cc=8.0" in problems[1]
    assert "pass_one_means" in problems[2]
