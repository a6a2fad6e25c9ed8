"""The "correctly_rounded" algorithm: the mean and variance of every group rounded once, to
nearest (ties to even), from the exact values of the stored input (docs/architecture.md, section
4.6).

Two paths, one answer:

- **Fast path** (this module on the CPU, numerics.gpu_correctly_rounded on the GPU). Per group,
  with c = the group's first element, float64 sums Â = Σ fl(x − c) and B̂ = Σ fl(fl(x − c)²) in a
  blocked order of summation depth h (``item_depth``: blocks of consecutive elements summed in
  vector lanes, then a pairwise tree of the blocks). A rigorous a-priori bound goes with them
  (``_fast_bounds``): with γ_k = ku/(1 − ku), u = 2**-53 and η = 2**-1074 (the least
  subnormal: at least the 2**-1075 a product can lose to underflow, and a float64, which
  2**-1075 is not), Σ fl(x − c)² <= B⁺ = (B̂ + nη)/(1 − γ_{h+1}), Σ|fl(x − c)| <= P⁺ = √(n·B⁺)
  (Cauchy–Schwarz: no third sum), |Â − Σ(x − c)| <= e_A = (γ_h + 2u)·P⁺ and
  |B̂ − Σ(x − c)²| <= e_B = (γ_{h+1} + 3u)·B⁺ + 2nη, then the few roundings of mean = c + Â/n
  and var = (B̂ − Â·(Â/n))/(n − ddof) on top (S = Σ(x − c)² − (Σ(x − c))²/n exactly, for any
  c). The vector lanes fuse each square into its sum (one rounding instead of two, which the
  bound covers). A group is *certified* when both ends of [value − E, value + E], moved outward, round to
  one output value (reference.certain_rounding): rounding is monotonic, so the exact value
  rounds to it too. All-finite intervals only.
- **Exact path** for every other group (near a rounding boundary, ill-conditioned beyond the
  bound, non-finite, or an output format as wide as the accumulation: float64 output rarely
  certifies): the exact sums of the group's stored values (reference's integer superaccumulator),
  the rational mean S1/n and variance (n·S2 − S1²)/(n·(n − ddof)), rounded to the output format
  once, by integer division at the value's quantum (``round_exactly``: ties to even, subnormals,
  overflow to ±inf as IEEE 754 says). No intermediate rounding, so no double rounding.

The reduction topology is irrelevant: the answer does not depend on the order of summation (any
``topology`` argument is checked and recorded only). The result is the same bits on any thread
count and device. 16-bit input is widened to float32 on the host first (exact).
"""
import functools
import math
import warnings
from fractions import Fraction

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import cache, cpu, precision, reference, simd, targets

#: a block: at most BLOCK consecutive elements of a group whose rows are contiguous (in LANES
#: vector lanes), or COLUMN_BLOCK rows of channels-last groups (LANES groups per vector, ROW_STEP
#: rows per pass); blocks meet in a pairwise tree (``item_depth``)
BLOCK = 1024
COLUMN_BLOCK = 32
#: channels-last blocks per work item, whose sums meet in the kernel (few partial sums to store)
ITEM_BLOCKS = 16
#: channels-last rows taken per load and store of the accumulators
ROW_STEP = 8
#: float64 lanes of the accumulators: four AVX2 registers per sum, so that four independent
#: chains of adds hide the add latency (docs/architecture.md, section 4.6)
LANES = 16
#: elements ahead of the loads that the kernels ask the cache for (``prefetch``)
PREFETCH_AHEAD = 256

_UNIT = 2.0 ** -53
_UNDERFLOW = 2.0 ** -1074
#: the bound's own float64 evaluation (a few dozen roundings) and the 1/(1 − u) factors left out
_BOUND_INFLATION = 1 + 2.0 ** -30


# ---- CPU fast path: per-block sums, then a pairwise tree -----------------------------------------
#
# Explicit vectors (numerics.simd): numba leaves the SLP vectorizer off and fastmath is not used
# (docs/architecture.md traps 3 and 9), so the LANES accumulators are one LLVM vector each, with
# IEEE semantics per lane: the order of every sum is fixed by the data's shape alone.

@intrinsic
def fused_square_add(typingctx, total, value):
    """total + value² per lane with one rounding (llvm.fma): fewer roundings than the separate
    product and sum, so the bound holds, and one instruction fewer per vector on the add ports,
    which bound the kernels' speed."""
    if not isinstance(total, simd.Vector) or total != value:
        return None

    def codegen(context, builder, signature, arguments):
        vector_type = context.get_value_type(total)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector_type, [vector_type] * 3),
            f"llvm.fma.v{total.width}f{total.dtype.bitwidth}")
        return builder.call(function, [arguments[1], arguments[1], arguments[0]])

    return total(total, value), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Asks the cache for the line of element ``index`` (counted flat) of a C-contiguous array
    (llvm.prefetch, for reading): it changes no result and never faults, so an index past the
    array is harmless. Without it the kernels read memory at 60-70 % of a plain read's rate
    (docs/architecture.md, section 4.6)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, arguments):
        data = context.make_array(signature.args[0])(context, builder, arguments[0]).data
        byte_pointer = ir.IntType(8).as_pointer()
        pointer = builder.bitcast(builder.gep(data, [arguments[1]]), byte_pointer)
        integer = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer] + [integer] * 3),
            "llvm.prefetch.p0i8")
        # read (0), keep in every cache level (3), data (1)
        builder.call(function, [pointer, ir.Constant(integer, 0), ir.Constant(integer, 3),
                                ir.Constant(integer, 1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen


@numba.njit(**targets.INTERNAL)
def _add_lanes(x4, index, shift, firsts, seconds):
    """(firsts + d, seconds + d²) with d = x − shift over the LANES elements from flat
    ``index`` (``shift``: a scalar, or a vector of one shift per lane)."""
    d = simd.convert(simd.load(x4, index, LANES), np.float64) - shift
    return firsts + d, fused_square_add(seconds, d)


@numba.njit(**targets.INTERNAL)
def _row_block_sums(x4, shifts, item, items_per_group, n):
    """(Σd, Σd²) with d = x − shift over elements [b·BLOCK, (b + 1)·BLOCK) of a group whose
    elements run contiguously in rows (reduced_inner > 1); item = group·items_per_group + b.
    The shift is the group's first element, read here (the item of block 0 stores it in
    ``shifts``): a gather of the first elements beforehand costs a cache miss per group on the
    calling thread alone. Element j of a row run goes to lane j mod LANES; the last (< LANES) of
    a run to a scalar tail; then the lanes meet in a halving tree and the tail joins last."""
    reduced_outer, kept_inner, reduced_inner = x4.shape[1], x4.shape[2], x4.shape[3]
    row_stride = kept_inner * reduced_inner
    group = item // items_per_group
    outer, inner = group // kept_inner, group % kept_inner
    shift = np.float64(x4.flat[(outer * reduced_outer * kept_inner + inner) * reduced_inner])
    if item % items_per_group == 0:
        shifts[group] = shift
    start = (item % items_per_group) * BLOCK
    stop = min(start + BLOCK, n)
    firsts = simd.splat(0.0, LANES)
    seconds = firsts
    tail_first = 0.0
    tail_second = 0.0
    k = start
    while k < stop:
        row_index = k // reduced_inner
        j = k - row_index * reduced_inner
        end = min(reduced_inner, j + stop - k)
        k += end - j
        base = ((outer * reduced_outer + row_index) * kept_inner + inner) * reduced_inner
        while j + LANES <= end:
            # the element PREFETCH_AHEAD on in the group's order: in this row or the next
            ahead = j + PREFETCH_AHEAD
            prefetch(x4, base + ahead + (row_stride - reduced_inner if ahead >= reduced_inner
                                         else 0))
            firsts, seconds = _add_lanes(x4, base + j, shift, firsts, seconds)
            j += LANES
        while j < end:
            d0 = np.float64(x4.flat[base + j]) - shift
            tail_first += d0
            tail_second += d0 * d0
            j += 1
    return _lane_tree(firsts) + tail_first, _lane_tree(seconds) + tail_second


@numba.njit(**targets.INTERNAL)
def _quarter_tree(vector, first):
    return ((simd.extract(vector, first) + simd.extract(vector, first + 1))
            + (simd.extract(vector, first + 2) + simd.extract(vector, first + 3)))


@numba.njit(**targets.INTERNAL)
def _lane_tree(vector):
    """The LANES (16) lanes of a vector summed by a halving tree (depth log2 LANES)."""
    return ((_quarter_tree(vector, 0) + _quarter_tree(vector, 4))
            + (_quarter_tree(vector, 8) + _quarter_tree(vector, 12)))


@cache.cached(nogil=True)
def _rows_partials(x4, shifts, items_per_group, lo, hi, scratch, first_sums, second_sums):
    """Block sums of the items lo..hi-1 (item = group·items_per_group + block) of groups whose
    rows are contiguous, into first_sums[block, group] and second_sums[block, group], and their
    groups' shifts into ``shifts``."""
    n = x4.shape[1] * x4.shape[3]
    for item in range(lo, hi):
        first, second = _row_block_sums(x4, shifts, item, items_per_group, n)
        first_sums[item % items_per_group, item // items_per_group] = first
        second_sums[item % items_per_group, item // items_per_group] = second


@numba.njit(**targets.INTERNAL)
def _column_rows(x4, shifts, start, rows, group_base, sums):
    """Adds ``rows`` (ROW_STEP or fewer) consecutive rows from flat index ``start`` of
    channels-last groups to their sequential sums (``sums[0, g]``, ``sums[1, g]``): a vector of
    LANES groups is loaded, takes the rows in order (a loop of ROW_STEP iterations known at compile
    time, so unrolled) and is stored back. For each line read, the line two passes on in memory
    order is asked for, so the reads ahead run in memory order too."""
    kept_inner = x4.shape[2]
    vector_groups = kept_inner - kept_inner % LANES
    ahead = start + max(2 * ROW_STEP * kept_inner, PREFETCH_AHEAD)
    for inner in range(0, vector_groups, LANES):
        shift = simd.load(shifts, group_base + inner, LANES)
        first = simd.load(sums, inner, LANES)
        second = simd.load(sums, kept_inner + inner, LANES)
        for row in range(ROW_STEP if rows == ROW_STEP else rows):
            prefetch(x4, ahead)
            ahead += LANES
            first, second = _add_lanes(x4, start + row * kept_inner + inner, shift, first,
                                       second)
        simd.store(sums, inner, first)
        simd.store(sums, kept_inner + inner, second)
    for inner in range(vector_groups, kept_inner):
        for row in range(rows):
            d0 = np.float64(x4.flat[start + row * kept_inner + inner]) - shifts[group_base + inner]
            sums[0, inner] += d0
            sums[1, inner] += d0 * d0


@numba.njit(**targets.INTERNAL)
def _column_block_sums(x4, shifts, outer, first_row, sums):
    """Channels-last groups (reduced_inner == 1): rows first_row .. first_row + COLUMN_BLOCK − 1
    (or to the end) of one kept_outer index, one sequential sum per group, into sums[0, g] and
    sums[1, g], ROW_STEP rows at a time."""
    reduced_outer, kept_inner = x4.shape[1], x4.shape[2]
    stop = min(first_row + COLUMN_BLOCK, reduced_outer)
    sums[:] = 0.0
    row = first_row
    while row < stop:
        rows = ROW_STEP if row + ROW_STEP <= stop else 1
        _column_rows(x4, shifts, (outer * reduced_outer + row) * kept_inner, rows,
                     outer * kept_inner, sums)
        row += rows


@cache.cached(nogil=True)
def _columns_partials(x4, shifts, lo, hi, scratch, first_sums, second_sums):
    """Sums of the items lo..hi-1 of channels-last groups into first_sums[part, group] and
    second_sums[part, group]: item = outer·parts + part is up to ITEM_BLOCKS blocks of
    COLUMN_BLOCK rows of one kept_outer index, whose block sums (in ``scratch``, (ITEM_BLOCKS, 2,
    kept_inner)) meet in a pairwise tree here, so that few partial sums go through memory."""
    reduced_outer, kept_inner = x4.shape[1], x4.shape[2]
    parts = first_sums.shape[0]
    for item in range(lo, hi):
        outer, part = item // parts, item % parts
        first_row = part * ITEM_BLOCKS * COLUMN_BLOCK
        count = min(ITEM_BLOCKS, -(-(reduced_outer - first_row) // COLUMN_BLOCK))
        for block in range(count):
            _column_block_sums(x4, shifts, outer, first_row + block * COLUMN_BLOCK, scratch[block])
        totals = _pairwise_tree(scratch[:count])
        # loops, not array assignments (docs/architecture.md section 2.7)
        for inner in range(kept_inner):
            first_sums[part, outer * kept_inner + inner] = totals[0, inner]
            second_sums[part, outer * kept_inner + inner] = totals[1, inner]


@cache.cached(nogil=True)
def pairwise_totals(partials):
    """_pairwise_tree, for Python callers (through numerics.cache.call)."""
    return _pairwise_tree(partials)


@numba.njit(**targets.INTERNAL)
def _pairwise_tree(partials):
    """The sum over the first axis of ``partials`` (C-contiguous) by a pairwise tree (depth
    ⌈log2 partials.shape[0]⌉): neighbours pair up, an odd last one moves up a level unchanged;
    the order is fixed by the shape alone. Overwrites ``partials``; returns partials[0]."""
    rows = partials.reshape(partials.shape[0], -1)
    width = rows.shape[0]
    while width > 1:
        half = width // 2
        for index in range(half):
            for column in range(rows.shape[1]):
                rows[index, column] = rows[2 * index, column] + rows[2 * index + 1, column]
        if width % 2:
            for column in range(rows.shape[1]):
                rows[half, column] = rows[width - 1, column]
        width -= half
    return partials[0]


def tree_depth(count):
    """⌈log2 count⌉ for count >= 1: the depth of ``_pairwise_tree`` and of a halving tree."""
    return max(int(count) - 1, 0).bit_length()


def item_depth(reduced_inner):
    """The summation depth of one work item's sums: a channels-last item is up to ITEM_BLOCKS
    blocks of COLUMN_BLOCK sequential adds, then their pairwise tree; a row item (one block) gives
    each lane at most BLOCK/LANES elements (then the lane tree) and the tail at most LANES − 1 per
    row run it meets (at most ⌈BLOCK/reduced_inner⌉ + 1 runs), and the tail joins in one more
    add."""
    if reduced_inner == 1:
        return COLUMN_BLOCK + tree_depth(ITEM_BLOCKS)
    runs = -(-BLOCK // reduced_inner) + 1
    return max(BLOCK // LANES + tree_depth(LANES), min(BLOCK, (LANES - 1) * runs)) + 1


@functools.lru_cache(maxsize=64)
def measured_work(shape, dtype):
    """The work the fast-sums calls on this shape and dtype measured (numerics.cpu)."""
    return cpu.MeasuredWork()


def cpu_fast_sums(x4):
    """(shifts, Σd, Σd², depth, threads) per group over a float32/float64 canonical view
    (C-contiguous): d = x − the group's first element, depth the summation depth of the sums.
    Work items are fixed by the shape and cut among the threads by numerics.cpu.run_split, so the
    sums are the same bits on any thread count; the threads are as many as the calls on this
    shape measured work for, as in the other rules (numerics.cpu.MeasuredWork)."""
    kept_outer, reduced_outer, kept_inner, reduced_inner = x4.shape
    groups = kept_outer * kept_inner
    record = measured_work(x4.shape, x4.dtype.str)
    threads = record.threads_for(x4.nbytes)
    if reduced_inner == 1:
        # the first row of each kept_outer index: contiguous, cheap to gather
        shifts = np.ascontiguousarray(x4[:, 0, :, 0], dtype=np.float64).reshape(-1)
        parts = -(-reduced_outer // (ITEM_BLOCKS * COLUMN_BLOCK))
        kernel, key, items = _columns_partials, ("columns", x4.dtype.str), kept_outer * parts
        leading = (x4, shifts)
        scratches = [np.empty((ITEM_BLOCKS, 2, kept_inner)) for _ in range(threads)]
    else:
        shifts = np.empty(groups)  # stored by the kernel
        parts = -(-(reduced_outer * reduced_inner) // BLOCK)
        kernel, key, items = _rows_partials, ("rows", x4.dtype.str), groups * parts
        leading = (x4, shifts, parts)
        scratches = [np.empty(0) for _ in range(threads)]
    first_sums, second_sums = np.empty((parts, groups)), np.empty((parts, groups))
    threads, work = cpu.run_split(kernel, key, items, leading, scratches, (first_sums, second_sums))
    record.measured(work)
    depth = item_depth(reduced_inner) + tree_depth(parts)
    return (shifts, cache.call(pairwise_totals, "totals", first_sums),
            cache.call(pairwise_totals, "totals", second_sums), depth, threads)


# ---- certification (host, shared by the CPU and the GPU) ------------------------------------------

def _gamma(k):
    return k * _UNIT / (1 - k * _UNIT)


def _fast_bounds(n, ddof, depth, shifts, first_sums, second_sums):
    """(mean, mean_error, var, var_error) per group in float64 from the fast sums, each error a
    rigorous bound (module docstring; the bound's own evaluation is covered by _BOUND_INFLATION)."""
    arrays = [np.ascontiguousarray(values, np.float64)
              for values in (shifts, first_sums, second_sums)]
    return cache.call(_group_bounds, "bounds", float(n), float(n - ddof), _gamma(depth),
                      _gamma(depth + 1), *arrays)


@cache.cached()
def _group_bounds(n, freedom, gamma, next_gamma, shifts, first_sums, second_sums):
    """_fast_bounds group by group (one compiled loop: the same float64 operations in the same
    order as written, without numpy's temporaries); a freedom n − ddof <= 0 gives a NaN
    variance."""
    groups = shifts.size
    mean, mean_error = np.empty(groups), np.empty(groups)
    var, var_error = np.empty(groups), np.empty(groups)
    for group in range(groups):
        first, second = first_sums[group], second_sums[group]
        second_upper = (second + n * _UNDERFLOW) / (1 - next_gamma)
        abs_first_upper = np.sqrt(n * second_upper)
        first_error = (gamma + 2 * _UNIT) * abs_first_upper
        second_error = (next_gamma + 3 * _UNIT) * second_upper + 2 * n * _UNDERFLOW
        quotient = first / n
        mean[group] = shifts[group] + quotient
        mean_error[group] = (_UNIT * abs(mean[group]) + _UNIT * abs(quotient) + first_error / n
                             + 2 * _UNDERFLOW) * _BOUND_INFLATION
        product = first * quotient
        squares = second - product
        abs_first = abs(first)
        squares_error = (_UNIT * abs(squares) + second_error + _UNIT * abs(product)
                         + _UNIT * abs_first * abs_first / n + abs_first * _UNDERFLOW + _UNDERFLOW
                         + first_error * (2 * abs_first + first_error) / n)
        var[group] = squares / freedom if freedom > 0 else np.nan
        var_error[group] = (_UNIT * abs(var[group]) + _UNDERFLOW
                            + squares_error / max(freedom, 1.0)) * _BOUND_INFLATION
    return mean, mean_error, var, var_error


def certify(n, ddof, depth, shifts, first_sums, second_sums, output_format):
    """(means, mean_certain, variances, var_certain): the fast values rounded to the output format
    (as float64) and where that rounding is proven correct. A zero mean is certified only with
    its sign (the interval on one side of 0); a variance is never negative, so a certified zero
    variance is +0."""
    mean, mean_error, var, var_error = _fast_bounds(n, ddof, depth, shifts, first_sums,
                                                    second_sums)
    means, mean_certain = reference.certain_rounding(mean, mean_error, output_format)
    with np.errstate(invalid="ignore"):
        one_sided = np.abs(mean) > mean_error  # float comparison: exact
    mean_certain &= (means != 0) | one_sided
    variances, var_certain = reference.certain_rounding(var, var_error, output_format)
    return (means.astype(np.float64), mean_certain, np.abs(variances.astype(np.float64)),
            var_certain)


# ---- exact path -----------------------------------------------------------------------------------

#: significand bits p, least normal exponent and greatest exponent of each output format
_LIMITS = {name: (precision.SIGNIFICAND_BITS[name], least, greatest)
           for name, least, greatest in (("float16", -14, 15), ("bfloat16", -126, 127),
                                         ("float32", -126, 127), ("float64", -1022, 1023))}


def round_exactly(value, output_format):
    """A Fraction correctly rounded (to nearest, ties to even) to the output format, as float64:
    the quotient and remainder of integer division at the value's quantum decide the rounding
    (no walk over neighbours as in reference._exact_rounding, nine times slower on a float32
    value; float64 output sends every group here). Subnormals keep the least normal quantum; a
    result past the largest finite value is ±inf, as IEEE 754 says; an exact zero gives +0, a tiny
    negative value −0."""
    precision_bits, least_exponent, greatest_exponent = _LIMITS[output_format]
    numerator, denominator = abs(value.numerator), value.denominator
    if numerator == 0:
        return 0.0
    exponent = numerator.bit_length() - denominator.bit_length()  # 2**exponent <= |value| < ...
    if (numerator << max(-exponent, 0)) < (denominator << max(exponent, 0)):
        exponent -= 1
    shift = max(exponent, least_exponent) - precision_bits + 1  # the quantum is 2**shift
    multiple, remainder = divmod(numerator << max(-shift, 0), denominator << max(shift, 0))
    twice_remainder, quantum = 2 * remainder, denominator << max(shift, 0)
    if twice_remainder > quantum or (twice_remainder == quantum and multiple & 1):
        multiple += 1
    largest = ((1 << precision_bits) - 1) << (greatest_exponent - precision_bits + 1)
    # below the largest binade the quantum is under 1 (shift < 0) and nothing can overflow
    result = math.inf if shift >= 0 and multiple << shift > largest else math.ldexp(multiple, shift)
    return -result if value < 0 else result


def exact_statistics(group_values, ddof, output_format):
    """(means, variances, overflowed) of the rows of ``group_values`` (one group per row, its
    stored values in any order), each correctly rounded from the exact sums; NaN and Inf follow
    the reference's rule (numerics.reference); ``overflowed``: rows of finite values whose
    statistic rounded to ±inf."""
    sums = reference.scaled_sums(group_values, "layer", None, "NCHW")
    count, scale = sums.count, sums.scale
    means, variances, overflowed = [], [], 0
    for special_mean, scaled_sum, scaled_n_times_s in reference.exact_numerators(sums, ddof):
        if special_mean is not None:
            means.append(special_mean)
            variances.append(math.nan)
            continue
        means.append(round_exactly(Fraction(scaled_sum, count * scale), output_format))
        variances.append(math.nan if scaled_n_times_s is None else round_exactly(
            Fraction(scaled_n_times_s, count * (count - ddof) * scale * scale), output_format))
        overflowed += math.isinf(means[-1]) or math.isinf(variances[-1])
    return np.array(means, np.float64), np.array(variances, np.float64), overflowed


def group_rows(x4, groups):
    """The stored values of the chosen groups of a canonical view, one group per row."""
    kept_inner = x4.shape[2]
    return np.stack([x4[group // kept_inner, :, group % kept_inner, :].reshape(-1)
                     for group in groups])


# ---- entry point ----------------------------------------------------------------------------------

def fast_input(x):
    """The float32/float64 array the fast path reads: 16-bit formats widen to float32 (exact)."""
    if x.dtype in (np.float32, np.float64):
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def moments(x, view, ddof, output_format, device, device_options):
    """(means, variances, kernel, details) of every group of ``x`` (numpy, or a CUDA device array
    for device "cuda"), correctly rounded to ``output_format``, as arrays of that format in the
    statistics shape; called by numerics.statistics.moments after its checks."""
    n = view.group_size
    if device == "cpu":
        x4 = fast_input(x).reshape(view.view_shape)
        shifts, first_sums, second_sums, depth, threads = cpu_fast_sums(x4)
        kernel = "correctly_rounded.cpu"
    else:
        from . import gpu_correctly_rounded
        x4, shifts, first_sums, second_sums, depth = gpu_correctly_rounded.fast_sums(
            x, view, **device_options)
        threads = None
        kernel = "correctly_rounded.cuda"
    means, mean_certain, variances, var_certain = certify(n, ddof, depth, shifts, first_sums,
                                                          second_sums, output_format)
    certified = mean_certain & (var_certain | (n - ddof <= 0))
    undecided = np.flatnonzero(~certified)
    # a certified group's input is finite (its sums are): an infinite result is an overflow
    overflowed = int(np.count_nonzero(certified & (np.isinf(means) | np.isinf(variances))))
    if undecided.size:
        host = x4 if isinstance(x4, np.ndarray) else x4.copy_to_host()
        exact_means, exact_variances, exact_overflowed = exact_statistics(
            group_rows(host, undecided), ddof, output_format)
        means[undecided], variances[undecided] = exact_means, exact_variances
        overflowed += exact_overflowed
    if n - ddof <= 0:
        variances[:] = np.nan
        warnings.warn(f"degrees of freedom <= 0: each group has {n} element(s) and ddof={ddof}; "
                      f"the variance is NaN", RuntimeWarning, stacklevel=3)
    if overflowed:
        warnings.warn(f"the exact statistics of {overflowed} group(s) of finite input lie past "
                      f"the range of {output_format}: correctly rounded to ±inf", RuntimeWarning,
                      stacklevel=3)
    dtype = precision.NUMPY_DTYPES[output_format]
    details = (("summation_depth", depth), ("certified_groups", view.group_count - undecided.size),
               ("exact_groups", int(undecided.size))) + ((("threads", threads),) if threads else ())
    return (means.astype(dtype).reshape(view.stats_shape),
            variances.astype(dtype).reshape(view.stats_shape), kernel, details)
