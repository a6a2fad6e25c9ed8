"""numerics.audits.audit and ``python -m numerics audit``: the JSON schema, the measured digits
against numerics.metrics.lre, the bounds, the verdict, every input format, and every bad file
with its one-line error and exit status 2."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numerics
from numerics import audits, data, metrics, reference
from numerics.__main__ import load, main

# one worker imports the frameworks once (TensorFlow alone takes seconds)
pytestmark = pytest.mark.xdist_group("frameworks")

REPOSITORY = Path(__file__).resolve().parent.parent
SHAPE = (2, 16, 6, 6)
GROUP_KEYS = {"index", "n", "kappa", "exact_mean", "exact_var"}
IMPLEMENTATION_KEYS = {"implementation", "kind", "min_correct_digits_mean",
                       "min_correct_digits_var", "negative_variances", "nan_outputs", "bound"}


@pytest.fixture(scope="module")
def shifted():
    """Group norm data at |mean|/std = 1e4, where float32's textbook formula keeps no digit."""
    x = data.generate(SHAPE, "float32", "normal", mean=1e4, std=1.0, seed=3)
    return x, audits.audit(x, "group", groups=4)


def rows_by_name(result):
    return {row["implementation"]: row for row in result.implementations}


def test_schema_groups_and_implementations(shifted):
    x, result = shifted
    record = result.as_dict()
    assert {"groups", "implementations"} <= set(record)
    assert len(record["groups"]) == 2 * 4 and all(set(group) == GROUP_KEYS
                                                  for group in record["groups"])
    assert all(IMPLEMENTATION_KEYS <= set(row) for row in record["implementations"])
    assert {row["kind"] for row in record["implementations"]} == set(audits.KINDS)
    names = rows_by_name(result)
    for algorithm in numerics.ALGORITHMS:
        assert f"numerics {algorithm} float32" in names and f"numerics {algorithm} float64" in names
    assert {"torch group_norm", "jax.nn.standardize fast", "onnxruntime GroupNormalization",
            "keras GroupNormalization", "recipe: naive f32"} <= set(names)
    exact_mean, exact_var = reference.moments(x, "group", groups=4)
    group = record["groups"][5]
    assert group["n"] == 4 * 36 and group["exact_mean"] == float(exact_mean.flat[5])
    assert group["exact_var"] == float(exact_var.flat[5])


def test_digits_are_the_worst_groups_lre(shifted):
    x, result = shifted
    _, exact_var = reference.moments(x, "group", groups=4)
    for name, algorithm in (("numerics naive float32", "naive"),
                            ("numerics welford float32", "welford")):
        var = numerics.moments(x, "group", groups=4, algorithm=algorithm, acc_dtype="float32").var
        expected = np.min(metrics.lre(var, exact_var, digits=audits.DIGITS_CAP))
        assert rows_by_name(result)[name]["min_correct_digits_var"] == pytest.approx(expected)


def test_numerics_rows_stay_within_their_bound(shifted):
    _, result = shifted
    for row in result.implementations:
        if row["kind"] == "numerics":
            assert row["bound"] > 0 and row["max_relative_error_var"] <= 2 * row["bound"], row


def test_verdict_and_nan_outputs(shifted):
    _, result = shifted
    names = rows_by_name(result)
    assert "numerics two_pass float64" in result.verdict["keeps_half_the_digits"]
    assert "numerics naive float32" in result.verdict["loses_half_the_digits"]
    assert result.verdict["threshold_digits"] == pytest.approx(24 * np.log10(2) / 2)
    naive = names["numerics naive float32"]
    assert naive["negative_variances"] > 0  # its negative groups make every output NaN there
    assert naive["nan_outputs"] == naive["negative_variances"] * 4 * 36
    assert names["numerics two_pass float32"]["nan_outputs"] == 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_every_input_format_is_read(dtype, tmp_path):
    x = data.generate((2, 8, 3, 3), dtype, "normal", mean=3.0, std=1.0, seed=1)
    np.save(tmp_path / "x.npy", x)
    loaded = load(str(tmp_path / "x.npy"))  # numpy saves bfloat16 as 2-byte void: read back
    assert loaded.dtype == x.dtype and np.array_equal(loaded.view(np.uint8), x.view(np.uint8))


def test_cli_prints_one_json_object(tmp_path, capsys):
    path = tmp_path / "activations.npy"
    np.save(path, data.generate((2, 8, 3, 3), "float32", "normal", mean=3.0, std=1.0, seed=1))
    assert main(["audit", str(path), "--norm", "layer", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["input"]["dtype"] == "float32" and len(record["groups"]) == 2
    names = {row["implementation"] for row in record["implementations"]}
    assert {"numerics welford float32", "numerics welford float64", "torch layer_norm",
            "onnxruntime LayerNormalization", "keras LayerNormalization"} <= names


def test_cli_text_report_has_the_table_and_the_verdict(tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, data.generate((2, 8, 4, 4), "float32", "normal", mean=1e4, std=1.0, seed=2))
    assert main(["audit", str(path), "--norm", "instance", "--layout", "NHWC", "--eps", "1e-3"]) == 0
    text = capsys.readouterr().out
    assert "layout NHWC, eps 0.001" in text and "numerics naive float32" in text
    assert "verdict" in text and "do not:" in text


def bad_files(directory):
    """(path, the words the error must contain) of every kind of bad input file."""
    np.save(directory / "integers.npy", np.arange(24).reshape(2, 3, 4))
    np.save(directory / "flat.npy", np.ones(5, np.float32))
    (directory / "text.npy").write_text("1.0 2.0 3.0\n")
    np.savez(directory / "archive.npz", x=np.ones((2, 3), np.float32))
    np.save(directory / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    whole = (directory / "flat.npy").read_bytes()
    (directory / "truncated.npy").write_bytes(whole[:-8])
    (directory / "folder.npy").mkdir()
    return [(directory / "missing.npy", "no such file"), (directory / "folder.npy", "not a regular"),
            (directory / "text.npy", "not a .npy file"), (directory / "archive.npz", "not a .npy"),
            (directory / "integers.npy", "int64"), (directory / "flat.npy", "rank"),
            (directory / "truncated.npy", "unreadable"), (directory / "objects.npy", "unreadable")]


def test_every_bad_file_gets_one_line_and_exit_status_2(tmp_path, capsys):
    for path, words in bad_files(tmp_path):
        assert main(["audit", str(path), "--norm", "instance"]) == 2, path
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert captured.out == "" and len(lines) == 1, captured.err
        assert str(path) in lines[0] and words in lines[0], lines[0]


def test_bad_options_exit_with_status_2(tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((2, 4, 3, 3), np.float32))
    assert main(["audit", str(path), "--norm", "group"]) == 2  # no --groups
    assert "groups" in capsys.readouterr().err
    assert main(["audit", str(path), "--norm", "layer", "--eps", "-1"]) == 2
    assert "eps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_status:
        main(["audit", str(path), "--norm", "rms"])
    assert exit_status.value.code == 2


def test_module_entry_point_exits_2_on_a_missing_file(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "numerics", "audit", str(tmp_path / "no.npy"),
                                "--norm", "layer"], capture_output=True, text=True, cwd=REPOSITORY)
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr.strip().count("\n") == 0 and "no.npy" in completed.stderr


def test_groups_holding_nan_are_counted_and_left_out():
    x = data.generate((2, 4, 3, 3), "float32", "normal", mean=3.0, std=1.0, seed=5)
    x[1, 2, 0, 0] = np.nan
    result = audits.audit(x, "instance", kinds=("numerics",))
    assert result.nonfinite_groups == 1
    assert {row["kind"] for row in result.implementations} == {"numerics"}
    for row in result.implementations:
        assert row["nan_outputs"] == 0 and row["min_correct_digits_var"] > 5, row
    assert np.isnan(result.groups[6]["exact_var"])
    with pytest.raises(ValueError, match="kinds"):
        audits.audit(x, "instance", kinds=("torch",))
