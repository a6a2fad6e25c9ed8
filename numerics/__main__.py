"""``python -m numerics audit FILE.npy --norm NORM [--groups G] [--layout NCHW|NHWC] [--eps E] [--json]``

Audits the tensor saved in FILE.npy (numerics.audits): a table per implementation and a verdict,
or with ``--json`` one JSON object (keys ``input``, ``groups``, ``implementations``, ``verdict``;
a non-finite number is written as the string "inf", "-inf" or "nan").
float16, bfloat16 (as numpy saves ml_dtypes' bfloat16: 2-byte void values), float32 and float64
arrays are read. A missing, unreadable or non-.npy file, an integer array, a wrong rank or a bad
option prints one line naming the file (or option) and what was expected, and exits with status 2.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

USAGE_ERROR = 2
#: how many groups the text report lists (the worst-conditioned ones); --json lists every group
LISTED_GROUPS = 5


class InputError(Exception):
    """A bad file or option: one line, exit status 2."""


def load(path):
    """The array in ``path``, or InputError naming the file and what was expected."""
    file = Path(path)
    if not file.exists():
        raise InputError(f"{path}: no such file (expected a .npy file)")
    if not file.is_file():
        raise InputError(f"{path}: not a regular file (expected a .npy file)")
    try:
        with open(file, "rb") as stream:
            magic = stream.read(6)
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror}); expected a readable .npy file")
    if magic != b"\x93NUMPY":
        raise InputError(f"{path}: not a .npy file (no NumPy header); save the tensor with numpy.save")
    try:
        array = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"{path}: unreadable .npy file ({error}); expected an array saved with "
                         "numpy.save")
    if array.dtype.kind == "V" and array.dtype.itemsize == 2:
        import ml_dtypes
        array = array.view(ml_dtypes.bfloat16)  # numpy saves ml_dtypes' bfloat16 as 2-byte void
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise InputError(f"{path}: holds {array.dtype} values; expected float16, bfloat16, float32 "
                         "or float64")
    return array


def check_rank(path, array, norm):
    minimum = 2 if norm in ("batch", "layer") else 3
    if array.ndim < minimum:
        raise InputError(f"{path}: has shape {array.shape} (rank {array.ndim}); norm={norm!r} "
                         f"expects rank >= {minimum}: (N, C, *spatial), or channels last with "
                         "--layout NHWC")


def number(value, spec=".3g"):
    if value is None:
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec) if isinstance(value, float) else str(value)


def text_report(result):
    """The audit as plain text: input, groups, one line per implementation, the verdict."""
    lines = [f"input: shape {tuple(result.shape)}, {result.dtype}, norm {result.norm}"
             + (f" (groups {result.groups_argument})" if result.groups_argument else "")
             + f", layout {result.layout}, eps {result.eps:g}"]
    groups = sorted(result.groups, key=lambda group: -group["kappa"] if math.isfinite(group["kappa"])
                    else -math.inf)
    lines.append(f"groups: {len(result.groups)} of n = {result.groups[0]['n']}; worst-conditioned:")
    for group in groups[:LISTED_GROUPS]:
        lines.append(f"  group {group['index']}: kappa {number(group['kappa'])}, exact mean "
                     f"{group['exact_mean']:.9g}, exact var {group['exact_var']:.9g}")
    header = (f"{'implementation':42} {'kind':9} {'digits mean':>11} {'digits var':>10} "
              f"{'max rel err var':>15} {'bound':>9} {'neg var':>7} {'NaN out':>8}")
    lines += ["", header, "-" * len(header)]
    for row in result.implementations:
        if row["error"] is not None:
            lines.append(f"{row['implementation']:42} {row['kind']:9} failed: {row['error']}")
            continue
        lines.append(f"{row['implementation']:42} {row['kind']:9} "
                     f"{number(row['min_correct_digits_mean'], '.1f'):>11} "
                     f"{number(row['min_correct_digits_var'], '.1f'):>10} "
                     f"{number(row['max_relative_error_var'], '.2g'):>15} "
                     f"{number(row['bound'], '.2g'):>9} {number(row['negative_variances']):>7} "
                     f"{number(row['nan_outputs']):>8}")
    verdict = result.verdict
    lines += ["", f"verdict (at least {verdict['threshold_digits']:.1f} correct digits of mean and "
                  f"variance in every group, no NaN output):",
              f"  keep them: {', '.join(verdict['keeps_half_the_digits']) or 'none'}",
              f"  do not: {', '.join(verdict['loses_half_the_digits']) or 'none'}"]
    if verdict["not_run"]:
        lines.append(f"  failed to run: {', '.join(verdict['not_run'])}")
    return "\n".join(lines)


def jsonable(value):
    """Strict JSON: a non-finite float (κ of a constant group, the error of a NaN result) becomes
    the string "inf", "-inf" or "nan" (float() reads each back)."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def parser():
    command = argparse.ArgumentParser(prog="python -m numerics")
    commands = command.add_subparsers(dest="command", required=True)
    audit = commands.add_parser("audit", help="audit the normalization statistics of a .npy tensor")
    audit.add_argument("file", metavar="FILE.npy")
    audit.add_argument("--norm", required=True, choices=("batch", "layer", "instance", "group"))
    audit.add_argument("--groups", type=int, default=None)
    audit.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW")
    audit.add_argument("--eps", type=float, default=1e-5)
    audit.add_argument("--json", action="store_true", help="print one JSON object")
    return command


def run_audit(arguments):
    from . import audits
    array = load(arguments.file)
    check_rank(arguments.file, array, arguments.norm)
    try:
        result = audits.audit(array, arguments.norm, groups=arguments.groups,
                              layout=arguments.layout, eps=arguments.eps)
    except (ValueError, TypeError) as error:
        raise InputError(f"{arguments.file}: {error}") from None
    if arguments.json:
        return json.dumps(jsonable(result.as_dict()), allow_nan=False)
    return text_report(result)


def main(argv=None):
    arguments = parser().parse_args(argv)
    try:
        print(run_audit(arguments))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
