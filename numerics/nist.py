"""The NIST Statistical Reference Datasets for univariate summary statistics (StRD).

The nine files ship with the package (numerics/nist_strd/, public-domain US-government data) in
NIST's original layout: CRLF line endings, a 60-line header whose lines 41-43 hold the certified
sample mean, standard deviation (denominator n − 1) and lag-1 autocorrelation, and one value per
line from line 61. The values are decimal: ``load`` keeps them as the exact strings of the file,
so numerics.reference.moments can take them exactly, and a caller chooses how to round them to a
binary format. Certified values carry 15 significant digits (McCullough 1998).
"""
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

#: NIST's difficulty classes
DIFFICULTY = {
    "Lew": "lower", "Lottery": "lower", "Mavro": "lower", "Michelso": "lower", "NumAcc1": "lower",
    "PiDigits": "lower", "NumAcc2": "average", "NumAcc3": "average", "NumAcc4": "higher",
}

#: dataset names in difficulty order (lower, average, higher), NIST's order within a class
DATASETS = tuple(DIFFICULTY)

CERTIFIED_DIGITS = 15

HEADER_LINES = 60
_CERTIFIED_LINES = {"certified_mean": (41, "Sample Mean"),
                    "certified_sd": (42, "Sample Standard Deviation"),
                    "certified_autocorrelation": (43, "Sample Autocorrelation")}
_DATA_LINES = re.compile(r"Data\s*: lines\s+61 to\s+(\d+)\s+\(=\s*(\d+)\)")


@dataclass(frozen=True)
class Dataset:
    """One StRD dataset: ``values`` the decimal strings of the file, ``n`` their count, and the
    certified values as NIST prints them (decimal strings: exact certified digits, to pass straight
    to numerics.metrics.lre); the standard deviation uses the denominator n − 1."""
    name: str
    difficulty: str
    values: tuple
    certified_mean: str
    certified_sd: str
    certified_autocorrelation: str

    @property
    def n(self):
        return len(self.values)


def _certified_value(line, label, name, line_number):
    if not line.startswith(label):
        raise ValueError(f"{name}.dat line {line_number} should start with {label!r}: {line!r}")
    return line.split(":", 1)[1].strip()


@lru_cache(maxsize=None)
def load(name):
    """The dataset ``name`` (one of DATASETS), parsed from the packaged file."""
    if name not in DIFFICULTY:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    raw = resources.files(__package__).joinpath("nist_strd", f"{name}.dat").read_bytes()
    text = raw.decode("ascii")
    if "\r\n" not in text or "\n" in text.replace("\r\n", ""):
        raise ValueError(f"{name}.dat does not have NIST's CRLF line endings")
    lines = text.split("\r\n")
    if lines and lines[-1] == "":
        lines.pop()
    declared = _DATA_LINES.search(lines[5])
    if declared is None:
        raise ValueError(f"{name}.dat line 6 does not declare the data lines: {lines[5]!r}")
    last_line, count = int(declared.group(1)), int(declared.group(2))
    values = tuple(line.strip() for line in lines[HEADER_LINES:])
    if len(lines) != last_line or len(values) != count or not all(values):
        raise ValueError(f"{name}.dat declares {count} values on lines 61 to {last_line}, found "
                         f"{len(values)} lines after the header")
    certified = {field: _certified_value(lines[number - 1], label, name, number)
                 for field, (number, label) in _CERTIFIED_LINES.items()}
    return Dataset(name, DIFFICULTY[name], values, **certified)
