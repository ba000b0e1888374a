// Convolutions through oneDNN's primitives, as XLA FFI custom calls
// (medseg_jax/models/onednn.py loads and calls them): the forward pass, the
// input gradient (backward data) and the weight gradient (backward weights).
//
// XLA:CPU computes a weight gradient as a convolution over the batch, after
// transposing the activation to [C, *S, N] and the output gradient to
// [*S, N, C]; on the 2-D U-Net those transposes and that convolution take
// most of the backward pass (docs/cpu_performance.md). oneDNN's primitives
// read the channels-last arrays as they are.
//
// Layouts: activations [N, *S, C] (channels last, 2 or 3 spatial axes),
// kernels [*K, C_in, C_out]; float32 or bfloat16, all operands the same
// type. Attributes: strides, padding_low, padding_high, dilation (one int64
// per spatial axis; dilation as in XLA, 1 = dense).
//
//   forward:          x, kernel -> y
//   backward data:    dy, kernel -> dx      (dx's shape is the result's)
//   backward weights: x, dy -> dkernel
//
// Primitives are built once per problem and cached. oneDNN picks its own
// (blocked) kernel layout; kernels are reordered into and out of it.

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Problem {
  std::vector<int64_t> x_dims, dy_dims, k_dims, strides, pad_lo, pad_hi,
      dilation;
  int dtype;
  int kind;  // Kind below.
  bool operator<(const Problem& o) const {
    return std::tie(x_dims, dy_dims, k_dims, strides, pad_lo, pad_hi,
                    dilation, dtype, kind) <
           std::tie(o.x_dims, o.dy_dims, o.k_dims, o.strides, o.pad_lo,
                    o.pad_hi, o.dilation, o.dtype, o.kind);
  }
};

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Plan {
  dnnl::primitive primitive;
  dnnl::memory::desc src_md, dst_md, blocked_md, plain_md;
  dnnl::reorder reorder;  // Kernel: plain -> blocked, or back for kBackwardWeights.
  bool needs_reorder;
};

struct State {
  std::mutex mutex;
  std::unique_ptr<dnnl::engine> engine;
  std::unique_ptr<dnnl::stream> stream;
  std::map<Problem, std::unique_ptr<Plan>> plans;
};

State& state() {
  static State* s = new State();
  return *s;
}

dnnl::memory::dims Dims(const std::vector<int64_t>& v) {
  return dnnl::memory::dims(v.begin(), v.end());
}

// [N, *S, C] (channels last) -> oneDNN's logical [N, C, *S].
dnnl::memory::dims ActivationDims(const std::vector<int64_t>& shape) {
  dnnl::memory::dims out = {shape.front(), shape.back()};
  out.insert(out.end(), shape.begin() + 1, shape.end() - 1);
  return out;
}

Plan* GetPlan(State& s, const Problem& p) {
  auto it = s.plans.find(p);
  if (it != s.plans.end()) return it->second.get();
  using tag = dnnl::memory::format_tag;
  const int spatial = static_cast<int>(p.x_dims.size()) - 2;
  auto type = p.dtype == 1 ? dnnl::memory::data_type::bf16
                           : dnnl::memory::data_type::f32;
  tag act = spatial == 3 ? tag::ndhwc : tag::nhwc;
  tag wei = spatial == 3 ? tag::dhwio : tag::hwio;
  // Kernel [*K, I, O] -> oneDNN's logical [O, I, *K].
  dnnl::memory::dims k = {p.k_dims[spatial + 1], p.k_dims[spatial]};
  k.insert(k.end(), p.k_dims.begin(), p.k_dims.begin() + spatial);
  std::vector<int64_t> dil;
  for (int64_t d : p.dilation) dil.push_back(d - 1);  // oneDNN: 0 = dense.
  auto src_md = dnnl::memory::desc(ActivationDims(p.x_dims), type, act);
  auto dst_md = dnnl::memory::desc(ActivationDims(p.dy_dims), type, act);
  auto plain_md = dnnl::memory::desc(k, type, wei);
  auto any_md = dnnl::memory::desc(k, type, tag::any);
  auto fwd = dnnl::convolution_forward::primitive_desc(
      *s.engine, dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, src_md, any_md, dst_md,
      Dims(p.strides), Dims(dil), Dims(p.pad_lo), Dims(p.pad_hi));
  auto plan = std::make_unique<Plan>();
  plan->src_md = src_md;
  plan->dst_md = dst_md;
  plan->plain_md = plain_md;
  if (p.kind == kForward) {
    plan->primitive = dnnl::convolution_forward(fwd);
    plan->blocked_md = fwd.weights_desc();
  } else if (p.kind == kBackwardData) {
    auto bwd = dnnl::convolution_backward_data::primitive_desc(
        *s.engine, dnnl::algorithm::convolution_direct, src_md, any_md,
        dst_md, Dims(p.strides), Dims(dil), Dims(p.pad_lo), Dims(p.pad_hi),
        fwd);
    plan->primitive = dnnl::convolution_backward_data(bwd);
    plan->blocked_md = bwd.weights_desc();
  } else {
    auto bwd = dnnl::convolution_backward_weights::primitive_desc(
        *s.engine, dnnl::algorithm::convolution_direct, src_md, any_md,
        dst_md, Dims(p.strides), Dims(dil), Dims(p.pad_lo), Dims(p.pad_hi),
        fwd);
    plan->primitive = dnnl::convolution_backward_weights(bwd);
    plan->blocked_md = bwd.diff_weights_desc();
  }
  plan->needs_reorder = plan->blocked_md != plain_md;
  if (plan->needs_reorder) {
    auto from = p.kind == kBackwardWeights ? plan->blocked_md : plain_md;
    auto to = p.kind == kBackwardWeights ? plain_md : plan->blocked_md;
    plan->reorder = dnnl::reorder(
        dnnl::reorder::primitive_desc(*s.engine, from, *s.engine, to));
  }
  Plan* raw = plan.get();
  s.plans.emplace(p, std::move(plan));
  return raw;
}

std::vector<int64_t> ToVector(ffi::Span<const int64_t> span) {
  return std::vector<int64_t>(span.begin(), span.end());
}

// One convolution primitive on (a, b) -> out; `kind` says which operands
// these are (module comment).
ffi::Error Run(Kind kind, ffi::AnyBuffer a, ffi::AnyBuffer b,
               ffi::Result<ffi::AnyBuffer> out,
               ffi::Span<const int64_t> strides,
               ffi::Span<const int64_t> padding_low,
               ffi::Span<const int64_t> padding_high,
               ffi::Span<const int64_t> dilation) {
  auto dtype = a.element_type();
  if (dtype != ffi::DataType::F32 && dtype != ffi::DataType::BF16) {
    return ffi::Error::InvalidArgument("onednn conv: float32 or bfloat16 only");
  }
  if (b.element_type() != dtype || out->element_type() != dtype) {
    return ffi::Error::InvalidArgument("onednn conv: mixed element types");
  }
  auto as_vector = [](auto dims) {
    return std::vector<int64_t>(dims.begin(), dims.end());
  };
  Problem p;
  p.kind = kind;
  // x, dy, kernel shapes, wherever they are among the operands.
  if (kind == kForward) {
    p.x_dims = as_vector(a.dimensions());
    p.k_dims = as_vector(b.dimensions());
    p.dy_dims = as_vector(out->dimensions());
  } else if (kind == kBackwardData) {
    p.dy_dims = as_vector(a.dimensions());
    p.k_dims = as_vector(b.dimensions());
    p.x_dims = as_vector(out->dimensions());
  } else {
    p.x_dims = as_vector(a.dimensions());
    p.dy_dims = as_vector(b.dimensions());
    p.k_dims = as_vector(out->dimensions());
  }
  p.strides = ToVector(strides);
  p.pad_lo = ToVector(padding_low);
  p.pad_hi = ToVector(padding_high);
  p.dilation = ToVector(dilation);
  p.dtype = dtype == ffi::DataType::BF16 ? 1 : 0;
  const size_t spatial = p.x_dims.size() - 2;
  if ((spatial != 2 && spatial != 3) || p.dy_dims.size() != spatial + 2 ||
      p.strides.size() != spatial || p.pad_lo.size() != spatial ||
      p.pad_hi.size() != spatial || p.dilation.size() != spatial ||
      p.k_dims.size() != spatial + 2) {
    return ffi::Error::InvalidArgument("onednn conv: bad ranks");
  }
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  try {
    if (!s.engine) {
      s.engine = std::make_unique<dnnl::engine>(dnnl::engine::kind::cpu, 0);
      s.stream = std::make_unique<dnnl::stream>(*s.engine);
    }
    Plan* plan = GetPlan(s, p);
    auto& eng = *s.engine;
    if (kind == kBackwardWeights) {
      dnnl::memory src(plan->src_md, eng, a.untyped_data());
      dnnl::memory dst(plan->dst_md, eng, b.untyped_data());
      dnnl::memory plain(plan->plain_md, eng, out->untyped_data());
      dnnl::memory dk = plan->needs_reorder
                            ? dnnl::memory(plan->blocked_md, eng)
                            : plain;
      // Taps that only ever meet padding are not written by every
      // implementation: their gradient is zero. (Kernels are small.)
      std::memset(dk.get_data_handle(), 0, plan->blocked_md.get_size());
      plan->primitive.execute(*s.stream, {{DNNL_ARG_SRC, src},
                                          {DNNL_ARG_DIFF_DST, dst},
                                          {DNNL_ARG_DIFF_WEIGHTS, dk}});
      if (plan->needs_reorder) plan->reorder.execute(*s.stream, dk, plain);
    } else {
      dnnl::memory plain(plan->plain_md, eng, b.untyped_data());
      dnnl::memory k = plain;
      if (plan->needs_reorder) {
        k = dnnl::memory(plan->blocked_md, eng);
        plan->reorder.execute(*s.stream, plain, k);
      }
      if (kind == kForward) {
        dnnl::memory src(plan->src_md, eng, a.untyped_data());
        dnnl::memory dst(plan->dst_md, eng, out->untyped_data());
        plan->primitive.execute(*s.stream, {{DNNL_ARG_SRC, src},
                                            {DNNL_ARG_WEIGHTS, k},
                                            {DNNL_ARG_DST, dst}});
      } else {
        dnnl::memory dst(plan->dst_md, eng, a.untyped_data());
        dnnl::memory src(plan->src_md, eng, out->untyped_data());
        plan->primitive.execute(*s.stream, {{DNNL_ARG_DIFF_DST, dst},
                                            {DNNL_ARG_WEIGHTS, k},
                                            {DNNL_ARG_DIFF_SRC, src}});
      }
    }
    s.stream->wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

template <Kind kind>
ffi::Error RunKind(ffi::AnyBuffer a, ffi::AnyBuffer b,
                   ffi::Result<ffi::AnyBuffer> out,
                   ffi::Span<const int64_t> strides,
                   ffi::Span<const int64_t> padding_low,
                   ffi::Span<const int64_t> padding_high,
                   ffi::Span<const int64_t> dilation) {
  return Run(kind, a, b, out, strides, padding_low, padding_high, dilation);
}

constexpr auto kBinding = [] {
  return ffi::Ffi::Bind()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Ret<ffi::AnyBuffer>()
      .Attr<ffi::Span<const int64_t>>("strides")
      .Attr<ffi::Span<const int64_t>>("padding_low")
      .Attr<ffi::Span<const int64_t>>("padding_high")
      .Attr<ffi::Span<const int64_t>>("dilation");
};

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MedsegOnednnConvForward, RunKind<kForward>,
                              kBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MedsegOnednnConvBackwardData,
                              RunKind<kBackwardData>, kBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MedsegOnednnConvWeightGrad,
                              RunKind<kBackwardWeights>, kBinding());

// Creates the engine (a SYCL CPU device in the PyPI build): 0 on success.
extern "C" int medseg_onednn_probe() {
  try {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!s.engine) {
      s.engine = std::make_unique<dnnl::engine>(dnnl::engine::kind::cpu, 0);
      s.stream = std::make_unique<dnnl::stream>(*s.engine);
    }
    return 0;
  } catch (const dnnl::error&) {
    return 1;
  }
}
