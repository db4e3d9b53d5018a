// One LSTM layer through oneDNN's fused RNN primitive (the primitive that
// PyTorch's CPU nn.LSTM calls), exposed to JAX as two XLA FFI handlers.
//
// Built on first use by lstm_jax/layers/onednn.py (g++, oneDNN from the
// `onednn-cpu-gomp` wheels); docs/performance.md says why it exists: on CPU
// this primitive runs the recurrence at ~90% of the machine's best GEMM rate,
// which XLA-compiled loops do not reach.
//
// Layouts are ours, row-major, and need no conversion on the JAX side:
//   xs [T, B, D] = oneDNN "tnc";  h, c [B, H] = "ldnc" with L = D = 1;
//   w_x [D, 4H], w_h [H, 4H] = "ldigo" (gates i, f, g, o: oneDNN's order);
//   b [4H] = "ldgo" (oneDNN's vanilla LSTM has a single bias, like ours).
// The primitive may want its weights in another layout (backward wants
// "ldgoi"); they are reordered per call (a few MB, ~1% of a layer).

#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;

struct Shape {
  int64_t t, b, d, h;
  bool operator<(const Shape& o) const {
    return std::tie(t, b, d, h) < std::tie(o.t, o.b, o.d, o.h);
  }
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

memory::desc F32(memory::dims dims, Tag tag) {
  return memory::desc(dims, memory::data_type::f32, tag);
}

// The user-side (our) memory descriptors of one shape.
struct UserDescs {
  memory::desc layer_in, state, w_x, w_h, bias, layer_out;
  explicit UserDescs(const Shape& s)
      : layer_in(F32({s.t, s.b, s.d}, Tag::tnc)),
        state(F32({1, 1, s.b, s.h}, Tag::ldnc)),
        w_x(F32({1, 1, s.d, 4, s.h}, Tag::ldigo)),
        w_h(F32({1, 1, s.h, 4, s.h}, Tag::ldigo)),
        bias(F32({1, 1, 4, s.h}, Tag::ldgo)),
        layer_out(F32({s.t, s.b, s.h}, Tag::tnc)) {}
};

// Primitive descriptors and primitives of one shape, created once: creating
// them generates code, far slower than a call.
struct Layer {
  UserDescs user;
  dnnl::lstm_forward::primitive_desc fwd_pd;
  dnnl::lstm_backward::primitive_desc bwd_pd;
  dnnl::lstm_forward fwd;
  dnnl::lstm_backward bwd;

  explicit Layer(const Shape& s) : user(s) {
    // A user-managed scratchpad: the library-managed one is set up for the
    // thread that creates the primitive, and XLA runs it on another.
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const auto any_wx = F32({1, 1, s.d, 4, s.h}, Tag::any);
    const auto any_wh = F32({1, 1, s.h, 4, s.h}, Tag::any);
    const auto dir = dnnl::rnn_direction::unidirectional_left2right;
    const auto& u = user;
    fwd_pd = dnnl::lstm_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training, dir, u.layer_in, u.state,
        u.state, any_wx, any_wh, u.bias, u.layer_out, u.state, u.state, attr);
    bwd_pd = dnnl::lstm_backward::primitive_desc(
        Engine(), dnnl::prop_kind::backward, dir, u.layer_in, u.state, u.state,
        any_wx, any_wh, u.bias, u.layer_out, u.state, u.state, u.layer_in,
        u.state, u.state, any_wx, any_wh, u.bias, u.layer_out, u.state,
        u.state, fwd_pd, attr);
    fwd = dnnl::lstm_forward(fwd_pd);
    bwd = dnnl::lstm_backward(bwd_pd);
  }
};

Layer& GetLayer(const Shape& s) {
  static std::mutex mu;
  static std::map<Shape, std::unique_ptr<Layer>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[s];
  if (!slot) slot = std::make_unique<Layer>(s);
  return *slot;
}

memory Wrap(const memory::desc& md, const void* data) {
  return memory(md, Engine(), const_cast<void*>(data));
}

// This thread's scratchpad, at least `bytes` long (kept and reused: a fresh
// buffer per call would be page-faulted in on every call).
memory Scratchpad(const memory::desc& md) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> buf;
  thread_local size_t size = 0;
  const size_t bytes = md.get_size();
  if (bytes > size) {
    buf.reset(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (!buf) throw std::bad_alloc();
    size = bytes;
  }
  return memory(md, Engine(), buf.get());
}

// `user` in the layout the primitive wants (a reorder only if they differ).
memory AsWanted(const memory& user, const memory::desc& want,
                dnnl::stream& s) {
  if (user.get_desc() == want) return user;
  memory out(want, Engine());
  dnnl::reorder(user, out).execute(s, const_cast<memory&>(user), out);
  return out;
}

// A zeroed gradient buffer in the layout the primitive writes: the primitive
// *adds* weight gradients into it (rnn_flags::undef in the C++ API).
memory ZeroedGrad(const memory& user, const memory::desc& want) {
  memory out = user.get_desc() == want ? user : memory(want, Engine());
  std::memset(out.get_data_handle(), 0, want.get_size());
  return out;
}

void CopyBack(const memory& from, const memory& user, dnnl::stream& s) {
  if (from.get_data_handle() == user.get_data_handle()) return;
  dnnl::reorder(from, user).execute(s, const_cast<memory&>(from),
                                    const_cast<memory&>(user));
}

ffi::ErrorOr<Shape> ShapeOf(ffi::Buffer<ffi::F32> xs,
                            ffi::Buffer<ffi::F32> h0) {
  auto x = xs.dimensions();
  auto h = h0.dimensions();
  if (x.size() != 3 || h.size() != 2 || h[0] != x[1])
    return ffi::Error::InvalidArgument(
        "onednn lstm: expected xs [T, B, D] and h0 [B, H]");
  return Shape{x[0], x[1], x[2], h[1]};
}

// Runs every oneDNN call on one long-lived thread. oneDNN's OpenMP keeps one
// thread team per calling thread, and XLA calls a handler from whichever of
// its pool threads is free: with several teams, the idle ones' spin-waiting
// workers take the cores from the busy team (measured: 1.2-1.5x slower
// layers on 2 cores). One caller means one team, as in PyTorch.
class OneThread {
 public:
  OneThread() : thread_([this] { Loop(); }) {}
  ~OneThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  void Run(const std::function<void()>& fn) {
    std::packaged_task<void()> task(fn);
    std::future<void> done = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    done.get();  // rethrows what fn threw
  }

 private:
  void Loop() {
    for (;;) {
      std::packaged_task<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (stop_ && queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> queue_;
  bool stop_ = false;
  std::thread thread_;
};

OneThread& Worker() {
  static OneThread* worker = new OneThread();  // never destroyed: no join at exit
  return *worker;
}

template <typename F>
ffi::Error Guarded(F&& body) {
  try {
    Worker().Run(body);
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(e.what());
  }
}

using In = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error ForwardImpl(In xs, In h0, In c0, In w_x, In w_h, In b, Out hs,
                       Out h_last, Out c_last,
                       ffi::ResultBuffer<ffi::U8> workspace) {
  auto shape = ShapeOf(xs, h0);
  if (shape.has_error()) return shape.error();
  return Guarded([&] {
    Layer& L = GetLayer(shape.value());
    const UserDescs& u = L.user;
    dnnl::stream s(Engine());
    memory wx = AsWanted(Wrap(u.w_x, w_x.untyped_data()),
                         L.fwd_pd.weights_layer_desc(), s);
    memory wh = AsWanted(Wrap(u.w_h, w_h.untyped_data()),
                         L.fwd_pd.weights_iter_desc(), s);
    L.fwd.execute(
        s, {{DNNL_ARG_SRC_LAYER, Wrap(u.layer_in, xs.untyped_data())},
            {DNNL_ARG_SRC_ITER, Wrap(u.state, h0.untyped_data())},
            {DNNL_ARG_SRC_ITER_C, Wrap(u.state, c0.untyped_data())},
            {DNNL_ARG_WEIGHTS_LAYER, wx},
            {DNNL_ARG_WEIGHTS_ITER, wh},
            {DNNL_ARG_BIAS, Wrap(u.bias, b.untyped_data())},
            {DNNL_ARG_DST_LAYER, Wrap(u.layer_out, hs->untyped_data())},
            {DNNL_ARG_DST_ITER, Wrap(u.state, h_last->untyped_data())},
            {DNNL_ARG_DST_ITER_C, Wrap(u.state, c_last->untyped_data())},
            {DNNL_ARG_WORKSPACE, Wrap(L.fwd_pd.workspace_desc(),
                                      workspace->untyped_data())},
            {DNNL_ARG_SCRATCHPAD, Scratchpad(L.fwd_pd.scratchpad_desc())}});
    s.wait();
  });
}

ffi::Error BackwardImpl(In xs, In h0, In c0, In w_x, In w_h, In b, In hs,
                        In h_last, In c_last, ffi::Buffer<ffi::U8> workspace,
                        In d_hs, In d_h_last, In d_c_last, Out d_xs, Out d_h0,
                        Out d_c0, Out d_w_x, Out d_w_h, Out d_b) {
  auto shape = ShapeOf(xs, h0);
  if (shape.has_error()) return shape.error();
  return Guarded([&] {
    Layer& L = GetLayer(shape.value());
    const UserDescs& u = L.user;
    const auto& pd = L.bwd_pd;
    dnnl::stream s(Engine());
    memory wx = AsWanted(Wrap(u.w_x, w_x.untyped_data()),
                         pd.weights_layer_desc(), s);
    memory wh = AsWanted(Wrap(u.w_h, w_h.untyped_data()),
                         pd.weights_iter_desc(), s);
    memory user_dwx = Wrap(u.w_x, d_w_x->untyped_data());
    memory user_dwh = Wrap(u.w_h, d_w_h->untyped_data());
    memory dwx = ZeroedGrad(user_dwx, pd.diff_weights_layer_desc());
    memory dwh = ZeroedGrad(user_dwh, pd.diff_weights_iter_desc());
    memory db = ZeroedGrad(Wrap(u.bias, d_b->untyped_data()), u.bias);
    L.bwd.execute(
        s, {{DNNL_ARG_SRC_LAYER, Wrap(u.layer_in, xs.untyped_data())},
            {DNNL_ARG_SRC_ITER, Wrap(u.state, h0.untyped_data())},
            {DNNL_ARG_SRC_ITER_C, Wrap(u.state, c0.untyped_data())},
            {DNNL_ARG_WEIGHTS_LAYER, wx},
            {DNNL_ARG_WEIGHTS_ITER, wh},
            {DNNL_ARG_BIAS, Wrap(u.bias, b.untyped_data())},
            {DNNL_ARG_DST_LAYER, Wrap(u.layer_out, hs.untyped_data())},
            {DNNL_ARG_DST_ITER, Wrap(u.state, h_last.untyped_data())},
            {DNNL_ARG_DST_ITER_C, Wrap(u.state, c_last.untyped_data())},
            {DNNL_ARG_WORKSPACE,
             Wrap(pd.workspace_desc(), workspace.untyped_data())},
            {DNNL_ARG_DIFF_DST_LAYER, Wrap(u.layer_out, d_hs.untyped_data())},
            {DNNL_ARG_DIFF_DST_ITER, Wrap(u.state, d_h_last.untyped_data())},
            {DNNL_ARG_DIFF_DST_ITER_C,
             Wrap(u.state, d_c_last.untyped_data())},
            {DNNL_ARG_DIFF_SRC_LAYER, Wrap(u.layer_in, d_xs->untyped_data())},
            {DNNL_ARG_DIFF_SRC_ITER, Wrap(u.state, d_h0->untyped_data())},
            {DNNL_ARG_DIFF_SRC_ITER_C, Wrap(u.state, d_c0->untyped_data())},
            {DNNL_ARG_DIFF_WEIGHTS_LAYER, dwx},
            {DNNL_ARG_DIFF_WEIGHTS_ITER, dwh},
            {DNNL_ARG_DIFF_BIAS, db},
            {DNNL_ARG_SCRATCHPAD, Scratchpad(pd.scratchpad_desc())}});
    CopyBack(dwx, user_dwx, s);
    CopyBack(dwh, user_dwh, s);
    s.wait();
  });
}

}  // namespace

// Bytes of the forward's workspace (the gate activations and states the
// backward reads), which JAX must allocate as an output of the forward.
extern "C" int64_t lstm_jax_onednn_workspace_bytes(int64_t t, int64_t b,
                                                   int64_t d, int64_t h) {
  try {
    return static_cast<int64_t>(
        GetLayer(Shape{t, b, d, h}).fwd_pd.workspace_desc().get_size());
  } catch (const std::exception&) {
    return -1;
  }
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxOnednnForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<In>()  // xs
                                  .Arg<In>()  // h0
                                  .Arg<In>()  // c0
                                  .Arg<In>()  // w_x
                                  .Arg<In>()  // w_h
                                  .Arg<In>()  // b
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h_last
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c_last
                                  .Ret<ffi::Buffer<ffi::U8>>());  // workspace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxOnednnBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<In>()  // xs
                                  .Arg<In>()  // h0
                                  .Arg<In>()  // c0
                                  .Arg<In>()  // w_x
                                  .Arg<In>()  // w_h
                                  .Arg<In>()  // b
                                  .Arg<In>()  // hs
                                  .Arg<In>()  // h_last
                                  .Arg<In>()  // c_last
                                  .Arg<ffi::Buffer<ffi::U8>>()  // workspace
                                  .Arg<In>()  // d_hs
                                  .Arg<In>()  // d_h_last
                                  .Arg<In>()  // d_c_last
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_xs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_h0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_c0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_w_x
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_w_h
                                  .Ret<ffi::Buffer<ffi::F32>>());  // d_b
