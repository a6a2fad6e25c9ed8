"""Small helpers shared by the CPU tests."""
import math

import numpy as np


def bit_pattern(values):
    """The raw bits of a float array (so -0.0 != 0.0 and NaN payloads compare)."""
    values = np.ascontiguousarray(values)
    return values.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[values.dtype.itemsize])


def assert_bitwise_equal(actual, expected):
    np.testing.assert_array_equal(bit_pattern(actual), bit_pattern(expected))


def explicit_groups(shape, norm, groups, layout):
    """{statistics index: flat positions of the group's elements}, from each layer's definition
    on an (N, C, *spatial) or (N, *spatial, C) tensor, independently of subsets.canonical_view."""
    positions = np.arange(math.prod(shape)).reshape(shape)
    if layout == "NHWC":
        positions = np.moveaxis(positions, -1, 1)
    batch, channels = positions.shape[:2]
    if norm == "batch":
        return {(channel,): positions[:, channel] for channel in range(channels)}
    if norm == "layer":
        return {(sample,): positions[sample] for sample in range(batch)}
    if norm == "instance":
        return {(sample, channel): positions[sample, channel]
                for sample in range(batch) for channel in range(channels)}
    width = channels // groups
    return {(sample, group): positions[sample, group * width:(group + 1) * width]
            for sample in range(batch) for group in range(groups)}
