"""The topology, executed as plain Python on numpy scalars: the readable specification that the CPU
and GPU kernels must reproduce bit for bit.

The rules are the same functions as in the kernels (algorithms.py), run uncompiled with the
accumulator's numpy scalar type as the arithmetic: numpy's float16 and ml_dtypes' bfloat16 compute
each operation in float32 and round once, which is the emulation the kernels perform. Slow (about a
microsecond per element): meant for tests and for small studies of reduction orders.
"""
import numpy as np

from . import algorithms, precision, subsets, topology as topologies


def context(family, acc_format):
    """The rules of ``family`` on numpy scalars of the accumulator format (rounding is the scalar
    type's own)."""
    return algorithms.Arithmetic(family, precision.NUMPY_DTYPES[acc_format].type)


def group_state(values, center, topology, ctx):
    """The merged (count, first, second) state of one group's values (in group order)."""
    zero = ctx.to_acc(0)
    block = topology.block_size(len(values))
    block_states = [[], [], []]
    for start in range(0, len(values), block):
        counts, firsts, seconds = [0] * topology.lanes, [zero] * topology.lanes, [zero] * topology.lanes
        for j, value in enumerate(values[start:start + block]):
            lane = j % topology.lanes
            counts[lane], firsts[lane], seconds[lane] = ctx.push(counts[lane], center, firsts[lane],
                                                                 seconds[lane], value)
        topologies.merge_lanes(ctx, counts, firsts, seconds, topology.lanes)
        for states, state in zip(block_states, (counts[0], firsts[0], seconds[0])):
            states.append(state)
    topologies.merge_blocks(ctx, *block_states, len(block_states[0]))
    return block_states[0][0], block_states[1][0], block_states[2][0]


def moments(x, norm=None, *, groups=None, layout="NCHW", algorithm="welford", ddof=0, acc_dtype=None,
            topology=None):
    """numerics.moments on the CPU, re-executed element by element in plain Python. Returns
    ``(mean, var)`` arrays in the accumulator dtype (no clamp, no warnings)."""
    x = np.asarray(x)
    input_format = precision.format_name(x.dtype, "x")
    acc_format = (precision.format_name(acc_dtype, "acc_dtype") if acc_dtype is not None
                  else "float64" if input_format == "float64" else "float32")
    resolved = topologies.resolve(topology)
    rule = algorithms.ALGORITHMS[algorithm]
    view = subsets.canonical_view(x.shape, norm, groups, layout)
    ctx = context(rule.family, acc_format)
    sums = context(algorithms.CENTERED_SUMS, acc_format)
    scalar_type = precision.NUMPY_DTYPES[acc_format].type
    x4 = precision.convert(np.ascontiguousarray(x), acc_format).reshape(view.view_shape)
    means, variances = [], []
    with np.errstate(all="ignore"):
        for k1 in range(view.kept_outer):
            for k2 in range(view.kept_inner):
                values = [scalar_type(v) for v in x4[k1, :, k2, :].reshape(-1)]
                center = ctx.to_acc(0)
                if rule.code == algorithms.SHIFTED:
                    center = values[0]
                elif rule.passes == 2:
                    count, first, _ = group_state(values, center, resolved, sums)
                    center = algorithms.pass_one_mean(ctx, count, first)
                count, first, second = group_state(values, center, resolved, ctx)
                usable_ddof = ddof if count - ddof > 0 else 0
                mean, var = algorithms.finalize(ctx, rule.code, count, center, first, second,
                                                usable_ddof)
                means.append(mean)
                variances.append(var if count - ddof > 0 else scalar_type(np.nan))
    dtype = precision.NUMPY_DTYPES[acc_format]
    return (np.array(means, dtype=dtype).reshape(view.stats_shape),
            np.array(variances, dtype=dtype).reshape(view.stats_shape))
