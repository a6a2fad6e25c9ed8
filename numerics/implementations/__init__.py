"""The one registry of the implementations the studies, ``make bench`` and ``make gpu-check``
compare: real frameworks (numpy, PyTorch, JAX/Flax, ONNX Runtime, TensorFlow/Keras), numerics
recipes of frameworks, and the textbook expression (numerics/implementations/base.py says what an
entry holds). Importing this package imports no framework: each adapter imports its framework when
it first runs.

- ``IMPLEMENTATIONS``: every entry, in a fixed order;
- ``by_name(name)``; ``select(kind=None, norm=None, layout=None, installed=True)``;
- ``STANDS_IN_FOR``: recipe name -> ((real implementation, layouts), ...) it describes.
"""
from . import jax_peers, numpy_peers, onnxruntime_peers, recipes, tensorflow_peers, torch_peers
from .base import KINDS, Implementation, Prepared, UnsupportedError

IMPLEMENTATIONS = (numpy_peers.IMPLEMENTATIONS + torch_peers.IMPLEMENTATIONS
                   + jax_peers.IMPLEMENTATIONS + onnxruntime_peers.IMPLEMENTATIONS
                   + tensorflow_peers.IMPLEMENTATIONS + recipes.IMPLEMENTATIONS)
_BY_NAME = {implementation.name: implementation for implementation in IMPLEMENTATIONS}
assert len(_BY_NAME) == len(IMPLEMENTATIONS), "implementation names must be unique"
STANDS_IN_FOR = recipes.STANDS_IN_FOR


def by_name(name):
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"no implementation named {name!r}; known: {sorted(_BY_NAME)}") from None


def select(kind=None, norm=None, layout=None, installed=True):
    """The entries of ``kind`` (one of KINDS, or None for all) that compute ``norm`` in ``layout``
    (None: any), and, with ``installed``, whose framework can be imported here."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    return tuple(item for item in IMPLEMENTATIONS
                 if (kind is None or item.kind == kind) and (norm is None or norm in item.norms)
                 and (layout is None or layout in item.layouts)
                 and (not installed or item.available()))


__all__ = ["IMPLEMENTATIONS", "KINDS", "STANDS_IN_FOR", "Implementation", "Prepared",
           "UnsupportedError", "by_name", "select"]
