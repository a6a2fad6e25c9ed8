"""The a-priori bounds: their formulas, their depth model, and that they hold for float32 sums
carried out here step by step in the orders they model (exact references from numerics.reference).
The bounds are leading-order, so the checks allow the constant factor BOUND_FACTOR."""
import math

import numpy as np
import pytest

import numerics
from numerics import bounds, data, reference

BOUND_FACTOR = 2.0
U32 = 2.0 ** -24


def test_the_rules_are_those_the_package_implements():
    assert set(bounds.ALGORITHMS) == set(numerics.ALGORITHMS)


@pytest.mark.parametrize("n, lanes, block, depth", [
    (0, 1, 0, 0),
    (1, 1, 0, 1),
    (1000, 1, 0, 1000),                     # sequential
    (1024, 1, 1, 1 + 10),                   # pure pairwise tree
    (1000, 1, 1, 1 + 10),
    (3136, 32, 0, 98 + 5),                  # lanes: ceil(3136/32) + log2 32
    (10000, 32, 4096, 128 + 5 + 2),         # blocked: 3 blocks of 4096
    (100, 32, 4096, 4 + 5),                 # one short block
    (5, 32, 0, 1 + 3),                      # only 5 lanes hold data
    (200, 1, 64, 64 + 2),                   # tree: 4 blocks
])
def test_summation_depth(n, lanes, block, depth):
    assert bounds.summation_depth(n, lanes, block) == depth


def test_variance_bound_formulas():
    n, kappa, u = 256, 30.0, 2.0 ** -24
    depth = 256
    finalisation = bounds.FINALISATION_ROUNDINGS * u
    expected = {
        "naive": depth * kappa ** 2 * u,
        "shifted": depth * kappa ** 2 * u,
        "two_pass": depth * u + (depth * kappa * u) ** 2,
        "corrected_two_pass": depth * u + depth ** 3 * kappa ** 2 * u ** 3,
        "welford": depth * kappa * u,
        "parallel_merge": depth * kappa * u,
    }
    for algorithm, rule in expected.items():
        assert bounds.variance_bound(algorithm, n, kappa, u) == pytest.approx(rule + finalisation)
    # pairwise updating: κ u log2 n plus one level for the leaves
    assert bounds.variance_bound("parallel_merge", 1024, kappa, u, block=1) == pytest.approx(
        11 * kappa * u + finalisation)
    epsilon = 2.0 ** -11
    with_rounding = bounds.variance_bound("welford", n, kappa, u, input_rounding_u=epsilon)
    assert with_rounding == pytest.approx(depth * kappa * u + finalisation + 2 * kappa * epsilon
                                          + (kappa * epsilon) ** 2)
    shifted = bounds.variance_bound("shifted", n, 1.5, u, input_rounding_u=epsilon, data_kappa=kappa)
    assert shifted == pytest.approx(depth * 1.5 ** 2 * u + finalisation + 2 * kappa * epsilon
                                    + (kappa * epsilon) ** 2)
    grid = bounds.variance_bound("naive", n, np.array([1.0, 10.0]), np.array([[u], [2 * u]]))
    assert grid.shape == (2, 2) and grid[1, 1] == pytest.approx(2 * (depth * 100 * u) + 6 * u)


def test_mean_bound():
    u = 2.0 ** -24
    assert bounds.mean_bound(1000, 1.0, u) == pytest.approx(1000 * u + u)
    assert bounds.mean_bound(1024, 5.0, u, lanes=32, block=0) == pytest.approx((32 + 5) * 5 * u + u)
    assert bounds.mean_bound(10, math.inf, u) == math.inf


@pytest.mark.parametrize("call, argument", [
    (lambda: bounds.variance_bound("kahan", 10, 1.0, 1e-8), "algorithm"),
    (lambda: bounds.variance_bound("naive", 10, 0.5, 1e-8), "kappa"),
    (lambda: bounds.variance_bound("naive", 10, math.nan, 1e-8), "kappa"),
    (lambda: bounds.variance_bound("naive", 10, 2.0, -1.0), "u"),
    (lambda: bounds.variance_bound("naive", 10, 2.0, 1e-8, input_rounding_u=-1), "input_rounding_u"),
    (lambda: bounds.variance_bound("naive", -1, 2.0, 1e-8), "n"),
    (lambda: bounds.variance_bound("naive", 10, 2.0, 1e-8, lanes=0), "lanes"),
    (lambda: bounds.summation_depth(10, 1, -2), "block"),
    (lambda: bounds.summation_depth(10.5), "n"),
    (lambda: bounds.mean_bound(10, 0.5, 1e-8), "mean_condition"),
])
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


# ---- the bounds hold: float32 arithmetic, step by step, in the modelled orders ------------------

def sequential_sum(values):
    """Left-to-right float32 sum (np.cumsum adds in order, rounding each partial sum)."""
    return np.cumsum(values, dtype=np.float32)[-1]


def pairwise_sum(values):
    """float32 sum by a pairwise tree over adjacent elements (depth ceil(log2 n))."""
    values = np.asarray(values, np.float32)
    while values.size > 1:
        if values.size % 2:
            values = np.append(values, np.float32(0))
        values = values[0::2] + values[1::2]
    return values[0]


def finish(sum_x, sum_x2, n):
    return np.float32(sum_x2 - sum_x * (sum_x / np.float32(n)))


def naive(values, add):
    return finish(add(values), add(values * values), values.size)


def shifted(values, add):
    centred = values - values[0]
    return finish(add(centred), add(centred * centred), values.size)


def two_pass(values, add):
    mean = np.float32(add(values) / np.float32(values.size))
    deviations = values - mean
    return add(deviations * deviations)


def corrected_two_pass(values, add):
    mean = np.float32(add(values) / np.float32(values.size))
    deviations = values - mean
    correction = add(deviations)
    return np.float32(add(deviations * deviations) - correction * (correction / np.float32(values.size)))


def welford(values, add):
    """Welford/West updating in float32, one element at a time (``add`` is unused: sequential)."""
    mean, sum_of_squares = np.float32(0), np.float32(0)
    for count, value in enumerate(values, start=1):
        delta = value - mean
        mean = np.float32(mean + delta / np.float32(count))
        sum_of_squares = np.float32(sum_of_squares + delta * (value - mean))
    return sum_of_squares


def chan_tree(values, add):
    """Pairwise merge of (n, mean, S) states (Chan et al.), leaves single elements."""
    states = [(1, np.float32(value), np.float32(0)) for value in values]
    while len(states) > 1:
        merged = []
        for left, right in zip(states[0::2], states[1::2]):
            count = left[0] + right[0]
            delta = right[1] - left[1]
            mean = np.float32(left[1] + delta * np.float32(right[0] / count))
            scale = np.float32(left[0] * right[0] / count)
            merged.append((count, mean, np.float32(left[2] + right[2] + delta * delta * scale)))
        if len(states) % 2:
            merged.append(states[-1])
        states = merged
    return states[0][2]


RULES = {"naive": naive, "shifted": shifted, "two_pass": two_pass,
         "corrected_two_pass": corrected_two_pass, "welford": welford, "parallel_merge": chan_tree}
ORDERS = {"sequential": (sequential_sum, 0), "pairwise": (pairwise_sum, 1)}


# updating (Welford) is sequential by definition; Chan's merge is its tree form
RULE_ORDERS = [(algorithm, order) for algorithm in RULES for order in ORDERS
               if (algorithm, order) not in (("welford", "pairwise"), ("parallel_merge", "sequential"))]


@pytest.mark.parametrize("algorithm, order", RULE_ORDERS)
@pytest.mark.parametrize("kappa", [1.2, 30.0, 1000.0])
@pytest.mark.parametrize("distribution", ["normal", "half_normal"])
def test_float32_errors_stay_within_the_bound(algorithm, order, kappa, distribution):
    values = data.with_condition((600,), kappa, "float32", distribution, seed=11)
    add, block = ORDERS[order]
    with np.errstate(all="ignore"):
        computed = RULES[algorithm](values, add)
    _, exact_var = reference.moments(values)
    exact_s = float(exact_var[()] * values.size)
    error = abs(float(computed) - exact_s) / exact_s
    condition = (reference.shifted_condition_number(values) if algorithm == "shifted"
                 else reference.condition_number(values))
    bound = bounds.variance_bound(algorithm, values.size, float(condition), U32, block=block)
    assert error <= BOUND_FACTOR * bound


def test_the_naive_bound_is_not_vacuous():
    """Where κ²u ~ 1 the textbook formula really loses every digit, as its bound says."""
    values = data.with_condition((600,), 4000.0, "float32", "normal", seed=11)
    _, exact_var = reference.moments(values)
    exact_s = float(exact_var[()] * values.size)
    error = abs(float(naive(values, sequential_sum)) - exact_s) / exact_s
    assert error > 0.1
