"""The per-call path of ``moments`` (docs/architecture.md section 2.5): work arrays reused across
calls, checked arguments cached, calls from several Python threads at once. Reuse must never show
in a result: every call gives the bits a first call gives, in arrays of its own."""
import threading

import numba
import numpy as np
import pytest

import numerics
from numerics import cache, cpu
from tests.helpers import assert_bitwise_equal

RNG = np.random.default_rng(12)
#: (shape, norm, groups, layout, topology): the segments kernel with full and partial batches of
#: units, the rows kernel (channels last), and a tensor large enough for the thread pool
CASES = [
    ((8, 768), "layer", None, "NCHW", None),
    ((3, 16, 5, 7), "group", 4, "NCHW", numerics.Topology(8, 64)),
    ((4, 6, 5, 8), "batch", None, "NHWC", None),
    ((8, 64, 24, 24), "batch", None, "NCHW", None),
]


def inputs(shape, count):
    return [RNG.normal(2.0, 3.0, shape).astype(np.float32) for _ in range(count)]


def call(x, case, algorithm="welford"):
    shape, norm, groups, layout, topology = case
    return numerics.moments(x, norm, groups=groups, layout=layout, topology=topology,
                            algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ["welford", "two_pass"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case[1]}-{case[3]}-{case[0]}")
def test_reused_work_arrays_never_change_a_result(case, algorithm):
    """A, B, A again: the third call reads work arrays the second one left dirty and must give
    the first call's bits; outputs never share memory with an earlier call's."""
    first_x, second_x = inputs(case[0], 2)
    first = call(first_x, case, algorithm)
    kept = (first.mean.copy(), first.var.copy())
    second = call(second_x, case, algorithm)
    again = call(first_x, case, algorithm)
    assert_bitwise_equal(again.mean, kept[0])
    assert_bitwise_equal(again.var, kept[1])
    assert_bitwise_equal(first.mean, kept[0])  # the later calls did not write into it
    for earlier in (first, second):
        assert not np.shares_memory(again.mean, earlier.mean)
        assert not np.shares_memory(again.var, earlier.var)


def test_threaded_tensor_uses_the_pool_and_matches_one_thread(monkeypatch):
    case = CASES[-1]
    x = inputs(case[0], 1)[0]
    assert x.nbytes >= cpu.THREADED_BYTES
    # every measured call pays for every thread
    monkeypatch.setattr(cpu, "THREAD_WORK_SECONDS", 1e-12)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = call(x, case)
        numba.set_num_threads(2)
        two = call(x, case)
    finally:
        numba.set_num_threads(previous)
    assert dict(one.run.details)["threads"] == 1
    assert dict(two.run.details)["threads"] == 2
    assert_bitwise_equal(two.mean, one.mean)
    assert_bitwise_equal(two.var, one.var)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_threads_follow_the_input_size_first_then_the_measured_work(monkeypatch):
    """Calls on a geometry thread from THREADED_BYTES on until one has measured the work; later
    calls run one thread per THREAD_WORK_SECONDS of the least work measured; the bits never
    change."""
    case = CASES[-1]
    small, large = (8, 64, 8, 8), case[0]
    x_small, x_large = inputs(small, 1)[0], inputs(large, 1)[0]
    assert x_small.nbytes < cpu.THREADED_BYTES <= x_large.nbytes
    # the kernels loaded once in this process: a call that loads one measures no work
    call(x_small, (small, *case[1:]))
    call(x_large, case)
    previous = numba.get_num_threads()
    cpu.geometry_of.cache_clear()
    try:
        numba.set_num_threads(2)
        assert dict(call(x_small, (small, *case[1:])).run.details)["threads"] == 1
        first = call(x_large, case)
        assert dict(first.run.details)["threads"] == 2
        monkeypatch.setattr(cpu, "THREAD_WORK_SECONDS", 1e3)
        light = call(x_large, case)
        monkeypatch.setattr(cpu, "THREAD_WORK_SECONDS", 1e-12)
        heavy = call(x_large, case)
    finally:
        numba.set_num_threads(previous)
    assert dict(light.run.details)["threads"] == 1
    assert dict(heavy.run.details)["threads"] == 2
    for result in (light, heavy):
        assert_bitwise_equal(result.mean, first.mean)
        assert_bitwise_equal(result.var, first.var)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_a_call_that_loads_or_compiles_a_kernel_measures_no_work(monkeypatch):
    """The seconds of a call that loaded or compiled its kernels are a build's, not the work's:
    the calls after it still thread by input size, until a call measures the work."""
    case = CASES[0]
    x = inputs(case[0], 1)[0]
    assert x.nbytes < cpu.THREADED_BYTES
    call(x, case)  # its kernels, loaded once in this process
    cpu.geometry_of.cache_clear()
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        monkeypatch.setattr(cpu, "THREAD_WORK_SECONDS", 1e-12)  # any measured work pays 2
        with monkeypatch.context() as every_call_first:
            every_call_first.setattr(cache, "loaded", lambda kernel, key: False)
            unmeasured = [call(x, case) for _ in range(2)]
        measuring, measured = call(x, case), call(x, case)
    finally:
        numba.set_num_threads(previous)
    assert [dict(result.run.details)["threads"] for result in unmeasured] == [1, 1]
    assert dict(measuring.run.details)["threads"] == 1
    assert dict(measured.run.details)["threads"] == 2
    assert_bitwise_equal(measured.var, measuring.var)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_the_least_measured_work_sets_the_threads(monkeypatch):
    """A kind of call has a fixed work: a slower call (preempted, waiting for a core) must not
    wake a thread more for the calls after it."""
    monkeypatch.setattr(cpu, "THREAD_WORK_SECONDS", 1.0)
    record, previous = cpu.MeasuredWork(), numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        threads = []
        for parts in ([None], [2.0, 0.5], [1.5], [9.0], [0.5, None]):
            record.measured(parts)
            threads.append(record.threads_for(0))
    finally:
        numba.set_num_threads(previous)
    assert threads == [1, 2, 1, 1, 1]


def test_a_failing_kernel_run_raises_its_own_error_once_the_pool_is_done(monkeypatch):
    """run_split waits for the pool's ranges before an error of its own range propagates, and
    that error is the one the caller sees."""
    pool_ranges = []

    def failing_first_range(kernel, key, lo, hi, scratch):
        if lo == 0:
            raise ValueError("the first range failed")
        pool_ranges.append((lo, hi))
        return 1.0

    monkeypatch.setattr(cpu, "timed_call", failing_first_range)
    with pytest.raises(ValueError, match="the first range failed"):
        cpu.run_split(None, "key", 4, (), [None, None], ())
    assert pool_ranges == [(2, 4)]


def test_python_threads_calling_at_once_get_their_own_results():
    """Four Python threads call moments at the same time, on the same geometries (so they compete
    for the same kept work arrays) and on different data: each result equals the serial one."""
    jobs = [(case, x) for case in CASES for x in inputs(case[0], 2)]
    expected = [call(x, case) for case, x in jobs]
    start = threading.Barrier(4)
    failures = []

    def worker(offset):
        start.wait()
        for repetition in range(10):
            for index in range(offset, offset + len(jobs)):
                case, x = jobs[index % len(jobs)]
                result = call(x, case)
                want = expected[index % len(jobs)]
                if (result.mean.tobytes() != want.mean.tobytes()
                        or result.var.tobytes() != want.var.tobytes()):
                    failures.append((offset, repetition, index))

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


@pytest.mark.parametrize("good, bad, name", [
    (dict(ddof=1), dict(ddof=True), "ddof"),
    (dict(norm="group", groups=2), dict(norm="group", groups=2.0), "groups"),
    (dict(clamp=True), dict(clamp=1), "clamp"),
])
def test_a_checked_combination_never_admits_an_equal_value_of_another_type(good, bad, name):
    """``True == 1`` and ``2.0 == 2`` in Python: the cache of checked arguments keys on types too."""
    x = inputs((2, 4, 3, 3), 1)[0]
    numerics.moments(x, **{"norm": "layer", **good})
    with pytest.raises(ValueError, match=name):
        numerics.moments(x, **{"norm": "layer", **bad})


def test_unhashable_arguments_are_checked_uncached():
    x = inputs((2, 4, 3, 3), 1)[0]
    by_int = numerics.moments(x, "group", groups=2)
    by_array = numerics.moments(x, "group", groups=np.array(2))
    assert_bitwise_equal(by_array.var, by_int.var)
    with pytest.raises(ValueError, match="groups"):
        numerics.moments(x, "group", groups=[2])


def test_repeated_calls_share_one_run_record(monkeypatch):
    # one thread whatever the calls measure: the record is the subject here, not the threads
    monkeypatch.setattr(cpu, "THREAD_WORK_SECONDS", 1e3)
    x = inputs((8, 768), 1)[0]
    first, second = numerics.moments(x, "layer"), numerics.moments(x, "layer")
    assert second.run is first.run
    assert first.run.shape == (8, 768) and first.run.details == (("threads", 1),
                                                                  ("fused_two_pass", False))


def test_kernel_calls_type_the_context_from_its_numba_type():
    """A CpuContext carries ``_numba_type_`` (numerics.targets), which numba's dispatcher reads
    instead of typing the argument in Python (docs/architecture.md 2.8, not a documented numba
    API): a later numba that stops reading it fails here, not silently in the latency."""
    from numba.extending import typeof_impl
    from numerics.targets import CpuContext

    x = inputs((8, 768), 1)[0]
    for algorithm in ("welford", "two_pass"):  # compiled (or loaded) before counting
        numerics.moments(x, "layer", algorithm=algorithm)
    typed = []
    original = typeof_impl.dispatch(CpuContext)

    def counting(context, typing_context):
        typed.append(context)
        return original(context, typing_context)
    typeof_impl.register(CpuContext)(counting)
    try:
        numba.typeof(CpuContext("welford_updates", "float32", "float32", True))
        assert len(typed) == 1  # the counting implementation is the one typeof finds
        for _ in range(3):
            numerics.moments(x, "layer")
            numerics.moments(x, "layer", algorithm="two_pass")
        assert len(typed) == 1, typed
    finally:
        typeof_impl.register(CpuContext)(original)
