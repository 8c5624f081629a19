// Torch-free launcher of the CUDA CSR step (raw pointers and a stream), so that nvcc compiles
// propagation.cu on machines whose torch has no CUDA; the torch glue is propagation_glue.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mambarec_fast {
namespace cuda {

// out = scale * (add + A h) on `stream`, A an [n_rows, *] CSR matrix (rowptr [n_rows + 1], col and
// val [nnz]); h, add (may be null) and out row-major [*, d]; out must not overlap h or add.
// No atomics: each output row is owned by one group of lanes, which sums its entries in CSR
// order, so the result is identical from run to run. Returns the launch status.
// Instantiated for scalar_t in {float, double} and index_t in {int32_t, int64_t}.
template <typename scalar_t, typename index_t>
cudaError_t csr_step(const index_t* rowptr, const index_t* col, const scalar_t* val, const scalar_t* h,
                     const scalar_t* add, double scale, scalar_t* out, int64_t n_rows, int64_t d,
                     cudaStream_t stream);

}  // namespace cuda
}  // namespace mambarec_fast
