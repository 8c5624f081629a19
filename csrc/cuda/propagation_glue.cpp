// Torch glue of the CUDA kernels: device guard, current stream, dtype dispatch to the torch-free
// launcher in propagation.cu, and the CUDA registration of spmm_csr / propagate_csr.
#include "../propagation.h"
#include "propagation.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace mambarec_fast {
namespace {

// Makes x's GPU current; x on another device type is left to the input checks to report.
struct DeviceGuard {
  explicit DeviceGuard(const at::Tensor& x) {
    if (x.is_cuda()) guard.set_device(x.device());
  }
  c10::cuda::OptionalCUDAGuard guard;
};

void cuda_step(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& h,
               const at::Tensor* add, double scale, at::Tensor& out) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(h.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES(val.scalar_type(), "spmm_csr_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "spmm_csr_cuda", [&] {
      C10_CUDA_CHECK((cuda::csr_step<scalar_t, index_t>(
          rowptr.data_ptr<index_t>(), col.data_ptr<index_t>(), val.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
          add != nullptr ? add->data_ptr<scalar_t>() : nullptr, scale, out.data_ptr<scalar_t>(),
          rowptr.numel() - 1, h.size(1), stream)));
    });
  });
}

at::Tensor spmm_csr_cuda(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x,
                         const std::optional<at::Tensor>& rowptr_t, const std::optional<at::Tensor>& col_t,
                         const std::optional<at::Tensor>& val_t, bool validate) {
  const DeviceGuard guard(x);
  return spmm_csr_with(cuda_step, rowptr, col, val, x, rowptr_t, col_t, val_t, validate);
}

at::Tensor propagate_csr_cuda(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& val,
                              const at::Tensor& x, int64_t layers, const std::optional<at::Tensor>& rowptr_t,
                              const std::optional<at::Tensor>& col_t, const std::optional<at::Tensor>& val_t,
                              bool validate) {
  const DeviceGuard guard(x);
  return propagate_csr_with(cuda_step, rowptr, col, val, x, layers, rowptr_t, col_t, val_t, validate);
}

}  // namespace

TORCH_LIBRARY_IMPL(mambarec_fast, CUDA, m) {
  m.impl("spmm_csr", &spmm_csr_cuda);
  m.impl("propagate_csr", &propagate_csr_cuda);
}

}  // namespace mambarec_fast
