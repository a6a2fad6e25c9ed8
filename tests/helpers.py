"""Small helpers shared by the CPU tests."""
import numpy as np


def bit_pattern(values):
    """The raw bits of a float array (so -0.0 != 0.0 and NaN payloads compare)."""
    values = np.ascontiguousarray(values)
    return values.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[values.dtype.itemsize])


def assert_bitwise_equal(actual, expected):
    np.testing.assert_array_equal(bit_pattern(actual), bit_pattern(expected))
