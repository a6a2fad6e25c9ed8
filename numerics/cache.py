"""Where numba keeps the compiled kernels of this package, and how processes share them.

Numba's own cache (``cache=True``) stamps a kernel with the source file that defines it, so editing
a helper in another module (algorithms.py, precision.py) would leave stale machine code in use
(docs/architecture.md trap 5). The kernels are therefore decorated with numba's documented
``NUMBA_CACHE_DIR`` setting (``numba.config.CACHE_DIR``) pointing at a directory named by a hash
of every source file of the package: any edit anywhere in numerics/ starts a fresh cache. The
setting is changed only while the package's kernels are decorated (numba reads it then) and
restored after, so the user's own numba functions keep theirs. The root is $NUMERICS_CACHE_DIR,
else $XDG_CACHE_HOME/numerics, else ~/.cache/numerics.

Numba names a new data file after the first free number in the index it has just read, so two
processes saving different signatures of one kernel at once can write the same file, and an
index entry then names another signature's machine code. ``call`` holds an exclusive file
lock, one per kernel module, around the first call of each specialization in a process, except
while numba compiles: numba's documented event API (``numba:compile``, which starts after numba
looked in the disk cache and ends before it saves there) lets go of the lock for the compilation
and takes it back for the save. So looking up and saving are serialized between processes, and
processes compile different specializations side by side (a lock held through the compilation
made one test worker wait for the other about half the time on a cold cache). A second lock, one
per specialization and taken first, makes a process that wants a specialization another process
is compiling wait for it and then load it from the disk cache, instead of compiling it again.
"""
import contextlib
import fcntl
import hashlib
import os
import threading
from pathlib import Path

import numba
from numba.core import event

PACKAGE_DIRECTORY = Path(__file__).resolve().parent


def source_hash():
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIRECTORY.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_DIRECTORY)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


SOURCE_HASH = source_hash()


def cache_root():
    if os.environ.get("NUMERICS_CACHE_DIR"):
        return Path(os.environ["NUMERICS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "numerics"


def cache_directory():
    """The kernel cache of this version of the package's sources."""
    return cache_root() / SOURCE_HASH


@contextlib.contextmanager
def package_cache_setting():
    """numba.config.CACHE_DIR set to cache_directory() for the duration (see the module
    docstring)."""
    previous = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(cache_directory())
    try:
        yield
    finally:
        numba.config.CACHE_DIR = previous


def cached(**options):
    """``numba.njit(cache=True, **options)`` with the package's cache directory, for a kernel
    that Python calls: without the C-callable (cfunc) wrapper numba would also build."""
    def decorate(function):
        with package_cache_setting():
            return numba.njit(cache=True, no_cfunc_wrapper=True, **options)(function)
    return decorate


#: (kernel, specialization key) pairs already called once in this process
_CALLED = set()
_CALLED_GUARD = threading.Lock()


@contextlib.contextmanager
def locked_file(name):
    """The open file ``name`` of the cache directory, under an exclusive lock shared by every
    process."""
    directory = cache_directory()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def module_lock(kernel):
    """The lock on the cache files of ``kernel``'s module (``locked_file``)."""
    return locked_file(f"{Path(kernel.py_func.__code__.co_filename).stem}.lock")


class UnlockedCompilation(event.Listener):
    """Lets go of ``lock`` while numba compiles ``kernel`` in this thread, and takes it back
    before numba saves the result (the end event fires on errors too)."""

    def __init__(self, kernel, lock):
        self.kernel, self.lock, self.thread = kernel, lock, threading.get_ident()

    def concerns(self, compile_event):
        return (compile_event.data["dispatcher"] is self.kernel
                and threading.get_ident() == self.thread)

    def on_start(self, compile_event):
        if self.concerns(compile_event):
            fcntl.flock(self.lock, fcntl.LOCK_UN)

    def on_end(self, compile_event):
        if self.concerns(compile_event):
            fcntl.flock(self.lock, fcntl.LOCK_EX)


def specialization_lock(kernel, key):
    """The lock on one specialization of ``kernel`` (``key``, whose repr is the same in every
    process), held through its first call (``locked_file``)."""
    name = f"{kernel.py_func.__module__}.{kernel.py_func.__qualname__}{key!r}"
    return locked_file(f"specialization-{hashlib.sha256(name.encode()).hexdigest()[:16]}.lock")


def loaded(kernel, key):
    """Whether ``call`` has run the specialization ``key`` of ``kernel`` in this process: the
    next call runs its machine code and nothing else."""
    return (kernel, key) in _CALLED


def call(kernel, key, *arguments):
    """``kernel(*arguments)``. ``key`` names the specialization those arguments select (what
    their numba types depend on); the first call with a key in this process, which loads the
    kernel from the disk cache or compiles and saves it, holds the specialization's lock, and
    the kernel module's lock but while it compiles."""
    if (kernel, key) in _CALLED:
        return kernel(*arguments)
    with _CALLED_GUARD, specialization_lock(kernel, key), module_lock(kernel) as lock:
        with event.install_listener("numba:compile", UnlockedCompilation(kernel, lock)):
            result = kernel(*arguments)
        _CALLED.add((kernel, key))
    return result
