// Training-mode batch normalisation, optionally followed by a ReLU, as XLA
// FFI custom calls for the CPU (medseg_jax/models/cpu_kernels.py loads and
// calls them).
//
// XLA:CPU computes batch norm as separate fusions: the squares x * x are
// written out, the two channel sums are matrix-vector products, the
// normalisation and the ReLU are one more pass, and the backward pass
// repeats the pattern for sum(g) and sum(g * x). Here the forward pass
// reads x twice (the sums, then the normalisation and ReLU) and writes y
// once; the backward pass reads x and dy twice and writes dx once. The ReLU
// mask is recomputed from x in the backward pass, so nothing beyond x is
// kept for it.
//
// Layout: x, y, dy, dx are [R, C] (every axis but the channels flattened
// into rows), float32. Per-channel operands are f32[C]. The statistics are
// those of medseg_jax.models.batch_norm: mean = E[x], var = max(E[x^2] -
// E[x]^2, 0) (biased), y = (x - mean) * rsqrt(var + eps) * scale + bias.
// Sums are accumulated in float32 over blocks of rows and in float64
// across blocks.
//
// Threads: the work is split into row ranges and run on XLA's own intra-op
// thread pool (the FFI ThreadPool context), with the calling thread taking
// ranges too, so the kernel never uses more threads than XLA was given.
//
//   forward:  x, scale, bias                          -> y, mean, var
//   backward: x, scale, bias, mean, var, dy, dmean, dvar -> dx, dscale, dbias
//   attributes: epsilon (f32), relu (bool)

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlockRows = 64;

// Runs body(task) for task in [0, tasks) on the pool and the calling thread.
// Helpers claim task indices from a shared counter; the caller waits only
// for tasks some thread has already claimed, so it cannot wait on a helper
// that never gets a thread. A helper that starts after all tasks are taken
// returns without touching `body`.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t tasks, const Body& body) {
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>();
  const Body* body_ptr = &body;
  auto drain = [shared, tasks, body_ptr]() {
    for (;;) {
      int64_t task = shared->next.fetch_add(1);
      if (task >= tasks) return;
      (*body_ptr)(task);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), tasks - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(drain)(drain));
  drain();
  while (shared->done.load(std::memory_order_acquire) < tasks) {
    std::this_thread::yield();
  }
}

// How many row ranges: enough for every thread, a few rows each at least.
int64_t NumTasks(ffi::ThreadPool& pool, int64_t rows, int64_t channels) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  int64_t by_size = std::max<int64_t>(1, rows * channels / 16384);
  return std::min<int64_t>(threads, by_size);
}

struct Range {
  int64_t begin, end;
};

Range RowRange(int64_t task, int64_t tasks, int64_t rows) {
  return {rows * task / tasks, rows * (task + 1) / tasks};
}

// Per-channel affine coefficients of the normalisation: y = x * a + b.
// Forward and backward both derive them from the float32 statistics with
// this function, so the backward pass sees the forward pass's ReLU mask.
void Coefficients(const float* scale, const float* bias, const float* mean,
                  const float* var, float epsilon, int64_t channels,
                  float* inv, float* a, float* b) {
  for (int64_t c = 0; c < channels; ++c) {
    inv[c] = 1.0f / std::sqrt(var[c] + epsilon);
    a[c] = inv[c] * scale[c];
    b[c] = bias[c] - mean[c] * a[c];
  }
}

// Sums of u and u * (v - shift) per channel over rows [begin, end), into s
// and q (float64); shift may be null (0). With kMask, u is zeroed where
// x * a + b <= 0.
template <bool kMask, bool kSquare>
void ChannelSums(const float* u, const float* v, const float* shift,
                 const float* x, const float* a, const float* b,
                 int64_t channels, Range range, double* s, double* q) {
  std::vector<float> zeros(shift == nullptr ? channels : 0, 0.0f);
  const float* __restrict sh = shift == nullptr ? zeros.data() : shift;
  std::vector<float> bs(channels), bq(channels);
  for (int64_t start = range.begin; start < range.end; start += kBlockRows) {
    int64_t stop = std::min(range.end, start + kBlockRows);
    std::fill(bs.begin(), bs.end(), 0.0f);
    std::fill(bq.begin(), bq.end(), 0.0f);
    float* __restrict ps = bs.data();
    float* __restrict pq = bq.data();
    for (int64_t r = start; r < stop; ++r) {
      const float* ur = u + r * channels;
      const float* vr = kSquare ? ur : v + r * channels;
      const float* xr = x + r * channels;
      for (int64_t c = 0; c < channels; ++c) {
        float uc = ur[c];
        if (kMask) uc = (xr[c] * a[c] + b[c] > 0.0f) ? uc : 0.0f;
        ps[c] += uc;
        pq[c] += uc * (vr[c] - sh[c]);
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      s[c] += bs[c];
      q[c] += bq[c];
    }
  }
}

// Sums of per-task partials (task-major [tasks, C]) into out.
void Reduce(const std::vector<double>& partial, int64_t tasks,
            int64_t channels, double* out) {
  for (int64_t c = 0; c < channels; ++c) out[c] = 0.0;
  for (int64_t t = 0; t < tasks; ++t) {
    for (int64_t c = 0; c < channels; ++c) out[c] += partial[t * channels + c];
  }
}

ffi::Error BatchNormForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::F32> scale,
                            ffi::Buffer<ffi::F32> bias,
                            ffi::ResultBuffer<ffi::F32> y,
                            ffi::ResultBuffer<ffi::F32> mean_out,
                            ffi::ResultBuffer<ffi::F32> var_out, float epsilon,
                            bool relu) {
  auto dims = x.dimensions();
  if (dims.size() < 1) {
    return ffi::Error::InvalidArgument("batch norm: x has no channel axis");
  }
  const int64_t channels = dims.back();
  const int64_t rows = channels == 0 ? 0 : x.element_count() / channels;
  if (rows == 0) return ffi::Error::Success();
  const float* xp = x.typed_data();
  float* yp = y->typed_data();

  const int64_t tasks = NumTasks(pool, rows, channels);
  std::vector<double> sums(tasks * channels, 0.0), squares(tasks * channels,
                                                           0.0);
  ParallelFor(pool, tasks, [&](int64_t task) {
    ChannelSums<false, true>(xp, xp, nullptr, xp, nullptr, nullptr, channels,
                             RowRange(task, tasks, rows),
                             sums.data() + task * channels,
                             squares.data() + task * channels);
  });
  std::vector<double> s(channels), q(channels);
  Reduce(sums, tasks, channels, s.data());
  Reduce(squares, tasks, channels, q.data());
  float* mean = mean_out->typed_data();
  float* var = var_out->typed_data();
  for (int64_t c = 0; c < channels; ++c) {
    float m = static_cast<float>(s[c] / rows);
    float m2 = static_cast<float>(q[c] / rows);
    mean[c] = m;
    var[c] = std::max(m2 - m * m, 0.0f);
  }
  std::vector<float> inv(channels), a(channels), b(channels);
  Coefficients(scale.typed_data(), bias.typed_data(), mean, var, epsilon,
               channels, inv.data(), a.data(), b.data());

  const int64_t write_tasks = tasks * 4;
  ParallelFor(pool, write_tasks, [&](int64_t task) {
    Range range = RowRange(task, write_tasks, rows);
    const float* __restrict pa = a.data();
    const float* __restrict pb = b.data();
    for (int64_t r = range.begin; r < range.end; ++r) {
      const float* __restrict xr = xp + r * channels;
      float* __restrict yr = yp + r * channels;
      if (relu) {
        for (int64_t c = 0; c < channels; ++c) {
          yr[c] = std::max(xr[c] * pa[c] + pb[c], 0.0f);
        }
      } else {
        for (int64_t c = 0; c < channels; ++c) yr[c] = xr[c] * pa[c] + pb[c];
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error BatchNormBackward(
    ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
    ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> mean_in,
    ffi::Buffer<ffi::F32> var_in, ffi::Buffer<ffi::F32> dy,
    ffi::Buffer<ffi::F32> dmean, ffi::Buffer<ffi::F32> dvar,
    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
    ffi::ResultBuffer<ffi::F32> dbias, float epsilon, bool relu) {
  auto dims = x.dimensions();
  if (dims.size() < 1) {
    return ffi::Error::InvalidArgument("batch norm: x has no channel axis");
  }
  if (dy.element_count() != x.element_count()) {
    return ffi::Error::InvalidArgument("batch norm: dy and x differ in size");
  }
  const int64_t channels = dims.back();
  const int64_t rows = channels == 0 ? 0 : x.element_count() / channels;
  float* dscale_p = dscale->typed_data();
  float* dbias_p = dbias->typed_data();
  if (rows == 0) {
    std::fill(dscale_p, dscale_p + channels, 0.0f);
    std::fill(dbias_p, dbias_p + channels, 0.0f);
    return ffi::Error::Success();
  }
  const float* xp = x.typed_data();
  const float* dyp = dy.typed_data();
  const float* mean = mean_in.typed_data();
  const float* var = var_in.typed_data();
  const float* sc = scale.typed_data();
  float* dxp = dx->typed_data();

  std::vector<float> inv(channels), a(channels), b(channels);
  Coefficients(sc, bias.typed_data(), mean, var, epsilon, channels,
               inv.data(), a.data(), b.data());

  const int64_t tasks = NumTasks(pool, rows, channels);
  std::vector<double> sums(tasks * channels, 0.0), crosses(tasks * channels,
                                                           0.0);
  ParallelFor(pool, tasks, [&](int64_t task) {
    Range range = RowRange(task, tasks, rows);
    double* s = sums.data() + task * channels;
    double* q = crosses.data() + task * channels;
    if (relu) {
      ChannelSums<true, false>(dyp, xp, mean, xp, a.data(), b.data(),
                               channels, range, s, q);
    } else {
      ChannelSums<false, false>(dyp, xp, mean, xp, nullptr, nullptr,
                                channels, range, s, q);
    }
  });
  std::vector<double> sum_g(channels), sum_gc(channels);
  Reduce(sums, tasks, channels, sum_g.data());
  Reduce(crosses, tasks, channels, sum_gc.data());

  // dx = k1 * g + k2 * (x - mean) + k3, per channel (see batch_norm._bwd).
  std::vector<float> k1(channels), k2(channels), k3(channels);
  const float n = static_cast<float>(rows);
  const float* dmean_p = dmean.typed_data();
  const float* dvar_p = dvar.typed_data();
  for (int64_t c = 0; c < channels; ++c) {
    float g_sum = static_cast<float>(sum_g[c]);
    // sum(g * xhat) = inv * sum(g * (x - mean)): summed centred, so
    // nothing cancels.
    float g_xhat = static_cast<float>(inv[c] * sum_gc[c]);
    dscale_p[c] = g_xhat;
    dbias_p[c] = g_sum;
    float dv = var[c] > 0.0f ? dvar_p[c] : 0.0f;
    k1[c] = sc[c] * inv[c];
    k2[c] = -k1[c] * (inv[c] * g_xhat / n) + 2.0f * dv / n;
    k3[c] = -k1[c] * (g_sum / n) + dmean_p[c] / n;
  }

  const int64_t write_tasks = tasks * 4;
  ParallelFor(pool, write_tasks, [&](int64_t task) {
    Range range = RowRange(task, write_tasks, rows);
    const float* __restrict pa = a.data();
    const float* __restrict pb = b.data();
    const float* __restrict p1 = k1.data();
    const float* __restrict p2 = k2.data();
    const float* __restrict p3 = k3.data();
    for (int64_t r = range.begin; r < range.end; ++r) {
      const float* __restrict xr = xp + r * channels;
      const float* __restrict gr = dyp + r * channels;
      float* __restrict out = dxp + r * channels;
      if (relu) {
        for (int64_t c = 0; c < channels; ++c) {
          float g = (xr[c] * pa[c] + pb[c] > 0.0f) ? gr[c] : 0.0f;
          out[c] = p1[c] * g + p2[c] * (xr[c] - mean[c]) + p3[c];
        }
      } else {
        for (int64_t c = 0; c < channels; ++c) {
          out[c] = p1[c] * gr[c] + p2[c] * (xr[c] - mean[c]) + p3[c];
        }
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MedsegBatchNormForward, BatchNormForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MedsegBatchNormBackward, BatchNormBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("relu"));

// 0 when the library loaded (for ctypes).
extern "C" int medseg_cpu_kernels_probe() { return 0; }
