// CUDA kernel of the CSR step  out = scale * (add + A h)  (see propagation.cuh).
//
// A group of G lanes (G a power of two <= 32) owns one output row; each lane owns VEC-wide packs
// of d (float4 when d % 4 == 0, so d = 64 is one 16-lane group per row, two rows per warp, one
// 16-byte load per lane per entry). Entries are read kUnroll at a time so that several gathers
// are in flight per lane. Precision: fp32 and fp64 with FMA, accumulated in the input dtype.
// Limitation: a row's entries are summed by its one group, so a very long row (thousands of
// entries, e.g. the most popular item) takes time proportional to its degree; splitting such rows
// across blocks with a fixed-order second pass would keep determinism (not done yet).
#include "propagation.cuh"

#include <climits>
#include <cstdint>

namespace mambarec_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename scalar_t, typename index_t, int VEC>
__global__ void csr_step_kernel(const index_t* __restrict__ rowptr, const index_t* __restrict__ col,
                                const scalar_t* __restrict__ val, const scalar_t* __restrict__ h,
                                const scalar_t* __restrict__ add, scalar_t scale, scalar_t* __restrict__ out,
                                int64_t n_rows, int64_t n_packs, int group_shift) {
  using P = Pack<scalar_t, VEC>;
  const P* __restrict__ hp = reinterpret_cast<const P*>(h);
  const P* __restrict__ ap = reinterpret_cast<const P*>(add);
  P* __restrict__ op = reinterpret_cast<P*>(out);
  const int group = 1 << group_shift;
  const int lane = threadIdx.x & (group - 1);
  const int64_t rows_per_grid = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> group_shift;

  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> group_shift; row < n_rows;
       row += rows_per_grid) {
    const int64_t begin = rowptr[row], end = rowptr[row + 1];
    for (int64_t p = lane; p < n_packs; p += group) {
      P acc;
      if (ap != nullptr) {
        acc = ap[row * n_packs + p];
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc.v[k] = scalar_t(0);
      }
      int64_t e = begin;
      for (; e + kUnroll <= end; e += kUnroll) {
        int64_t c[kUnroll];
        scalar_t w[kUnroll];
        P xv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          c[u] = col[e + u];
          w[u] = val[e + u];
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) xv[u] = hp[c[u] * n_packs + p];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) acc.v[k] = fma(w[u], xv[u].v[k], acc.v[k]);
        }
      }
      for (; e < end; ++e) {
        const scalar_t w = val[e];
        const P xv = hp[static_cast<int64_t>(col[e]) * n_packs + p];
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc.v[k] = fma(w, xv.v[k], acc.v[k]);
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc.v[k] *= scale;
      op[row * n_packs + p] = acc;
    }
  }
}

bool aligned(const void* p, int bytes) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename scalar_t, typename index_t, int VEC>
cudaError_t launch(const index_t* rowptr, const index_t* col, const scalar_t* val, const scalar_t* h,
                   const scalar_t* add, double scale, scalar_t* out, int64_t n_rows, int64_t d, cudaStream_t stream) {
  const int64_t n_packs = d / VEC;
  int group_shift = 0;
  while ((int64_t{1} << group_shift) < n_packs && group_shift < 5) ++group_shift;
  const int64_t blocks_needed = ((n_rows << group_shift) + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(blocks_needed < INT_MAX ? blocks_needed : INT_MAX);
  csr_step_kernel<scalar_t, index_t, VEC><<<blocks, kThreads, 0, stream>>>(
      rowptr, col, val, h, add, static_cast<scalar_t>(scale), out, n_rows, n_packs, group_shift);
  return cudaGetLastError();
}

}  // namespace

template <typename scalar_t, typename index_t>
cudaError_t csr_step(const index_t* rowptr, const index_t* col, const scalar_t* val, const scalar_t* h,
                     const scalar_t* add, double scale, scalar_t* out, int64_t n_rows, int64_t d,
                     cudaStream_t stream) {
  if (n_rows == 0 || d == 0) return cudaSuccess;
  // Widest pack that divides d and that every dense pointer is aligned to.
  constexpr int kWide = 16 / sizeof(scalar_t);  // 4 floats or 2 doubles
  if (d % kWide == 0 && aligned(h, 16) && aligned(add, 16) && aligned(out, 16)) {
    return launch<scalar_t, index_t, kWide>(rowptr, col, val, h, add, scale, out, n_rows, d, stream);
  }
  if (kWide == 4 && d % 2 == 0 && aligned(h, 8) && aligned(add, 8) && aligned(out, 8)) {
    return launch<scalar_t, index_t, (kWide == 4 ? 2 : 1)>(rowptr, col, val, h, add, scale, out, n_rows, d, stream);
  }
  return launch<scalar_t, index_t, 1>(rowptr, col, val, h, add, scale, out, n_rows, d, stream);
}

#define MAMBAREC_INSTANTIATE(scalar_t, index_t)                                                                  \
  template cudaError_t csr_step<scalar_t, index_t>(const index_t*, const index_t*, const scalar_t*,            \
                                                   const scalar_t*, const scalar_t*, double, scalar_t*, int64_t, \
                                                   int64_t, cudaStream_t);
MAMBAREC_INSTANTIATE(float, int32_t)
MAMBAREC_INSTANTIATE(float, int64_t)
MAMBAREC_INSTANTIATE(double, int32_t)
MAMBAREC_INSTANTIATE(double, int64_t)
#undef MAMBAREC_INSTANTIATE

}  // namespace cuda
}  // namespace mambarec_fast
