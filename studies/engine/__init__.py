"""The study engine: the Study interface (study.py), the results a report reads (results.py) and
the runner that executes, caches and reports every study (runner.py)."""
from studies.engine.results import Results
from studies.engine.study import PROFILES, Cell, Slice, Study, paired
from studies.report import Section

__all__ = ["PROFILES", "Cell", "Results", "Section", "Slice", "Study", "paired"]
