"""The exact reference: the mean and variance of the stored values of every normalization group.

The inputs are binary floats, so each group's mean and variance are rational numbers
(docs/architecture.md section 4.1): with Σx and Σx² computed exactly, S = Σx² − (Σx)²/n exactly,
and the only rounding left is the final division, done by mpmath's ``mpf_div`` on exact operands:
correctly rounded (to nearest, ties to even) at ``bits`` bits. mpmath precision is scoped with
``mpmath.workprec`` and never assigned globally (docs/architecture.md, trap 6).

How the sums are exact. Every finite binary32 value is ±m·2**(position − 149) with an integer
significand m < 2**24 and an integer position ≥ 0 (binary64: m < 2**53, 2**(position − 1074)).
Each group owns an array of base-2**32 digits held in int64 (a superaccumulator; Neal 2015
describes the floating-point variant), carry-normalised often enough that no digit can overflow.
Elements first meet a per-group table of int64 buckets, one per biased exponent: an element adds
±m and m² (binary64: pieces of them, m² being 106 bits) to its exponent's bucket, a few integer
adds and no shifts. Every ``FLUSH_INTERVAL`` elements of a group, before a bucket could overflow,
the buckets are folded into the digits, each shifted by its exponent. The digit rows become Python
ints at the end, so nothing is ever rounded. float16 and bfloat16 inputs are widened to float32
first, which is exact. Decimal strings (the NIST data) are read exactly as rationals and summed as
integers over their common denominator.

Non-finite input (a documented rule, IEEE semantics of the exact sum): a group holding a NaN, or
both +Inf and −Inf, has mean NaN; a group whose non-finite values are all +Inf (all −Inf) has mean
+Inf (−Inf); the variance of any group holding a NaN or an Inf is NaN. Other groups are unaffected.
"""
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import mpmath
import numpy as np
from mpmath import libmp
from numba import njit
from numba.extending import overload

from . import cache, normalization, precision, statistics, subsets

#: the least precision a caller may ask for: far beyond any float format, so that comparing a
#: computed float64 with the reference never sees the reference's own rounding
MINIMUM_BITS = 200

DIGIT_BITS = 32
#: elements of one group between folds of its buckets into its digits. Per element a binary32
#: bucket gains at most (2**24 − 1)² in its square slot, so after 2**15 elements the slot holds at
#: most 2**63 − 2**40 + 2**15 < 2**63 (its sum slot: below 2**39); a binary64 slot gains less
#: than 2**37 per element, so it stays below 2**52. int64 never overflows.
FLUSH_INTERVAL = 1 << 15

#: precision of the working values behind the float64 condition numbers (a few bits past float64)
CONDITION_BITS = 64


# ---- compiled kernels: exact integer accumulation -----------------------------------------------
#
# Each element adds its significand m and pieces of m² to the bucket of its biased exponent in the
# table row of its group: a few integer adds, no shifts by the exponent. A bucket's slots are
# "sum" slots (Σ±pieces of m, each worth 2**offset at the bucket's position) and "square" slots
# (Σ pieces of m², each worth 2**offset at twice the position). A fold adds every slot, shifted,
# into the group's base-2**32 digits, empties it and carry-normalises the digits.
# Only the kernel, _accumulate, is cached (numerics.cache: the package's cache directory, its first
# call in a process under the cache's locks); the helpers compile into it.

@njit
def _add_piece(digits, group, piece, position):
    """Add piece·2**position (|piece| < 2**32, either sign) to the base-2**32 digits of
    ``group``."""
    index = position >> 5
    shifted = piece << (position & 31)  # |shifted| < 2**63: no int64 overflow
    digits[group, index] += shifted & 0xFFFFFFFF  # shifted = high·2**32 + low, 0 <= low < 2**32
    digits[group, index + 1] += shifted >> 32  # arithmetic shift: floor division, sign kept


@njit
def _add(digits, group, value, position):
    """Add value·2**position (any int64) to the digits of ``group``."""
    _add_piece(digits, group, value & 0xFFFFFFFF, position)
    _add_piece(digits, group, value >> 32, position + 32)  # in [−2**31, 2**31)


@njit
def _normalize(digits, group):
    """Propagate carries: every digit but the last ends in [0, 2**32); the last holds the signed rest."""
    for index in range(digits.shape[1] - 1):
        value = digits[group, index]
        digits[group, index] = value & 0xFFFFFFFF
        digits[group, index + 1] += value >> 32  # arithmetic shift: floor division, sign kept


@njit
def _count_nonfinite(nonfinite, group, fraction, negative):
    if fraction != 0:
        nonfinite[group, 0] += 1
    elif negative:
        nonfinite[group, 2] += 1
    else:
        nonfinite[group, 1] += 1


@njit
def _push_binary32(word, slot, group, table, nonfinite):
    """One float32 (its bits as a signed integer), x = ±m·2**(position − 149): slot 0 gains ±m,
    slot 1 gains m² (< 2**48)."""
    word = np.int64(word)  # sign-extended: bit 63 is the sign bit
    biased = (word >> 23) & 0xFF
    fraction = word & 0x7FFFFF
    if biased == 0xFF:
        _count_nonfinite(nonfinite, group, fraction, word < 0)
        return
    significand = fraction | (np.int64(biased != 0) << 23)
    sign = word >> 63  # 0 or −1
    table[slot, biased, 0] += (significand ^ sign) - sign  # ±significand, without a branch
    table[slot, biased, 1] += significand * significand


@njit
def _push_binary64(word, slot, group, table, nonfinite):
    """One float64 (its bits as a signed integer), x = ±m·2**(position − 1074). m = h·2**26 + l
    goes to the sum slots 0 (±l) and 1 (±h); m = a·2**36 + b·2**18 + c (b, c < 2**18, a < 2**17)
    gives m² as five convolution terms, each below 2**37, at 18-bit steps in slots 2..6."""
    biased = (word >> 52) & 0x7FF
    fraction = word & 0xFFFFFFFFFFFFF
    if biased == 0x7FF:
        _count_nonfinite(nonfinite, group, fraction, word < 0)
        return
    significand = fraction | (np.int64(biased != 0) << 52)
    sign = word >> 63  # 0 or −1
    low = significand & 0x3FFFFFF
    high = significand >> 26
    table[slot, biased, 0] += (low ^ sign) - sign
    table[slot, biased, 1] += (high ^ sign) - sign
    piece_a = significand >> 36
    piece_b = (significand >> 18) & 0x3FFFF
    piece_c = significand & 0x3FFFF
    table[slot, biased, 2] += piece_c * piece_c
    table[slot, biased, 3] += 2 * piece_b * piece_c
    table[slot, biased, 4] += 2 * piece_a * piece_c + piece_b * piece_b
    table[slot, biased, 5] += 2 * piece_a * piece_b
    table[slot, biased, 6] += piece_a * piece_a


def _push(word, slot, group, table, nonfinite):
    """Add one element (its bits) to its bucket; compiled only, by the format: _push_for_width."""
    raise NotImplementedError("_push runs inside compiled kernels only")


@overload(_push)
def _push_for_width(word, slot, group, table, nonfinite):
    if word.bitwidth == 32:
        return lambda word, slot, group, table, nonfinite: _push_binary32(
            word, slot, group, table, nonfinite)
    return lambda word, slot, group, table, nonfinite: _push_binary64(
        word, slot, group, table, nonfinite)


@njit
def _fold(table, first_group, sums, squares, sum_offsets, square_offsets):
    """Add every bucket of the table (row i belongs to group first_group + i) into the digits,
    empty it, and carry-normalise the digits. A bucket's slots are its sum slots (offsets
    ``sum_offsets`` from its position) and then its square slots (``square_offsets`` from twice
    its position). Each digit starts below 2**32 and gains less than 2**32 from each of fewer
    than 2**16 additions (2047 buckets · 7 slots · 2 pieces · 2 digits): below 2**49."""
    sum_slots = sum_offsets.size
    for slot in range(table.shape[0]):
        group = first_group + slot
        for biased in range(table.shape[1]):
            occupied = 0  # most buckets are empty: one branch-free pass over the slots finds them
            for piece in range(table.shape[2]):
                occupied |= table[slot, biased, piece]
            if occupied == 0:
                continue
            position = max(biased - 1, 0)  # subnormals share the smallest normals' exponent
            for piece in range(table.shape[2]):
                value = table[slot, biased, piece]
                if piece < sum_slots:
                    _add(sums, group, value, position + sum_offsets[piece])
                else:
                    _add(squares, group, value, 2 * position + square_offsets[piece - sum_slots])
                table[slot, biased, piece] = 0
        _normalize(sums, group)
        _normalize(squares, group)


@cache.cached()
def _accumulate(words, table, sums, squares, nonfinite, sum_offsets, square_offsets):
    """Add every element of a canonical (kept_outer, reduced_outer, kept_inner, reduced_inner)
    view of float bits, in memory order, to its group; the groups of one kept_outer index share
    the table (one row each) and are folded at least every FLUSH_INTERVAL of their elements."""
    kept_outer, reduced_outer, kept_inner, reduced_inner = words.shape
    for outer in range(kept_outer):
        first_group = outer * kept_inner
        since_fold = 0  # elements each group of this outer index received since the last fold
        for row in range(reduced_outer):
            for start in range(0, reduced_inner, FLUSH_INTERVAL):
                stop = min(start + FLUSH_INTERVAL, reduced_inner)
                if since_fold + (stop - start) > FLUSH_INTERVAL:
                    _fold(table, first_group, sums, squares, sum_offsets, square_offsets)
                    since_fold = 0
                # the table row as an unsigned index: numba then drops its negative-index check,
                # which LLVM failed to hoist from the binary64 loop (2.5 times slower with it)
                if reduced_inner == 1:  # channels last: a loop of one trip per element costs
                    for inner in range(kept_inner):  # about as much as the element itself
                        _push(words[outer, row, inner, 0], np.uint64(inner), first_group + inner,
                              table, nonfinite)
                else:
                    for inner in range(kept_inner):
                        slot = np.uint64(inner)
                        for column in range(start, stop):
                            _push(words[outer, row, inner, column], slot, first_group + inner,
                                  table, nonfinite)
                since_fold += stop - start
        _fold(table, first_group, sums, squares, sum_offsets, square_offsets)


@dataclass(frozen=True)
class _Encoding:
    """How one binary format is accumulated: its bits as which integer type, the exponent of
    position 0, how many base-2**32 digits hold Σx and Σx² (the highest position a deposit
    reaches, plus 64 bits of headroom for the count, plus the signed top digit), its biased
    exponents that hold finite values (one bucket each) and the offsets of its bucket slots."""
    word_dtype: type
    lowest_exponent: int
    sum_digits: int
    square_digits: int
    exponents: int
    sum_offsets: tuple
    square_offsets: tuple

    def new_table(self, rows):
        """Empty buckets for ``rows`` groups."""
        return np.zeros((rows, self.exponents, len(self.sum_offsets) + len(self.square_offsets)),
                        np.int64)


_ENCODINGS = {
    # binary32: positions 0..253, significands < 2**24, squares < 2**48 at 2·position; a fold
    # adds a slot (< 2**63) as two 32-bit pieces: the highest touches digit ⌊(2·253 + 32)/32⌋ + 1
    # = 17 of squares' 21 (sums: ⌊(253 + 32)/32⌋ + 1 = 9 of 12)
    "float32": _Encoding(np.int32, -149, (253 + 24 + 64) // DIGIT_BITS + 2,
                         (2 * 253 + 48 + 64) // DIGIT_BITS + 2, 255, (0,), (0,)),
    # binary64: positions 0..2045, significands < 2**53, squares < 2**106; the highest piece of a
    # fold touches digit ⌊(2·2045 + 72 + 32)/32⌋ + 1 = 132 of squares' 135 (sums: 66 of 69)
    "float64": _Encoding(np.int64, -1074, (2045 + 53 + 64) // DIGIT_BITS + 2,
                         (2 * 2045 + 106 + 64) // DIGIT_BITS + 2, 2047, (0, 26),
                         (0, 18, 36, 54, 72)),
}


def _digits_to_ints(digits):
    """Python ints from normalised digit rows (all digits but the last in [0, 2**32))."""
    width = digits.shape[1] - 1
    low = np.ascontiguousarray(digits[:, :width]).astype("<u4").tobytes()
    row_bytes = 4 * width
    top_shift = DIGIT_BITS * width
    return [int.from_bytes(low[group * row_bytes:(group + 1) * row_bytes], "little")
            + (int(top) << top_shift) for group, top in enumerate(digits[:, width])]


# ---- the exact sums of every group ----------------------------------------------------------------

@dataclass(frozen=True)
class ScaledSums:
    """Σx = sums[g] / scale and Σx² = squares[g] / scale**2 for group g, exactly; ``firsts[g]`` is
    the group's first element (a float or a Fraction). ``nonfinite`` maps each group that holds NaN
    or Inf to its counts (NaN, +Inf, −Inf); the sums leave the non-finite values out."""
    count: int
    scale: int
    sums: list
    squares: list
    firsts: list
    nonfinite: dict
    stats_shape: tuple

    def scaled_first(self, group):
        """The group's first element times ``scale`` (an int), 0 for a non-finite one."""
        first = self.firsts[group]
        return int(Fraction(first) * self.scale) if math.isfinite(first) else 0


def scaled_sums(x, norm, groups, layout):
    x = np.asarray(statistics.as_array(x))  # PyTorch CPU tensors too, bfloat16 included
    if x.dtype.kind == "U":
        return _decimal_sums(x, norm)
    if x.dtype.kind in "SO":
        raise TypeError(f"x must be a float16, bfloat16, float32 or float64 array, or a 1-D "
                        f"sequence of decimal strings; got dtype {x.dtype}")
    input_format = precision.format_name(x.dtype, "x")
    view = subsets.canonical_view(x.shape, norm, groups, layout)
    if x.size == 0:
        raise ValueError(f"x is empty (shape {x.shape}): every group needs at least one element")
    # float16 and bfloat16 widen to float32 exactly; the kernels read native-endian contiguous bits
    accumulated_format = "float64" if input_format == "float64" else "float32"
    values = np.ascontiguousarray(x, dtype=precision.NUMPY_DTYPES[accumulated_format])
    values = values.reshape(view.view_shape)
    encoding = _ENCODINGS[accumulated_format]
    group_count = view.group_count
    sums = np.zeros((group_count, encoding.sum_digits), np.int64)
    squares = np.zeros((group_count, encoding.square_digits), np.int64)
    nonfinite = np.zeros((group_count, 3), np.int64)
    words = values.view(encoding.word_dtype)
    cache.call(_accumulate, (words.dtype.str, words.flags.writeable), words,
               encoding.new_table(view.kept_inner), sums, squares, nonfinite,
               np.array(encoding.sum_offsets, np.int64), np.array(encoding.square_offsets, np.int64))
    special = np.flatnonzero(nonfinite.any(axis=1))
    special_counts = dict(zip(special.tolist(), map(tuple, nonfinite[special].tolist())))
    firsts = values[:, 0, :, 0].reshape(-1).tolist()
    return ScaledSums(view.group_size, 1 << -encoding.lowest_exponent, _digits_to_ints(sums),
                       _digits_to_ints(squares), firsts, special_counts, view.stats_shape)


def _decimal_sums(strings, norm):
    """Exact sums of decimal strings: each value V_i / scale with scale the common denominator."""
    if norm is not None:
        raise ValueError(f"decimal strings are a single 1-D sample: norm must be None, got {norm!r}")
    if strings.ndim != 1 or strings.size == 0:
        raise ValueError(f"decimal strings must form a non-empty 1-D sequence, got shape "
                         f"{strings.shape}")
    values = []
    for text in strings.tolist():
        try:
            values.append(Fraction(text.strip()))
        except ValueError:
            raise ValueError(f"x holds {text!r}, which is not a finite decimal number") from None
    scale = math.lcm(*(value.denominator for value in values))
    scaled = [value.numerator * (scale // value.denominator) for value in values]
    return ScaledSums(len(scaled), scale, [sum(scaled)], [sum(v * v for v in scaled)],
                       [values[0]], {}, ())


def _exact_value(integer):
    """An int as an exact mpmath value tuple. Stripping the trailing zero bits here, in one step,
    spares mpmath's bit-by-bit stripping: the scaled sums carry ~149 (binary64: ~1074) of them."""
    if integer == 0:
        return libmp.fzero
    zeros = (integer & -integer).bit_length() - 1
    return libmp.from_man_exp(integer >> zeros, zeros)


def _rounded_ratio(numerator, denominator, bits):
    """numerator/denominator correctly rounded to nearest at ``bits``: an int over a positive
    denominator given as its exact value (``_exact_value``: groups share their denominators)."""
    return mpmath.make_mpf(libmp.mpf_div(_exact_value(numerator), denominator, bits, "n"))


def nonfinite_mean(nan_count, positive_infinities, negative_infinities):
    """The IEEE value of a group's mean when it holds NaN or Inf (module docstring), else None."""
    if nan_count or (positive_infinities and negative_infinities):
        return math.nan
    if positive_infinities:
        return math.inf
    if negative_infinities:
        return -math.inf
    return None


def _stats_array(values, stats_shape):
    """An object array of the statistics shape (0-d for a single group)."""
    result = np.empty(len(values), dtype=object)
    result[:] = values
    return result.reshape(stats_shape)


def _check_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < MINIMUM_BITS:
        raise ValueError(f"bits must be an integer >= {MINIMUM_BITS}, got {bits!r}")


def _check_ddof(ddof):
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative integer, got {ddof!r}")


# ---- public API -----------------------------------------------------------------------------------

class ExactSums(NamedTuple):
    """``count`` elements per group; ``sum_x`` and ``sum_x2``: object arrays of the statistics
    shape holding the exact Σx and Σx² as ``fractions.Fraction``. A group holding NaN or Inf holds
    the IEEE float value of its sums instead: Σx NaN (any NaN, or both infinities) or ±Inf, Σx²
    NaN (any NaN) or +Inf."""
    count: int
    sum_x: np.ndarray
    sum_x2: np.ndarray


def exact_sums(x, norm=None, *, groups=None, layout="NCHW"):
    """Exact Σx and Σx² of each normalization group of ``x`` (groups as in subsets.canonical_view).

    ``x``: a float16, bfloat16, float32 or float64 array, or a 1-D sequence of decimal strings
    (norm None) whose exact decimal values are summed. Returns ``ExactSums(count, sum_x, sum_x2)``.
    """
    sums = scaled_sums(x, norm, groups, layout)
    sum_x, sum_x2 = [], []
    for group, (scaled_sum, scaled_square) in enumerate(zip(sums.sums, sums.squares)):
        nan_count, positive, negative = sums.nonfinite.get(group, (0, 0, 0))
        special = nonfinite_mean(nan_count, positive, negative)
        if special is None:
            sum_x.append(Fraction(scaled_sum, sums.scale))
            sum_x2.append(Fraction(scaled_square, sums.scale ** 2))
        else:
            sum_x.append(special)
            sum_x2.append(math.nan if nan_count else math.inf)
    return ExactSums(sums.count, _stats_array(sum_x, sums.stats_shape),
                     _stats_array(sum_x2, sums.stats_shape))


def moments(x, norm=None, *, groups=None, layout="NCHW", ddof=0, bits=256):
    """Exact mean and variance of the stored values of each normalization group of ``x``.

    Groups and the statistics shape are those of ``subsets.canonical_view(x.shape, norm, groups,
    layout)``; ``norm=None`` takes a 1-D ``x`` as one group and returns 0-d arrays. ``x`` may also
    be a 1-D sequence of decimal strings (norm None), read as exact decimals. Returns ``(mean,
    var)``: object arrays of ``mpmath.mpf``, each the exact rational value correctly rounded to
    ``bits`` bits (``bits >= 200``). var = S/(n − ddof) with S = Σx² − (Σx)²/n from exact sums;
    n − ddof <= 0 gives NaN. NaN and Inf follow the module docstring's rule, group by group.
    """
    _check_bits(bits)
    _check_ddof(ddof)
    sums = scaled_sums(x, norm, groups, layout)
    count, scale = sums.count, sums.scale
    mean_denominator = _exact_value(count * scale)
    variance_denominator = _exact_value(count * (count - ddof) * scale * scale)
    means, variances = [], []
    with mpmath.workprec(bits):
        nan = mpmath.mpf("nan")
        for special_mean, scaled_sum, scaled_n_times_s in exact_numerators(sums, ddof):
            if special_mean is not None:
                means.append(mpmath.mpf(special_mean))
                variances.append(nan)
                continue
            means.append(_rounded_ratio(scaled_sum, mean_denominator, bits))
            variances.append(nan if scaled_n_times_s is None else
                             _rounded_ratio(scaled_n_times_s, variance_denominator, bits))
    return _stats_array(means, sums.stats_shape), _stats_array(variances, sums.stats_shape)


def exact_numerators(sums, ddof):
    """Per group of ``sums`` (scaled_sums), the exact statistics as integer numerators over the
    denominators every group shares: ``(special_mean, scaled_sum, scaled_n_times_s)`` where
    mean = scaled_sum / (n·scale) and var = scaled_n_times_s / (n·(n − ddof)·scale²).
    ``special_mean`` is the IEEE mean of a group holding NaN or Inf (module docstring; its
    variance is NaN and the other two are None), else None; ``scaled_n_times_s`` is None where
    n − ddof <= 0 (the variance is NaN)."""
    count = sums.count
    for group, (scaled_sum, scaled_square) in enumerate(zip(sums.sums, sums.squares)):
        if group in sums.nonfinite:
            yield nonfinite_mean(*sums.nonfinite[group]), None, None
        elif count - ddof <= 0:
            yield None, scaled_sum, None
        else:
            # n·S·scale² = n·Σ(scaled x²) − (Σ scaled x)²: an exact integer, never negative
            yield None, scaled_sum, count * scaled_square - scaled_sum * scaled_sum


def _condition_numbers(sums, shift_by_first):
    """κ = ‖y‖₂/√S = sqrt(n·Σy²/(n·S)) per group, y = x or y = x − x_first (S is shift-invariant),
    from the exact scaled integers; inf where S = 0, NaN for non-finite groups."""
    count = sums.count
    result = np.empty(len(sums.sums), np.float64)
    with mpmath.workprec(CONDITION_BITS):
        for group, (scaled_sum, scaled_square) in enumerate(zip(sums.sums, sums.squares)):
            if group in sums.nonfinite:
                result[group] = math.nan
                continue
            scaled_n_times_s = count * scaled_square - scaled_sum * scaled_sum
            if scaled_n_times_s == 0:
                result[group] = math.inf
                continue
            if shift_by_first:
                shift = sums.scaled_first(group)
                # Σ(x − d)² = Σx² − 2dΣx + n·d², all scaled by scale²
                scaled_square = scaled_square - 2 * shift * scaled_sum + count * shift * shift
            ratio = _rounded_ratio(count * scaled_square, _exact_value(scaled_n_times_s),
                                   CONDITION_BITS)
            result[group] = float(mpmath.sqrt(ratio))
    return result.reshape(sums.stats_shape)


def condition_number(x, norm=None, *, groups=None, layout="NCHW"):
    """Condition number of the variance of each group, κ = ‖x‖₂/√S = sqrt(1 + n·mean²/S)
    (Chan, Golub & LeVeque 1983; Higham 2002 §1.9), from the exact sums; float64 array of the
    statistics shape (0-d for norm None). inf where S = 0 (constant groups, all-zero ones
    included); NaN for groups holding NaN or Inf. Relative perturbations ε of the data change S by
    up to 2κε + (κε)²; the textbook one-pass formula loses about log10(κ²u) digits."""
    return _condition_numbers(scaled_sums(x, norm, groups, layout), shift_by_first=False)


def shifted_condition_number(x, norm=None, *, groups=None, layout="NCHW"):
    """κ of each group's data shifted exactly by the group's first element (in the order every
    topology counts: reduced_outer slow, reduced_inner fast): sqrt(1 + n·(mean − x_first)²/S).
    It governs the "shifted" rule (CGL 1983). Same shapes and special cases as condition_number."""
    return _condition_numbers(scaled_sums(x, norm, groups, layout), shift_by_first=True)


# ---- the exact normalized output ------------------------------------------------------------------
#
# y = (x − μ)·w/√v + b per element, with μ and v = σ² + eps the exact rationals of the group (eps
# and every stored x, w, b read as their exact binary values), correctly rounded to the output
# format. A fast path computes y in float64 with a rigorous bound E on its error; an element whose
# interval [ŷ − E, ŷ + E] rounds to one output value at both ends is correctly rounded, because
# rounding to nearest is monotonic: every real in the interval, y included, rounds to that value.
# The other elements (near a rounding boundary, or out of float64's safe range) are decided
# exactly: y − m for a rational m has the sign of A + B/√v with rationals A = b − m, B = (x − μ)·w,
# which is decided by comparing A²·v with B² — exact Fraction arithmetic, ties included.

#: float64 unit roundoff and the largest absolute rounding error of a result in the subnormal range
_UNIT = 2.0 ** -53
_UNDERFLOW = 2.0 ** -1074


@dataclass(frozen=True)
class _GroupScalars:
    """Per group: the exact mean and v = var + eps (Fractions; v None where the output is NaN),
    and their float64 pieces: mean = mean_high + mean_low + δ with |δ| <= u|mean_low|, and
    rstd_high = 1/√v rounded to float64 (|1/√v − rstd_high| <= 2u·rstd_high), NaN if unusable."""
    means: list
    totals: list
    mean_high: np.ndarray
    mean_low: np.ndarray
    rstd_high: np.ndarray


def _group_scalars(x, norm, groups, layout, eps, ddof):
    sums = exact_sums(x, norm, groups=groups, layout=layout)
    count = sums.count
    means, totals = [], []
    mean_high, mean_low, rstd_high = [], [], []
    for sum_x, sum_x2 in zip(sums.sum_x.reshape(-1), sums.sum_x2.reshape(-1)):
        if not isinstance(sum_x, Fraction) or count - ddof <= 0:
            means.append(None), totals.append(None)
            mean_high.append(math.nan), mean_low.append(math.nan), rstd_high.append(math.nan)
            continue
        mean = sum_x / count
        total = (sum_x2 - sum_x * mean) / (count - ddof) + Fraction(eps)
        means.append(mean)
        totals.append(total if total > 0 else None)  # v = 0: (x − μ)/√v is 0/0 for every x
        high = float(mean)  # Fraction -> float is correctly rounded
        mean_high.append(high)
        mean_low.append(float(mean - Fraction(high)))
        if total > 0:
            with mpmath.workprec(MINIMUM_BITS):
                root = mpmath.sqrt(mpmath.mpf(total.numerator) / total.denominator)
                rstd = float(1 / root)
            rstd_high.append(rstd if 2.0 ** -1000 < rstd < 2.0 ** 1000 else math.nan)
        else:
            rstd_high.append(math.nan)
    return _GroupScalars(means, totals, np.array(mean_high), np.array(mean_low),
                         np.array(rstd_high))


def _fast_output(x_view, scalars, group_shape):
    """(ŷ0, E0): (x − μ)/√v in float64 over the canonical view and a bound on its error.

    d = (x − mean_high) by TwoSum (s + e exactly), then d̂ = s + (e − mean_low): |d̂ − d| <=
    u|t| + u|d̂| + u|mean_low| + 3η with t = e − mean_low (η: underflow). ẑ = d̂·rstd_high:
    |ẑ − d/√v| <= u|ẑ| + η + |d̂|·2u·rstd_high + (1 + 3u)·rstd_high·|d̂ − d|."""
    values = x_view.astype(np.float64)
    mean_high = scalars.mean_high.reshape(group_shape)
    mean_low = scalars.mean_low.reshape(group_shape)
    rstd = scalars.rstd_high.reshape(group_shape)
    with np.errstate(all="ignore"):
        s = values - mean_high
        virtual = s - values
        e = (values - (s - virtual)) + (-mean_high - virtual)
        t = e - mean_low
        d = s + t
        d_error = _UNIT * (np.abs(t) + np.abs(d) + np.abs(mean_low)) + 3 * _UNDERFLOW
        z = d * rstd
        z_error = (_UNIT * np.abs(z) + _UNDERFLOW + 2 * _UNIT * rstd * np.abs(d)
                   + (1 + 3 * _UNIT) * rstd * d_error)
    return z, z_error


def _apply_affine_bound(z, z_error, weight, bias):
    """ŷ = (ẑ·w) + b in float64 (w, b broadcast; exact float64 values) and its error bound."""
    with np.errstate(all="ignore"):
        if weight is not None:
            product = z * weight
            z_error = _UNIT * np.abs(product) + _UNDERFLOW + np.abs(weight) * z_error
            z = product
        if bias is not None:
            total = z + bias
            z_error = _UNIT * np.abs(total) + _UNDERFLOW + z_error
            z = total
    return z, z_error


def certain_rounding(y, y_error, output_format):
    """(rounded, certain): y rounded to the output format, and where that is provably the
    correctly rounded exact value. The bound is inflated by 2**-40 relative, far more than the
    few roundings of its own float64 evaluation; nextafter moves each end outward past the
    rounding of ŷ ± E."""
    with np.errstate(all="ignore"):
        margin = y_error * (1 + 2.0 ** -40)
        low = np.nextafter(y - margin, -np.inf)
        high = np.nextafter(y + margin, np.inf)
        rounded_low = precision.convert(low, output_format)
        rounded_high = precision.convert(high, output_format)
        certain = (rounded_low == rounded_high) & np.isfinite(low) & np.isfinite(high)
    return rounded_low, certain


_UNSIGNED = {"float16": np.uint16, "bfloat16": np.uint16, "float32": np.uint32, "float64": np.uint64}


def _ordinal(value, output_format):
    """The position of a format value in the ordered set of the format's values (±0 → 0)."""
    dtype = precision.NUMPY_DTYPES[output_format]
    bits = int(np.array([value], dtype).view(_UNSIGNED[output_format])[0])
    sign_bit = 1 << (8 * dtype.itemsize - 1)
    return -(bits ^ sign_bit) if bits & sign_bit else bits


def _from_ordinal(ordinal, output_format):
    """(value as float64, odd): the format value at ``ordinal`` and whether its last bit is 1."""
    dtype = precision.NUMPY_DTYPES[output_format]
    sign_bit = 1 << (8 * dtype.itemsize - 1)
    bits = ordinal if ordinal >= 0 else (-ordinal) | sign_bit
    value = float(np.array([bits], _UNSIGNED[output_format]).view(dtype)[0])
    return value, bool(bits & 1)


def _sign_of_quadratic(a, b, total):
    """The sign of a + b/√total (Fractions, total > 0), exactly."""
    if b == 0 or a == 0 or (a > 0) == (b > 0):
        return (a > 0) - (a < 0) if a != 0 else (b > 0) - (b < 0)
    difference = a * a * total - b * b
    if difference == 0:
        return 0
    return ((a > 0) - (a < 0)) if difference > 0 else ((b > 0) - (b < 0))


def _boundary_below(ordinal, output_format):
    """The rounding boundary between the format values at ordinal − 1 and ordinal: their
    midpoint; next to an infinity, half the last finite spacing past the largest finite value
    (max + ulp(max)/2, where IEEE 754 overflows)."""
    lower = _from_ordinal(ordinal - 1, output_format)[0]
    upper = _from_ordinal(ordinal, output_format)[0]
    if math.isinf(upper):
        return Fraction(lower) + (Fraction(lower) - Fraction(_from_ordinal(ordinal - 2,
                                                                            output_format)[0])) / 2
    if math.isinf(lower):
        return Fraction(upper) - (Fraction(_from_ordinal(ordinal + 1, output_format)[0])
                                  - Fraction(upper)) / 2
    return (Fraction(lower) + Fraction(upper)) / 2


def _exact_rounding(intercept, slope, total, output_format, estimate):
    """intercept + slope/√total (Fractions, total > 0) correctly rounded to the output format:
    start from ``estimate`` (a format value near it) and move until the exact value lies between
    the rounding boundaries on either side; at a boundary, ties go to the neighbour whose last bit
    is 0 (+inf's pattern is even: max + ulp(max)/2 rounds to inf, as IEEE 754 says)."""
    ordinal = _ordinal(estimate, output_format)
    while True:
        value, odd = _from_ordinal(ordinal, output_format)
        if value != -math.inf:
            side = _sign_of_quadratic(intercept - _boundary_below(ordinal, output_format), slope,
                                      total)
            if side < 0:
                ordinal -= 1
                continue
            if side == 0 and odd:
                return _from_ordinal(ordinal - 1, output_format)[0]
        if value != math.inf:
            side = _sign_of_quadratic(intercept - _boundary_below(ordinal + 1, output_format),
                                      slope, total)
            if side > 0:
                ordinal += 1
                continue
            if side == 0 and odd:
                return _from_ordinal(ordinal + 1, output_format)[0]
        return value


def _parameter_values(parameter, parameter_view, shape):
    """A weight or bias as float64 (exact) broadcast to x's shape, or None."""
    if parameter is None:
        return None
    values = np.asarray(parameter).astype(np.float64).reshape(1, -1, 1)
    return np.broadcast_to(values, parameter_view.shape).reshape(shape)


def _decide_exactly(rounded, undecided, x, scalars, group_index, weights, biases, output_format):
    """Write the exactly decided correctly rounded output of every ``undecided`` flat index."""
    flat_x = x.reshape(-1)
    flat_rounded = rounded.reshape(-1)
    for index in np.flatnonzero(undecided).tolist():
        group = int(group_index[index])
        total = scalars.totals[group]
        weight = Fraction(float(weights[index])) if weights is not None else Fraction(1)
        intercept = Fraction(float(biases[index])) if biases is not None else Fraction(0)
        slope = (Fraction(float(flat_x[index])) - scalars.means[group]) * weight
        with mpmath.workprec(MINIMUM_BITS):
            estimate = (mpmath.mpf(intercept.numerator) / intercept.denominator
                        + mpmath.mpf(slope.numerator) / slope.denominator
                        / mpmath.sqrt(mpmath.mpf(total.numerator) / total.denominator))
        with np.errstate(over="ignore"):  # an estimate past the format's range becomes ±inf
            start = precision.convert(np.array([float(estimate)]), output_format)[0]
        flat_rounded[index] = _exact_rounding(intercept, slope, total, output_format, start)


def normalize(x, norm=None, *, groups=None, layout="NCHW", eps=1e-5, weight=None, bias=None,
              ddof=0, output_dtype=None):
    """The exact output of a normalization layer, correctly rounded: y = (x − μ)/√(σ² + eps)·w + b
    with μ, σ² the exact mean and variance (``ddof``) of the stored values of each group, eps, w, b
    their exact binary values, rounded once, to nearest (ties to even), to ``output_dtype``
    (default x's dtype). Arguments as numerics.normalize (the same checks and error messages).

    NaN rule: every output of a group is NaN when the group holds NaN or Inf, when n − ddof <= 0,
    or when σ² + eps = 0 (a constant group with eps = 0: 0/0). The float64 fast path and the exact
    fallback are explained above ``_GroupScalars``; an output format of float64 sends nearly every
    element to the exact (slow) path.
    """
    eps = normalization.check_eps(eps)
    x = statistics.as_array(x)
    input_format = precision.format_name(x.dtype, "x")
    view = subsets.canonical_view(x.shape, norm, groups, layout)
    weight, weight_view = normalization.check_parameter(weight, "weight", x.shape, norm, layout)
    bias, bias_view = normalization.check_parameter(bias, "bias", x.shape, norm, layout)
    output_format = (input_format if output_dtype is None
                     else precision.format_name(output_dtype, "output_dtype"))
    _check_ddof(ddof)
    scalars = _group_scalars(x, norm, groups, layout, eps, ddof)
    group_shape = (view.kept_outer, 1, view.kept_inner, 1)
    x_view = np.ascontiguousarray(x).reshape(view.view_shape)
    z, z_error = _fast_output(x_view, scalars, group_shape)
    weights = _parameter_values(weight, weight_view, x.shape)
    biases = _parameter_values(bias, bias_view, x.shape)
    y, y_error = _apply_affine_bound(z.reshape(x.shape), z_error.reshape(x.shape), weights, biases)
    rounded, certain = certain_rounding(y, y_error, output_format)
    group_index = np.broadcast_to(np.arange(view.group_count).reshape(group_shape),
                                  view.view_shape).reshape(-1)
    valid = np.array([total is not None for total in scalars.totals])[group_index].reshape(x.shape)
    rounded[~valid] = np.nan
    _decide_exactly(rounded, valid & ~certain, x_view.reshape(x.shape), scalars, group_index,
                    weights, biases, output_format)
    return rounded
