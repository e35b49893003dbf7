// Python bindings of medtune._C: one line per kernel entry point.
#include "medtune.h"

namespace medtune {
std::tuple<at::Tensor, int64_t> glf_stats_forward(const at::Tensor& pred, const at::Tensor& target,
                                                  bool labels, int64_t activation);
at::Tensor glf_stats_backward(const at::Tensor& pred, const at::Tensor& target, bool labels,
                              int64_t activation, const at::Tensor& coef_a, const at::Tensor& coef_b);
}  // namespace medtune

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "medtune C++ (OpenMP) CPU kernels";
  m.def("glf_stats_forward", &medtune::glf_stats_forward,
        "(pred [N,C,S], target, labels, activation) -> (stats [N,C,3] float64, invalid label count)");
  m.def("glf_stats_backward", &medtune::glf_stats_backward,
        "(pred, target, labels, activation, a [N,C], b [N,C]) -> grad wrt pred");
  m.def("num_threads", [] { return at::get_num_threads(); }, "threads used by the kernels");
}
