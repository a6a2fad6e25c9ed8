"""Where numba keeps the compiled kernels of this package.

Numba's own cache stamps a kernel with the source file that defines it, so editing a helper in
another module (algorithms.py, precision.py) would leave stale machine code in use
(ARCHITECTURE.md trap 5). This locator keys the cache directory on a hash of every source file of
the package instead: any edit anywhere in numerics/ starts a fresh cache. It applies to this
package's files only. The root is $NUMERICS_CACHE_DIR, else $XDG_CACHE_HOME/numerics, else
~/.cache/numerics.
"""
import hashlib
import os
from pathlib import Path

from numba.core import caching

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


class PackageSourceLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = str(cache_root() / SOURCE_HASH)

    def get_cache_path(self):
        return self._cache_path

    def get_source_stamp(self):
        return SOURCE_HASH

    @classmethod
    def from_function(cls, py_func, py_file):
        if PACKAGE_DIRECTORY not in Path(py_file).resolve().parents:
            return None
        return super().from_function(py_func, py_file)


def closure_fingerprint(function):
    """A digest of a function's code and, recursively, of what its closure holds, stable across
    processes. Numba pickles closure cells into its cache key, and a pickled dispatcher carries a
    fresh per-process uuid, so the kernels this package builds in factories (closures over compiled
    scalar functions) would never be found in the cache again. Their identity is their code and the
    code of what they close over; the source hash in the cache path covers everything else."""
    function = getattr(function, "py_func", function)
    digest = hashlib.sha256(function.__code__.co_code)
    digest.update(repr(function.__code__.co_consts).encode())
    for cell in function.__closure__ or ():
        content = cell.cell_contents
        if callable(content) and hasattr(getattr(content, "py_func", content), "__code__"):
            digest.update(closure_fingerprint(content).encode())
        else:
            digest.update(repr(content).encode())
    return digest.hexdigest()


class KeyNamedCacheFile(caching.IndexDataCacheFile):
    """Numba's index and data files, with each data file named by a digest of its key instead of
    the first free number. Numba picks that number from the index it has just read, so two
    processes compiling the same function at once (the test suite's workers, two studies) can
    pick the same file for different signatures, and an index entry then points at another
    signature's machine code: a wrong result or a crash (seen once here). Named by key, a data
    file only ever holds that key's code; the data is written before the index that names it;
    an index entry lost to a concurrent rewrite only costs a recompilation."""

    def save(self, key, data):
        data_name = "%s.%s.nbc" % (self._index_name[:-len(".nbi")],
                                   hashlib.sha256(repr(key).encode()).hexdigest()[:16])
        self._save_data(data_name, data)
        overloads = self._load_index()
        overloads[key] = data_name
        self._save_index(overloads)


def install():
    if PackageSourceLocator not in caching.CacheImpl._locator_classes:
        caching.CacheImpl._locator_classes.insert(0, PackageSourceLocator)
    if getattr(caching.Cache._index_key, "numerics", False):
        return
    numba_index_key = caching.Cache._index_key

    def index_key(self, sig, codegen):
        if not isinstance(self._impl.locator, PackageSourceLocator):
            return numba_index_key(self, sig, codegen)
        code = hashlib.sha256(self._py_func.__code__.co_code).hexdigest()
        return (sig, codegen.magic_tuple(), (code, closure_fingerprint(self._py_func)))

    index_key.numerics = True
    caching.Cache._index_key = index_key
    numba_cache_init = caching.Cache.__init__

    def cache_init(self, py_func):
        numba_cache_init(self, py_func)
        if isinstance(self._impl.locator, PackageSourceLocator):
            self._cache_file = KeyNamedCacheFile(self._cache_path, self._impl.filename_base,
                                                 self._impl.locator.get_source_stamp())

    caching.Cache.__init__ = cache_init
