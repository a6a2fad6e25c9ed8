"""Serial kernels around the unit kernels: the shift of each group, and each group's unit states
merged by the block tree, then turned into the pass-one mean or finalized.

``block_tree`` is True where groups have several blocks and None where each group is one block:
numba removes the branch on a None argument before it types the function, so a kernel of
one-block groups compiles no block tree (a quarter of a second of a first call's compilation,
docs/architecture.md 2.7). ``pass_one_means`` and ``finalize_all`` take the centers flat, group
by group (the caller passes a view), since numba's ``reshape`` would compile a function of its own
(docs/architecture.md 2.7); ``first_elements`` fills them as (kept_outer, kept_inner)."""
from .. import algorithms, cache
from ..topology import merge_blocks


@cache.cached()
def first_elements(ctx, x4, centers):
    for k1 in range(x4.shape[0]):
        for k2 in range(x4.shape[2]):
            centers[k1, k2] = ctx.load(x4[k1, 0, k2, 0])


@cache.cached()
def pass_one_means(ctx, blocks, block_tree, unit_counts, unit_firsts, unit_seconds, centers):
    for group in range(centers.shape[0]):
        unit = group * blocks
        if block_tree is not None:
            merge_blocks(ctx, unit_counts[unit:], unit_firsts[unit:], unit_seconds[unit:], blocks)
        centers[group] = algorithms.pass_one_mean(ctx, unit_counts[unit], unit_firsts[unit])


@cache.cached()
def finalize_all(ctx, algorithm, blocks, block_tree, unit_counts, unit_firsts, unit_seconds,
                 centers, means, variances, ddof):
    for group in range(means.shape[0]):
        unit = group * blocks
        if block_tree is not None:
            merge_blocks(ctx, unit_counts[unit:], unit_firsts[unit:], unit_seconds[unit:], blocks)
        means[group], variances[group] = algorithms.finalize(ctx, algorithm, unit_counts[unit],
                                                             centers[group],
                                                             unit_firsts[unit],
                                                             unit_seconds[unit], ddof)
