"""The kernels' 64-bit index arithmetic, proved on shapes past 2**31 (and 2**33) elements without
allocating them: the index functions are plain Python (targets.gpu_inline compiles the same text
into the kernels), so they run here on Python ints, on numpy int64 and compiled by numba, whose
integer typing is the CUDA target's (int64 kernel arguments, int64 literals)."""
import numpy as np
import pytest
from numba import njit

import numerics
from numerics import gpu

#: canonical views (K1, P, K2, Q) of tensors with 2**31 + ... elements and more
HUGE_VIEWS = [
    (1, 1, 8, 2 ** 28 + 3),          # InstanceNorm of 8 planes of 2**28 + 3 elements, channels first
    (3, 70001, 5, 9001),             # about 9.5e9 elements: past 2**33
    (2, 2 ** 31 + 7, 3, 1),          # channels-last BatchNorm: a group spans 2**31 + 7 rows
    (40000, 1, 1, 60000),            # LayerNorm of 40000 rows of 60000
]


def flat_offset(view, k1, k2, i):
    """The C-order offset of element i of group (k1, k2), by numpy's own index arithmetic."""
    kept_outer, reduced_outer, kept_inner, reduced_inner = view
    p, q = divmod(i, reduced_inner)
    return int(np.ravel_multi_index((k1, p, k2, q), view))


def sample_elements(view, rng, count=40):
    """Groups and in-group indices, the last group and the last element among them."""
    kept_outer, reduced_outer, kept_inner, reduced_inner = view
    size = reduced_outer * reduced_inner
    picks = [(kept_outer - 1, kept_inner - 1, size - 1), (0, 0, 0)]
    for _ in range(count):
        picks.append((int(rng.integers(kept_outer)), int(rng.integers(kept_inner)),
                      int(rng.integers(size))))
    return picks


@pytest.mark.parametrize("view", HUGE_VIEWS, ids=lambda view: "x".join(map(str, view)))
def test_element_offsets_past_2_to_the_31(view):
    assert np.prod(view, dtype=object) > 2 ** 31
    kept_outer, reduced_outer, kept_inner, reduced_inner = view
    compiled = njit(gpu.element_offset)
    rng = np.random.default_rng(0)
    largest = 0
    for k1, k2, i in sample_elements(view, rng):
        expected = flat_offset(view, k1, k2, i)
        assert gpu.element_offset(k1, k2, i, reduced_outer, kept_inner, reduced_inner) == \
            (expected, i % reduced_inner)
        as_int64 = [np.int64(value) for value in (k1, k2, i, reduced_outer, kept_inner,
                                                   reduced_inner)]
        assert gpu.element_offset(*as_int64)[0] == expected
        assert compiled(*as_int64)[0] == expected
        largest = max(largest, expected)
    assert largest >= 2 ** 31, "the samples must reach past 2**31"


@pytest.mark.parametrize("view", HUGE_VIEWS, ids=lambda view: "x".join(map(str, view)))
@pytest.mark.parametrize("lanes", [1, 32, 1024])
def test_the_strided_walk_matches_direct_offsets(view, lanes):
    """A thread's walk i, i + T, i + 2T, ... by additions (advance) lands where element_offset says,
    for strides shorter and longer than a row of Q elements."""
    kept_outer, reduced_outer, kept_inner, reduced_inner = view
    compiled_advance = njit(gpu.advance)
    step_q, jump, carry = njit(gpu.stepping)(np.int64(lanes), np.int64(kept_inner),
                                             np.int64(reduced_inner))
    assert (step_q, jump, carry) == gpu.stepping(lanes, kept_inner, reduced_inner)
    size = reduced_outer * reduced_inner
    rng = np.random.default_rng(lanes)
    for k1, k2, start in sample_elements(view, rng, count=5):
        start = min(start, size - 1)
        offset, q = gpu.element_offset(k1, k2, start, reduced_outer, kept_inner, reduced_inner)
        i = start
        while i < min(start + 200 * lanes, size):
            assert (offset, q) == gpu.element_offset(k1, k2, i, reduced_outer, kept_inner,
                                                     reduced_inner)
            offset, q = compiled_advance(np.int64(offset), np.int64(q), step_q, jump,
                                         np.int64(reduced_inner), carry)
            i += lanes


@pytest.mark.parametrize("view", HUGE_VIEWS, ids=lambda view: "x".join(map(str, view)))
def test_row_offsets_are_element_offsets(view):
    """The rows kernel addresses (row p, column k2 * Q + q); that is element p * Q + q of group
    (k1, k2)."""
    kept_outer, reduced_outer, kept_inner, reduced_inner = view
    compiled = njit(gpu.row_offset)
    rng = np.random.default_rng(1)
    for k1, k2, i in sample_elements(view, rng):
        p, q = divmod(i, reduced_inner)
        column = k2 * reduced_inner + q
        expected = gpu.element_offset(k1, k2, i, reduced_outer, kept_inner, reduced_inner)[0]
        assert gpu.row_offset(k1, p, column, reduced_outer, kept_inner * reduced_inner) == expected
        assert compiled(np.int64(k1), np.int64(p), np.int64(column), np.int64(reduced_outer),
                        np.int64(kept_inner * reduced_inner)) == expected


@pytest.mark.parametrize("shape, norm, layout", [
    ((8, 64, 2048, 2048), "batch", "NCHW"),
    ((8, 2048, 2048, 64), "batch", "NHWC"),
    ((8, 64, 2048, 2048), "layer", "NCHW"),
    ((8, 2048, 2048, 64), "instance", "NHWC"),
])
def test_launches_of_2_to_the_31_elements_fit_a_grid(shape, norm, layout):
    """Launch geometry of 2**31-element tensors: the grid stays within CUDA's 2**31 - 1 blocks and
    the units cover every element exactly once."""
    view = numerics.canonical_view(shape, norm, None, layout)
    assert view.group_count * view.group_size == 2 ** 31
    for topology in gpu.TOPOLOGIES.values():
        launch = gpu.plan(view, topology, 256)
        assert 1 <= launch.cuda_blocks < 2 ** 31
        assert launch.blocks * launch.block >= view.group_size > (launch.blocks - 1) * launch.block
        assert launch.states <= gpu.STATE_CAPACITY
