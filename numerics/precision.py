"""Floating-point formats: names, unit roundoff, and exact emulation of the 16-bit formats.

Numba's CPU target has no 16-bit floats (docs/architecture.md trap 10), so float16 and bfloat16 data
travel as ``uint16`` bit patterns and are decoded to float32; a 16-bit *accumulator* is emulated by
computing each operation in float32 and rounding the result to the format, round-to-nearest-even.
That emulation is exact for + - * / sqrt because float32 carries at least 2p + 2 bits of either
format (p = 11 for float16, 8 for bfloat16).

The bit-level functions below are plain Python on numpy scalars, with no numba import: targets.py
compiles the very same functions for the CPU and the GPU, and they also run as they are.
"""
import numpy as np
import ml_dtypes

FORMATS = ("float16", "bfloat16", "float32", "float64")

#: significand bits p of each format (the implicit bit included); u = 2**-p.
SIGNIFICAND_BITS = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}

NUMPY_DTYPES = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}

#: the type a kernel computes in for each accumulator format (16-bit formats are emulated in float32).
COMPUTE_DTYPES = {
    "float16": np.dtype(np.float32),
    "bfloat16": np.dtype(np.float32),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}


def unit_roundoff(name):
    """u = 2**-p, half the distance from 1 to the next float of the format."""
    return 2.0 ** -SIGNIFICAND_BITS[format_name(name, "format")]


def format_name(value, argument):
    """Normalise a dtype given as a name, numpy dtype or scalar type to one of FORMATS.

    Raises TypeError naming ``argument`` for integers, booleans, complex numbers and anything else
    that is not one of the four binary floating-point formats.
    """
    if isinstance(value, str) and value in FORMATS:
        return value
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"{argument} must be one of {FORMATS}, got {value!r}") from None
    for name, candidate in NUMPY_DTYPES.items():
        if dtype == candidate or dtype == candidate.newbyteorder():
            return name
    raise TypeError(f"{argument} must be one of {FORMATS}, got dtype {dtype}")


# ---- bit-level codecs (plain functions: compiled for CPU and GPU in targets.py) ----------------

def float16_bits_to_float32(bits):
    """Decode an IEEE binary16 bit pattern to the float32 of the same value (exact)."""
    bits = np.uint32(bits)
    sign = (bits >> np.uint32(15)) << np.uint32(31)
    exponent = (bits >> np.uint32(10)) & np.uint32(0x1F)
    mantissa = bits & np.uint32(0x3FF)
    if exponent == np.uint32(0):
        # subnormal or zero: m * 2**-24 is exact in float32
        magnitude = np.float32(mantissa) * np.float32(5.9604644775390625e-08)
        return np.uint32(np.float32(magnitude).view(np.uint32) | sign).view(np.float32)
    if exponent == np.uint32(31):
        return np.uint32(sign | np.uint32(0x7F800000) | (mantissa << np.uint32(13))).view(np.float32)
    return np.uint32(sign | ((exponent + np.uint32(112)) << np.uint32(23))
                     | (mantissa << np.uint32(13))).view(np.float32)


def bfloat16_bits_to_float32(bits):
    """Decode a bfloat16 bit pattern: it is the top half of a float32."""
    return np.uint32(np.uint32(bits) << np.uint32(16)).view(np.float32)


def round_float32_to_bfloat16(value):
    """Round a float32 to the nearest bfloat16 (ties to even), overflow to Inf; returns float32."""
    value = np.float32(value)
    if value != value:
        return value
    bits = np.float32(value).view(np.uint32)
    lowest_kept = (bits >> np.uint32(16)) & np.uint32(1)
    bits = (bits + np.uint32(0x7FFF) + lowest_kept) & np.uint32(0xFFFF0000)
    return np.uint32(bits).view(np.float32)


def round_float32_to_float16(value):
    """Round a float32 to the nearest float16 (ties to even), subnormals and overflow to Inf
    included; returns float32."""
    value = np.float32(value)
    if value != value:
        return value
    bits = np.float32(value).view(np.uint32)
    sign = bits & np.uint32(0x80000000)
    magnitude = np.uint32(bits & np.uint32(0x7FFFFFFF)).view(np.float32)
    if magnitude >= np.float32(65520.0):
        # 65520 is the tie between 65504 (odd significand) and 2**16: ties go to even, i.e. Inf
        return np.uint32(sign | np.uint32(0x7F800000)).view(np.float32)
    if magnitude < np.float32(6.103515625e-05):
        # float16 subnormal range: quantum 2**-24, which is ulp(0.5) in float32, so adding and
        # removing 0.5 rounds to a multiple of it, ties to even
        rounded = (magnitude + np.float32(0.5)) - np.float32(0.5)
        return np.uint32(np.float32(rounded).view(np.uint32) | sign).view(np.float32)
    magnitude_bits = bits & np.uint32(0x7FFFFFFF)
    lowest_kept = (magnitude_bits >> np.uint32(13)) & np.uint32(1)
    magnitude_bits = (magnitude_bits + np.uint32(0xFFF) + lowest_kept) & np.uint32(0xFFFFE000)
    return np.uint32(magnitude_bits | sign).view(np.float32)


def identity(value):
    return value


# ---- host-side conversions ---------------------------------------------------------------------

def float64_to_float32_round_to_odd(values):
    """Round float64 to float32 with round-to-odd, so that a later round-to-nearest to a narrower
    format (bfloat16) is the correctly rounded result of the original (no double rounding)."""
    values = np.asarray(values, dtype=np.float64)
    nearest = values.astype(np.float32)
    inexact = (nearest.astype(np.float64) != values) & np.isfinite(values)
    overshoot = inexact & (np.abs(nearest.astype(np.float64)) > np.abs(values))
    truncated = np.where(overshoot, np.nextafter(nearest, np.float32(0)), nearest)
    bits = truncated.view(np.uint32).copy()
    bits[inexact] |= np.uint32(1)
    return bits.view(np.float32)


def widened(values, input_format, acc_format):
    """The array ``values`` of ``input_format`` (16-bit formats as uint16 bit patterns) in the
    compute type of ``acc_format``: exact for every narrower format (numpy's float16 and
    ml_dtypes' bfloat16 casts decode exactly what the bit-level decoders above decode,
    tests/test_codecs.py checks every pattern), and one rounding to nearest for float64 into a
    float32 compute type, the conversion the kernels apply to each element they load."""
    values = np.asarray(values)
    if input_format in ("float16", "bfloat16"):
        # through float32, as the kernels decode: a direct cast to float64 would keep a
        # signalling NaN signalling, where the float32 -> float64 conversion quiets it
        values = values.view(NUMPY_DTYPES[input_format]).astype(np.float32)
    return np.ascontiguousarray(values, dtype=COMPUTE_DTYPES[acc_format])


def convert(values, name):
    """Convert an array to the format ``name`` with one correct rounding (round to nearest even)."""
    values = np.asarray(values)
    target = NUMPY_DTYPES[name]
    if values.dtype == target:
        return values
    if name == "bfloat16" and values.dtype == np.float64:
        return float64_to_float32_round_to_odd(values).astype(target)
    return values.astype(target)
