"""The cell cache: each cell's rows, stored as soon as they are computed, so that a rerun with
nothing changed recomputes nothing and a killed run resumes where it stopped.

An entry is keyed by everything that determines the rows: the study's name, the slice, the
settings, the seed, the numerics source hash (numerics.cache.SOURCE_HASH) and the hash of the
study's own source files (``study_source_hash``). It is one file, written by
studies.report.atomic_path (a temporary file renamed over the target: a kill at any moment leaves
either no entry or a complete one), holding a pickle of the row dicts (pickle round-trips every
float bit) followed by the SHA-256 of that pickle. An entry whose checksum or key does not match
on read (a disk fault, a hand edit) is deleted and recomputed, never trusted.
"""
import hashlib
import json
import os
import pickle
import sys
import types
from pathlib import Path

from numerics import cache as kernel_cache
from studies import report

#: the environment variable that moves the cache (``--cache DIR`` wins over it)
ENVIRONMENT_VARIABLE = "NUMERICS_CELL_CACHE"
DIGEST_BYTES = hashlib.sha256().digest_size


def default_directory():
    """NUMERICS_CELL_CACHE, else $XDG_CACHE_HOME/numerics/cells, else ~/.cache/numerics/cells."""
    if os.environ.get(ENVIRONMENT_VARIABLE):
        return Path(os.environ[ENVIRONMENT_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "numerics" / "cells"


def study_source_hash(module):
    """SHA-256 of the study module's file and of the files of the studies modules it imports
    (studies.errors, studies.report, ...): an edit to any of them reruns that study's cells only.
    The engine itself is left out: it does not change what a cell computes."""
    files = {Path(module.__file__).resolve()}
    for value in vars(module).values():
        if (isinstance(value, types.ModuleType) and value.__name__.startswith("studies.")
                and not value.__name__.startswith("studies.engine")
                and getattr(value, "__file__", None)):
            files.add(Path(value.__file__).resolve())
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cell_key(cell, study_hash):
    """The description of a cell that names its cache entry (JSON: the settings are JSON-able)."""
    return json.dumps({"study": cell.study, "slice": cell.slice, "settings": dict(cell.settings),
                       "seed": cell.seed, "numerics": kernel_cache.SOURCE_HASH,
                       "study_sources": study_hash}, sort_keys=True)


class CellCache:
    """The entries of one directory; ``directory`` None: a cache that stores nothing."""

    def __init__(self, directory):
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            report.remove_orphans(self.directory)

    def _path(self, key):
        name = hashlib.sha256(key.encode()).hexdigest()
        study = json.loads(key)["study"]
        return self.directory / study / name[:2] / f"{name}.pickle"

    def load(self, key):
        """The rows stored under ``key``, or None (no entry, or a damaged one, which is deleted)."""
        if self.directory is None:
            return None
        path = self._path(key)
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            return None
        payload, digest = content[:-DIGEST_BYTES], content[-DIGEST_BYTES:]
        try:
            if hashlib.sha256(payload).digest() != digest:
                raise ValueError("checksum mismatch")
            stored_key, rows = pickle.loads(payload)
            if stored_key != key:
                raise ValueError("key mismatch")
        except Exception as error:  # any damage: recompute, never trust
            print(f"[cache] {path}: damaged entry ({type(error).__name__}: {error}); recomputing",
                  file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
            return None
        return rows

    def store(self, key, rows):
        if self.directory is None:
            return
        payload = pickle.dumps((key, rows), protocol=pickle.HIGHEST_PROTOCOL)
        with report.atomic_path(self._path(key)) as temporary:
            temporary.write_bytes(payload + hashlib.sha256(payload).digest())
