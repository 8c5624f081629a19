"""The fast LightGCN: `mambarec_fast.reference.lightgcn.LightGCN` with its propagation over a CSR
`Graph` through the compiled op (`ops.propagation.propagate`), as the fast MambaRec's."""
from __future__ import annotations

from .model import CsrGraphs
from .reference.lightgcn import LightGCN as ReferenceLightGCN


class LightGCN(CsrGraphs, ReferenceLightGCN):
    """Drop-in for the reference LightGCN: same constructor, parameters, outputs and gradients."""
