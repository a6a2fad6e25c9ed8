"""The topology, executed as plain Python on numpy scalars: the readable specification that the CPU
and GPU kernels must reproduce bit for bit.

The rules are the same functions as in the kernels (algorithms.py), run uncompiled with the
accumulator's numpy scalar type as the arithmetic: numpy's float16 and ml_dtypes' bfloat16 compute
each operation in float32 and round once, which is the emulation the kernels perform. Slow (about a
microsecond per element): meant for tests and for small studies of reduction orders.
"""
import numpy as np

from . import algorithms, plan, precision, subsets, topology as topologies


def context(family, acc_format):
    """The rules of ``family`` on numpy scalars of the accumulator format (rounding is the scalar
    type's own)."""
    return algorithms.Arithmetic(family, precision.NUMPY_DTYPES[acc_format].type)


def block_states(values, center, topology, ctx):
    """The (counts, firsts, seconds) lists of the block states of one group's values (in group
    order), each block's lanes merged by the lane tree."""
    zero = ctx.to_acc(0)
    block = topology.block_size(len(values))
    states = [], [], []
    for start in range(0, len(values), block):
        counts, firsts, seconds = [0] * topology.lanes, [zero] * topology.lanes, [zero] * topology.lanes
        for j, value in enumerate(values[start:start + block]):
            lane = j % topology.lanes
            counts[lane], firsts[lane], seconds[lane] = ctx.push(counts[lane], center, firsts[lane],
                                                                 seconds[lane], value)
        topologies.merge_lanes(ctx, counts, firsts, seconds, topology.lanes)
        for block_list, state in zip(states, (counts[0], firsts[0], seconds[0])):
            block_list.append(state)
    return states


class ReplayTarget:
    """The pass plan's target (numerics.plan) in plain Python, group after group."""

    def __init__(self, x4, view, rule, topology, acc_format):
        scalar_type = precision.NUMPY_DTYPES[acc_format].type
        self.groups = [[scalar_type(v) for v in x4[k1, :, k2, :].reshape(-1)]
                       for k1 in range(view.kept_outer) for k2 in range(view.kept_inner)]
        self.ctx = context(rule.family, acc_format)
        self.sums = context(algorithms.CENTERED_SUMS, acc_format)
        self.topology = topology
        self.states = None

    def zero_centers(self):
        return [self.ctx.to_acc(0)] * len(self.groups)

    def first_elements(self):
        return [values[0] for values in self.groups]

    def reduce(self, mode, centers):
        ctx = self.sums if mode == plan.PASS_ONE else self.ctx
        self.states = [block_states(values, center, self.topology, ctx)
                       for values, center in zip(self.groups, centers)]

    def both_passes(self, centers):
        return None

    def merged(self, ctx):
        for counts, firsts, seconds in self.states:
            topologies.merge_blocks(ctx, counts, firsts, seconds, len(counts))
            yield counts[0], firsts[0], seconds[0]

    def pass_one_means(self, centers):
        return [algorithms.pass_one_mean(self.sums, count, first)
                for count, first, _ in self.merged(self.sums)]

    def finalize(self, algorithm, centers, ddof):
        results = [algorithms.finalize(self.ctx, algorithm, count, center, first, second, ddof)
                   for (count, first, second), center in zip(self.merged(self.ctx), centers)]
        return [mean for mean, _ in results], [variance for _, variance in results]


def moments(x, norm=None, *, groups=None, layout="NCHW", algorithm="welford", ddof=0, acc_dtype=None,
            topology=None):
    """numerics.moments on the CPU, re-executed element by element in plain Python. Returns
    ``(mean, var)`` arrays in the accumulator dtype (no clamp, no warnings)."""
    x = np.asarray(x)
    input_format = precision.format_name(x.dtype, "x")
    acc_format = (precision.format_name(acc_dtype, "acc_dtype") if acc_dtype is not None
                  else plan.default_acc_format(input_format))
    rule = algorithms.ALGORITHMS[algorithm]
    view = subsets.canonical_view(x.shape, norm, groups, layout)
    x4 = precision.convert(np.ascontiguousarray(x), acc_format).reshape(view.view_shape)
    target = ReplayTarget(x4, view, rule, topologies.resolve(topology), acc_format)
    with np.errstate(all="ignore"):
        means, variances = plan.run(rule, target, ddof)
    dtype = precision.NUMPY_DTYPES[acc_format]
    return (np.array(means, dtype=dtype).reshape(view.stats_shape),
            np.array(variances, dtype=dtype).reshape(view.stats_shape))
