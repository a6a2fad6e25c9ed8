"""What the compiler was allowed to do: no kernel may reassociate (docs/architecture.md trap 3: with
``reassoc``/``fast`` flags LLVM turns ordered and compensated reductions into a plain vectorised
sum), so each compiled CPU function is checked, flags and generated IR. The check runs in a fresh
process with an empty kernel cache: code loaded from the cache has no IR to inspect. That process
compiles at LLVM optimization level 0 (NUMBA_OPT, a documented numba setting): the flags are
written by numba's lowering, and no LLVM pass adds a fast-math flag an instruction did not carry,
so the check sees what an optimized build would be allowed to do at half the compile time."""
import json
import os
import subprocess
import sys
import textwrap

FAST_MATH_PATTERN = r"\b(fadd|fsub|fmul|fdiv|frem|fcmp|call)\s+(?:[a-z]+\s+)*(fast|reassoc)\b"

INSPECT = textwrap.dedent(r"""
    import gc, json, re, sys
    import numpy as np
    from numba import njit
    from numba.core.registry import CPUDispatcher
    import numerics

    pattern = re.compile(sys.argv[1])
    x = np.random.default_rng(0).normal(3.0, 1.0, (2, 8, 4, 4)).astype(np.float32)
    for algorithm in numerics.ALGORITHMS:
        for acc_dtype in ("float16", "float32"):
            numerics.moments(x, "group", groups=2, algorithm=algorithm, acc_dtype=acc_dtype)
            numerics.moments(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), "batch",
                             layout="NHWC", algorithm=algorithm, acc_dtype=acc_dtype)

    @njit(fastmath=True)
    def fast_total(values):
        result = np.float32(0)
        for value in values:
            result += value
        return result

    fast_total(np.ones(8, np.float32))
    report = {"checked": [], "offending": [],
              "control_caught": any(pattern.search(ir) for ir in fast_total.inspect_llvm().values())}
    for function in gc.get_objects():
        if not (isinstance(function, CPUDispatcher) and function.signatures
                and function.py_func.__module__.startswith("numerics")):
            continue
        name = function.py_func.__qualname__
        report["checked"].append(name)
        if function.targetoptions.get("fastmath"):
            report["offending"].append([name, "fastmath option"])
        for llvm_ir in function.inspect_llvm().values():
            found = pattern.search(llvm_ir)
            if found:
                report["offending"].append([name, found.group(0)])
    print(json.dumps(report))
""")


def test_no_compiled_function_uses_reassociating_fastmath(tmp_path):
    environment = dict(os.environ, NUMERICS_CACHE_DIR=str(tmp_path), NUMBA_OPT="0")
    completed = subprocess.run([sys.executable, "-c", INSPECT, FAST_MATH_PATTERN], env=environment,
                               capture_output=True, text=True, check=True)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["control_caught"], "the pattern must catch what a fastmath build emits"
    assert len(report["checked"]) >= 10, report["checked"]
    assert not report["offending"], report["offending"]
