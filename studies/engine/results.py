"""What a study's ``report(results)`` receives, and what it returns.

``results`` (a ``Results``) holds one run of one study:

- ``results.tables``: table name -> pandas DataFrame of every row of the run, in cell order, with
  the slice name (column ``slice``) and the cell's settings as columns (a row's own value wins
  where a row and the settings share a column). The study's main table has the study's name.
- ``results.profile`` ("smoke", "default" or "full") and ``results.provenance`` (the dict stamped
  on every output: commit, source hashes, date, seed, profile, package versions, machine).
- ``results.slices``: the run's slices (studies.engine.study.Slice), to describe the grid.
- ``results.figure(name, matplotlib_figure, caption)`` saves ``figures/<name>.png`` (written
  atomically, stamped with the provenance), closes the figure and returns its markdown.
- ``results.table(frame, formats=None)``: a markdown pipe table (studies.report.markdown_table).
- ``results.finding(template, **values)``: a finding's prose, ``template.format(**values)``
  where a float without a format spec is written by studies.report.format_number, so every
  number in every finding is formatted the same way; an explicit spec (``{ratio:.1f}``) wins.

``report`` returns ``results.section(body)``: a studies.report.Section with the study's title,
its anchor (the name, ``_`` -> ``-``), the markdown body and the files the run wrote.

A complete study module (see studies/engine/study.py for the contract)::

    from studies.engine import Slice, Study

    def grid(profile):
        sizes = (2, 4) if profile == "smoke" else (2, 4, 8, 16)
        return (Slice("sizes", {"n": sizes, "dtype": ("float32", "float64")}),)

    def cell(cell):
        values = np.random.default_rng(cell.seed).standard_normal(cell.settings["n"])
        stored = values.astype(cell.settings["dtype"])
        return [{"error": float(abs(stored.mean() - values.mean()))}]

    def report(results):
        frame = results.tables["rounding"]
        worst = frame.loc[frame["error"].idxmax()]
        body = "\\n\\n".join((
            results.table(frame[["n", "dtype", "error"]]),
            results.finding("The largest error is {error} (n = {n}, {dtype}).",
                            error=worst["error"], n=worst["n"], dtype=worst["dtype"])))
        return results.section(body)

    STUDY = Study("rounding", "Rounding of the mean", grid, cell, report, seed_factors=("n",))
"""
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from studies import report as markdown


class _Number:
    """A float that formats itself with format_number when the template gives no spec."""

    def __init__(self, value):
        self.value = value

    def __format__(self, spec):
        return markdown.format_number(self.value) if not spec else format(self.value, spec)


def _formattable(value):
    if isinstance(value, (float, np.floating)):
        return _Number(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class Results:
    """One study's run, as its report sees it (module docstring)."""
    study: object
    tables: dict
    profile: str
    provenance: dict
    output: Path
    slices: tuple = ()
    files: list = field(default_factory=list)

    @property
    def anchor(self):
        return self.study.name.replace("_", "-")

    def figure(self, name, figure, caption):
        path = markdown.save_figure(figure, self.output / "figures" / f"{name}.png", self)
        self.files.append(path)
        return markdown.figure_link(path, self, caption)

    def table(self, frame, formats=None):
        return markdown.markdown_table(frame, formats)

    def finding(self, template, **values):
        names = {name.split(".")[0].split("[")[0]
                 for _, name, _, _ in string.Formatter().parse(template) if name}
        missing = names - set(values)
        if missing:
            raise KeyError(f"finding template needs values for {sorted(missing)}")
        return template.format(**{name: _formattable(value) for name, value in values.items()})

    def section(self, body):
        return markdown.Section(self.study.title, self.anchor, body, tuple(self.files))
