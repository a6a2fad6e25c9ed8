"""A kernel compiles only the path its geometry takes, and nothing that could be lowered in its
caller (docs/architecture.md 2.7). The segments kernel's small groups side by side or block by
block, with or without gathering short runs, with or without parts of chunks of lanes; the rows
kernel's rows that are or are not whole tiles, batches that are or are not one vector per lane
row. The choice reaches numba as None arguments and None buffers, whose branches numba removes
before it types a function; if that ever stopped (a numba upgrade, an argument that is no longer
None), a first call would compile every path again, silently. And the context's methods, the
vector operators and the integer min and max are typed and lowered in their caller: an overload
in their place would compile a function of its own per signature, as silently. Checked in a fresh
process with an empty kernel cache, at LLVM level 0 (NUMBA_OPT, a documented numba setting; which
functions compile does not depend on it), by the functions numba's compile events name."""
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numerics.cpu import pushes_parts_of_chunks
from numerics.cpu.scratch import GATHERED_CHUNKS, GATHERED_RUN_CHUNKS

CALLS = textwrap.dedent(r"""
    import json
    import numpy as np
    from numba.core import event
    import numerics

    class Compiled(event.Listener):
        names = []

        def on_start(self, compile_event):
            pass

        def on_end(self, compile_event):
            function = compile_event.data["dispatcher"].py_func
            self.names.append(f"{function.__module__}:{function.__qualname__}")

    steps = {}
    calls = {
        # 49 elements a group: groups of one small block, side by side in the vector lanes
        "small_groups": lambda: numerics.moments(np.ones((8, 16, 7, 7), np.float32), "instance"),
        # runs of 256 elements, whole chunks of lanes: block by block, nothing gathered
        "blocks": lambda: numerics.moments(np.ones((2, 8, 16, 16), np.float32), "group",
                                           groups=2),
        # groups of 8 runs of 49 elements, which end inside chunks of lanes: gathered, and the
        # group (392 elements) ends inside a chunk
        "gathering": lambda: numerics.moments(np.ones((8, 4, 7, 7), np.float32), "batch"),
        # channels last, 64 channels: whole tiles, one column per group
        "rows": lambda: numerics.moments(np.ones((8, 4, 4, 64), np.float32), "batch",
                                         layout="NHWC"),
        # channels last, 12 channels: neither
        "ragged_rows": lambda: numerics.moments(np.ones((8, 4, 4, 12), np.float32), "batch",
                                                 layout="NHWC"),
    }
    for step, call in calls.items():
        Compiled.names = []
        with event.install_listener("numba:compile", Compiled()):
            call()
        steps[step] = Compiled.names
    print(json.dumps(steps))
""")

#: the functions of each optional path, by the name their compile event gives
PARTS_OF_CHUNKS = "numerics.cpu.segments:_push_lanes.<locals>.run"
GATHERING = "numerics.cpu.segments:gather_elements"
BLOCKS = "numerics.cpu.segments:block_lanes"
SMALL_GROUPS = "numerics.cpu.segments:_small_batch.<locals>.run"
SINGLE_STATES = "numerics.cpu.rows:stream_states_singly"
SINGLE_GATHER = "numerics.cpu.rows:gather_groups_singly"


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """The functions each first call compiled, in order (a name twice: two signatures)."""
    environment = dict(os.environ, NUMERICS_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
                       NUMBA_OPT="0")
    completed = subprocess.run([sys.executable, "-c", CALLS], env=environment,
                               capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_each_geometry_compiles_only_its_own_path(steps):
    compiled = {step: set(names) for step, names in steps.items()}
    assert SMALL_GROUPS in compiled["small_groups"]
    assert not {BLOCKS, PARTS_OF_CHUNKS, GATHERING} & compiled["small_groups"]
    assert BLOCKS in compiled["blocks"]
    assert not {PARTS_OF_CHUNKS, GATHERING, SMALL_GROUPS} & compiled["blocks"]
    # the block path's functions compile again: the gathering kernel is another specialization
    assert {BLOCKS, PARTS_OF_CHUNKS, GATHERING} <= compiled["gathering"]
    assert not {SINGLE_STATES, SINGLE_GATHER} & compiled["rows"]
    assert {SINGLE_STATES, SINGLE_GATHER} <= compiled["ragged_rows"]
    # one streaming loop, of the vectors in flight: a partial sweep would compile a second, of
    # one vector
    assert steps["blocks"].count("numerics.cpu.streaming:_stream_vectors.<locals>.run") == 1


def test_methods_operators_and_integer_choices_compile_no_function_of_their_own(steps):
    compiled = set().union(*steps.values())
    assert not [name for name in compiled if name.startswith(("numerics.targets:",
                                                              "numerics.simd:",
                                                              "numerics.cpu.scratch:", "numba."))]
    # control: the family's rules are compiled functions, and the events name them
    assert "numerics.algorithms:welford_push" in compiled


def pushed_parts_of_chunks(reduced_outer, reduced_inner, lanes, block, gathers):
    """Whether segments.block_lanes, walked here step by step over one group, would push part of
    a chunk of lanes (its push_lanes calls)."""
    size = reduced_outer * reduced_inner
    gathered_length = GATHERED_CHUNKS * lanes if gathers else 0
    for start in range(0, size, block):
        stop, i = min(start + block, size), start
        while i < stop:
            if gathered_length and stop - start > reduced_inner:
                j, end = 0, min(stop - i, gathered_length)
            else:
                j = i % reduced_inner
                end = j + min(reduced_inner - j, stop - i)
            if (i - start) % lanes or (end - j) % lanes:
                return True
            i += end - j
    return False


@settings(max_examples=400, deadline=None)
@given(reduced_outer=st.integers(1, 40), reduced_inner=st.integers(1, 300),
       lanes=st.sampled_from([1, 8, 32, 64]), chunks_per_block=st.integers(0, 12),
       extra=st.sampled_from([0, 0, 0, 3]))
def test_a_geometry_said_to_push_no_parts_of_chunks_never_does(reduced_outer, reduced_inner,
                                                               lanes, chunks_per_block, extra):
    """The None that prunes push_lanes is sound: where numerics.cpu.pushes_parts_of_chunks says
    no part of a chunk is pushed, the kernel's walk pushes none (elements would be dropped)."""
    size = reduced_outer * reduced_inner
    block = chunks_per_block * lanes + extra if chunks_per_block else size
    gathers = reduced_inner % lanes != 0 and reduced_inner < GATHERED_RUN_CHUNKS * lanes
    view = SimpleNamespace(group_size=size, reduced_inner=reduced_inner,
                           reduced_outer=reduced_outer)
    predicted = pushes_parts_of_chunks(view, lanes, block, -(-size // block), gathers)
    if not predicted:
        assert not pushed_parts_of_chunks(reduced_outer, reduced_inner, lanes, block, gathers)


def test_batchnorm_over_28x28_planes_pushes_no_parts_of_chunks():
    """Exact where it matters: 32 images of 28x28 (runs of 784, blocks of 8192 gathered, a last
    block of 512 read in place within one run)."""
    view = SimpleNamespace(group_size=32 * 784, reduced_inner=784, reduced_outer=32)
    assert not pushes_parts_of_chunks(view, 64, 8192, 4, True)
    assert not pushed_parts_of_chunks(32, 784, 64, 8192, True)
    assert pushed_parts_of_chunks(3, 784, 64, 8192, True)
    assert pushes_parts_of_chunks(SimpleNamespace(group_size=3 * 784, reduced_inner=784,
                                                  reduced_outer=3), 64, 8192, 1, True)
