// Schema of the mambarec_fast operator library and the `mambarec_fast._C` Python module that loads it.
//
// Kernels are registered per device (cpu/propagation.cpp, cuda/propagation_glue.cpp); autograd and
// fake (meta) kernels are registered from Python in mambarec_fast/ops/propagation.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(mambarec_fast, m) {
  m.set_python_module("mambarec_fast.ops.propagation");
  // y = A x for A in CSR form ([n_rows, n_cols], n_cols = x.size(0)). rowptr_t/col_t/val_t: A^T in
  // CSR form, read only by the backward. validate: scan rowptr/col contents before the launch.
  m.def(
      "spmm_csr(Tensor rowptr, Tensor col, Tensor val, Tensor x, Tensor? rowptr_t=None, "
      "Tensor? col_t=None, Tensor? val_t=None, bool validate=True) -> Tensor");
  // y = mean(x, A x, ..., A^L x) for a square CSR A, without storing the layers.
  m.def(
      "propagate_csr(Tensor rowptr, Tensor col, Tensor val, Tensor x, int layers, Tensor? rowptr_t=None, "
      "Tensor? col_t=None, Tensor? val_t=None, bool validate=True) -> Tensor");
}

// Importing mambarec_fast._C runs the static registrations above; the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "mambarec_fast operator library", -1, nullptr};
  return PyModule_Create(&module);
}
