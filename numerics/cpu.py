"""CPU drivers: numba kernels that walk the canonical view in the order the topology defines.

Work is cut into fixed units (one block of one group, or one block of rows for every group of a
strided layout) whose states merge in the topology's fixed trees, so the answer cannot depend on
how many threads run the units (ARCHITECTURE.md trap 4); today one thread runs them. Two kernels realise the same order:

- ``segments``: any layout. A group is a sequence of contiguous runs of ``reduced_inner`` elements;
  inside each run, full chunks of ``lanes`` elements update the lanes side by side (the SIMD path).
- ``rows``: layouts whose groups interleave in memory (channels last: ``reduced_inner`` divides
  ``lanes``). One pass over a block of rows updates the lanes of every group at once, so the loads
  stay contiguous; lane ``((p - p0) mod (lanes / Q)) * Q + q`` is the lane that the topology gives
  element ``(p, q)``, so the two kernels agree bit for bit.
"""
import functools

import numpy as np

from . import algorithms, precision, targets

SEGMENTS, ROWS = "segments", "rows"


def kernel_for(view, topology):
    """Which kernel walks this view for this topology."""
    return ROWS if topology.lanes % view.reduced_inner == 0 else SEGMENTS


@functools.lru_cache(maxsize=None)
def kernels(family, input_format, acc_format):
    """The compiled drivers of one family of rules for one (input, accumulator) format pair."""
    scalar = targets.cpu_scalar_functions(input_format, acc_format)
    push_name, merge_name = algorithms.push_and_merge(family)
    push = scalar[push_name]
    load = scalar["load"]
    to_acc = scalar["to_acc"]
    merge_lanes = scalar[f"merge_lanes_{family}"]
    merge_blocks = scalar[f"merge_blocks_{family}"]
    compute_type = compute_type_of(acc_format)

    def segments_block_state(x4, k1, k2, start, stop, lanes, center, counts, firsts, seconds):
        reduced_inner = x4.shape[3]
        zero = to_acc(0)
        for lane in range(lanes):
            counts[lane] = 0
            firsts[lane] = zero
            seconds[lane] = zero
        i = start
        while i < stop:
            p = i // reduced_inner
            q = i - p * reduced_inner
            run = min(reduced_inner - q, stop - i)
            row = x4[k1, p, k2, q:q + run]
            lane = (i - start) % lanes
            j = 0
            while j < run and lane != 0:
                counts[lane], firsts[lane], seconds[lane] = push(counts[lane], center, firsts[lane],
                                                                 seconds[lane], load(row[j]))
                lane = lane + 1 if lane + 1 < lanes else 0
                j += 1
            while j + lanes <= run:
                for lane in range(lanes):
                    counts[lane], firsts[lane], seconds[lane] = push(
                        counts[lane], center, firsts[lane], seconds[lane], load(row[j + lane]))
                j += lanes
            lane = 0
            while j < run:
                counts[lane], firsts[lane], seconds[lane] = push(counts[lane], center, firsts[lane],
                                                                 seconds[lane], load(row[j]))
                lane += 1
                j += 1
            i += run
        merge_lanes(counts, firsts, seconds, lanes)
        return counts[0], firsts[0], seconds[0]

    segments_block_state = targets.cpu_inline(segments_block_state)

    def reduce_segments(x4, centers, block, lanes, out_counts, out_firsts, out_seconds):
        kept_outer, reduced_outer, kept_inner, reduced_inner = x4.shape
        groups = kept_outer * kept_inner
        size = reduced_outer * reduced_inner
        blocks = (size + block - 1) // block
        block_counts = np.zeros((groups, blocks), np.int64)
        block_firsts = np.empty((groups, blocks), compute_type)
        block_seconds = np.empty((groups, blocks), compute_type)
        for unit in range(groups * blocks):
            group = unit // blocks
            b = unit - group * blocks
            k1 = group // kept_inner
            k2 = group - k1 * kept_inner
            counts = np.empty(lanes, np.int64)
            firsts = np.empty(lanes, compute_type)
            seconds = np.empty(lanes, compute_type)
            start = b * block
            stop = min(start + block, size)
            (block_counts[group, b], block_firsts[group, b],
             block_seconds[group, b]) = segments_block_state(x4, k1, k2, start, stop, lanes,
                                                             centers[k1, k2], counts, firsts, seconds)
        for group in range(groups):
            merge_blocks(block_counts[group], block_firsts[group], block_seconds[group], blocks)
            out_counts[group] = block_counts[group, 0]
            out_firsts[group] = block_firsts[group, 0]
            out_seconds[group] = block_seconds[group, 0]

    def reduce_rows(x3, centers, reduced_inner, block, lanes, out_counts, out_firsts, out_seconds):
        kept_outer, reduced_outer, width = x3.shape
        kept_inner = width // reduced_inner
        block_rows = block // reduced_inner
        lane_rows = lanes // reduced_inner
        blocks = (reduced_outer + block_rows - 1) // block_rows
        block_counts = np.zeros((kept_outer, kept_inner, blocks), np.int64)
        block_firsts = np.empty((kept_outer, kept_inner, blocks), compute_type)
        block_seconds = np.empty((kept_outer, kept_inner, blocks), compute_type)
        zero = to_acc(0)
        for unit in range(kept_outer * blocks):
            k1 = unit // blocks
            b = unit - k1 * blocks
            lane_counts = np.zeros((lane_rows, width), np.int64)
            lane_firsts = np.full((lane_rows, width), zero, compute_type)
            lane_seconds = np.full((lane_rows, width), zero, compute_type)
            row_centers = np.empty(width, compute_type)
            for m in range(width):
                row_centers[m] = centers[k1, m // reduced_inner]
            first_row = b * block_rows
            for p in range(first_row, min(first_row + block_rows, reduced_outer)):
                row = x3[k1, p]
                r = (p - first_row) % lane_rows
                counts = lane_counts[r]
                firsts = lane_firsts[r]
                seconds = lane_seconds[r]
                for m in range(width):
                    counts[m], firsts[m], seconds[m] = push(counts[m], row_centers[m], firsts[m],
                                                            seconds[m], load(row[m]))
            counts = np.empty(lanes, np.int64)
            firsts = np.empty(lanes, compute_type)
            seconds = np.empty(lanes, compute_type)
            for k2 in range(kept_inner):
                for r in range(lane_rows):
                    for q in range(reduced_inner):
                        lane = r * reduced_inner + q
                        m = k2 * reduced_inner + q
                        counts[lane] = lane_counts[r, m]
                        firsts[lane] = lane_firsts[r, m]
                        seconds[lane] = lane_seconds[r, m]
                merge_lanes(counts, firsts, seconds, lanes)
                block_counts[k1, k2, b] = counts[0]
                block_firsts[k1, k2, b] = firsts[0]
                block_seconds[k1, k2, b] = seconds[0]
        for group in range(kept_outer * kept_inner):
            k1 = group // kept_inner
            k2 = group - k1 * kept_inner
            merge_blocks(block_counts[k1, k2], block_firsts[k1, k2], block_seconds[k1, k2], blocks)
            out_counts[group] = block_counts[k1, k2, 0]
            out_firsts[group] = block_firsts[k1, k2, 0]
            out_seconds[group] = block_seconds[k1, k2, 0]

    return {SEGMENTS: targets.cpu_kernel(reduce_segments), ROWS: targets.cpu_kernel(reduce_rows)}


def compute_type_of(acc_format):
    return precision.COMPUTE_DTYPES[acc_format].type


@functools.lru_cache(maxsize=None)
def finishers(input_format, acc_format):
    """Serial helpers around the reductions: the shift of each group, the pass-one mean, finalize."""
    scalar = targets.cpu_scalar_functions(input_format, acc_format)
    load = scalar["load"]
    pass_one_mean = scalar["pass_one_mean"]
    finalize = scalar["finalize"]

    def first_elements(x4, centers):
        for k1 in range(x4.shape[0]):
            for k2 in range(x4.shape[2]):
                centers[k1, k2] = load(x4[k1, 0, k2, 0])

    def pass_one_means(counts, firsts, centers):
        flat = centers.reshape(-1)
        for group in range(counts.shape[0]):
            flat[group] = pass_one_mean(counts[group], firsts[group])

    def finalize_all(algorithm, counts, centers, firsts, seconds, ddof, means, variances):
        flat_centers = centers.reshape(-1)
        for group in range(counts.shape[0]):
            # n - ddof <= 0: the mean is still defined; the caller sets the variance to NaN
            usable_ddof = ddof if counts[group] - ddof > 0 else 0
            means[group], variances[group] = finalize(algorithm, counts[group], flat_centers[group],
                                                      firsts[group], seconds[group], usable_ddof)

    return (targets.cpu_serial(first_elements), targets.cpu_serial(pass_one_means),
            targets.cpu_serial(finalize_all))


def moments(x4, view, algorithm, topology, ddof, input_format, acc_format):
    """(means, variances, kernel name) of every group of the canonical view ``x4`` (a C-contiguous
    array of shape view.view_shape, 16-bit formats as uint16 bit patterns), in the compute type."""
    rule = algorithms.ALGORITHMS[algorithm]
    reductions = kernels(rule.family, input_format, acc_format)
    first_elements, pass_one_means, finalize_all = finishers(input_format, acc_format)
    compute_type = compute_type_of(acc_format)
    groups = view.group_count
    block = topology.block_size(view.group_size)
    kernel = kernel_for(view, topology)

    def reduce(centers):
        counts = np.empty(groups, np.int64)
        firsts = np.empty(groups, compute_type)
        seconds = np.empty(groups, compute_type)
        if kernel == ROWS:
            x3 = x4.reshape(view.kept_outer, view.reduced_outer, view.kept_inner * view.reduced_inner)
            reductions[ROWS](x3, centers, view.reduced_inner, block, topology.lanes,
                             counts, firsts, seconds)
        else:
            reductions[SEGMENTS](x4, centers, block, topology.lanes, counts, firsts, seconds)
        return counts, firsts, seconds

    centers = np.zeros((view.kept_outer, view.kept_inner), compute_type)
    if rule.code == algorithms.SHIFTED:
        first_elements(x4, centers)
    elif rule.passes == 2:
        counts, firsts, _ = reduce(centers)
        pass_one_means(counts, firsts, centers)
    counts, firsts, seconds = reduce(centers)
    means = np.empty(groups, compute_type)
    variances = np.empty(groups, compute_type)
    finalize_all(rule.code, counts, centers, firsts, seconds, ddof, means, variances)
    return means, variances, kernel
