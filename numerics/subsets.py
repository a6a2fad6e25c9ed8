"""Which elements form one normalization group: every layer and layout as one canonical 4-D view.

A tensor of shape (N, C, *spatial) (layout "NCHW", channels first) or (N, *spatial, C) (layout "NHWC",
channels last) is viewed, without copying, as ``(kept_outer, reduced_outer, kept_inner, reduced_inner)``
(K1, P, K2, Q in docs/architecture.md, section 1.2). The statistics reduce over the two
``reduced_*`` axes for each ``(kept_outer, kept_inner)`` pair; that (K1, K2) grid, read in C order,
is the statistics array of the layer's documented shape. One group's elements, in the order every
topology counts them, run over ``reduced_outer`` (slow) and ``reduced_inner`` (fast).
"""
from dataclasses import dataclass
from math import prod

NORMS = ("batch", "layer", "instance", "group")
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class CanonicalView:
    kept_outer: int
    reduced_outer: int
    kept_inner: int
    reduced_inner: int
    stats_shape: tuple

    @property
    def view_shape(self):
        return (self.kept_outer, self.reduced_outer, self.kept_inner, self.reduced_inner)

    @property
    def group_size(self):
        """Elements in one normalization group (n of the variance formula)."""
        return self.reduced_outer * self.reduced_inner

    @property
    def group_count(self):
        return self.kept_outer * self.kept_inner


def canonical_view(shape, norm, groups=None, layout="NCHW"):
    """Map a tensor shape, a layer and a memory layout onto the canonical view.

    Raises ValueError naming the argument at fault: unknown ``norm`` or ``layout``, a rank that the
    layer cannot take, ``groups`` missing, not a positive integer or not dividing C, or ``groups``
    given to a layer that has none.
    """
    shape = tuple(int(extent) for extent in shape)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if norm is None:
        if len(shape) != 1:
            raise ValueError(f"x must be 1-D when norm is None (got shape {shape}); "
                             f"pass norm='batch', 'layer', 'instance' or 'group' for an (N, C, ...) tensor")
        if groups is not None:
            raise ValueError("groups is only used with norm='group'")
        return CanonicalView(1, 1, 1, shape[0], ())
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS} or None, got {norm!r}")
    if len(shape) < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, *spatial) for norm={norm!r}, "
                         f"got shape {shape}")
    if norm != "group" and groups is not None:
        raise ValueError(f"groups is only used with norm='group', not norm={norm!r}")
    batch = shape[0]
    if layout == "NCHW":
        channels, spatial = shape[1], prod(shape[2:])
    else:
        channels, spatial = shape[-1], prod(shape[1:-1])
    if norm == "group":
        if groups is None:
            raise ValueError("groups is required with norm='group'")
        if isinstance(groups, bool) or not isinstance(groups, int) and not hasattr(groups, "__index__"):
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        groups = int(groups)
        if groups <= 0:
            raise ValueError(f"groups must be a positive integer, got {groups}")
        if channels % groups:
            raise ValueError(f"groups={groups} does not divide the {channels} channels of x")
    channels_first = layout == "NCHW"
    if norm == "batch":
        view = (1, batch, channels, spatial) if channels_first else (1, batch * spatial, channels, 1)
        stats_shape = (channels,)
    elif norm == "layer":
        view = (batch, 1, 1, channels * spatial)
        stats_shape = (batch,)
    elif norm == "instance":
        view = (1, 1, batch * channels, spatial) if channels_first else (batch, spatial, channels, 1)
        stats_shape = (batch, channels)
    else:
        per_group = channels // groups
        view = ((1, 1, batch * groups, per_group * spatial) if channels_first
                else (batch, spatial, groups, per_group))
        stats_shape = (batch, groups)
    return CanonicalView(*view, stats_shape)
