"""The 16-bit codecs of numerics.precision, compiled as the kernels compile them (numba.njit), checked
exhaustively where that is possible (every one of the 65 536 bit patterns of each 16-bit format)
and on every rounding boundary where it is not (docs/architecture.md, trap 10): numpy's float16 and
ml_dtypes' bfloat16 casts are the correctly rounded references."""
import ml_dtypes
import numba
import numpy as np
import pytest

from numerics import precision

ALL_PATTERNS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
REFERENCE_TYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
DECODERS = {"float16": precision.float16_bits_to_float32,
            "bfloat16": precision.bfloat16_bits_to_float32}
ROUNDERS = {"float16": precision.round_float32_to_float16,
            "bfloat16": precision.round_float32_to_bfloat16}


def compiled_map(function, output_dtype):
    """``function`` compiled with numba.njit and applied element by element."""
    scalar = numba.njit(function)

    @numba.njit
    def apply(values, out):
        for i in range(values.shape[0]):
            out[i] = scalar(values[i])

    def run(values):
        out = np.empty(values.shape[0], output_dtype)
        apply(values, out)
        return out

    return run


def same_values(computed, expected):
    """Bit-equal float32 arrays, except that any NaN matches any NaN (payloads are not specified)."""
    both_nan = np.isnan(computed) & np.isnan(expected)
    return np.array_equal(computed.view(np.uint32)[~both_nan], expected.view(np.uint32)[~both_nan])


@pytest.mark.parametrize("format_name", ["float16", "bfloat16"])
def test_decoding_every_bit_pattern_is_exact(format_name):
    decoded = compiled_map(DECODERS[format_name], np.float32)(ALL_PATTERNS)
    expected = ALL_PATTERNS.view(REFERENCE_TYPES[format_name]).astype(np.float32)
    assert same_values(decoded, expected)
    assert np.array_equal(np.isnan(decoded), np.isnan(expected))


@pytest.mark.parametrize("format_name", ["float16", "bfloat16"])
def test_widened_arrays_hold_what_the_kernels_decode(format_name):
    """precision.widened is the input of the CPU kernels' scalar path: every pattern must widen
    to the compiled decoder's bits, NaN payloads included (a kernel carries them into its
    results), in both compute types."""
    decoded = compiled_map(DECODERS[format_name], np.float32)(ALL_PATTERNS)
    for acc_format in ("float16", "bfloat16", "float32"):
        widened = precision.widened(ALL_PATTERNS, format_name, acc_format)
        assert widened.dtype == np.float32
        assert np.array_equal(widened.view(np.uint32), decoded.view(np.uint32))
    widened = precision.widened(ALL_PATTERNS, format_name, "float64")
    loaded = compiled_map(lambda value: np.float64(value), np.float64)(decoded)
    assert np.array_equal(widened.view(np.uint64), loaded.view(np.uint64))


def test_widened_float64_rounds_to_float32_as_a_kernel_load_does():
    """float64 input into a float32 compute type: one rounding to nearest, the conversion a
    compiled load applies (ties, the subnormal range, overflow and NaN payloads included)."""
    rng = np.random.default_rng(3)
    values = np.concatenate([
        rng.standard_normal(4096) * np.exp2(rng.integers(-160, 140, 4096)),
        np.float32(rng.standard_normal(4096)).astype(np.float64) * (1 + 2.0 ** -24),  # ties
        [np.inf, -np.inf, np.nan, 3.5e38, -3.5e38, 1e-46, -0.0]])
    values = np.concatenate([values, (values.view(np.uint64) ^ np.uint64(1)).view(np.float64)])
    expected = compiled_map(lambda value: np.float32(value), np.float32)(values)
    widened = precision.widened(values, "float64", "float32")
    assert np.array_equal(widened.view(np.uint32), expected.view(np.uint32))


def boundary_inputs(format_name):
    """float32 values at and around every rounding boundary of the format: each finite 16-bit
    value, each midpoint between neighbours (the ties), and the float32 neighbours of both, for
    both signs, plus the overflow threshold region and the float32 specials."""
    values = ALL_PATTERNS.view(REFERENCE_TYPES[format_name]).astype(np.float32)
    finite = np.unique(np.abs(values[np.isfinite(values)])).astype(np.float64)
    # one step past the largest finite value: the midpoint below it is the overflow threshold
    upper = np.append(finite[1:], 2 * finite[-1] - finite[-2])
    midpoints = ((finite + upper) / 2).astype(np.float32)
    finite = finite.astype(np.float32)
    points = np.concatenate([finite, midpoints])
    around = np.concatenate([points, np.nextafter(points, np.float32(np.inf)),
                             np.nextafter(points, np.float32(0))])
    specials = np.array([np.inf, np.finfo(np.float32).max, np.finfo(np.float32).tiny,
                         np.float32(1e-45)], np.float32)
    magnitudes = np.concatenate([around, specials])
    return np.concatenate([magnitudes, -magnitudes, [np.float32(np.nan)]]).astype(np.float32)


def random_float32(count, seed=0):
    bits = np.random.default_rng(seed).integers(0, 1 << 32, count, dtype=np.uint64)
    return bits.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("format_name", ["float16", "bfloat16"])
def test_rounding_is_correct_at_every_boundary_and_on_random_bit_patterns(format_name):
    inputs = np.concatenate([boundary_inputs(format_name), random_float32(1 << 20)])
    rounded = compiled_map(ROUNDERS[format_name], np.float32)(inputs)
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow to Inf is under test
        expected = inputs.astype(REFERENCE_TYPES[format_name]).astype(np.float32)
    assert same_values(rounded, expected)
    assert np.array_equal(np.isnan(rounded), np.isnan(expected))


@pytest.mark.parametrize("format_name", ["float16", "bfloat16"])
def test_ties_go_to_even(format_name):
    """The midpoint between 1 and the next value up rounds down to 1 (even significand); the
    midpoint above that next value rounds up (to the even one after it)."""
    one_up = np.nextafter(REFERENCE_TYPES[format_name](1), REFERENCE_TYPES[format_name](2))
    step = np.float32(one_up) - np.float32(1)
    rounder = compiled_map(ROUNDERS[format_name], np.float32)
    ties = np.array([1 + step / 2, 1 + 3 * step / 2], np.float32)
    assert rounder(ties).tolist() == [1.0, float(1 + 2 * step)]
