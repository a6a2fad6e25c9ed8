"""Plumbing shared by the studies: seeds, provenance, all-or-nothing output files, markdown.

Every file a study writes goes through ``write_parquet``, ``save_figure`` or ``write_text``: each
writes a temporary file beside its target and renames it over the target, so a crash or an
interrupt never leaves a partial result behind, and each stamps the file with the run's provenance
(parquet: ``DataFrame.attrs["provenance"]``, restored by ``pandas.read_parquet``; PNG: a visible
footer and the "Description" text chunk; markdown: ``provenance_header`` at the top).
"""
import contextlib
import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from numerics import cache

REPOSITORY = Path(__file__).resolve().parent.parent
STUDIES_DIRECTORY = Path(__file__).resolve().parent

#: the packages whose versions can change a result, recorded with every output
PACKAGES = ("numpy", "numba", "llvmlite", "mpmath", "ml_dtypes", "pandas", "pyarrow", "matplotlib",
            "torch")


def _git(*arguments):
    try:
        completed = subprocess.run(["git", *arguments], cwd=REPOSITORY, capture_output=True,
                                   text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return completed.stdout.strip()


def _package_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def source_digests(directory):
    """The SHA-256 of every Python file under ``directory``, by path relative to it."""
    return {path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(directory).rglob("*.py"))}


def studies_source_hash():
    """A hash of the study code (the numerics sources have their own: numerics.cache.SOURCE_HASH),
    so that a result made from uncommitted code can still be matched to the code that made it."""
    digest = hashlib.sha256()
    for name, file_digest in source_digests(STUDIES_DIRECTORY).items():
        digest.update(f"{name}:{file_digest}".encode())
    return digest.hexdigest()[:16]


def provenance(seed, profile):
    """What made a run's outputs: code version, date, package versions, seed and profile."""
    # reports/ holds outputs, not code: `make bench` after `make study` runs the same commit
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":(exclude)reports")
    return {
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        # uncommitted edits to tracked files: the commit alone does not identify the code
        "git_dirty": None if status is None else bool(status),
        "numerics_source_hash": cache.SOURCE_HASH,
        "studies_source_hash": studies_source_hash(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "profile": profile,
        "python": platform.python_version(),
        "packages": {name: _package_version(name) for name in PACKAGES},
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
    }


def provenance_header(record):
    """The provenance lines at the top of every markdown report (REPORT.md, performance.md): the
    same record that every parquet file and figure of the run carries."""
    packages = ", ".join(f"{name} {version}" for name, version in record["packages"].items()
                         if version)
    dirty = " (with uncommitted changes to tracked files)" if record["git_dirty"] else ""
    return (f"- Code: commit `{record['git_commit']}`{dirty}; numerics source hash "
            f"`{record['numerics_source_hash']}`,\n  studies source hash "
            f"`{record['studies_source_hash']}`\n"
            f"- Date (UTC): {record['date_utc']}; profile: {record['profile']}; seed: "
            f"{record['seed']}\n"
            f"- Python {record['python']}; {packages}; {record['machine']}")


def provenance_stamp(record):
    """One line for figure footers and table captions."""
    dirty = "+uncommitted" if record["git_dirty"] else ""
    return (f"numerics {record['git_commit'][:10]}{dirty} (sources {record['numerics_source_hash']}, "
            f"studies {record['studies_source_hash']}), {record['date_utc']}, seed {record['seed']}, "
            f"{record['profile']} profile")


def seed_for(base_seed, *key):
    """A seed for one input tensor, derived from the run's base seed and a description of the
    tensor (not from its format: the float16 and float32 versions of a tensor round the same
    float64 draws), stable across processes and machines (CRC-32, not Python's hash)."""
    text = "|".join(str(part) for part in key)
    state = np.random.SeedSequence([base_seed, zlib.crc32(text.encode())]).generate_state(1)
    return int(state[0])


@dataclass(frozen=True)
class Section:
    """One study's part of REPORT.md: a title, its markdown body, and the files it wrote
    (relative to the output directory)."""
    title: str
    anchor: str
    body: str
    files: tuple = ()


def _file_mode():
    """The mode a new file gets under the process umask (mkstemp's files are private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's process id in the name: a file left by a killed writer can be told from one
    # being written (remove_orphans)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                         suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def remove_orphans(directory):
    """Delete the temporary files under ``directory`` whose writer (atomic_path) no longer runs:
    what a killed run leaves behind. Returns how many were removed."""
    removed = 0
    for path in Path(directory).rglob(".*.tmp"):
        writer = path.name.rsplit(".", 3)[-3] if path.name.count(".") >= 3 else ""
        if writer.isdigit() and not _running(int(writer)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _running(process_id):
    try:
        os.kill(process_id, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_parquet(frame, path, settings):
    frame = frame.reset_index(drop=True)
    frame.attrs["provenance"] = settings.provenance
    with atomic_path(path) as temporary:
        frame.to_parquet(temporary, index=False)
    return path


def save_figure(figure, path, settings):
    import matplotlib.pyplot as plt

    figure.text(0.995, 0.003, provenance_stamp(settings.provenance), ha="right", va="bottom",
                fontsize=6, color="0.45")
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110,
                       metadata={"Description": json.dumps(settings.provenance)})
    plt.close(figure)
    return path


def write_text(path, text):
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


# ---- markdown ------------------------------------------------------------------------------------

def subset_label(norm, groups):
    """How tables name a normalization subset: "batch", "layer", "instance", "group32"."""
    return norm if groups is None else f"{norm}{groups}"


def format_number(value):
    """A compact cell: integers as they are, floats with 2 significant digits, NaN as "–"."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return "–" if value is None else str(value)
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "inf" if value > 0 else "−inf"
        if value == 0:
            return "0"
        if 0.01 <= abs(value) < 1000:
            return f"{value:.3g}"
        return f"{value:.1e}"
    return str(value)


def markdown_table(frame, formats=None):
    """A pipe table of ``frame`` (its index is dropped: reset it first to keep it). ``formats``
    maps a column to a function that formats one of its values; other columns use
    format_number."""
    formats = formats or {}
    def line(cells):
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [line([str(column) for column in frame.columns]), "|" + "---|" * frame.shape[1]]
    for row in frame.itertuples(index=False):
        lines.append(line([formats.get(column, format_number)(value)
                           for column, value in zip(frame.columns, row)]))
    return "\n".join(lines)


def figure_link(path, settings, caption):
    relative = Path(path).relative_to(settings.output).as_posix()
    return f"![{caption}]({relative})\n\n*{caption}*"
