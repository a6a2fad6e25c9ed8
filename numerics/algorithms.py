"""The variance update rules, written once as plain scalar functions (no numba import).

Every rule keeps a state ``(count, center, first, second)`` per accumulator: ``count`` is an exact
integer, the other three are numbers of the accumulator's arithmetic. Three operations make a rule:
``push`` (one element into a state), ``merge`` (two states into one) and ``finalize`` (state to
mean and variance, Bessel's correction applied once). targets.py compiles these functions for the
CPU (numba.njit) and the GPU (numba.cuda device functions); replay.py runs them as they are on numpy
scalars; tests run them on ``fractions.Fraction`` and mpmath numbers.

The arithmetic is a *context*, the first argument of every rule (as mpmath's contexts), so one text
serves every precision and target: ``Arithmetic`` below for plain Python, numba types for the
kernels (numerics.targets: the format, the family and, on the GPU, the FMA mode are part of the
type, so each compiled rule is named by its specialization). A context provides:

- ``to_acc(v)``: an integer count or an input value converted to the accumulator's arithmetic;
- ``rnd(v)``: a result of the compute type rounded to the accumulator format (the identity except
  for emulated float16/bfloat16, docs/architecture.md section 1);
- ``mul(a, b)``, a rounded product, and ``mul_add(a, b, c)``, ``c + a*b`` either with two
  roundings or as one fused multiply-add. They are the only places a product appears, so whether a
  GPU build fuses (docs/architecture.md trap 2) is decided in one place and can be replayed;
- ``push`` and ``merge``: the family's rules (FAMILY_RULES), for the merge trees of
  numerics.topology.

Bounds below are CGL's (Chan, Golub & LeVeque 1983, Table 1) leading terms on |S^ - S|/S with
S = sum (x_i - mean)^2, kappa the condition number ||x||_2 / sqrt(S), u the unit roundoff of the
accumulator and h the summation depth of the topology (n for one sequential accumulator, about
log2 n for pairwise trees; bounds.summation_depth).
"""
import math
from dataclasses import dataclass

# integer codes: kernels branch on them outside the hot loops
NAIVE, SHIFTED, TWO_PASS, CORRECTED_TWO_PASS, WELFORD, PARALLEL_MERGE = range(6)

#: how the elements enter a state: centered sums (sum of x - c, sum of (x - c)^2, merged by
#: addition), Welford's updating rule, or Chan's pairwise merge of one-element states.
CENTERED_SUMS, WELFORD_UPDATES, CHAN_UPDATES = "centered_sums", "welford_updates", "chan_updates"


@dataclass(frozen=True)
class Algorithm:
    name: str
    code: int
    family: str
    passes: int
    formula: str
    bound: str
    reference: str

    @property
    def __doc__(self):
        return (f"{self.name}: {self.formula}\n\nA-priori bound on |S^ - S|/S: {self.bound}\n\n"
                f"Reference: {self.reference}")


ALGORITHMS = {
    algorithm.name: algorithm for algorithm in (
        Algorithm("naive", NAIVE, CENTERED_SUMS, 1,
                  "textbook one pass: mean = sum(x)/n, S = sum(x^2) - sum(x)*mean",
                  "h kappa^2 u: every digit is lost once kappa^2 u ~ 1 (|mean|/std ~ 4e3 in float32)",
                  "CGL 1983 Table 1 (textbook); Higham 2002 section 1.9"),
        Algorithm("shifted", SHIFTED, CENTERED_SUMS, 1,
                  "one pass on y = x - d with d the group's first element: mean = d + sum(y)/n, "
                  "S = sum(y^2) - sum(y)*(sum(y)/n)",
                  "h kappa_d^2 u with kappa_d the condition number of the shifted data",
                  "CGL 1983 section 3 (shifted data); Higham 2002 problem 1.10"),
        Algorithm("two_pass", TWO_PASS, CENTERED_SUMS, 2,
                  "pass 1: m = sum(x)/n; pass 2: S = sum((x - m)^2); mean = m",
                  "h u + (h kappa u)^2",
                  "CGL 1983 Table 1 (two-pass)"),
        Algorithm("corrected_two_pass", CORRECTED_TWO_PASS, CENTERED_SUMS, 2,
                  "pass 1: m = sum(x)/n; pass 2: c = sum(x - m), q = sum((x - m)^2); "
                  "S = q - c*(c/n), mean = m + c/n",
                  "h u + h^3 kappa^2 u^3",
                  "Bjorck 1967; CGL 1983 eq. 1.7 (corrected two-pass)"),
        Algorithm("welford", WELFORD, WELFORD_UPDATES, 1,
                  "updating: d = x - M; M += d/k; S += d*(x - M); lanes and blocks merge with Chan's "
                  "formula",
                  "h kappa u",
                  "Welford 1962; West 1979; CGL 1983 Table 1 (updating)"),
        Algorithm("parallel_merge", PARALLEL_MERGE, CHAN_UPDATES, 1,
                  "every element is the state (1, x, 0); states merge by Chan's formula "
                  "d = M_b - M_a, M = M_a + d*(n_b/n), S = S_a + S_b + d*d*(n_a*(n_b/n))",
                  "h kappa u (kappa u log2 n for a pure pairwise tree)",
                  "Chan, Golub & LeVeque 1979/1983 (pairwise updating); Barlow 1991"),
    )
}


#: the rule with no topology: mean and variance rounded once from the exact values
#: (numerics.correctly_rounded); not in ALGORITHMS, which lists the rules a topology orders
CORRECTLY_ROUNDED = "correctly_rounded"


#: the push and merge rules of each family (the functions below), looked up by the contexts
FAMILY_RULES = {}


class Arithmetic:
    """A context for running the rules as plain Python (numerics.replay, tests on Fraction and
    mpmath numbers): the conversions and products of one accumulator arithmetic, with two
    roundings per multiply-add (no fusion), and the push and merge of one family of rules.
    ``compute_type`` is float32, float64, Fraction, mpf...; ``rounding`` rounds one of its values
    to the accumulator format (the identity where the type rounds by itself). The compiled kernels
    pass contexts of the same shape that are numba types (numerics.targets)."""

    def __init__(self, family, compute_type, rounding=lambda value: value):
        if family not in (CENTERED_SUMS, WELFORD_UPDATES, CHAN_UPDATES):
            raise ValueError(f"family must be one of {CENTERED_SUMS!r}, {WELFORD_UPDATES!r}, "
                             f"{CHAN_UPDATES!r}, got {family!r}")
        self.family = family
        self.compute_type = compute_type
        self.rounding = rounding

    def to_acc(self, value):
        return self.rnd(self.compute_type(value))

    def rnd(self, value):
        return self.rounding(value)

    def mul(self, a, b):
        return self.rnd(a * b)

    def mul_add(self, a, b, c):
        return self.rnd(self.rnd(a * b) + c)

    def push(self, count, center, first, second, x):
        return FAMILY_RULES[self.family][0](self, count, center, first, second, x)

    def merge(self, count_a, first_a, second_a, count_b, first_b, second_b):
        return FAMILY_RULES[self.family][1](self, count_a, first_a, second_a, count_b, first_b,
                                           second_b)


# ---- the rules, over a context ``ctx``: ``ctx.to_acc(v)`` converts an integer count or an input
# ---- value to the accumulator's arithmetic, ``ctx.rnd(v)`` rounds a result of the compute type
# ---- to the accumulator format, ``ctx.mul(a, b)`` is a rounded product and
# ---- ``ctx.mul_add(a, b, c)`` is ``c + a*b`` (two roundings, or one fused multiply-add)

def centered_push(ctx, count, center, first, second, x):
    # naive (center 0), shifted (center = first element) and the second pass of both two-pass
    # rules (center = the pass-1 mean) are the same accumulation; only finalize differs
    deviation = ctx.rnd(x - center)
    return count + 1, ctx.rnd(first + deviation), ctx.mul_add(deviation, deviation, second)


def sums_merge(ctx, count_a, first_a, second_a, count_b, first_b, second_b):
    return count_a + count_b, ctx.rnd(first_a + first_b), ctx.rnd(second_a + second_b)


def welford_push(ctx, count, center, mean, m2, x):
    count = count + 1
    delta = ctx.rnd(x - mean)
    mean = ctx.rnd(mean + ctx.rnd(delta / ctx.to_acc(count)))
    return count, mean, ctx.mul_add(delta, ctx.rnd(x - mean), m2)


def chan_merge(ctx, count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    # empty states (lanes or blocks that received no element) merge exactly, without 0/0
    if count_b == 0:
        return count_a, mean_a, m2_a
    if count_a == 0:
        return count_b, mean_b, m2_b
    count = count_a + count_b
    delta = ctx.rnd(mean_b - mean_a)
    weight_b = ctx.rnd(ctx.to_acc(count_b) / ctx.to_acc(count))
    mean = ctx.mul_add(delta, weight_b, mean_a)
    m2 = ctx.mul_add(ctx.mul(delta, delta), ctx.mul(ctx.to_acc(count_a), weight_b),
                     ctx.rnd(m2_a + m2_b))
    return count, mean, m2


def chan_push(ctx, count, center, mean, m2, x):
    return chan_merge(ctx, count, mean, m2, 1, x, ctx.to_acc(0))


def pass_one_mean(ctx, count, first):
    """The mean of the first pass of the two-pass rules: sum(x)/n."""
    return ctx.rnd(first / ctx.to_acc(count))


def finalize(ctx, algorithm, count, center, first, second, ddof):
    """(mean, variance) of a merged state; the variance divides S by n - ddof, and is NaN where
    n - ddof <= 0 (the mean is still defined). Every target finalizes here, so they all agree on
    that edge (docs/architecture.md, bad input)."""
    if algorithm == NAIVE:
        mean = ctx.rnd(first / ctx.to_acc(count))
        spread = ctx.mul_add(-first, mean, second)
    elif algorithm == SHIFTED or algorithm == CORRECTED_TWO_PASS:
        quotient = ctx.rnd(first / ctx.to_acc(count))
        mean = ctx.rnd(center + quotient)
        spread = ctx.mul_add(-first, quotient, second)
    elif algorithm == TWO_PASS:
        mean = center
        spread = second
    else:
        mean = first
        spread = second
    if count - ddof <= 0:
        return mean, ctx.to_acc(math.nan)
    return mean, ctx.rnd(spread / ctx.to_acc(count - ddof))


FAMILY_RULES.update({
    CENTERED_SUMS: (centered_push, sums_merge),
    WELFORD_UPDATES: (welford_push, chan_merge),
    CHAN_UPDATES: (chan_push, chan_merge),
})

#: every rule function, for the targets that compile them (numerics.targets)
RULE_FUNCTIONS = (centered_push, sums_merge, welford_push, chan_merge, chan_push, pass_one_mean,
                  finalize)
