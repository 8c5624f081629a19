"""mambarec_fast: a fast, faithful MambaRec. Public names are re-exported here; nothing is defined here."""
from .reference import DREAM, MambaRec, mmd_loss, propagate, spmm

__all__ = ["DREAM", "MambaRec", "mmd_loss", "propagate", "spmm"]
