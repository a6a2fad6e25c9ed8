"""The kernel cache (numerics/cache.py): numba's own ``cache=True``, in a directory keyed by the
package's sources. A second process loads instead of compiling; an edit to any source file of the
package (not only the file that defines a kernel) starts a fresh cache; two processes compiling
different specializations of one kernel at once both get their own code; two processes that want
the same specialization at once compile it once."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numerics

PACKAGE = Path(numerics.__file__).resolve().parent

#: one moments call per argument (an accumulator format), checked bit for bit against the replay;
#: prints the cache hits and misses of the package's kernels in this process
RUN = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    import numerics
    from numerics import replay
    from numerics.cpu import finish, rows, segments

    x = np.random.default_rng(5).normal(4.0, 2.0, (3, 5, 7)).astype(np.float32)
    agree = []
    for acc_dtype in sys.argv[1:]:
        options = dict(algorithm="welford", acc_dtype=acc_dtype, topology="sequential")
        result = numerics.moments(x, "batch", **options)
        expected = replay.moments(x, "batch", **options)
        agree.append(result.mean.tobytes() == expected[0].tobytes()
                     and result.var.tobytes() == expected[1].tobytes())
    kernels = [segments.segment_units, segments.segment_two_pass, rows.row_units,
               rows.row_two_pass, finish.first_elements, finish.pass_one_means,
               finish.finalize_all]
    print(json.dumps({
        "agree": agree,
        "hits": sum(sum(kernel.stats.cache_hits.values()) for kernel in kernels),
        "misses": sum(sum(kernel.stats.cache_misses.values()) for kernel in kernels),
        "cache": numerics.cache.cache_directory().name}))
""")


def package_copy(tmp_path):
    """A copy of the numerics package, importable from the returned directory."""
    root = tmp_path / "checkout"
    shutil.copytree(PACKAGE, root / "numerics", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def start(root, cache_root, *acc_dtypes):
    environment = dict(os.environ, PYTHONPATH=str(root), NUMERICS_CACHE_DIR=str(cache_root))
    return subprocess.Popen([sys.executable, "-c", RUN, *acc_dtypes], cwd=root, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def report(process):
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def test_a_second_process_loads_and_any_source_edit_invalidates(tmp_path):
    root, cache_root = package_copy(tmp_path), tmp_path / "cache"
    first = report(start(root, cache_root, "float32"))
    second = report(start(root, cache_root, "float32"))
    assert first["agree"] == second["agree"] == [True]
    assert first["misses"] > 0 and first["hits"] == 0, first
    assert second["hits"] == first["misses"] and second["misses"] == 0, second
    # an edit to a helper module, not to a file that defines a kernel (docs/architecture.md trap 5)
    with open(root / "numerics" / "precision.py", "a") as source:
        source.write("\n# an edit\n")
    edited = report(start(root, cache_root, "float32"))
    assert edited["cache"] != second["cache"]
    assert edited["misses"] == first["misses"] and edited["hits"] == 0, edited


def test_processes_compiling_different_specializations_at_once_get_their_own_code(tmp_path):
    root, cache_root = package_copy(tmp_path), tmp_path / "cache"
    together = [start(root, cache_root, acc_dtype) for acc_dtype in ("float32", "float64")]
    reports = [report(process) for process in together]
    assert [each["agree"] for each in reports] == [[True], [True]]
    # both specializations are in the cache, each under its own key
    both = report(start(root, cache_root, "float32", "float64"))
    assert both["agree"] == [True, True]
    assert both["misses"] == 0 and both["hits"] == sum(each["misses"] for each in reports), both


def test_processes_wanting_one_specialization_at_once_compile_it_once(tmp_path):
    """The specialization lock: the process that comes second waits for the first to compile
    and save, then loads from the disk cache (without it both compile: the check fails)."""
    root, cache_root = package_copy(tmp_path), tmp_path / "cache"
    together = [start(root, cache_root, "float32") for _ in range(2)]
    reports = [report(process) for process in together]
    alone = report(start(root, tmp_path / "another_cache", "float32"))
    assert [each["agree"] for each in reports] == [[True], [True]]
    assert sum(each["misses"] for each in reports) == alone["misses"] > 0, reports
    assert sum(each["hits"] for each in reports) == alone["misses"], reports


def waiting_on_a_lock(pid):
    """Whether process ``pid`` is blocked waiting for a file lock (Linux: /proc/locks lists each
    blocked waiter with "->")."""
    return any("->" in line and f" {pid} " in line
               for line in Path("/proc/locks").read_text().splitlines())


def test_a_first_call_waits_while_another_process_holds_the_kernels_lock(tmp_path, monkeypatch):
    """How concurrent compiles stay safe: numba picks a new data file's number from the index it
    has just read, so the first call of a specialization (load or compile, then save) holds the
    kernel module's lock, and another process's first call waits for it."""
    from numerics import cache
    from numerics.cpu import segments

    root, cache_root = package_copy(tmp_path), tmp_path / "cache"
    monkeypatch.setenv("NUMERICS_CACHE_DIR", str(cache_root))
    with cache.module_lock(segments.segment_units):
        process = start(root, cache_root, "float32")
        for _ in range(600):
            if waiting_on_a_lock(process.pid) or process.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert waiting_on_a_lock(process.pid), "the first call did not wait for the lock"
        assert not list((cache_root / cache.SOURCE_HASH).rglob("segments.segment_units-*.nbi"))
    assert report(process)["agree"] == [True]




#: the first call of one specialization in a fresh process, with a listener registered before
#: numerics.cache.call's own, whose end-of-compilation callback therefore runs before the lock is
#: taken back: it reports whether another open file could take the module's lock at that moment
LOCK_DURING_COMPILE = textwrap.dedent(r"""
    import fcntl, json
    import numpy as np
    from numba.core import event
    import numerics
    from numerics import cache
    from numerics.cpu import segments

    class Probe(event.Listener):
        free = []

        def on_start(self, compile_event):
            pass

        def on_end(self, compile_event):
            if compile_event.data["dispatcher"] is segments.segment_units:
                with open(cache.cache_directory() / "segments.lock", "a") as other:
                    try:
                        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        fcntl.flock(other, fcntl.LOCK_UN)
                        self.free.append(True)
                    except BlockingIOError:
                        self.free.append(False)

    x = np.random.default_rng(5).normal(4.0, 2.0, (3, 5, 7)).astype(np.float32)
    with event.install_listener("numba:compile", Probe()):
        numerics.moments(x, "batch", topology="sequential")
    print(json.dumps(Probe.free))
""")


def test_the_lock_is_let_go_while_numba_compiles(tmp_path):
    """Only looking up and saving need the lock (the module docstring): other processes can take
    it while one compiles, so they compile side by side."""
    environment = dict(os.environ, NUMERICS_CACHE_DIR=str(tmp_path))
    completed = subprocess.run([sys.executable, "-c", LOCK_DURING_COMPILE], env=environment,
                               capture_output=True, text=True, check=True)
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == [True]
