"""The compiled CPU kernels reproduce, bit for bit, the plain-Python replay of the same scalar
functions on numpy scalars (numerics.replay), for every rule, accumulator and topology."""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, strategies as st

import numerics
from numerics import replay
from tests.helpers import assert_bitwise_equal

TOPOLOGIES = [numerics.TOPOLOGIES["sequential"], numerics.TOPOLOGIES["pairwise"],
              numerics.Topology(4, 8), numerics.Topology(2, 0), numerics.Topology(64, 128),
              numerics.TOPOLOGIES["blocked"]]
SUBSETS = [("batch", None, "NCHW"), ("batch", None, "NHWC"), ("group", 2, "NHWC"),
           ("group", 4, "NCHW"), ("layer", None, "NCHW"), ("instance", None, "NHWC")]


#: shapes and the subsets run on them. (3, 8, 5, 4): runs of 20 elements inside a chunk of lanes
#: (gathered into whole chunks); 4 channels last, one float64 vector per row. (3, 8, 7, 16): runs
#: of 112, chunks with a head and a tail; 16 channels last, rows of whole float32 vectors (tiles
#: across lane rows) and GroupNorm's 8-column groups. (2, 5, 7, 3): 3 channels last, lane rows
#: whose states end inside a vector. (90, 2, 7, 7): BatchNorm's groups of 90 runs of 49, gathered
#: in two parts (4096 elements, then the rest) in the default topology's blocks
CASES = [((3, 8, 5, 4), SUBSETS), ((3, 8, 7, 16), SUBSETS),
         ((2, 5, 7, 3), [("batch", None, "NHWC"), ("instance", None, "NHWC")]),
         ((90, 2, 7, 7), [("batch", None, "NCHW")])]


@pytest.mark.parametrize("acc_dtype", numerics.FORMATS)
@pytest.mark.parametrize("algorithm", list(numerics.ALGORITHMS))
@pytest.mark.parametrize("shape, subsets", CASES)
# float16 sums of squares of the larger groups overflow: the kernels must agree on those too
@pytest.mark.filterwarnings("ignore:the accumulator overflowed")
def test_every_topology_matches_the_replay_bit_for_bit(shape, subsets, algorithm, acc_dtype):
    x = np.random.default_rng(7).normal(20.0, 1.5, shape).astype(np.float32)
    for topology in TOPOLOGIES:
        for norm, groups, layout in subsets:
            mean, var = numerics.moments(x, norm, groups=groups, layout=layout, algorithm=algorithm,
                                         acc_dtype=acc_dtype, topology=topology)
            replay_mean, replay_var = replay.moments(x, norm, groups=groups, layout=layout,
                                                     algorithm=algorithm, acc_dtype=acc_dtype,
                                                     topology=topology)
            assert_bitwise_equal(mean, replay_mean)
            assert_bitwise_equal(var, replay_var)


FORMATS_BY_NAME = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
                   "float64": np.float64}


@given(data=st.data(),
       input_format=st.sampled_from(numerics.FORMATS),
       acc_format=st.sampled_from(numerics.FORMATS),
       algorithm=st.sampled_from(list(numerics.ALGORITHMS)),
       lanes=st.sampled_from([1, 2, 8, 32, 64]),
       blocks_of_lanes=st.integers(0, 3),
       ddof=st.integers(0, 1))
def test_random_inputs_and_orders_match_the_replay(data, input_format, acc_format, algorithm, lanes,
                                                   blocks_of_lanes, ddof):
    length = data.draw(st.integers(1, 150), label="length")
    center = data.draw(st.sampled_from([0.0, 1.0, -300.0, 4096.5, 1e6]), label="center")
    spread = data.draw(st.sampled_from([1e-3, 1.0, 50.0]), label="spread")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    x = (center + spread * np.random.default_rng(seed).standard_normal(length))
    x = x.astype(FORMATS_BY_NAME[input_format])
    topology = numerics.Topology(lanes, lanes * blocks_of_lanes)
    with np.errstate(all="ignore"):
        mean, var = numerics.moments(x, algorithm=algorithm, acc_dtype=acc_format, topology=topology,
                                     ddof=ddof) if length > ddof else (None, None)
    if mean is None:
        return
    replay_mean, replay_var = replay.moments(x, algorithm=algorithm, acc_dtype=acc_format,
                                             topology=topology, ddof=ddof)
    assert_bitwise_equal(mean, replay_mean)
    assert_bitwise_equal(var, replay_var)
