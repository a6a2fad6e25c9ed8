"""Error measures: relative error, error in units of u, ulp distance, LRE, condition number.

Every function is elementwise over broadcast arguments and accepts scalars or arrays: Python
floats and ints, numpy floats of the four formats (float16 and bfloat16 included), object arrays of
``mpmath.mpf`` (what numerics.reference returns), ``fractions.Fraction`` and decimal strings (NIST
certified values, read at the working precision). Results are float64: an array for array
arguments, a numpy float64 scalar when every argument is a scalar. The arithmetic is done in mpmath
at ``WORKING_BITS`` bits, scoped with ``mpmath.workprec`` (docs/architecture.md, trap 6): a
difference of two exact operands is correctly rounded in mpmath, so no cancellation spoils an error
measure.
"""
import math
from fractions import Fraction

import mpmath
import ml_dtypes
import numpy as np

from . import precision

#: precision of the error arithmetic: far past float64, so the float64 results are accurate
WORKING_BITS = 128


def _as_mpf(value, argument):
    """One element as an mpf: exact for binary floats (and ints up to WORKING_BITS bits), rounded
    at WORKING_BITS for decimal strings and Fractions. Called inside ``mpmath.workprec``."""
    if isinstance(value, mpmath.mpf):
        return value
    if isinstance(value, Fraction):
        return mpmath.mpf(value.numerator) / value.denominator
    if isinstance(value, str):
        try:
            return mpmath.mpf(value.strip())
        except ValueError:
            raise ValueError(f"{argument} holds {value!r}, which is not a number") from None
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{argument} must hold numbers, got a boolean")
    if isinstance(value, (int, np.integer)):
        return mpmath.mpf(int(value))
    if isinstance(value, (float, np.floating, ml_dtypes.bfloat16)):
        return mpmath.mpf(float(value))  # every format widens to float64 exactly
    raise TypeError(f"{argument} must hold numbers (floats, mpmath.mpf, Fraction or decimal "
                    f"strings), got {type(value).__name__}")


def _as_object_array(values, argument):
    """An object array of the argument's elements; binary float arrays widen to float64 exactly."""
    if isinstance(values, np.ndarray) and values.dtype != object and values.dtype.kind not in "iuU":
        precision.format_name(values.dtype, argument)  # TypeError naming the argument otherwise
        values = values.astype(np.float64)
    return np.array(values, dtype=object)


def _elementwise(function, arguments):
    """Apply ``function`` to mpf elements of the broadcast ``arguments`` ({name: value})."""
    names = list(arguments)
    arrays = np.broadcast_arrays(*(_as_object_array(arguments[name], name) for name in names))
    result = np.empty(arrays[0].shape, np.float64)
    with mpmath.workprec(WORKING_BITS):
        for index in np.ndindex(result.shape):
            result[index] = function(*(_as_mpf(array[index], name)
                                       for array, name in zip(arrays, names)))
    return result[()] if result.ndim == 0 else result


def _relative_error(computed, reference):
    if mpmath.isnan(computed) or mpmath.isnan(reference):
        return math.nan
    if computed == reference:
        return 0.0
    if reference == 0 or mpmath.isinf(computed) or mpmath.isinf(reference):
        return math.inf
    return float(abs(computed - reference) / abs(reference))


def relative_error(computed, reference):
    """|computed − reference| / |reference|, elementwise, float64.

    Rules: NaN in either → NaN; equal values (zeros and same-signed infinities included) → 0;
    reference 0 with computed ≠ 0, or an infinity on one side only, or opposite infinities → inf.
    """
    return _elementwise(_relative_error, {"computed": computed, "reference": reference})


def relative_error_in_u(computed, reference, acc_dtype):
    """relative_error in units of the unit roundoff u = 2**-p of the accumulator format."""
    unit_roundoff = precision.unit_roundoff(precision.format_name(acc_dtype, "acc_dtype"))
    return relative_error(computed, reference) / unit_roundoff


# ---- the correctly rounded reference and ulp distance --------------------------------------------

def _round_to_format(value, name):
    """``value`` (an mpf) rounded to nearest, ties to even, in the format ``name``, with gradual
    underflow and overflow to ±inf (IEEE 754): returned as the float64 holding that format value."""
    if mpmath.isnan(value) or mpmath.isinf(value) or value == 0:
        return float(value)
    info = ml_dtypes.finfo(precision.NUMPY_DTYPES[name])
    significand_bits = precision.SIGNIFICAND_BITS[name]
    lowest_normal_exponent = info.minexp
    sign, mantissa, exponent, bit_count = value._mpf_  # value = (−1)**sign · mantissa · 2**exponent
    top_exponent = exponent + bit_count - 1  # 2**top_exponent <= |value| < 2**(top_exponent + 1)
    quantum_exponent = max(top_exponent, lowest_normal_exponent) - (significand_bits - 1)
    if exponent >= quantum_exponent:
        integer = mantissa << (exponent - quantum_exponent)
    else:
        drop = quantum_exponent - exponent
        integer, remainder = mantissa >> drop, mantissa & ((1 << drop) - 1)
        half = 1 << (drop - 1)
        if remainder > half or (remainder == half and integer & 1):
            integer += 1
    if integer.bit_length() + quantum_exponent > info.maxexp:
        magnitude = math.inf  # at least 2**maxexp: beyond even float64 for dtype float64
    else:
        magnitude = math.ldexp(integer, quantum_exponent)  # exact: integer has <= p + 1 bits
        if magnitude > float(info.max):
            magnitude = math.inf
    return -magnitude if sign else magnitude


def correctly_rounded(reference, dtype):
    """The reference values rounded once, to nearest (ties to even), to ``dtype`` (one of
    precision.FORMATS): the best any computation in that format can return. numpy array of dtype.
    Rounding an mpf directly avoids the double rounding of going through float64."""
    name = precision.format_name(dtype, "dtype")
    references = _as_object_array(reference, "reference")
    rounded = np.empty(references.shape, np.float64)
    with mpmath.workprec(WORKING_BITS):
        for index in np.ndindex(references.shape):
            rounded[index] = _round_to_format(_as_mpf(references[index], "reference"), name)
    return rounded.astype(precision.NUMPY_DTYPES[name])


_BITS_DTYPES = {"float16": np.uint16, "bfloat16": np.uint16, "float32": np.uint32,
                "float64": np.uint64}


def _ordinals(values, name):
    """Python int position of each value in the ordered set of the format's values (±0 → 0)."""
    bits = np.ascontiguousarray(values).view(_BITS_DTYPES[name])
    sign_bit = 1 << (8 * bits.dtype.itemsize - 1)
    return [(-(int(word) ^ sign_bit) if int(word) & sign_bit else int(word)) for word in bits.flat]


def ulp_distance(computed, reference, dtype):
    """How many steps through the values of the format ``dtype`` separate ``computed`` from the
    correctly rounded reference: 0 means computed is the correctly rounded result. ±0 are one
    value; ±inf are one step past the largest finite value. NaN on either side → NaN. float64.

    ``computed`` must be representable in ``dtype`` (a result computed in that format); a value
    that is not raises ValueError.
    """
    name = precision.format_name(dtype, "dtype")
    computed_values, references = np.broadcast_arrays(_as_object_array(computed, "computed"),
                                                      _as_object_array(reference, "reference"))
    computed_in_format = np.empty(computed_values.shape, np.float64)
    with mpmath.workprec(WORKING_BITS):
        for index in np.ndindex(computed_values.shape):
            value = _as_mpf(computed_values[index], "computed")
            computed_in_format[index] = _round_to_format(value, name)
            if not mpmath.isnan(value) and computed_in_format[index] != value:
                raise ValueError(f"computed holds {mpmath.nstr(value, 20)}, which is not "
                                 f"representable in {name}")
    rounded = correctly_rounded(references, name)
    distances = np.array([abs(a - b) for a, b in zip(
        _ordinals(computed_in_format.astype(precision.NUMPY_DTYPES[name]), name),
        _ordinals(rounded, name))], np.float64).reshape(computed_values.shape)
    distances[np.isnan(computed_in_format) | np.isnan(rounded.astype(np.float64))] = math.nan
    return distances[()] if distances.ndim == 0 else distances


# ---- LRE and the condition number -----------------------------------------------------------------

def lre(computed, reference, digits=15):
    """Log relative error (McCullough 1998, The American Statistician 52(4)): the number of
    correct significant digits, −log10(|x − c|/|c|), or −log10|x| when c = 0 (x computed, c
    reference/certified). Capped at ``digits`` (15 for NIST, whose values carry 15 digits; x = c
    gives the cap), floored at 0. Set to 0 when x is grossly wrong: non-finite, of the opposite
    sign, or off by more than a factor of 2 (x/c > 2 or x/c < 1/2). NaN reference → NaN.
    """
    if isinstance(digits, bool) or not isinstance(digits, (int, float)) or not digits > 0:
        raise ValueError(f"digits must be a positive number, got {digits!r}")

    def one(x, c):
        if mpmath.isnan(c):
            return math.nan
        if not mpmath.isfinite(x) or not mpmath.isfinite(c):
            return float(digits) if x == c else 0.0
        if x == c:
            return float(digits)
        if c == 0:
            correct = -mpmath.log10(abs(x))
        else:
            ratio = x / c
            if ratio > 2 or ratio < 0.5:
                return 0.0
            correct = -mpmath.log10(abs(x - c) / abs(c))
        return float(min(max(correct, 0), digits))

    return _elementwise(one, {"computed": computed, "reference": reference})


def condition_number(mean, var, n, ddof):
    """κ = sqrt(1 + n·mean²/S) with S = var·(n − ddof) (Chan, Golub & LeVeque 1983; Higham 2002
    §1.9), from reference statistics; float64. inf where S = 0; NaN where either is NaN or
    n − ddof <= 0. For κ straight from the data, numerics.reference.condition_number is exact."""
    for argument, value in (("n", n), ("ddof", ddof)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{argument} must be a non-negative integer, got {value!r}")
    degrees_of_freedom = int(n) - int(ddof)

    def one(mean_value, var_value):
        if mpmath.isnan(mean_value) or mpmath.isnan(var_value) or degrees_of_freedom <= 0:
            return math.nan
        sum_of_squares = var_value * degrees_of_freedom
        if sum_of_squares == 0:
            return math.inf
        return float(mpmath.sqrt(1 + int(n) * mean_value ** 2 / sum_of_squares))

    return _elementwise(one, {"mean": mean, "var": var})
