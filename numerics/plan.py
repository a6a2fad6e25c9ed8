"""The plan of a ``moments`` call, shared by every target: which streaming kernel walks the view.

Two kernels realise one topology on each device (numerics.cpu, numerics.gpu):

- ``segments``: any layout; a group is a sequence of contiguous runs of ``reduced_inner`` elements;
- ``rows``: layouts whose groups interleave in memory (channels last: ``reduced_inner`` divides the
  lane count), reading rows of adjacent groups side by side.
"""
SEGMENTS, ROWS = "segments", "rows"


def kernel_for(view, topology):
    """Which kernel walks this view for this topology."""
    return ROWS if topology.lanes % view.reduced_inner == 0 else SEGMENTS
