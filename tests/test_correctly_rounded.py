"""algorithm="correctly_rounded": every statistic equals the exact rational value rounded once to
the output format, checked against Fraction arithmetic of reference.exact_sums and a rounding
written here from the IEEE 754 definition (not the module's)."""
import math
import warnings
from fractions import Fraction

import ml_dtypes
import numba
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import numerics
from numerics import correctly_rounded, cpu, precision, reference

FORMATS = precision.FORMATS
#: significand bits p, least normal exponent, greatest exponent
LIMITS = {"float16": (11, -14, 15), "bfloat16": (8, -126, 127), "float32": (24, -126, 127),
          "float64": (53, -1022, 1023)}
UNSIGNED = {"float16": np.uint16, "bfloat16": np.uint16, "float32": np.uint32,
            "float64": np.uint64}
NORM_CASES = [(None, None, (30,)), ("batch", None, (3, 4, 5)), ("layer", None, (3, 4, 5)),
              ("instance", None, (2, 3, 7)), ("group", 2, (2, 4, 3, 4))]


def round_fraction(value, output_format):
    """value rounded to nearest, ties to even, into the format (as a float64): the IEEE 754
    definition with the format's bounded exponent range, directly on the rational."""
    precision_bits, least_exponent, greatest_exponent = LIMITS[output_format]
    if value == 0:
        return 0.0
    magnitude = abs(value)
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** exponent > magnitude:
        exponent -= 1
    quantum = Fraction(2) ** (max(exponent, least_exponent) - precision_bits + 1)
    multiple, remainder = divmod(magnitude, quantum)
    if 2 * remainder > quantum or (2 * remainder == quantum and multiple % 2):
        multiple += 1
    rounded = multiple * quantum
    largest = (2 - Fraction(2) ** (1 - precision_bits)) * Fraction(2) ** greatest_exponent
    result = math.inf if rounded > largest else float(rounded)
    return -result if value < 0 else result


def expected(x, norm, groups, layout, ddof, output_format):
    """The correctly rounded (mean, var) of every group, from the exact sums."""
    sums = reference.exact_sums(x, norm, groups=groups, layout=layout)
    n = sums.count
    means, variances = [], []
    for total, squares in zip(sums.sum_x.reshape(-1), sums.sum_x2.reshape(-1)):
        if not isinstance(total, Fraction):
            means.append(float(total)), variances.append(math.nan)
            continue
        means.append(round_fraction(total / n, output_format))
        variances.append(math.nan if n - ddof <= 0 else
                         round_fraction((n * squares - total * total) / (n * (n - ddof)),
                                        output_format))
    dtype = precision.NUMPY_DTYPES[output_format]
    return (np.array(means).astype(dtype).reshape(sums.sum_x.shape),
            np.array(variances).astype(dtype).reshape(sums.sum_x.shape))


def assert_same_bits(actual, wanted):
    assert actual.dtype == wanted.dtype and actual.shape == wanted.shape
    nan = np.isnan(wanted.astype(np.float64))
    np.testing.assert_array_equal(np.isnan(actual.astype(np.float64)), nan)
    unsigned = UNSIGNED[precision.format_name(wanted.dtype, "wanted")]
    np.testing.assert_array_equal(actual[~nan].view(unsigned), wanted[~nan].view(unsigned))


def check(x, norm=None, groups=None, layout="NCHW", ddof=0, output_format="float32"):
    result = numerics.moments(x, norm, groups=groups, layout=layout, ddof=ddof,
                              acc_dtype=output_format, algorithm="correctly_rounded")
    wanted_mean, wanted_var = expected(x, norm, groups, layout, ddof, output_format)
    assert_same_bits(result.mean, wanted_mean)
    assert_same_bits(result.var, wanted_var)
    return result


def as_format(values, input_format):
    return precision.convert(np.asarray(values, np.float64), input_format)


# ---- the rounding itself --------------------------------------------------------------------------

@pytest.mark.parametrize("output_format", FORMATS)
def test_round_exactly_matches_the_definition(output_format):
    rng = np.random.default_rng(1)
    precision_bits, least_exponent, greatest_exponent = LIMITS[output_format]
    values = [Fraction(0), Fraction(1, 3), Fraction(-7, 3)]
    for exponent in (least_exponent - precision_bits - 1, least_exponent - 3, least_exponent, -1, 0,
                     5, greatest_exponent, greatest_exponent + 1):
        for _ in range(20):
            numerator = int(rng.integers(1, 2 ** 62)) * (1 if rng.random() < 0.5 else -1)
            values.append(Fraction(numerator, 2 ** 62) * Fraction(2) ** exponent)
        # exact ties, and one part in 2**80 either side of them
        quantum = Fraction(2) ** (max(exponent, least_exponent) - precision_bits + 1)
        for multiple in (2 ** (precision_bits - 1) + 2, 2 ** (precision_bits - 1) + 3):
            tie = (multiple + Fraction(1, 2)) * quantum
            values += [tie, -tie, tie * (1 + Fraction(1, 2 ** 80)), tie * (1 - Fraction(1, 2 ** 80))]
    largest = (2 - Fraction(2) ** (1 - precision_bits)) * Fraction(2) ** greatest_exponent
    overflow_tie = largest + Fraction(2) ** (greatest_exponent - precision_bits)
    values += [overflow_tie, overflow_tie * (1 - Fraction(1, 2 ** 90)), Fraction(10) ** 400]
    for value in values:
        got = correctly_rounded.round_exactly(value, output_format)
        want = round_fraction(value, output_format)
        assert (got, math.copysign(1, got)) == (want, math.copysign(1, want)), value
        # and the repository's other exact rounding (a walk over the rounding boundaries)
        start = np.array([want]).astype(precision.NUMPY_DTYPES[output_format])[0]
        assert abs(reference._exact_rounding(value, Fraction(0), Fraction(1), output_format,
                                             start)) == abs(got)


@given(st.fractions(min_value=-1e6, max_value=1e6, max_denominator=2 ** 70),
       st.sampled_from(FORMATS))
def test_round_exactly_hypothesis(value, output_format):
    assert correctly_rounded.round_exactly(value, output_format) == round_fraction(value,
                                                                                 output_format)


# ---- every subset, layout, format and ddof --------------------------------------------------------

@pytest.mark.parametrize("input_format", FORMATS)
@pytest.mark.parametrize("output_format", FORMATS)
@pytest.mark.parametrize("ddof", (0, 1))
def test_every_norm_layout_and_format(input_format, output_format, ddof):
    rng = np.random.default_rng(FORMATS.index(input_format) * 7 + FORMATS.index(output_format))
    for norm, groups, shape in NORM_CASES:
        for layout in (("NCHW",) if norm is None else ("NCHW", "NHWC")):
            x = as_format(rng.normal(3.0, 2.0, shape), input_format)
            check(x, norm, groups, layout, ddof, output_format)


def test_large_groups_with_several_blocks_both_layouts():
    """Groups of several blocks: row runs that straddle blocks and end in a tail (7 x 7 planes),
    rows longer than a block, and channels-last groups in vectors and a tail (11 channels)."""
    rng = np.random.default_rng(2)
    check(rng.normal(0.5, 1.0, (100, 3, 7, 7)).astype(np.float32), "batch")
    check(rng.normal(0.5, 1.0, (3, 2, 5000)).astype(np.float32), "layer",
          output_format="bfloat16")
    check(rng.normal(-2.0, 1.0, 15000).astype(np.float32), None, output_format="float16")
    x = rng.normal(0.5, 1.0, (600, 3, 11)).astype(np.float32)
    check(x, "batch", layout="NHWC")
    check(x.astype(np.float64), "instance", layout="NHWC", output_format="float32")


def test_channels_last_blocks_items_and_leftover_rows():
    """Channels-last groups through every branch of the column kernel: vectors of LANES groups
    and a scalar tail (35 channels), blocks ending in leftover rows (not a multiple of ROW_STEP),
    items of ITEM_BLOCKS blocks and a shorter last item, and several kept_outer indices."""
    rng = np.random.default_rng(5)
    x = rng.normal(-1.5, 3.0, (3, 37, 29, 35)).astype(np.float32)
    rows = 3 * 37 * 29
    assert rows % correctly_rounded.COLUMN_BLOCK % correctly_rounded.ROW_STEP
    assert rows > correctly_rounded.ITEM_BLOCKS * correctly_rounded.COLUMN_BLOCK
    assert 35 % correctly_rounded.LANES
    check(x, "batch", layout="NHWC")
    check(x, "instance", layout="NHWC", ddof=1)


@pytest.mark.parametrize("offset", (1e4, 1e5, 1e6, 1e7))
@pytest.mark.parametrize("output_format", ("float16", "float32", "float64"))
def test_ill_conditioned(offset, output_format):
    rng = np.random.default_rng(int(offset))
    x = (offset + rng.standard_normal((4, 3, 300))).astype(np.float32)
    result = check(x, "instance", output_format=output_format)
    if output_format != "float64":
        # the shift by the first element keeps these well within the fast path's reach
        assert dict(result.run.details)["certified_groups"] >= 6


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("view_shape", ((20, 1, 1, 3000), (1, 3000, 20, 1), (1, 60, 20, 50)))
def test_fast_bounds_hold(dtype, view_shape):
    """The fast path's errors against the exact values, in the row and the channels-last kernel:
    within the bound, on ill-conditioned data (the bound is what certification rests on)."""
    rng = np.random.default_rng(3)
    spread = rng.uniform(1e-3, 10, (1, 1, 20, 1) if view_shape[2] == 20 else (20, 1, 1, 1))
    x4 = (1e6 + rng.standard_normal(view_shape) * spread).astype(dtype)
    shifts, first, second, depth, _ = correctly_rounded.cpu_fast_sums(x4)
    mean, mean_error, var, var_error = correctly_rounded._fast_bounds(3000, 1, depth, shifts,
                                                                      first, second)
    rows = correctly_rounded.group_rows(x4, range(20))
    sums = reference.exact_sums(rows, "layer")
    for group in range(20):
        total, squares = sums.sum_x[group], sums.sum_x2[group]
        exact_mean = total / 3000
        exact_var = (3000 * squares - total * total) / (3000 * 2999)
        assert abs(Fraction(mean[group]) - exact_mean) <= Fraction(mean_error[group])
        assert abs(Fraction(var[group]) - exact_var) <= Fraction(var_error[group])
        assert var_error[group] < 1e-9 * exact_var  # and it is tight enough to certify


# ---- ties and near-ties ---------------------------------------------------------------------------

def odd_root_of_a_midpoint(output_format):
    """The least odd s whose square has p + 1 bits: s² is a midpoint between two neighbours of the
    format (its last bit is the half ulp)."""
    precision_bits = LIMITS[output_format][0]
    root = math.isqrt(2 ** precision_bits) | 1
    while (root * root).bit_length() != precision_bits + 1:
        root += 2
    return root


@pytest.mark.parametrize("output_format", FORMATS)
def test_variance_ties_and_near_ties(output_format):
    root = odd_root_of_a_midpoint(output_format)
    for scale in (2.0 ** -9, 2.0 ** -1):
        far = 2 * root * scale  # var of (0, far), ddof 0: (far/2)², exactly a midpoint
        x = np.array([0.0, far])
        result = check(x, output_format=output_format)
        assert round_fraction(Fraction(far / 2) ** 2, output_format) == float(result.var)
        above = float(check(np.array([0.0, np.nextafter(far, np.inf)]),
                            output_format=output_format).var)
        below = float(check(np.array([0.0, np.nextafter(far, 0)]), output_format=output_format).var)
        tie = float(result.var)
        assert below < above and below <= tie <= above
        if output_format != "float64":  # one input ulp moves a float64 variance by two ulps
            assert tie in (below, above)


@pytest.mark.parametrize("output_format", FORMATS)
@pytest.mark.parametrize("start", (1.0, 1.5, -3.0, 2.0 ** -20))
def test_mean_ties_and_near_ties(output_format, start):
    dtype = precision.NUMPY_DTYPES[output_format]
    low = np.array([start], dtype)
    for _ in range(2):  # an even and an odd lower neighbour
        high = np.nextafter(low, np.array([np.inf], dtype)) if output_format != "bfloat16" else \
            (low.view(np.uint16) + np.uint16(1)).view(dtype)
        pair = np.concatenate([low, high]).astype(np.float64)  # the mean is their midpoint
        result = check(pair, output_format=output_format)
        rounded = float(result.mean)
        assert rounded in (float(low[0]), float(high[0]))
        assert (np.array([rounded], dtype).view(UNSIGNED[output_format])[0] & 1) == 0
        for nudged in (np.nextafter(pair[1], np.inf), np.nextafter(pair[1], -np.inf)):
            check(np.array([pair[0], nudged]), output_format=output_format)
        low = high


def test_subnormal_results():
    x = np.array([[3e-6, 1e-6, 2e-5, 0.0], [1e-7, -2e-7, 5e-8, 3e-8]], np.float32)
    for output_format in ("float16", "bfloat16", "float32"):
        result = check(x, "layer", output_format=output_format)
    assert 0 < abs(float(check(x, "layer", output_format="float16").mean[0])) < 6.2e-5
    tiny = np.array([1e-44, 3e-45, 0.0], np.float32)  # float32 subnormal inputs and results
    check(tiny, output_format="float32")
    check(tiny, output_format="float64")


def test_overflow_to_inf_in_float16():
    x = np.array([[0.0, 1000.0], [70000.0, 70010.0]], np.float32)
    with pytest.warns(RuntimeWarning, match="float16"):
        result = check(x, "layer", output_format="float16")
    assert float(result.var[0]) == math.inf and float(result.mean[1]) == math.inf
    assert float(result.mean[0]) == 500.0 and float(result.var[1]) == 25.0


def test_never_negative_and_signed_zero_means():
    x = np.array([[5.0, 5.0, 5.0], [-1e-30, -2e-30, 0.0], [1.0, -1.0, 0.0]], np.float32)
    result = check(x, "layer", output_format="float16")
    assert np.all(result.var.astype(np.float64) >= 0)
    assert not np.any(np.signbit(result.var.astype(np.float64)))
    assert np.signbit(float(result.mean[1])) and not np.signbit(float(result.mean[2]))


@given(hnp.arrays(np.float32, st.integers(1, 40),
                  elements=st.floats(-2.0 ** 100, 2.0 ** 100, allow_nan=False, width=32)),
       st.sampled_from(("float16", "bfloat16", "float32", "float64")), st.sampled_from((0, 1)))
def test_hypothesis_inputs(x, output_format, ddof):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        check(x, ddof=ddof, output_format=output_format)


# ---- determinism, special values, bad input -------------------------------------------------------

def test_same_bits_on_one_and_two_threads(monkeypatch):
    # every measured call pays for every thread (numerics.cpu.MeasuredWork)
    monkeypatch.setattr(cpu, "THREAD_WORK_SECONDS", 1e-12)
    rng = np.random.default_rng(4)
    x = rng.normal(1e3, 1.0, (4, 8, 128, 80)).astype(np.float32)  # 1.25 MiB: threaded
    before = numba.get_num_threads()
    runs = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            for norm, layout in (("batch", "NCHW"), ("batch", "NHWC"), ("layer", "NCHW")):
                view = numerics.canonical_view(x.shape, norm, layout=layout)
                runs.append(correctly_rounded.cpu_fast_sums(x.reshape(view.view_shape)))
    finally:
        numba.set_num_threads(before)
    assert [run[4] for run in runs] == [1, 1, 1, 2, 2, 2]
    for one, two in zip(runs[:3], runs[3:]):
        for a, b in zip(one[:3], two[:3]):
            np.testing.assert_array_equal(a.view(np.uint64), b.view(np.uint64))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_fast_sums_thread_by_size_first_then_by_the_measured_work(monkeypatch):
    x4 = np.random.default_rng(5).normal(size=(2, 1, 3, 2**17)).astype(np.float32)  # 3 MiB
    assert x4.nbytes >= cpu.THREADED_BYTES
    # the kernels loaded once in this process: a call that loads one measures no work
    correctly_rounded.cpu_fast_sums(x4)
    correctly_rounded.measured_work.cache_clear()
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        first = correctly_rounded.cpu_fast_sums(x4)
        monkeypatch.setattr(cpu, "THREAD_WORK_SECONDS", 1e3)
        light = correctly_rounded.cpu_fast_sums(x4)
        monkeypatch.setattr(cpu, "THREAD_WORK_SECONDS", 1e-12)
        heavy = correctly_rounded.cpu_fast_sums(x4)
    finally:
        numba.set_num_threads(before)
    assert [run[4] for run in (first, light, heavy)] == [2, 1, 2]
    for run in (light, heavy):
        for a, b in zip(first[:3], run[:3]):
            np.testing.assert_array_equal(a.view(np.uint64), b.view(np.uint64))


def test_nonfinite_and_degenerate_groups():
    x = np.array([[1.0, np.nan, 2.0], [1.0, np.inf, 2.0], [np.inf, -np.inf, 0.0],
                  [1.0, 2.0, 4.0]], np.float32)
    result = check(x, "layer", output_format="float32")
    assert np.isnan(result.mean[0]) and result.mean[1] == np.inf and np.isnan(result.mean[2])
    assert np.isnan(result.var[:3]).all() and result.var[3] > 0
    with pytest.warns(RuntimeWarning, match="degrees of freedom"):
        result = check(np.array([[2.5], [3.0]], np.float32), "layer", ddof=1)
    assert np.isnan(result.var).all() and list(result.mean) == [2.5, 3.0]


def test_strided_and_big_endian_input():
    x = np.random.default_rng(8).normal(2.0, 1.0, (4, 6, 5)).astype(np.float32)
    wanted = check(x, "instance")
    for variant in (x[:, ::2], np.asfortranarray(x), x.astype(">f4")):
        got = check(variant, "instance")
        if variant.shape == x.shape:
            assert_same_bits(got.mean, wanted.mean)
            assert_same_bits(got.var, wanted.var)


def test_run_record():
    x = np.random.default_rng(5).standard_normal((2, 3, 4)).astype(ml_dtypes.bfloat16)
    result = check(x, "batch", output_format="bfloat16")
    run = result.run
    assert run.algorithm == numerics.CORRECTLY_ROUNDED == "correctly_rounded"
    assert run.kernel == "correctly_rounded.cpu" and run.acc_dtype == "bfloat16"
    details = dict(run.details)
    assert details["certified_groups"] + details["exact_groups"] == 3
    assert numerics.CORRECTLY_ROUNDED not in numerics.ALGORITHMS


def test_default_output_format_and_topology_ignored():
    x = np.random.default_rng(6).standard_normal(100).astype(np.float16)
    plain = numerics.moments(x, algorithm="correctly_rounded")
    assert plain.mean.dtype == np.float32  # the same default as the other rules
    other = numerics.moments(x, algorithm="correctly_rounded", topology="pairwise")
    assert plain.mean == other.mean and plain.var == other.var


def test_bad_input():
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="correctly_rounded"):
        numerics.moments(x, algorithm="correctly-rounded")
    with pytest.raises(TypeError, match="acc_dtype"):
        numerics.moments(x, algorithm="correctly_rounded", acc_dtype=np.int32)
    with pytest.raises(ValueError, match="ddof"):
        numerics.moments(x, algorithm="correctly_rounded", ddof=2)
    with pytest.raises(TypeError, match="x must be"):
        numerics.moments(np.ones(8, np.int32), algorithm="correctly_rounded")
    with pytest.raises(ValueError, match="empty"):
        numerics.moments(np.ones(0, np.float32), algorithm="correctly_rounded")
    with pytest.raises(TypeError, match="device='cpu'"):
        numerics.moments(x, algorithm="correctly_rounded", threads_per_block=64)


def test_bench_table_smoke():
    from studies import correctly_rounded_bench
    table = correctly_rounded_bench.throughput_table("smoke", repetitions=1, threads=(1,))
    assert list(table["shape"]) == ["4x8x16x16", "64x256"]
    assert (table["elements_per_s"] > 0).all() and (table["share_of_read"] > 0).all()
    assert (table["groups"] == [8, 64]).all()
    assert (table[["fast_share_of_read", "fast_in_cache_elements_per_s"]] > 0).all().all()
    shares = table[["certify_share_of_rule", "exact_share_of_rule", "rest_share_of_rule"]]
    assert ((shares >= 0) & (shares <= 1)).all().all()
    assert ((table["cause"] == "") == (table["share_of_read"] >= 0.8)).all()
    assert "cause of a miss" in correctly_rounded_bench.section_table(table)


def test_bench_miss_cause_names_the_parts_largest_first():
    from studies import correctly_rounded_bench
    row = {"share_of_read": 0.5, "fast_share_of_read": 0.8, "read_elements_per_s": 1e9,
           "fast_in_cache_elements_per_s": 3e9, "certify_share_of_rule": 0.05,
           "exact_share_of_rule": 0.3, "exact_groups_alone": 1.0, "rest_share_of_rule": 0.005}
    # in units of the read's time: exact 0.6, fast 0.25, certification 0.1, rest 0.01 (left out)
    assert correctly_rounded_bench.miss_cause(row) == (
        "exact path (1.0 group(s) a call) 30 % of the call; fast sums at 80 % of the read from "
        "memory (memory access: in cache it runs at 3.0× the read's rate from memory); "
        "certification 5 % of the call")
    assert "arithmetic: even in cache" in correctly_rounded_bench.miss_cause(
        {**row, "fast_in_cache_elements_per_s": 0.9e9})
    assert correctly_rounded_bench.miss_cause({**row, "share_of_read": 0.8}) == ""
