// CPU kernels of spmm_csr / propagate_csr: rows in parallel (at::parallel_for), d-wide loops that
// the compiler vectorises. Every output row is written by one thread, entries summed in CSR order,
// so results are identical from run to run and for any thread count.
#include "../propagation.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace mambarec_fast {
namespace {

// Entries ahead whose rows of h are prefetched: the gathers are random and h rarely fits in cache,
// so the loop is bound by memory latency, not by arithmetic.
constexpr int64_t kPrefetchAhead = 8;

// Rows [begin, end) of  out = scale * (add + A h).
template <typename scalar_t, typename index_t>
void csr_rows(const index_t* __restrict__ rowptr, const index_t* __restrict__ col, const scalar_t* __restrict__ val,
              const scalar_t* __restrict__ h, const scalar_t* __restrict__ add, scalar_t scale,
              scalar_t* __restrict__ out, int64_t d, int64_t begin, int64_t end) {
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  const int64_t last_entry = rowptr[end];
  for (int64_t r = begin; r < end; ++r) {
    scalar_t* __restrict__ y = out + r * d;
    if (add != nullptr) {
      const scalar_t* __restrict__ a = add + r * d;
      for (int64_t k = 0; k < d; ++k) y[k] = a[k];
    } else {
      for (int64_t k = 0; k < d; ++k) y[k] = scalar_t(0);
    }
    for (int64_t e = rowptr[r]; e < rowptr[r + 1]; ++e) {
      if (e + kPrefetchAhead < last_entry) {
        const scalar_t* ahead = h + static_cast<int64_t>(col[e + kPrefetchAhead]) * d;
        for (int64_t k = 0; k < d; k += kLine) __builtin_prefetch(ahead + k);
      }
      const scalar_t v = val[e];
      const scalar_t* __restrict__ xr = h + static_cast<int64_t>(col[e]) * d;
      for (int64_t k = 0; k < d; ++k) y[k] += v * xr[k];
    }
    if (scale != scalar_t(1)) {
      for (int64_t k = 0; k < d; ++k) y[k] *= scale;
    }
  }
}

// Smallest row r with rowptr[r] + r >= target. rowptr[r] + r grows strictly with r, so work
// targets split [0, n_rows) into row ranges of about equal cost (entries plus rows).
template <typename index_t>
int64_t row_at_work(const index_t* rowptr, int64_t n_rows, int64_t target) {
  int64_t lo = 0, hi = n_rows;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<int64_t>(rowptr[mid]) + mid >= target) hi = mid; else lo = mid + 1;
  }
  return lo;
}

void cpu_step(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& h,
              const at::Tensor* add, double scale, at::Tensor& out) {
  const int64_t n_rows = rowptr.numel() - 1, d = h.size(1), nnz = col.numel();
  AT_DISPATCH_FLOATING_TYPES(val.scalar_type(), "spmm_csr_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "spmm_csr_cpu", [&] {
      const index_t* rp = rowptr.data_ptr<index_t>();
      const index_t* c = col.data_ptr<index_t>();
      const scalar_t* v = val.data_ptr<scalar_t>();
      const scalar_t* x = h.data_ptr<scalar_t>();
      const scalar_t* a = add != nullptr ? add->data_ptr<scalar_t>() : nullptr;
      scalar_t* y = out.data_ptr<scalar_t>();
      const auto s = static_cast<scalar_t>(scale);
      // Several chunks per thread, cut by work rather than by row count: degrees are long-tailed.
      const int64_t work = nnz + n_rows;
      const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(n_rows, 8 * at::get_num_threads()));
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        const int64_t r0 = row_at_work(rp, n_rows, c0 * work / chunks);
        const int64_t r1 = row_at_work(rp, n_rows, c1 * work / chunks);
        csr_rows<scalar_t, index_t>(rp, c, v, x, a, s, y, d, r0, r1);
      });
    });
  });
}

at::Tensor spmm_csr_cpu(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x,
                        const std::optional<at::Tensor>& rowptr_t, const std::optional<at::Tensor>& col_t,
                        const std::optional<at::Tensor>& val_t, bool validate) {
  return spmm_csr_with(cpu_step, rowptr, col, val, x, rowptr_t, col_t, val_t, validate);
}

at::Tensor propagate_csr_cpu(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                             const at::Tensor& x, int64_t layers, const std::optional<at::Tensor>& rowptr_t,
                             const std::optional<at::Tensor>& col_t, const std::optional<at::Tensor>& val_t,
                             bool validate) {
  return propagate_csr_with(cpu_step, rowptr, col, val, x, layers, rowptr_t, col_t, val_t, validate);
}

}  // namespace

TORCH_LIBRARY_IMPL(mambarec_fast, CPU, m) {
  m.impl("spmm_csr", &spmm_csr_cpu);
  m.impl("propagate_csr", &propagate_csr_cpu);
}

}  // namespace mambarec_fast
