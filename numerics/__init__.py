"""numerics: how accurately normalization layers compute their mean and variance.

Every statistic is subset x update rule x reduction topology x precision x Bessel correction
(docs/architecture.md, section 1). The public API:

- ``moments(x, norm, ...)``: the statistics, on the CPU or the GPU, with a record of what ran;
- ``normalize(x, norm, ...)``: the normalized output y = (x − mean)/sqrt(var + eps)·weight + bias,
  on the CPU or the GPU;
- ``audit(x, norm, ...)``: every rule, precision and installed framework on one tensor, with a verdict;
- ``ALGORITHMS``, ``TOPOLOGIES``, ``Topology``: the rules and reduction orders;
- ``CORRECTLY_ROUNDED``: the algorithm name whose mean and variance are correctly rounded;
- ``reference``, ``metrics``, ``bounds``, ``data``, ``nist``: exact references, error measures,
  a-priori bounds, seeded inputs and the NIST StRD data (import them as submodules).
"""
from . import bounds, data, metrics, nist, reference, replay
from .algorithms import ALGORITHMS, CORRECTLY_ROUNDED
from .audits import audit
from .normalization import normalize
from .precision import FORMATS, unit_roundoff
from .statistics import Moments, Run, moments
from .subsets import LAYOUTS, NORMS, canonical_view
from .topology import DEFAULT_TOPOLOGY, TOPOLOGIES, Topology

__all__ = ["bounds", "data", "metrics", "nist", "reference", "replay", "ALGORITHMS",
           "CORRECTLY_ROUNDED", "DEFAULT_TOPOLOGY", "FORMATS", "LAYOUTS", "NORMS", "TOPOLOGIES",
           "Moments", "Run", "Topology", "audit", "canonical_view", "moments", "normalize", "unit_roundoff"]
