"""A-priori bounds on the relative error |Ŝ − S|/S of the sum of squared deviations, and on the mean.

The bounds are the leading terms of Chan, Golub & LeVeque (1983, "Algorithms for computing the
sample variance: analysis and recommendations", The American Statistician 37(3), Table 1) and
Higham (2002, Accuracy and Stability of Numerical Algorithms, §1.9 and §4.2), with the summation
length n of a sequential sum replaced by the summation depth h of the reduction topology (the
most roundings any element's contribution goes through). They are leading-order bounds: constants
and higher-order terms are left out, so tests compare against a small constant multiple.

The topology (numerics/topology.py): a group of n elements is cut into blocks of ``block``
consecutive elements (``block = 0``: one block); inside a block element j goes to lane j mod
``lanes``, each lane a sequential accumulator; lanes merge by a halving tree, blocks by a pairwise
tree. Hence h = ceil(b/ℓ) + ceil(log2 ℓ) + ceil(log2 ⌈n/b⌉) with b = min(block or n, n) elements per
block and ℓ = min(lanes, b) lanes that hold data (a lane with no element adds an exact zero).
"""
import math

import numpy as np

from . import algorithms

#: the update rules numerics.algorithms implements, each with its leading-order bound
ALGORITHMS = tuple(algorithms.ALGORITHMS)

#: roundings of the finalisation (the (Σx)²/n or S/(n − ddof) divisions and products): a few u
FINALISATION_ROUNDINGS = 3


def _check_count(value, argument, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{argument} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def summation_depth(n, lanes=1, block=0):
    """The summation depth h of a group of ``n`` elements reduced by (``lanes``, ``block``); see
    the module docstring. A sequential sum (lanes 1, block 0) has h = n, a pure pairwise tree
    (block 1) h = 1 + ceil(log2 n)."""
    n = _check_count(n, "n", 0)
    lanes = _check_count(lanes, "lanes", 1)
    block = _check_count(block, "block", 0)
    if n == 0:
        return 0
    block_length = min(block or n, n)
    used_lanes = min(lanes, block_length)
    block_count = -(-n // block_length)
    return (-(-block_length // used_lanes) + math.ceil(math.log2(used_lanes))
            + math.ceil(math.log2(block_count)))


def variance_bound(algorithm, n, kappa, u, lanes=1, block=0, input_rounding_u=0.0, data_kappa=None):
    """Leading-order bound on |Ŝ − S|/S for ``algorithm`` (one of ALGORITHMS) over a group of
    ``n`` elements with condition number ``kappa`` (κ = ‖x‖₂/√S; for "shifted", the κ of the shifted
    data), accumulator unit roundoff ``u`` and the (``lanes``, ``block``) topology (depth h):

    - naive, shifted: h κ² u                      (CGL Table 1, textbook one-pass)
    - two_pass: h u + (h κ u)²
    - corrected_two_pass: h u + h³ κ² u³
    - welford: h κ u                               (updating)
    - parallel_merge: h κ u                        (pairwise updating; pure pairwise: κ u log2 n)

    plus FINALISATION_ROUNDINGS · u for the finalisation, plus, when the input was rounded to the
    accumulator format first (``input_rounding_u`` = ε > 0, e.g. float32 data into a float16
    accumulator), the data-perturbation term 2κ'ε + (κ'ε)² with κ' = ``data_kappa`` (the κ of the
    unshifted data; defaults to ``kappa``). ``kappa`` and ``u`` may be numpy arrays (broadcast).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    depth = summation_depth(n, lanes, block)
    kappa = np.asarray(kappa, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    epsilon = np.asarray(input_rounding_u, dtype=np.float64)
    for argument, value, minimum in (("kappa", kappa, 1.0), ("u", u, 0.0),
                                     ("input_rounding_u", epsilon, 0.0)):
        if np.any(np.isnan(value)) or np.any(value < minimum):
            raise ValueError(f"{argument} must be >= {minimum} (and not NaN), got {value}")
    data_kappa = kappa if data_kappa is None else np.asarray(data_kappa, dtype=np.float64)
    if algorithm in ("naive", "shifted"):
        rule = depth * kappa ** 2 * u
    elif algorithm == "two_pass":
        rule = depth * u + (depth * kappa * u) ** 2
    elif algorithm == "corrected_two_pass":
        rule = depth * u + depth ** 3 * kappa ** 2 * u ** 3
    else:  # welford, parallel_merge
        rule = depth * kappa * u
    bound = rule + FINALISATION_ROUNDINGS * u + 2 * data_kappa * epsilon + (data_kappa * epsilon) ** 2
    return bound[()] if bound.ndim == 0 else bound


def mean_bound(n, mean_condition, u, lanes=1, block=0):
    """Leading-order bound on the relative error of the mean: h u (Σ|x| / |Σx|) + u, the
    summation bound (Higham 2002 §4.2) with condition ``mean_condition`` = Σ|x|/|Σx| plus the
    rounding of the division by n. ``mean_condition`` and ``u`` may be numpy arrays."""
    depth = summation_depth(n, lanes, block)
    mean_condition = np.asarray(mean_condition, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    if np.any(np.isnan(mean_condition)) or np.any(mean_condition < 1):
        raise ValueError(f"mean_condition must be >= 1 (Σ|x| >= |Σx|), got {mean_condition}")
    if np.any(np.isnan(u)) or np.any(u < 0):
        raise ValueError(f"u must be >= 0, got {u}")
    bound = depth * u * mean_condition + u
    return bound[()] if bound.ndim == 0 else bound
