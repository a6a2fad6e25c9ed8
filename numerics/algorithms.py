"""The variance update rules, written once as plain scalar functions (no numba import).

Every rule keeps a state ``(count, center, first, second)`` per accumulator: ``count`` is an exact
integer, the other three are numbers of the accumulator's arithmetic. Three operations make a rule:
``push`` (one element into a state), ``merge`` (two states into one) and ``finalize`` (state to
mean and variance, Bessel's correction applied once). targets.py compiles these functions for the
CPU (numba.njit) and the GPU (numba.cuda device functions); replay.py runs them as they are on numpy
scalars; tests run them on ``fractions.Fraction`` and mpmath numbers.

The arithmetic is injected, so one text serves every precision and target:

- ``to_acc(v)`` converts an integer count or an input value to the accumulator's arithmetic;
- ``rnd(v)`` rounds a result of the compute type to the accumulator format (the identity except for
  emulated float16/bfloat16, ARCHITECTURE.md section 1);
- ``mul(a, b)`` is a rounded product and ``mul_add(a, b, c)`` is ``c + a*b``, either with two
  roundings or as one fused multiply-add. They are the only places a product appears, so whether a
  GPU build fuses (ARCHITECTURE.md trap 2) is decided in one place and can be replayed.

Bounds below are CGL's (Chan, Golub & LeVeque 1983, Table 1) leading terms on |S^ - S|/S with
S = sum (x_i - mean)^2, kappa the condition number ||x||_2 / sqrt(S), u the unit roundoff of the
accumulator and h the summation depth of the topology (n for one sequential accumulator, about
log2 n for pairwise trees; bounds.summation_depth).
"""
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


def arithmetic(compute_type, rnd):
    """The conversions and products of one accumulator arithmetic, with two roundings per
    multiply-add (no fusion). ``compute_type`` is float32, float64, Fraction, mpf..."""

    def to_acc(value):
        return rnd(compute_type(value))

    def mul(a, b):
        return rnd(a * b)

    def mul_add(a, b, c):
        return rnd(rnd(a * b) + c)

    return to_acc, mul, mul_add


def rules(to_acc, rnd, mul, mul_add, compile=lambda function: function):
    """The push, merge and finalize functions of every rule for one arithmetic, as a dict, each
    passed through ``compile`` (a target's decorator) as it is defined, so that a rule calling
    another calls the compiled one."""

    def centered_push(count, center, first, second, x):
        # naive (center 0), shifted (center = first element) and the second pass of both two-pass
        # rules (center = the pass-1 mean) are the same accumulation; only finalize differs
        deviation = rnd(x - center)
        return count + 1, rnd(first + deviation), mul_add(deviation, deviation, second)

    def sums_merge(count_a, first_a, second_a, count_b, first_b, second_b):
        return count_a + count_b, rnd(first_a + first_b), rnd(second_a + second_b)

    def welford_push(count, center, mean, m2, x):
        count = count + 1
        delta = rnd(x - mean)
        mean = rnd(mean + rnd(delta / to_acc(count)))
        return count, mean, mul_add(delta, rnd(x - mean), m2)

    def chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
        # empty states (lanes or blocks that received no element) merge exactly, without 0/0
        if count_b == 0:
            return count_a, mean_a, m2_a
        if count_a == 0:
            return count_b, mean_b, m2_b
        count = count_a + count_b
        delta = rnd(mean_b - mean_a)
        weight_b = rnd(to_acc(count_b) / to_acc(count))
        mean = mul_add(delta, weight_b, mean_a)
        m2 = mul_add(mul(delta, delta), mul(to_acc(count_a), weight_b), rnd(m2_a + m2_b))
        return count, mean, m2

    chan_merge = compile(chan_merge)

    def chan_push(count, center, mean, m2, x):
        return chan_merge(count, mean, m2, 1, x, to_acc(0))

    def pass_one_mean(count, first):
        """The mean of the first pass of the two-pass rules: sum(x)/n."""
        return rnd(first / to_acc(count))

    def finalize(algorithm, count, center, first, second, ddof):
        """(mean, variance) of a merged state; the variance divides S by n - ddof, which the
        caller guarantees is positive."""
        if algorithm == NAIVE:
            mean = rnd(first / to_acc(count))
            spread = mul_add(-first, mean, second)
        elif algorithm == SHIFTED or algorithm == CORRECTED_TWO_PASS:
            quotient = rnd(first / to_acc(count))
            mean = rnd(center + quotient)
            spread = mul_add(-first, quotient, second)
        elif algorithm == TWO_PASS:
            mean = center
            spread = second
        else:
            mean = first
            spread = second
        return mean, rnd(spread / to_acc(count - ddof))

    functions = {
        "centered_push": centered_push,
        "sums_merge": sums_merge,
        "welford_push": welford_push,
        "chan_push": chan_push,
        "pass_one_mean": pass_one_mean,
        "finalize": finalize,
    }
    functions = {name: compile(function) for name, function in functions.items()}
    functions["chan_merge"] = chan_merge
    return functions


def push_and_merge(family):
    """Names of the push and merge functions of a family of rules."""
    return {
        CENTERED_SUMS: ("centered_push", "sums_merge"),
        WELFORD_UPDATES: ("welford_push", "chan_merge"),
        CHAN_UPDATES: ("chan_push", "chan_merge"),
    }[family]
