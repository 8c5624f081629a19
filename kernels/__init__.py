"""Fused Triton kernels (launchers only: no autograd, no torch.library; see `mambarec_fast.ops`)."""
