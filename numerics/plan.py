"""The plan of a ``moments`` call, shared by every target: which accumulator, which streaming
kernel, and which passes in which order.

A *target* computes the passes: the CPU kernels (numerics.cpu.CpuTarget), the GPU kernels
(numerics.gpu.GpuTarget) and the plain-Python replay (numerics.replay.ReplayTarget). Each one
implements the same small interface over every group of a canonical view at once:

- ``zero_centers()`` and ``first_elements()``: the centers of the pass (the shifted rule subtracts
  each group's first element; the others subtract nothing, or the pass-one mean);
- ``reduce(mode, centers)``: one pass over the data into one state per unit (numerics.topology:
  the lanes of a block merged, the blocks of a group not yet), in ``mode``: PASS_ONE (zero
  centers, the centered sums; only the count and the first sum matter) or CENTERED (the rule's
  own push around the centers; zero centers for the naive rule, since ``x - 0`` is exactly
  ``x``);
- ``both_passes(centers)``: both passes of the two-pass rules fused, or None where the target
  does not fuse them;
- ``pass_one_means(centers)``: each group's units merged by the block tree and the mean of pass
  one, the centers of pass two;
- ``finalize(algorithm, centers, ddof)``: each group's units merged and finalized
  (algorithms.finalize): ``(means, variances)``.

Two kernels realise one topology on each device (numerics.cpu, numerics.gpu): ``segments`` for
any layout (a group is a sequence of contiguous runs of ``reduced_inner`` elements) and ``rows``
for layouts whose groups interleave in memory (channels last: ``reduced_inner`` divides the lane
count), reading rows of adjacent groups side by side.
"""
from . import algorithms

SEGMENTS, ROWS = "segments", "rows"

#: the modes of a pass (see ``reduce`` above)
PASS_ONE, CENTERED = "pass_one", "centered"


def kernel_for(view, topology):
    """Which kernel walks this view for this topology."""
    return ROWS if topology.lanes % view.reduced_inner == 0 else SEGMENTS


def default_acc_format(input_format):
    """The accumulator when none is asked for: float64 for float64 input, float32 otherwise."""
    return "float64" if input_format == "float64" else "float32"


def run(rule, target, ddof):
    """``(means, variances)`` of every group by ``rule`` (an algorithms.Algorithm) on ``target``:
    shifted rules center on the first elements; two-pass rules take the pass-one means as the
    centers of pass two; every rule then finalizes."""
    centers = target.first_elements() if rule.code == algorithms.SHIFTED else target.zero_centers()
    if rule.passes == 2:
        fused = target.both_passes(centers)
        if fused is None:
            target.reduce(PASS_ONE, centers)
            centers = target.pass_one_means(centers)
            target.reduce(CENTERED, centers)
        else:
            centers = fused
    else:
        target.reduce(CENTERED, centers)
    return target.finalize(rule.code, centers, ddof)
