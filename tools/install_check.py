"""The last step of `make install`: every module the package, its studies, its tests and its
notebooks import is importable, and the frameworks the studies compare are listed with their
versions.

    python tools/install_check.py

It also writes the bytecode of exactly those modules. `make install` runs pip with
``--no-compile``: pip would otherwise byte-compile all of the environment's ~19,600 Python files
(TensorFlow, PyTorch and JAX ship most of them), about two minutes on two cores, most of which
nothing here ever imports. Importing what the project imports writes the bytecode of what it needs
(Python writes it on import unless PYTHONDONTWRITEBYTECODE is set, so the Makefile unsets it for
this one command). numba imports most of its own implementation modules (and SciPy's BLAS
bindings) only at its first compilation, so the check also compiles a one-line function: in an
environment that sets PYTHONDONTWRITEBYTECODE, every process's first `numerics.moments` call
would otherwise compile those modules from source again (0.4 to 1.2 s of a 5 to 6 s first call,
docs/architecture.md section 2.7). Exits 1, naming what is missing, when a module cannot be
imported.
"""
import importlib
import sys
from pathlib import Path

# the studies are a folder of the repository, not an installed package
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: what the package, studies, tests and notebooks import besides the frameworks' own modules
#: (numerics.implementations lists those)
PROJECT_MODULES = (
    "numerics", "numerics.cpu", "numerics.gpu", "numerics.gpu_compile", "studies",
    "studies.run_all", "numpy", "numba", "numba.cuda", "llvmlite", "mpmath", "ml_dtypes", "pandas",
    "pyarrow", "matplotlib.pyplot", "dask.distributed", "tqdm", "sklearn.datasets", "pytest",
    "xdist", "hypothesis", "nbclient", "nbformat", "ipykernel.kernelapp",
)


def framework_modules():
    """{module: ", needed by <implementation names>"} of every implementation in the registry."""
    from numerics import implementations
    needed = {}
    for implementation in implementations.IMPLEMENTATIONS:
        for module in implementation.modules:
            needed.setdefault(module, []).append(implementation.name)
    return {module: f", needed by {', '.join(names)}" for module, names in needed.items()}


def unimportable(modules):
    """What of ``modules`` ({module: who needs it}) cannot be imported, and why."""
    missing = []
    for module, needed_by in sorted(modules.items()):
        try:
            importlib.import_module(module)
        except ImportError as error:
            missing.append(f"{module}{needed_by} ({error})")
    return missing


def main():
    missing = unimportable(dict.fromkeys(PROJECT_MODULES, ""))
    if "numba" in sys.modules:
        sys.modules["numba"].njit(lambda: 0)()  # numba's first compilation: see the docstring
    if "numerics" in sys.modules:  # the registry names the frameworks' modules
        missing += unimportable(framework_modules())
    if missing:
        print("install check: cannot import " + "; ".join(missing), file=sys.stderr)
        return 1
    from numerics import implementations
    versions = sorted({package for implementation in implementations.IMPLEMENTATIONS
                       for package in implementation.version().split("; ") if package})
    print("install check: every module imports; frameworks: " + ", ".join(versions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
