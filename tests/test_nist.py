"""The packaged NIST StRD univariate datasets: parsing, the certified values, and the exact
reference reproducing them."""
import csv
from fractions import Fraction
from importlib import resources

import mpmath
import numpy as np
import pytest

from numerics import metrics, nist, reference


def certified_table():
    text = resources.files("numerics").joinpath("nist_strd", "certified_values.tsv").read_text()
    return {row["dataset"]: row for row in csv.DictReader(text.splitlines(), delimiter="\t")}


def test_every_dataset_matches_the_certified_table():
    table = certified_table()
    assert set(table) == set(nist.DATASETS)
    for name in nist.DATASETS:
        dataset = nist.load(name)
        row = table[name]
        assert dataset.name == name and dataset.n == int(row["n"])
        assert Fraction(dataset.certified_mean) == Fraction(row["certified_mean"])
        assert Fraction(dataset.certified_sd) == Fraction(row["certified_sd(n-1)"])
        assert Fraction(dataset.certified_autocorrelation) == Fraction(row["certified_r1"])
        assert dataset.difficulty == row["difficulty"].lower()


def test_datasets_come_in_difficulty_order_and_agree_with_the_files():
    rank = {"lower": 0, "average": 1, "higher": 2}
    ranks = [rank[nist.load(name).difficulty] for name in nist.DATASETS]
    assert ranks == sorted(ranks) and len(nist.DATASETS) == 9
    for name in nist.DATASETS:
        raw = resources.files("numerics").joinpath("nist_strd", f"{name}.dat").read_bytes()
        lines = raw.decode("ascii").split("\r\n")
        model = [line for line in lines[:60] if line.startswith("Model:")]
        if model:  # Michelso's header has no Model line; the table covers it
            assert model[0].split()[1].lower() == nist.load(name).difficulty


@pytest.mark.parametrize("name, first, last", [
    ("Lew", "-213", "96"), ("Mavro", "2.00180", "2.00240"), ("NumAcc1", "10000001", "10000002"),
    ("NumAcc4", "10000000.2", "10000000.3"), ("PiDigits", "3", "2"),
])
def test_values_are_the_file_strings(name, first, last):
    dataset = nist.load(name)
    assert dataset.values[0] == first and dataset.values[-1] == last
    assert all(isinstance(value, str) and value == value.strip() for value in dataset.values)


@pytest.mark.parametrize("name", nist.DATASETS)
def test_exact_decimal_moments_reproduce_the_certified_values(name):
    dataset = nist.load(name)
    mean, var = reference.moments(dataset.values, ddof=1)
    with mpmath.workprec(256):
        sd = mpmath.sqrt(var[()])
    assert metrics.lre(mean[()], dataset.certified_mean) >= 14
    assert metrics.lre(sd, dataset.certified_sd) >= 14


# docs/architecture.md, section 4.5: the LRE of the sd that even exact arithmetic reaches once the
# decimals are stored as binary floats (one decimal); the float64 column caps every algorithm on
# these inputs
STORED_INPUT_LRE_CAPS = {"Mavro": (13.1, 4.7), "Michelso": (13.9, 4.7), "NumAcc2": (15.0, 6.4),
                         "NumAcc3": (9.5, 1.2), "NumAcc4": (8.3, 0.0)}


@pytest.mark.parametrize("name", sorted(STORED_INPUT_LRE_CAPS))
def test_stored_binary_inputs_cap_the_lre_as_documented(name):
    dataset = nist.load(name)
    for dtype, cap in zip((np.float64, np.float32), STORED_INPUT_LRE_CAPS[name]):
        values = np.array([float(value) for value in dataset.values], dtype)
        _, var = reference.moments(values, ddof=1)
        with mpmath.workprec(256):
            sd = mpmath.sqrt(var[()])
        assert metrics.lre(sd, dataset.certified_sd) == pytest.approx(cap, abs=0.1)


def test_unknown_dataset_names_the_argument():
    with pytest.raises(ValueError, match="name"):
        nist.load("Longley")
