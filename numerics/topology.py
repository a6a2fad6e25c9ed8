"""Reduction topologies: the order in which one group's additions happen.

Topology changes rounding, so it is an explicit, recorded parameter (docs/architecture.md
section 1).
One definition serves the CPU kernels, the GPU kernels and the plain-Python replay:

1. the group's n elements, counted over (reduced_outer, reduced_inner) of the canonical view, are
   cut into blocks of ``block`` consecutive elements (``block = 0``: the whole group is one block);
2. inside a block, element j goes to lane ``j mod lanes``; each lane pushes its elements in order
   into its own state (a GPU thread's strided loop is exactly this, with lanes = threads per block);
3. the lanes of a block merge by a halving tree: for offset = lanes/2, lanes/4, ..., 1, lane t
   takes ``merge(lane t, lane t + offset)`` for t < offset (a warp shuffle-down). Above 32 lanes,
   each warp of 32 lanes merges that way first, then the warp results merge by the same halving
   tree, as a GPU block reduction does;
4. the block states merge by a pairwise tree over adjacent blocks: with step = 1, 2, 4, ...,
   block b takes ``merge(block b, block b + step)`` for b a multiple of 2*step.

Named presets cover the textbook order and the fast orders; any (lanes, block) pair is allowed.
"""
from dataclasses import dataclass, asdict

WARP_SIZE = 32


@dataclass(frozen=True)
class Topology:
    lanes: int = 1
    block: int = 0
    name: str = "custom"

    def __post_init__(self):
        for field, value in (("lanes", self.lanes), ("block", self.block)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"topology {field} must be an integer, got {value!r}")
        if self.lanes < 1 or self.lanes & (self.lanes - 1):
            raise ValueError(f"topology lanes must be a power of two >= 1, got {self.lanes}")
        if self.lanes > WARP_SIZE and self.lanes // WARP_SIZE > WARP_SIZE:
            raise ValueError(f"topology lanes must be at most {WARP_SIZE * WARP_SIZE}, got {self.lanes}")
        if self.block < 0 or (self.block and self.block % self.lanes):
            raise ValueError(f"topology block must be 0 (one block) or a positive multiple of lanes "
                             f"({self.lanes}), got {self.block}")

    def block_size(self, group_size):
        """Elements per block for a group of ``group_size`` elements."""
        return self.block if self.block else max(group_size, 1)

    def as_dict(self):
        return asdict(self)


TOPOLOGIES = {
    "sequential": Topology(1, 0, "sequential"),
    "lanes": Topology(32, 0, "lanes"),
    "pairwise": Topology(1, 1, "pairwise"),
    "tree": Topology(1, 64, "tree"),
    "blocked": Topology(64, 8192, "blocked"),
}

#: the fast order every rule runs with unless told otherwise
DEFAULT_TOPOLOGY = "blocked"


def resolve(topology):
    """A Topology from a preset name, a Topology, or None (the default)."""
    if topology is None:
        return TOPOLOGIES[DEFAULT_TOPOLOGY]
    if isinstance(topology, Topology):
        return topology
    if isinstance(topology, str) and topology in TOPOLOGIES:
        return TOPOLOGIES[topology]
    raise ValueError(f"topology must be one of {tuple(TOPOLOGIES)} or a numerics.Topology, "
                     f"got {topology!r}")


# ---- the merge orders, as plain functions over state arrays and a rule context (algorithms.py;
# ---- compiled by targets.py for the CPU, run as they are by replay.py; the GPU kernels realise the
# ---- same order with their threads)

def merge_lanes(ctx, counts, firsts, seconds, lanes, warp=WARP_SIZE):
    """Merge lanes 0..lanes-1 of the state arrays in place by ``ctx.merge`` in the halving tree of
    step 3 above; the block's state ends in lane 0. ``warp``: the lanes of one warp, WARP_SIZE;
    less for the lanes that remain of each warp once its first levels ran (the CPU's folded
    units: the same tree over fewer lanes)."""
    width = lanes if lanes <= warp else warp
    segments = lanes // width
    while True:
        for segment in range(segments):
            base = segment * width
            offset = width // 2
            while offset >= 1:
                for t in range(base, base + offset):
                    counts[t], firsts[t], seconds[t] = ctx.merge(
                        counts[t], firsts[t], seconds[t],
                        counts[t + offset], firsts[t + offset], seconds[t + offset])
                offset //= 2
        if segments == 1:
            return
        # the warp results move to the front (ascending: none is overwritten before it is read)
        # and merge by the same halving tree
        for segment in range(1, segments):
            counts[segment] = counts[segment * width]
            firsts[segment] = firsts[segment * width]
            seconds[segment] = seconds[segment * width]
        width = segments
        segments = 1


def merge_blocks(ctx, counts, firsts, seconds, blocks):
    """Merge the block states in place by ``ctx.merge`` in the adjacent pairwise tree of step 4
    above; the group's state ends in block 0."""
    step = 1
    while step < blocks:
        for b in range(0, blocks - step, 2 * step):
            counts[b], firsts[b], seconds[b] = ctx.merge(counts[b], firsts[b], seconds[b],
                                                         counts[b + step], firsts[b + step],
                                                         seconds[b + step])
        step *= 2
