"""Op dispatch: torch.library registration, autograd and the choice of path (Triton, CPU, fallback)."""
