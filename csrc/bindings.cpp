// Python bindings of medtune._C: one line per kernel entry point.
#include "medtune.h"

namespace medtune {
std::tuple<at::Tensor, int64_t> glf_stats_forward(const at::Tensor& pred, const at::Tensor& target,
                                                  bool labels, int64_t activation);
at::Tensor glf_stats_backward(const at::Tensor& pred, const at::Tensor& target, bool labels,
                              int64_t activation, const at::Tensor& coef_a, const at::Tensor& coef_b);
std::tuple<at::Tensor, at::Tensor, int64_t> glf_loss_forward(
    const at::Tensor& pred, const at::Tensor& target, bool labels, int64_t activation,
    const at::Tensor& weights, double smooth_nr, double smooth_dr, bool batch);
at::Tensor glf_loss_backward(const at::Tensor& pred, const at::Tensor& target, bool labels,
                             int64_t activation, const at::Tensor& weights, const at::Tensor& stats,
                             const at::Tensor& grad_loss, const at::Tensor& grad_stats,
                             double smooth_nr, double smooth_dr, bool batch);
std::tuple<double, bool> chol_append_(const at::Tensor& L_buffer, int64_t n,
                                      const at::Tensor& K_new_old, const at::Tensor& K_new_new,
                                      const at::Tensor& Linv_buffer, double jitter,
                                      int64_t max_tries, double floor);
at::Tensor gp_acquisition_forward(const at::Tensor& candidates, const at::Tensor& train_x,
                                  const at::Tensor& linv, const at::Tensor& alpha,
                                  const at::Tensor& lengthscales, double outputscale,
                                  int64_t kernel, double mean_constant, int64_t acquisition,
                                  double best_f, double xi, double sqrt_beta, bool maximize,
                                  double min_variance);
at::Tensor warp3d_forward(const at::Tensor& volume, const c10::optional<at::Tensor>& displacement,
                          const at::Tensor& mv, const c10::optional<at::Tensor>& mu,
                          const c10::optional<at::Tensor>& b, bool nearest, bool border,
                          at::IntArrayRef size);
std::vector<at::Tensor> warp3d_backward(
    const at::Tensor& grad_out, const at::Tensor& volume,
    const c10::optional<at::Tensor>& displacement, const at::Tensor& mv,
    const c10::optional<at::Tensor>& mu, const c10::optional<at::Tensor>& b, bool nearest,
    bool border, const std::vector<bool>& needs);
at::Tensor supernet_conv_forward(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef segments,
                                 int64_t stride, bool depthwise);
std::tuple<at::Tensor, at::Tensor, at::Tensor> supernet_conv_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef segments, int64_t stride, bool depthwise, bool need_input, bool need_weight,
    bool need_bias);
}  // namespace medtune

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "medtune C++ (OpenMP) CPU kernels";
  m.def("glf_stats_forward", &medtune::glf_stats_forward,
        "(pred [N,C,S], target, labels, activation) -> (stats [N,C,3] float64, invalid label count)");
  m.def("glf_stats_backward", &medtune::glf_stats_backward,
        "(pred, target, labels, activation, a [N,C], b [N,C]) -> grad wrt pred");
  m.def("glf_loss_forward", &medtune::glf_loss_forward,
        "(pred [N,C,S], target, labels, activation, weights (w, a, b), smooth_nr, smooth_dr, "
        "batch) -> (loss [N,C] or [C], stats [N,C,3], invalid label count)");
  m.def("glf_loss_backward", &medtune::glf_loss_backward,
        "(pred, target, labels, activation, weights, stats, grad loss, grad stats, smooth_nr, "
        "smooth_dr, batch) -> grad wrt pred");
  m.def("chol_append_", &medtune::chol_append_,
        "(L_buffer [m,m], n, K_new_old [k,n], K_new_new [k,k], Linv_buffer [m,m] or empty, "
        "jitter, max_tries, floor) -> (jitter added, success); extends the factors in place");
  m.def("gp_acquisition_forward", &medtune::gp_acquisition_forward,
        "(candidates [m,d], train_x [n,d], linv [n,n], alpha [n], lengthscales [d], outputscale, "
        "kernel, mean_constant, acquisition, best_f, xi, sqrt_beta, maximize, min_variance) -> "
        "[3, m] mean, variance, score");
  m.def("warp3d_forward", &medtune::warp3d_forward,
        "(volume [N,C,D,H,W], displacement [N,K,d,h,w] or None, Mv [N,3,4], Mu [N,3,4] or None, "
        "B [N,3,K] or None, nearest, border, size (D,H,W)) -> resampled [N,C,*size]");
  m.def("warp3d_backward", &medtune::warp3d_backward,
        "(grad_out, volume, displacement, Mv, Mu, B, nearest, border, needs: 5 flags for volume, "
        "displacement, Mv, Mu, B) -> their gradients (empty or zero where not needed)");
  m.def("supernet_conv_forward", &medtune::supernet_conv_forward,
        "(input [N,C,H,W], weight [Co,Ci,K,K], bias [Co] or None, segments (start, end, kernel, "
        "in, out) flat, stride, depthwise) -> [N,Co,Ho,Wo]");
  m.def("supernet_conv_backward", &medtune::supernet_conv_backward,
        "(grad_out, input, weight, segments, stride, depthwise, need_input, need_weight, "
        "need_bias) -> (grad input, grad weight [Co,Ci,K,K], grad bias [Co])");
  m.def("num_threads", [] { return at::get_num_threads(); }, "threads used by the kernels");
}
