"""The Study interface: what a study module declares. The runner (studies/engine/runner.py) does
the rest for every study: seeding, the factor product, execution (serial, local processes, Dask),
the cell cache, parquet, figures, the report section and provenance.

A study module defines one ``STUDY = Study(...)``:

- ``grid(profile)`` returns the study's named slices for a profile ("smoke", "default", "full");
  a slice's cells are the product of its factors' values. Factor values are JSON-able scalars
  (str, int, float, bool, None) so that a cell's settings name it in the cache and in parquet.
- ``cell(cell)`` is pure: from ``cell.settings`` and ``cell.seed`` alone it computes a list of row
  dicts (the same cell gives the same bits in any process). A row may carry ``"table": NAME`` to go
  to another table of the study (default: the study's name); the runner adds the slice name and the
  settings as columns and writes one parquet file per table: ``data/<table>.parquet``.
- ``report(results)`` turns the run's tables into the study's report section: markdown tables,
  figures (``results.figure(...)``), and findings whose prose is a template filled from the data
  (``results.finding(template, **values)``), never a hand-typed number.
"""
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence
import itertools

PROFILES = ("smoke", "default", "full")


@dataclass(frozen=True)
class Slice:
    """A named part of a study's grid: its cells are the product of the factors' values.

    ``keep``: a test on a cell's settings that leaves out the combinations that make no sense
    (None: every combination is a cell).
    """
    name: str
    factors: Mapping[str, Sequence]
    keep: Callable[[Mapping], bool] | None = None

    def settings(self):
        """Every cell's settings, in a fixed order (the factors' order, then their values')."""
        names = tuple(self.factors)
        combinations = (dict(zip(names, values)) for values in
                        itertools.product(*(tuple(self.factors[name]) for name in names)))
        return [settings for settings in combinations if self.keep is None or self.keep(settings)]


def paired(first, second, pairs):
    """Two factors that only occur in some combinations (an input format and an accumulator
    format): the factors for a Slice, and the ``keep`` test that leaves only ``pairs``."""
    pairs = tuple(pairs)
    allowed = set(pairs)
    factors = {first: tuple(dict.fromkeys(pair[0] for pair in pairs)),
               second: tuple(dict.fromkeys(pair[1] for pair in pairs))}
    return factors, lambda settings: (settings[first], settings[second]) in allowed


@dataclass(frozen=True)
class Cell:
    """One unit of work: a study, one of its slices, the settings, and the input seed."""
    study: str
    slice: str
    settings: Mapping
    seed: int


@dataclass(frozen=True)
class Study:
    """What a study declares (module docstring).

    ``seed_factors``: the settings that define a cell's input tensor (None: all of them); cells that
    differ only in other settings (the rule, the precision) see the same input. ``timing_columns``:
    columns that record wall-clock time, the only ones allowed to differ between two runs.
    ``serial``: the cells time something and must run one at a time in the main process.
    ``derive``: tables -> tables, for columns that compare cells (one implementation's time over
    another's), applied to the run's tables before they are written (None: none).
    ``seed_key``: the description of a cell's input from which its seed is derived
    (studies.report.seed_for; None: the study's name and the values of the seed factors, in order).
    """
    name: str
    title: str
    grid: Callable[[str], Sequence[Slice]]
    cell: Callable[[Cell], list]
    report: Callable[[object], object]
    seed_factors: tuple | None = None
    timing_columns: tuple = ()
    serial: bool = False
    description: str = field(default="")
    seed_key: Callable[[Mapping], tuple] | None = None
    derive: Callable[[dict], dict] | None = None
