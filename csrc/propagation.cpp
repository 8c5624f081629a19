// Input checks and the Horner driver shared by the CPU and CUDA registrations.
#include "propagation.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <utility>

namespace mambarec_fast {
namespace {

bool is_index_dtype(at::ScalarType t) { return t == at::kInt || t == at::kLong; }
bool is_value_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kDouble; }

// Shapes, dtypes and devices of one CSR matrix against x: O(1), no device access.
void check_csr_meta(const char* which, const at::Tensor& rowptr, const at::Tensor& col,
                    const at::Tensor& val, const at::Tensor& x) {
  TORCH_CHECK_TYPE(is_index_dtype(rowptr.scalar_type()), which, ": rowptr must be int32 or int64, got ",
                   rowptr.scalar_type());
  TORCH_CHECK_TYPE(col.scalar_type() == rowptr.scalar_type(), which, ": col must have rowptr's dtype ",
                   rowptr.scalar_type(), ", got ", col.scalar_type());
  TORCH_CHECK_TYPE(val.scalar_type() == x.scalar_type(), which, ": val dtype ", val.scalar_type(),
                   " must match x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.numel() >= 1, which,
                    ": rowptr must be 1-D with n_rows + 1 >= 1 entries, got shape ", rowptr.sizes());
  TORCH_CHECK_VALUE(col.dim() == 1 && val.dim() == 1 && col.numel() == val.numel(), which,
                    ": col and val must be 1-D of equal length nnz, got shapes ", col.sizes(), " and ",
                    val.sizes());
  for (const at::Tensor* t : {&rowptr, &col, &val}) {
    TORCH_CHECK_VALUE(t->device() == x.device(), which, ": all tensors must be on x's device ", x.device(),
                      ", got one on ", t->device());
  }
}

void check_x(const at::Tensor& x) {
  TORCH_CHECK_TYPE(is_value_dtype(x.scalar_type()), "x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2, "x must be 2-D [n_cols, d], got shape ", x.sizes());
}

// rowptr[0] == 0, rowptr[-1] == nnz, rowptr non-decreasing, 0 <= col < n_cols: one device sync.
void check_csr_content(const char* which, const at::Tensor& rowptr, const at::Tensor& col, int64_t n_cols) {
  const int64_t nnz = col.numel();
  at::Tensor ok = (rowptr[0] == 0).logical_and(rowptr[-1] == nnz);
  if (rowptr.numel() > 1) ok = ok.logical_and((rowptr.diff() >= 0).all());
  if (nnz > 0) ok = ok.logical_and(col.min() >= 0).logical_and(col.max() < n_cols);
  if (ok.item<bool>()) return;
  // Failure path only: name the first broken property.
  TORCH_CHECK_VALUE(rowptr[0].item<int64_t>() == 0, which, ": rowptr[0] must be 0, got ", rowptr[0].item<int64_t>());
  TORCH_CHECK_VALUE(rowptr[-1].item<int64_t>() == nnz, which, ": rowptr[-1] must equal nnz = ", nnz, ", got ",
                    rowptr[-1].item<int64_t>());
  TORCH_CHECK_VALUE(false, which, ": rowptr must be non-decreasing and column indices must lie in [0, ", n_cols,
                    "), got columns in [", col.min().item<int64_t>(), ", ", col.max().item<int64_t>(), "]");
}

// The transposed CSR, when given, must describe an [n_cols, n_rows] matrix with the same nnz.
void check_transpose(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& x,
                     const std::optional<at::Tensor>& rowptr_t,
                     const std::optional<at::Tensor>& col_t, const std::optional<at::Tensor>& val_t) {
  const int given = rowptr_t.has_value() + col_t.has_value() + val_t.has_value();
  TORCH_CHECK_VALUE(given == 0 || given == 3, "rowptr_t, col_t and val_t must be given together or not at all");
  if (given == 0) return;
  check_csr_meta("transposed graph", *rowptr_t, *col_t, *val_t, x);
  TORCH_CHECK_TYPE(rowptr_t->scalar_type() == rowptr.scalar_type(), "transposed graph: index dtype ",
                   rowptr_t->scalar_type(), " must match the graph's ", rowptr.scalar_type());
  TORCH_CHECK_VALUE(rowptr_t->numel() == x.size(0) + 1 && col_t->numel() == col.numel(),
                    "transposed graph: expected rowptr_t of length n_cols + 1 = ", x.size(0) + 1, " and nnz = ",
                    col.numel(), ", got ", rowptr_t->numel(), " and ", col_t->numel());
}

void check_all(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x,
               const std::optional<at::Tensor>& rowptr_t, const std::optional<at::Tensor>& col_t,
               const std::optional<at::Tensor>& val_t, bool validate) {
  check_x(x);
  check_csr_meta("graph", rowptr, col, val, x);
  check_transpose(rowptr, col, x, rowptr_t, col_t, val_t);
  if (validate) check_csr_content("graph", rowptr, col, x.size(0));
}

}  // namespace

at::Tensor spmm_csr_with(CsrStep step, const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                         const at::Tensor& x, const std::optional<at::Tensor>& rowptr_t,
                         const std::optional<at::Tensor>& col_t, const std::optional<at::Tensor>& val_t,
                         bool validate) {
  check_all(rowptr, col, val, x, rowptr_t, col_t, val_t, validate);
  at::Tensor out = at::empty({rowptr.numel() - 1, x.size(1)}, x.options());
  if (out.numel() > 0) {
    step(rowptr.contiguous(), col.contiguous(), val.contiguous(), x.contiguous(), nullptr, 1.0, out);
  }
  return out;
}

at::Tensor propagate_csr_with(CsrStep step, const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                              const at::Tensor& x, int64_t layers, const std::optional<at::Tensor>& rowptr_t,
                              const std::optional<at::Tensor>& col_t, const std::optional<at::Tensor>& val_t,
                              bool validate) {
  check_all(rowptr, col, val, x, rowptr_t, col_t, val_t, validate);
  TORCH_CHECK_VALUE(rowptr.numel() - 1 == x.size(0), "propagate needs a square graph: ", rowptr.numel() - 1,
                    " rows but x has ", x.size(0), " rows (= columns)");
  TORCH_CHECK_VALUE(layers >= 0, "layers must be >= 0, got ", layers);
  const at::Tensor xc = x.contiguous();
  if (layers == 0 || xc.numel() == 0) return xc.clone();
  const at::Tensor rp = rowptr.contiguous(), c = col.contiguous(), v = val.contiguous();
  // Horner: h_1 = x + A x, h_l = x + A h_{l-1}, so h_L = sum_{l<=L} A^l x; the mean's 1/(L+1)
  // is folded into the last step.
  const double mean_scale = 1.0 / static_cast<double>(layers + 1);
  at::Tensor h = at::empty_like(xc);
  step(rp, c, v, xc, &xc, layers == 1 ? mean_scale : 1.0, h);
  if (layers > 1) {
    at::Tensor next = at::empty_like(xc);
    for (int64_t l = 2; l <= layers; ++l) {
      step(rp, c, v, h, &xc, l == layers ? mean_scale : 1.0, next);
      std::swap(h, next);
    }
  }
  return h;
}

}  // namespace mambarec_fast
