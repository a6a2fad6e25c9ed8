"""Compile every GPU kernel specialization to PTX, without a GPU (``make gpu-compile``).

The simulator runs Python and accepts code the CUDA target rejects (docs/architecture.md trap 7), so CI
compiles every specialization of numerics.gpu (numerics.gpu.specializations) to PTX for compute
capabilities 8.0 and 9.0, as ``numba.cuda.compile_ptx`` does, using only the NVVM and NVRTC wheels. It then reads each PTX for
``fma.rn``, which is how one knows whether a build fused ``a*b + c`` (trap 2):

- fma="separate" builds must contain no ``fma.rn`` at all (their products are ``mul.rn``, which
  neither NVVM nor ptxas contracts), or the CPU replay would not be bitwise; nor may the kernels
  that multiply nothing (fma "none": one build serves both modes);
- fma="fused" builds (the streaming and finalize kernels, which multiply-add) must contain it, or
  the option would be a label on an unfused build.

Exits 1 on any compile error or FMA finding. ``--jobs`` compiles in that many processes.
"""
import argparse
import contextlib
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

COMPUTE_CAPABILITIES = ((8, 0), (9, 0))


@contextlib.contextmanager
def target_device(cc):
    """Make numba-cuda believe the current device has compute capability ``cc``. Compiling a kernel
    that calls a device function asks the current device for its compute capability
    (``numba.cuda.dispatcher.get_current_device``), which fails without a GPU; the kernel's own cc
    comes from compile_ptx. Scoped: the real function is restored on exit."""
    from numba.cuda import dispatcher

    class CompileTarget:
        compute_capability = cc

    real = dispatcher.get_current_device
    dispatcher.get_current_device = CompileTarget
    try:
        yield
    finally:
        dispatcher.get_current_device = real


def ptx_by_cc(function, signature):
    """{cc: PTX} of one kernel for every cc of COMPUTE_CAPABILITIES. ``numba.cuda.compile_ptx``
    repeats the whole compilation per cc, yet only its last step, NVVM, depends on the cc at or
    above 6.0 (numba's lowering reads it only for older atomics and math): so this runs the first
    half of compile_ptx once (a private function of numba-cuda, pinned at 0.30.4 in pyproject.toml)
    and asks NVVM for each cc, as compile_ptx does. It halves the run."""
    from numba.cuda.compiler import _compile_pyfunc_with_fixup

    with target_device(COMPUTE_CAPABILITIES[0]):
        library, _ = _compile_pyfunc_with_fixup(function, signature, device=False, abi="numba",
                                                cc=COMPUTE_CAPABILITIES[0])
    return {cc: "\n".join(library.get_asm_strs(cc=cc)) for cc in COMPUTE_CAPABILITIES}


def compile_share(share, shares):
    """Compile the ``share``-th of ``shares`` contiguous slices of the specializations (contiguous,
    so that a worker compiles each device function once for many kernels). Returns one
    ``(label, fma, cc, error, has_fma)`` per build."""
    from numerics import gpu

    specializations = list(gpu.specializations())
    start = share * len(specializations) // shares
    stop = (share + 1) * len(specializations) // shares
    results = []
    for label, fma, function, signature in specializations[start:stop]:
        try:
            ptx = ptx_by_cc(function, signature)
        except Exception as exception:  # reported per build; the run fails at the end
            error = f"{type(exception).__name__}: {str(exception).splitlines()[0][:300]}"
            results.extend((label, fma, cc, error, None) for cc in COMPUTE_CAPABILITIES)
            continue
        results.extend((label, fma, cc, None, "fma.rn" in ptx[cc]) for cc in COMPUTE_CAPABILITIES)
    return results


def findings(results):
    """The builds that break a rule of the module docstring, as lines of text."""
    problems = []
    for label, fma, cc, error, has_fma in results:
        build = f"{label} fma={fma} cc={cc[0]}.{cc[1]}"
        if error is not None:
            problems.append(f"compile error: {build}: {error}")
        elif fma != "fused" and has_fma:
            problems.append(f"contracted: {build} contains fma.rn")
        elif fma == "fused" and not has_fma:
            problems.append(f"not fused: {build} has no fma.rn in a fused build")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="compiling processes (default: one per CPU)")
    arguments = parser.parse_args(argv)
    if arguments.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {arguments.jobs}")
    # fresh processes, without the simulator: numba reads NUMBA_ENABLE_CUDASIM once, at import
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    began = time.perf_counter()
    with ProcessPoolExecutor(arguments.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        shares = pool.map(compile_share, range(arguments.jobs), [arguments.jobs] * arguments.jobs)
        results = [result for share in shares for result in share]
    elapsed = time.perf_counter() - began

    kernels = {(label, fma) for label, fma, *_ in results}
    for fma in sorted({fma for _, fma in kernels}):
        builds = [result for result in results if result[1] == fma and result[3] is None]
        fused = sum(1 for result in builds if result[4])
        print(f"fma={fma}: {len(builds)} builds compiled, {fused} contain fma.rn")
    print(f"{len(kernels)} specializations x {len(COMPUTE_CAPABILITIES)} compute capabilities "
          f"({', '.join(f'{major}.{minor}' for major, minor in COMPUTE_CAPABILITIES)}) = "
          f"{len(results)} PTX builds in {elapsed:.0f} s with {arguments.jobs} process(es)")
    problems = findings(results)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"gpu-compile FAILED: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("gpu-compile passed: every specialization compiles; only the fused builds contain fma.rn, "
          "and every one of them does")
    return 0


if __name__ == "__main__":
    sys.exit(main())
