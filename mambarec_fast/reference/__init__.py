"""Plain-PyTorch statement of SPEC.md: the authors' math at the authors' cost (oracle and baseline)."""
from .dream import DREAM
from .mmd import gaussian_kernel, mmd_loss
from .model import MambaRec, MambaRecGraphs
from .propagation import propagate, spmm

__all__ = ["DREAM", "MambaRec", "MambaRecGraphs", "gaussian_kernel", "mmd_loss", "propagate", "spmm"]
