"""mambarec_fast: a fast, faithful MambaRec. Public names are re-exported here; nothing is defined here.

The fast modules are drop-ins for their plain-PyTorch twins in `mambarec_fast.reference`.
"""
from .model import MambaRec
from .ops.dream import DREAM
from .ops.graph import Graph
from .ops.mmd import MMDLoss, mmd
from .ops.propagation import propagate, spmm

__all__ = ["DREAM", "Graph", "MMDLoss", "MambaRec", "mmd", "propagate", "spmm"]
