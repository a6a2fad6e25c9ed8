"""The one runner of every study: from a study module's ``STUDY`` (studies/engine/study.py) to its
parquet tables, figures and report section.

For each study: the grid of the profile gives the cells (each slice's factor product, in order);
each cell gets its seed from the run's base seed and the cell's input description
(studies.report.seed_for, CRC-32 of the description: the same seeds in every process); cells found
in the cell cache (cache.py) are read back, the others run on the chosen executor (executors.py)
and are stored as each one finishes; the rows are assembled in cell order into one DataFrame per
table, written as ``data/<table>.parquet`` with the run's provenance, and the study's ``report``
turns them into its section (results.py).
"""
import importlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from studies import report
from studies.engine import cache, executors, progress
from studies.engine.results import Results
from studies.engine.study import PROFILES, Cell


SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class RunOptions:
    """How a run executes: ``cache_directory`` None runs without the cell cache."""
    output: Path
    profile: str = "default"
    seed: int = 0
    workers: int = 1
    scheduler: str | None = None
    cache_directory: Path | None = None


def seed_key(study, settings):
    """Study.seed_key's description, or the study's name and the values of the seed factors that
    the cell's slice has (every factor where seed_factors is None), in order."""
    if study.seed_key is not None:
        return study.seed_key(settings)
    factors = settings if study.seed_factors is None else study.seed_factors
    return (study.name, *(settings[name] for name in factors if name in settings))


def cells_of(study, slices, base_seed):
    """Every cell of the slices, in order. Factor values must be JSON-able scalars: they name the
    cell's cache entry and become parquet columns."""
    cells = []
    for part in slices:
        for settings in part.settings():
            if not all(isinstance(value, SCALARS) for value in settings.values()):
                raise TypeError(f"study {study.name!r}, slice {part.name!r}: factor values must "
                                f"be JSON-able scalars (str, int, float, bool, None), got "
                                f"{settings!r}")
            cells.append(Cell(study.name, part.name, settings,
                              report.seed_for(base_seed, *seed_key(study, settings))))
    return cells


def compute_rows(module, cells, options, title):
    """The rows of every cell (a list per cell, in cell order), from the cache where possible."""
    study = module.STUDY
    cell_cache = cache.CellCache(options.cache_directory)
    source_hash = cache.study_source_hash(module)
    keys = [cache.cell_key(cell, source_hash) for cell in cells]
    rows = [cell_cache.load(key) for key in keys]
    pending = [(index, cell) for index, cell in enumerate(cells) if rows[index] is None]
    bar = progress.Progress(title, len(cells))
    bar.advance(len(cells) - len(pending))
    try:
        for index, cell_rows in executors.execute(module.__name__, pending, options.workers,
                                                  options.scheduler, study.serial):
            if not isinstance(cell_rows, list) or not all(isinstance(row, dict)
                                                          for row in cell_rows):
                raise TypeError(f"study {study.name!r}: cell() must return a list of row dicts, "
                                f"got {type(cell_rows).__name__} for {cells[index].settings}")
            cell_cache.store(keys[index], cell_rows)
            rows[index] = cell_rows
            bar.advance(1)
    finally:
        bar.close()
    return rows


def integer_columns(records):
    """Columns whose values are all integers or None with at least one None: nullable Int64
    (pandas would otherwise turn them into floats or objects)."""
    columns = {}
    for record in records:
        for name, value in record.items():
            is_integer = isinstance(value, int) and not isinstance(value, bool)
            missing, integers = columns.get(name, (False, True))
            columns[name] = (missing or value is None, integers and (is_integer or value is None))
    return [name for name, (missing, integers) in columns.items() if missing and integers]


def assemble_tables(study, cells, rows):
    """One DataFrame per table, rows in cell order, with the slice and the settings as columns."""
    records = {}
    for cell, cell_rows in zip(cells, rows):
        for row in cell_rows:
            row = dict(row)
            table = row.pop("table", study.name)
            records.setdefault(table, []).append({"slice": cell.slice, **cell.settings, **row})
    tables = {}
    for name, table_records in records.items():
        frame = pd.DataFrame(table_records)
        for column in integer_columns(table_records):
            frame[column] = frame[column].astype("Int64")
        tables[name] = frame
    return tables


def run_study(module, options, provenance):
    """Run one study module; return its report section (with the files it wrote) and seconds."""
    if options.profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {options.profile!r}")
    study = module.STUDY
    start = time.perf_counter()
    slices = tuple(study.grid(options.profile))
    cells = cells_of(study, slices, options.seed)
    rows = compute_rows(module, cells, options, study.title)
    tables = assemble_tables(study, cells, rows)
    if study.derive is not None:
        tables = study.derive(tables)
    results = Results(study, tables, options.profile, provenance, Path(options.output), slices)
    for name, frame in tables.items():
        results.files.append(report.write_parquet(
            frame, results.output / "data" / f"{name}.parquet", results))
    section = study.report(results)
    files = tuple(dict.fromkeys((*results.files, *section.files)))
    return replace(section, files=files), time.perf_counter() - start


def load_study(name):
    """The module studies.<name> (or a dotted module path) that defines STUDY."""
    module = importlib.import_module(name if "." in name else f"studies.{name}")
    if not hasattr(module, "STUDY"):
        raise AttributeError(f"{module.__name__} defines no STUDY (studies/engine/study.py)")
    return module


def default_workers():
    return os.cpu_count() or 1
