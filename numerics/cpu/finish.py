"""Serial kernels around the unit kernels: the shift of each group, the block trees, the pass-one
means and finalize."""
from .. import algorithms, cache
from ..topology import merge_blocks


@cache.cached()
def first_elements(ctx, x4, centers):
    for k1 in range(x4.shape[0]):
        for k2 in range(x4.shape[2]):
            centers[k1, k2] = ctx.load(x4[k1, 0, k2, 0])


@cache.cached()
def merge_groups(ctx, blocks, unit_counts, unit_firsts, unit_seconds):
    """Each group's block states merged by the block tree, in place (into its block 0)."""
    for first_unit in range(0, unit_counts.shape[0], blocks):
        merge_blocks(ctx, unit_counts[first_unit:], unit_firsts[first_unit:],
                     unit_seconds[first_unit:], blocks)


@cache.cached()
def pass_one_means(ctx, blocks, unit_counts, unit_firsts, centers):
    flat = centers.reshape(-1)
    for group in range(flat.shape[0]):
        flat[group] = algorithms.pass_one_mean(ctx, unit_counts[group * blocks],
                                               unit_firsts[group * blocks])


@cache.cached()
def finalize_all(ctx, algorithm, blocks, unit_counts, centers, unit_firsts, unit_seconds, ddof,
                 means, variances):
    flat_centers = centers.reshape(-1)
    for group in range(means.shape[0]):
        unit = group * blocks
        # n - ddof <= 0: the mean is still defined; the caller sets the variance to NaN
        usable_ddof = ddof if unit_counts[unit] - ddof > 0 else 0
        means[group], variances[group] = algorithms.finalize(ctx, algorithm, unit_counts[unit],
                                                             flat_centers[group],
                                                             unit_firsts[unit],
                                                             unit_seconds[unit], usable_ddof)
