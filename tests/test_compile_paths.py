"""A kernel compiles only the path its geometry takes (docs/architecture.md 2.7): the segments
kernel's small groups side by side or block by block, with or without gathering short runs. The
choice reaches numba as None arguments and None buffers, whose branches numba removes before it
types a function; if that ever stopped (a numba upgrade, an argument that is no longer None), a
first call would compile every path again, silently. Checked in a fresh process with an empty
kernel cache, at LLVM level 0 (NUMBA_OPT, a documented numba setting; which functions compile does
not depend on it), by the signatures numba compiled for the block path's functions."""
import json
import os
import subprocess
import sys
import textwrap

CALLS = textwrap.dedent(r"""
    import json
    import numpy as np
    import numerics
    from numerics.cpu import segments

    def compiled():
        return {kernel.py_func.__name__: len(kernel.signatures)
                for kernel in (segments.segment_units, segments.block_lanes,
                               segments.gather_elements)}

    steps = {}
    # 49 elements a group: groups of one small block, side by side in the vector lanes
    numerics.moments(np.ones((8, 16, 7, 7), np.float32), "instance")
    steps["small_groups"] = compiled()
    # runs of 256 elements, whole chunks of lanes: block by block, nothing gathered
    numerics.moments(np.ones((2, 8, 16, 16), np.float32), "group", groups=2)
    steps["blocks"] = compiled()
    # groups of 8 runs of 49 elements, which end inside chunks of lanes: gathered
    numerics.moments(np.ones((8, 4, 7, 7), np.float32), "batch")
    steps["gathering"] = compiled()
    print(json.dumps(steps))
""")


def test_each_geometry_compiles_only_its_own_path(tmp_path):
    environment = dict(os.environ, NUMERICS_CACHE_DIR=str(tmp_path), NUMBA_OPT="0")
    completed = subprocess.run([sys.executable, "-c", CALLS], env=environment,
                               capture_output=True, text=True, check=True)
    steps = json.loads(completed.stdout.strip().splitlines()[-1])
    assert steps["small_groups"] == {"segment_units": 1, "block_lanes": 0, "gather_elements": 0}
    assert steps["blocks"] == {"segment_units": 2, "block_lanes": 1, "gather_elements": 0}
    assert steps["gathering"] == {"segment_units": 3, "block_lanes": 2, "gather_elements": 1}
