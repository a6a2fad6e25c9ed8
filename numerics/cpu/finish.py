"""Serial kernels around the unit kernels: the shift of each group, and each group's unit states
merged by the block tree, then turned into the pass-one mean or finalized."""
from .. import algorithms, cache
from ..topology import merge_blocks


@cache.cached()
def first_elements(ctx, x4, centers):
    for k1 in range(x4.shape[0]):
        for k2 in range(x4.shape[2]):
            centers[k1, k2] = ctx.load(x4[k1, 0, k2, 0])


@cache.cached()
def pass_one_means(ctx, blocks, unit_counts, unit_firsts, unit_seconds, centers):
    flat = centers.reshape(-1)
    for group in range(flat.shape[0]):
        unit = group * blocks
        if blocks > 1:  # see finalize_all
            merge_blocks(ctx, unit_counts[unit:], unit_firsts[unit:], unit_seconds[unit:], blocks)
        flat[group] = algorithms.pass_one_mean(ctx, unit_counts[unit], unit_firsts[unit])


@cache.cached()
def finalize_all(ctx, algorithm, blocks, unit_counts, unit_firsts, unit_seconds, centers,
                 means, variances, ddof):
    flat_centers = centers.reshape(-1)
    for group in range(means.shape[0]):
        unit = group * blocks
        # a group of one block has nothing to merge, and the call alone (with its three array
        # views) cost 25-40 ns a group: the whole finalize of many small groups
        # (docs/architecture.md, section 2.8)
        if blocks > 1:
            merge_blocks(ctx, unit_counts[unit:], unit_firsts[unit:], unit_seconds[unit:], blocks)
        means[group], variances[group] = algorithms.finalize(ctx, algorithm, unit_counts[unit],
                                                             flat_centers[group],
                                                             unit_firsts[unit],
                                                             unit_seconds[unit], ddof)
