"""`Graph`: a fixed sparse matrix in CSR form, built once, with its transpose cached for backward passes.

The propagation ops (`mambarec_fast.ops.propagation`) read a Graph's tensors directly and trust them:
every constructor validates its input once (indices in range, duplicates summed, rows sorted), so
nothing is re-checked, re-sorted or converted per call. Indices are int32 whenever the sizes fit
(half the index traffic of int64), int64 otherwise.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

INT32_MAX = 2**31 - 1


def csr_transpose(rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor, n_cols: int):
    """CSR `(rowptr, col, val)` of `A^T` from the CSR of `A` (`[n_rows, n_cols]`), same index dtype.

    A stable sort by column keeps each transposed row's entries in increasing original-row order,
    so the result is again a sorted CSR, the same on every run.
    """
    n_rows = rowptr.numel() - 1
    rows = torch.repeat_interleave(torch.arange(n_rows, device=col.device, dtype=col.dtype), rowptr.diff())
    order = torch.sort(col, stable=True).indices
    rowptr_t = torch.zeros(n_cols + 1, dtype=rowptr.dtype, device=rowptr.device)
    rowptr_t[1:] = torch.cumsum(torch.bincount(col, minlength=n_cols), 0)
    return rowptr_t, rows[order], val[order]


def _index_dtype(n_rows: int, n_cols: int, nnz: int) -> torch.dtype:
    return torch.int32 if max(n_rows + 1, n_cols, nnz) <= INT32_MAX else torch.int64


def _as_1d_tensor(name: str, values, *, integer: bool) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if integer and t.numel() == 0:
        return t.long()
    if integer and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{name} must hold integer indices, got dtype {t.dtype}")
    if not integer and not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")
    return t


class Graph:
    """A fixed sparse matrix `A` `[n_rows, n_cols]` in CSR form (rows sorted, no duplicate entries).

    Tensors: `rowptr` `[n_rows + 1]` and `col` `[nnz]` (int32 when the sizes fit, else int64),
    `val` `[nnz]` (float32 or float64, never requiring grad). The CSR of `A^T` is computed once and
    kept for the backward pass, unless the graph is `symmetric` (then `A` serves as its own
    transpose; this is checked at construction). Build it with `from_edges`, `from_scipy` or
    `from_torch`; move it with `.to(device, dtype)`.
    """

    def __init__(self, rowptr, col, val, shape, *, transpose=None, symmetric=False):
        """Low-level constructor from a trusted CSR (the public constructors validate first)."""
        self.rowptr, self.col, self.val = rowptr, col, val
        self.shape = (int(shape[0]), int(shape[1]))
        self.symmetric = bool(symmetric)
        if self.symmetric:
            transpose = (rowptr, col, val)
        elif transpose is None:
            transpose = csr_transpose(rowptr, col, val, self.shape[1])
        self.rowptr_t, self.col_t, self.val_t = transpose
        self._torch_csr_cache: dict[bool, torch.Tensor] = {}

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_edges(cls, rows, cols, vals=None, shape: Sequence[int] | None = None, *, symmetric: bool = False,
                   dtype: torch.dtype | None = None, device=None) -> "Graph":  # fmt: skip
        """Graph of the entries `A[rows[k], cols[k]] += vals[k]` (duplicates are summed, as in
        `torch.sparse`). rows/cols: integer sequences or tensors of equal length; vals: floats
        (default ones); shape: `(n_rows, n_cols)` (default: one past the largest indices); dtype:
        of the values (default: vals' dtype, float32 without vals); device: default vals' (or rows')
        device. `symmetric=True` asserts `A == A^T` (checked), so the backward reuses `A`."""
        rows_t = _as_1d_tensor("rows", rows, integer=True)
        cols_t = _as_1d_tensor("cols", cols, integer=True)
        if rows_t.numel() != cols_t.numel():
            raise ValueError(f"rows and cols must have equal lengths, got {rows_t.numel()} and {cols_t.numel()}")
        if vals is None:
            vals_t = torch.ones(rows_t.numel(), dtype=dtype or torch.float32, device=rows_t.device)
        else:
            vals_t = _as_1d_tensor("vals", vals, integer=False)
            if vals_t.numel() != rows_t.numel():
                raise ValueError(f"vals must have one value per edge ({rows_t.numel()}), got {vals_t.numel()}")
        dtype = dtype or vals_t.dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"graph values must be float32 or float64, got {dtype}")
        device = torch.device(device) if device is not None else vals_t.device
        rows_t, cols_t = rows_t.cpu().long(), cols_t.cpu().long()
        vals_t = vals_t.detach().cpu().to(dtype)
        if shape is None:
            shape = (int(rows_t.max()) + 1 if rows_t.numel() else 0, int(cols_t.max()) + 1 if cols_t.numel() else 0)
        if len(shape) != 2 or min(int(s) for s in shape) < 0:
            raise ValueError(f"shape must be (n_rows, n_cols) with non-negative sizes, got {tuple(shape)}")
        n_rows, n_cols = int(shape[0]), int(shape[1])
        for name, idx, bound in (("rows", rows_t, n_rows), ("cols", cols_t, n_cols)):
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= bound):
                raise ValueError(f"{name} must lie in [0, {bound}), got [{int(idx.min())}, {int(idx.max())}]")

        # Sum duplicates and sort by (row, col): coalescing on the CPU is deterministic.
        coo = torch.sparse_coo_tensor(torch.stack([rows_t, cols_t]), vals_t, (n_rows, n_cols), check_invariants=False)
        coo = coo.coalesce()
        # Clones: indices()/values() are views into the sparse tensor, which fake tensors
        # (torch.compile) cannot follow.
        (rows_t, cols_t), vals_t = coo.indices().clone(), coo.values().clone()
        index_dtype = _index_dtype(n_rows, n_cols, vals_t.numel())
        rowptr = torch.zeros(n_rows + 1, dtype=torch.int64)
        rowptr[1:] = torch.cumsum(torch.bincount(rows_t, minlength=n_rows), 0)
        rowptr, col = rowptr.to(index_dtype), cols_t.to(index_dtype)
        transpose = csr_transpose(rowptr, col, vals_t, n_cols)
        if symmetric:
            _check_symmetric(rowptr, col, vals_t, transpose, (n_rows, n_cols))
        graph = cls(rowptr, col, vals_t, (n_rows, n_cols), transpose=transpose, symmetric=symmetric)
        return graph.to(device)

    @classmethod
    def from_scipy(cls, matrix, *, symmetric: bool = False, dtype: torch.dtype | None = None, device=None) -> "Graph":
        """Graph of a scipy sparse matrix (any format; duplicates summed). dtype defaults to the
        matrix's (float64 for most scipy matrices): pass `torch.float32` for the model."""
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise TypeError(f"expected a scipy sparse matrix, got {type(matrix).__name__}")
        coo = matrix.tocoo()
        vals = torch.from_numpy(np.ascontiguousarray(coo.data))
        if not vals.is_floating_point():
            vals = vals.to(dtype or torch.float32)
        return cls.from_edges(coo.row, coo.col, vals, coo.shape, symmetric=symmetric, dtype=dtype, device=device)

    @classmethod
    def from_torch(cls, matrix: torch.Tensor, *, symmetric: bool = False, dtype: torch.dtype | None = None) -> "Graph":
        """Graph of a torch sparse COO (coalesced or not) or CSR matrix, on the matrix's device."""
        if not isinstance(matrix, torch.Tensor) or matrix.layout not in (torch.sparse_coo, torch.sparse_csr):
            got = getattr(matrix, "layout", type(matrix).__name__)
            raise TypeError(f"expected a sparse COO or CSR tensor, got {got}")
        if matrix.dim() != 2 or matrix.dense_dim() != 0:
            raise ValueError(f"expected a 2-D sparse matrix with scalar values, got shape {tuple(matrix.shape)}")
        coo = matrix.to_sparse_coo() if matrix.layout == torch.sparse_csr else matrix
        rows, cols = coo._indices()
        return cls.from_edges(rows, cols, coo._values(), tuple(matrix.shape), symmetric=symmetric, dtype=dtype,
                              device=matrix.device)  # fmt: skip

    # ---- properties and conversions ---------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return self.col.numel()

    @property
    def device(self) -> torch.device:
        return self.val.device

    @property
    def dtype(self) -> torch.dtype:
        return self.val.dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Graph":
        """The same graph with its tensors on `device` and values of `dtype` (self when unchanged)."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"graph values must be float32 or float64, got {dtype}")
        if device == self.device and dtype == self.dtype:
            return self
        rowptr, col = self.rowptr.to(device), self.col.to(device)
        val = self.val.to(device, dtype)
        if self.symmetric:
            return Graph(rowptr, col, val, self.shape, symmetric=True)
        transpose = (self.rowptr_t.to(device), self.col_t.to(device), self.val_t.to(device, dtype))
        return Graph(rowptr, col, val, self.shape, transpose=transpose)

    def t(self) -> "Graph":
        """`A^T` as a Graph (no copy: the cached transpose and the matrix swap roles)."""
        if self.symmetric:
            return self
        original = (self.rowptr, self.col, self.val)
        return Graph(self.rowptr_t, self.col_t, self.val_t, self.shape[::-1], transpose=original)

    def to_torch_sparse(self) -> torch.Tensor:
        """The matrix as a coalesced torch sparse COO tensor (int64 indices), on the graph's device."""
        rows = torch.repeat_interleave(torch.arange(self.shape[0], device=self.device), self.rowptr.diff().long())
        indices = torch.stack([rows, self.col.long()])
        return torch.sparse_coo_tensor(indices, self.val, self.shape, is_coalesced=True,
                                       check_invariants=False)  # fmt: skip

    def torch_csr(self, transpose: bool = False) -> torch.Tensor:
        """`A` (or `A^T`) as a torch sparse CSR tensor, built once and cached (the fallback path)."""
        if transpose not in self._torch_csr_cache:
            if transpose:
                rowptr, col, val, shape = self.rowptr_t, self.col_t, self.val_t, self.shape[::-1]
            else:
                rowptr, col, val, shape = self.rowptr, self.col, self.val, self.shape
            with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                matrix = torch.sparse_csr_tensor(rowptr, col, val, shape, check_invariants=False)
            self._torch_csr_cache[transpose] = matrix
        return self._torch_csr_cache[transpose]

    def __repr__(self) -> str:
        return (f"Graph(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype}, index_dtype={self.col.dtype}, "
                f"device={self.device}, symmetric={self.symmetric})")  # fmt: skip


def _check_symmetric(rowptr, col, val, transpose, shape) -> None:
    rowptr_t, col_t, val_t = transpose
    if shape[0] != shape[1]:
        raise ValueError(f"symmetric=True needs a square matrix, got shape {tuple(shape)}")
    same_pattern = torch.equal(rowptr, rowptr_t) and torch.equal(col, col_t)
    if not same_pattern or not torch.allclose(val, val_t, rtol=1e-5, atol=0.0):
        raise ValueError("symmetric=True but the matrix differs from its transpose; build it with symmetric=False")
