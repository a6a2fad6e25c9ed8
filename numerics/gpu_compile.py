"""Compile every GPU kernel specialization to PTX, without a GPU (``make gpu-compile``).

The simulator runs Python and accepts code the CUDA target rejects (ARCHITECTURE.md trap 7), so CI
compiles every specialization of numerics.gpu with ``numba.cuda.compile_ptx`` for compute
capabilities 8.0 and 9.0, using only the NVVM and NVRTC wheels. It then reads each PTX for
``fma.rn``, which is how one knows whether a build fused ``a*b + c`` (trap 2):

- fma="separate" builds must contain no ``fma.rn`` at all (their products are ``mul.rn``, which
  neither NVVM nor ptxas contracts), or the CPU replay would not be bitwise;
- fma="fused" builds of the kernels that multiply-add (the streaming kernels and finalize) must
  contain it, or the option would be a label on an unfused build.

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
#: kernels with no multiply-add site: no fma.rn is expected from them even in a fused build
#: (centered sums merge by additions; the pass-one mean is a division)
WITHOUT_MULTIPLY_ADD = ("first_elements/", "/pass_one_means/", "clamp/")


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


def compile_share(share, shares):
    """Compile the ``share``-th of ``shares`` contiguous slices of the specializations (contiguous,
    so that a worker compiles each device function once for many kernels). Returns one
    ``(label, fma, cc, error, has_fma, seconds)`` per build."""
    from numba import cuda
    from numerics import gpu

    specializations = list(gpu.specializations())
    start = share * len(specializations) // shares
    stop = (share + 1) * len(specializations) // shares
    results = []
    for label, fma, function, signature in specializations[start:stop]:
        for cc in COMPUTE_CAPABILITIES:
            began = time.perf_counter()
            error, has_fma = None, None
            try:
                with target_device(cc):
                    ptx, _ = cuda.compile_ptx(function, signature, cc=cc)
                has_fma = "fma.rn" in ptx
            except Exception as exception:  # reported per build; the run fails at the end
                error = f"{type(exception).__name__}: {str(exception).splitlines()[0][:300]}"
            results.append((label, fma, cc, error, has_fma, time.perf_counter() - began))
    return results


def findings(results):
    """The builds that break a rule of the module docstring, as lines of text."""
    problems = []
    for label, fma, cc, error, has_fma, _ in results:
        build = f"{label} fma={fma} cc={cc[0]}.{cc[1]}"
        if error is not None:
            problems.append(f"compile error: {build}: {error}")
        elif fma == "separate" and has_fma:
            problems.append(f"contracted: {build} contains fma.rn in a separate build")
        elif (fma == "fused" and not has_fma
              and not any(marker in label for marker in WITHOUT_MULTIPLY_ADD)):
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
    print("gpu-compile passed: every specialization compiles; separate builds contain no fma.rn, "
          "fused builds of every multiply-adding kernel do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
