// Device-independent half of the CSR ops: input checks and the fused-propagation driver.
//
// Each device supplies one primitive, `CsrStep`:  out = scale * (add + A h)  (`add` optional),
// where A is the CSR matrix (rowptr [n_rows + 1], col [nnz], val [nnz]) and h, add, out are
// contiguous [*, d] tensors of val's dtype. `spmm_csr` is one step; `propagate_csr` is L steps in
// Horner form, so no intermediate layer is ever stored.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace mambarec_fast {

using CsrStep = void (*)(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                         const at::Tensor& h, const at::Tensor* add, double scale, at::Tensor& out);

// y = A x, y [n_rows, d]. The *_t tensors (CSR of A^T) are only used by the backward (registered
// from Python); they are checked for consistent shapes here. `validate` additionally scans rowptr
// (starts at 0, ends at nnz, non-decreasing) and col (in [0, n_cols)): O(nnz), one device sync.
at::Tensor spmm_csr_with(CsrStep step, const at::Tensor& rowptr, const at::Tensor& col,
                         const at::Tensor& val, const at::Tensor& x,
                         const std::optional<at::Tensor>& rowptr_t,
                         const std::optional<at::Tensor>& col_t,
                         const std::optional<at::Tensor>& val_t, bool validate);

// y = mean(x, A x, ..., A^L x) for a square A, as (1/(L+1)) (x + A (x + A (... (x + A x)))).
at::Tensor propagate_csr_with(CsrStep step, const at::Tensor& rowptr, const at::Tensor& col,
                              const at::Tensor& val, const at::Tensor& x, int64_t layers,
                              const std::optional<at::Tensor>& rowptr_t,
                              const std::optional<at::Tensor>& col_t,
                              const std::optional<at::Tensor>& val_t, bool validate);

}  // namespace mambarec_fast
