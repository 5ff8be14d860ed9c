// openmla-bench GPU mode: builds each SPEC §8 configuration on the device, times the whole call
// (DecodePlan::update + operator) by CUDA-graph replay and as one eager call, and reports.
#if defined(OPENMLA_WITH_CUDA)

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <thread>

#include "bench.h"
#include "gpu.h"

namespace openmla::bench {

void measure_copy_ceiling(bool quick, Ceilings& ceil);  // gpu_ceilings.cpp
void measure_gemm_ceiling(bool quick, Ceilings& ceil);

int cuda_device_count(std::string& why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    why = std::string("cudaGetDeviceCount: ") + cudaGetErrorName(err) + " (" +
          cudaGetErrorString(err) + ")";
    (void)cudaGetLastError();  // clear it: the CPU path must not trip over it
    return 0;
  }
  if (n == 0) why = "cudaGetDeviceCount reports 0 devices";
  return n;
}

namespace {

const Device kGpu = cuda_device(0);
constexpr int kMaxSets = 32;

// One input set: its device buffers and the whole call on them.
struct InputSet {
  std::vector<DeviceBuffer> bufs;
  std::function<void(cudaStream_t)> call;
  // Decode only: the two halves of `call`, timed separately as well.
  std::function<void(cudaStream_t)> plan_call, op_call;
};

struct Case {
  std::unique_ptr<DecodePlan> plan;  // shared by the sets (same lengths, same shapes)
  std::vector<InputSet> sets;
  Work work;
};

// CUDA events, destroyed on every path out of a scope.
class Events {
 public:
  explicit Events(int n) : ev_(n, nullptr) {
    for (auto& e : ev_) OPENMLA_CUDA_CHECK(cudaEventCreate(&e));
  }
  ~Events() {
    for (auto& e : ev_)
      if (e != nullptr) (void)cudaEventDestroy(e);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
  cudaEvent_t operator[](size_t i) const { return ev_[i]; }
  // Milliseconds between events i and j.
  float ms(size_t i, size_t j) const {
    float t = 0;
    OPENMLA_CUDA_CHECK(cudaEventElapsedTime(&t, ev_[i], ev_[j]));
    return t;
  }

 private:
  std::vector<cudaEvent_t> ev_;
};

template <class T>
TensorView upload(InputSet& set, const std::vector<T>& host, DType dtype,
                  std::initializer_list<int64_t> shape, cudaStream_t stream) {
  set.bufs.emplace_back(std::max<size_t>(host.size() * sizeof(T), 1));
  DeviceBuffer& b = set.bufs.back();
  if (!host.empty())
    OPENMLA_CUDA_CHECK(cudaMemcpyAsync(b.get(), host.data(), host.size() * sizeof(T),
                                       cudaMemcpyHostToDevice, stream));
  // Synchronous here: `host` may not outlive this call.
  OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return TensorView::contiguous(b.get(), dtype, kGpu, shape);
}

// A device tensor of random bf16 (N(0, 1)) values.
TensorView random_bf16(InputSet& set, std::initializer_list<int64_t> shape, uint64_t seed,
                       cudaStream_t stream) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  set.bufs.emplace_back(size_t(std::max<int64_t>(n, 1)) * 2);
  fill_normal_bf16(set.bufs.back().get(), size_t(n), seed, 1.0f, stream);
  return TensorView::contiguous(set.bufs.back().get(), DType::kBFloat16, kGpu, shape);
}

// An output tensor, zeroed.
TensorView output(InputSet& set, DType dtype, std::initializer_list<int64_t> shape,
                  cudaStream_t stream) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  const size_t bytes = size_t(std::max<int64_t>(n, 1)) * dtype_size(dtype);
  set.bufs.emplace_back(bytes);
  OPENMLA_CUDA_CHECK(cudaMemsetAsync(set.bufs.back().get(), 0, bytes, stream));
  return TensorView::contiguous(set.bufs.back().get(), dtype, kGpu, shape);
}

// An FP8 cache of random tokens, quantized on the device by the library's own kernel in chunks
// (a bf16 staging buffer of the whole cache would double the memory of the big configurations).
TensorView random_fp8_cache(InputSet& set, KVCacheFormat f, int64_t num_pages, int page,
                            int64_t page_bytes, uint64_t seed, cudaStream_t stream) {
  const KVCacheFormatInfo info = format_info(f);
  set.bufs.emplace_back(size_t(num_pages * page_bytes));
  uint8_t* base = set.bufs.back().as<uint8_t>();
  OPENMLA_CUDA_CHECK(cudaMemsetAsync(base, 0, size_t(num_pages * page_bytes), stream));
  const int64_t token_bytes = int64_t(page) * info.d_qk * 2;
  const int64_t chunk =
      std::max<int64_t>(1, std::min<int64_t>(num_pages, (256ll << 20) / token_bytes));
  DeviceBuffer staging(size_t(chunk * token_bytes));
  for (int64_t p0 = 0; p0 < num_pages; p0 += chunk) {
    const int64_t np = std::min(chunk, num_pages - p0);
    fill_normal_bf16(staging.get(), size_t(np * page * info.d_qk), seed + uint64_t(p0), 1.0f,
                     stream);
    QuantizeKVParams qp;
    qp.input =
        TensorView::contiguous(staging.get(), DType::kBFloat16, kGpu, {np, page, 1, info.d_qk});
    qp.cache = TensorView::strided(base + p0 * page_bytes, DType::kUInt8, kGpu,
                                   {np, page, 1, info.bytes_per_token},
                                   {page_bytes, info.bytes_per_token, info.bytes_per_token, 1});
    qp.format = f;
    qp.stream = stream;
    quantize_kv_cache(qp);
  }
  OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));  // before `staging` is freed
  return TensorView::strided(base, DType::kUInt8, kGpu, {num_pages, page, 1, info.bytes_per_token},
                             {page_bytes, info.bytes_per_token, info.bytes_per_token, 1});
}

// Device bytes one input set takes (for the rotation and memory decisions).
size_t set_bytes(const Config& c, const DecodeInputs* d, const PrefillInputs* p) {
  const double out = 2.0 * c.s_q * c.h_q * 512 * (c.op == Op::kSparsePrefill ? 1 : c.b);
  double bytes = 0;
  if (c.op == Op::kDenseDecode) {
    bytes = 2.0 * c.b * c.s_q * c.h_q * c.d_qk +
            2.0 * d->layout.num_pages * c.page * c.h_kv * c.d_qk +
            4.0 * d->layout.block_table.size() + out;
  } else if (c.op == Op::kSparseDecode) {
    bytes = 2.0 * c.b * c.s_q * c.h_q * c.d_qk + double(d->layout.num_pages) * d->page_bytes +
            double(d->extra_layout.num_pages) * d->extra_page_bytes +
            4.0 * (d->indices.size() + d->extra_indices.size()) + out;
  } else {
    bytes = 2.0 * c.s_q * c.h_q * c.d_qk + 2.0 * c.s_kv * c.d_qk + 4.0 * p->indices.size() + out +
            8.0 * c.s_q * c.h_q;
  }
  return size_t(bytes) + (1 << 20);
}

// Builds `n_sets` input sets of configuration `c` (all with the same host-side metadata).
Case build_case(const Config& c, const DecodeInputs* d, const PrefillInputs* pin, int n_sets,
                cudaStream_t stream) {
  Case k;
  if (c.op == Op::kDenseDecode || c.op == Op::kSparseDecode) {
    DecodePlanConfig pc;
    pc.batch = c.b;
    pc.s_q = c.s_q;
    pc.h_q = c.h_q;
    pc.h_kv = c.op == Op::kDenseDecode ? c.h_kv : 1;
    pc.d_qk = c.d_qk;
    pc.causal = c.causal;
    pc.batch_invariant = c.batch_invariant;
    pc.sparse = c.op == Op::kSparseDecode;
    pc.topk = c.topk;
    pc.extra_topk = c.extra_topk;
    k.plan = std::make_unique<DecodePlan>(kGpu, pc);
  }
  DecodePlan* plan = k.plan.get();
  for (int s = 0; s < n_sets; ++s) {
    k.sets.emplace_back();
    InputSet& set = k.sets.back();
    const uint64_t seed = c.seed() + 0x1000003ull * uint64_t(s + 1);
    if (c.op == Op::kDenseDecode) {
      DenseDecodeParams p;
      p.q = random_bf16(set, {c.b, c.s_q, c.h_q, c.d_qk}, seed ^ 1, stream);
      p.k_cache = random_bf16(set, {d->layout.num_pages, c.page, c.h_kv, c.d_qk}, seed ^ 2, stream);
      p.block_table =
          upload(set, d->layout.block_table, DType::kInt32, {c.b, d->layout.max_pages}, stream);
      p.cache_seqlens = upload(set, d->lengths, DType::kInt32, {c.b}, stream);
      p.out = output(set, DType::kBFloat16, {c.b, c.s_q, c.h_q, 512}, stream);
      p.lse = output(set, DType::kFloat32, {c.b, c.h_q, c.s_q}, stream);
      p.causal = c.causal;
      p.plan = plan;
      set.plan_call = [p, plan](cudaStream_t st) { plan->update(p.cache_seqlens, st); };
      set.op_call = [p](cudaStream_t st) mutable {
        p.stream = st;
        dense_decode(p);
      };
      set.call = [plan_call = set.plan_call, op_call = set.op_call](cudaStream_t st) {
        plan_call(st);
        op_call(st);
      };
    } else if (c.op == Op::kSparseDecode) {
      SparseDecodeParams p;
      p.q = random_bf16(set, {c.b, c.s_q, c.h_q, c.d_qk}, seed ^ 1, stream);
      p.k_cache = random_fp8_cache(set, c.format, d->layout.num_pages, c.page, d->page_bytes,
                                   seed ^ 2, stream);
      p.indices = upload(set, d->indices, DType::kInt32, {c.b, c.s_q, c.topk}, stream);
      if (!d->attn_sink.empty())
        p.attn_sink = upload(set, d->attn_sink, DType::kFloat32, {c.h_q}, stream);
      if (c.extra_topk > 0) {
        p.extra_k_cache = random_fp8_cache(set, c.format, d->extra_layout.num_pages, c.extra_page,
                                           d->extra_page_bytes, seed ^ 3, stream);
        p.extra_indices =
            upload(set, d->extra_indices, DType::kInt32, {c.b, c.s_q, c.extra_topk}, stream);
        if (!d->extra_topk_length.empty())
          p.extra_topk_length = upload(set, d->extra_topk_length, DType::kInt32, {c.b}, stream);
      }
      p.out = output(set, DType::kBFloat16, {c.b, c.s_q, c.h_q, 512}, stream);
      p.lse = output(set, DType::kFloat32, {c.b, c.h_q, c.s_q}, stream);
      p.plan = plan;
      set.call = [p, plan](cudaStream_t st) mutable {
        p.stream = st;
        plan->update(TensorView{}, st);  // sparse: work per request is topk, no lengths needed
        sparse_decode(p);
      };
    } else {
      SparsePrefillParams p;
      p.q = random_bf16(set, {c.s_q, c.h_q, c.d_qk}, seed ^ 1, stream);
      p.kv = random_bf16(set, {c.s_kv, 1, c.d_qk}, seed ^ 2, stream);
      p.indices = upload(set, pin->indices, DType::kInt32, {c.s_q, 1, c.topk}, stream);
      if (!pin->attn_sink.empty())
        p.attn_sink = upload(set, pin->attn_sink, DType::kFloat32, {c.h_q}, stream);
      p.out = output(set, DType::kBFloat16, {c.s_q, c.h_q, 512}, stream);
      p.max_logits = output(set, DType::kFloat32, {c.s_q, c.h_q}, stream);
      p.lse = output(set, DType::kFloat32, {c.s_q, c.h_q}, stream);
      set.call = [p](cudaStream_t st) mutable {
        p.stream = st;
        sparse_prefill(p);
      };
    }
  }
  OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return k;
}

bool mentions_not_implemented(const std::string& s) {
  return s.find("not implemented") != std::string::npos;
}

// An instantiated CUDA graph of what `record(stream)` enqueues (captured on `stream`),
// destroyed with the object. A failed capture or instantiation throws, leaving no sticky error.
class GraphExec {
 public:
  template <class Record>
  GraphExec(cudaStream_t stream, Record&& record) {
    OPENMLA_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      record(stream);
    } catch (...) {
      cudaGraph_t g = nullptr;
      (void)cudaStreamEndCapture(stream, &g);
      if (g != nullptr) (void)cudaGraphDestroy(g);
      (void)cudaGetLastError();
      throw;
    }
    cudaGraph_t graph = nullptr;
    OPENMLA_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    const cudaError_t inst = cudaGraphInstantiate(&exec_, graph, 0);
    (void)cudaGraphDestroy(graph);
    if (inst != cudaSuccess) (void)cudaGetLastError();
    OPENMLA_CUDA_CHECK(inst);
  }
  ~GraphExec() {
    if (exec_ != nullptr) (void)cudaGraphExecDestroy(exec_);
  }
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  void launch(cudaStream_t stream) const { OPENMLA_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// Captures `which(set)` for every set into one CUDA graph and replays it; per-call median and
// minimum time = replay time / sets. False (with `why`) when capture fails.
template <class Which>
bool graph_time(Case& k, Which which, const Options& opt, double eager_us, cudaStream_t stream,
                double& median_us, double& min_us, int& replays, std::string& why,
                double* clock_mhz = nullptr, double* energy_mj = nullptr,
                double* power_w = nullptr) {
  const int n = int(k.sets.size());
  std::unique_ptr<GraphExec> graph;
  try {
    graph = std::make_unique<GraphExec>(stream, [&](cudaStream_t st) {
      for (InputSet& s : k.sets) which(s)(st);
    });
  } catch (const std::exception& e) {
    (void)cudaGetLastError();
    why = e.what();
    return false;
  }
  for (int i = 0; i < 2; ++i) graph->launch(stream);
  OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
  // Replays: as many as fit in about a second (0.2 s with --quick), within [lo, hi].
  const double per_replay_us = std::max(1.0, eager_us * n);
  const int lo = opt.quick ? 5 : 20, hi = opt.quick ? 20 : 200;
  const int reps = std::clamp(int((opt.quick ? 0.2e6 : 1.0e6) / per_replay_us), lo, hi);
  Events ev(reps + 1);
  OPENMLA_CUDA_CHECK(cudaEventRecord(ev[0], stream));
  for (int i = 0; i < reps; ++i) {
    graph->launch(stream);
    OPENMLA_CUDA_CHECK(cudaEventRecord(ev[i + 1], stream));
  }
  // The board's power while the replays run (the host polls NVML meanwhile).
  double watts = std::numeric_limits<double>::quiet_NaN();
  const auto poll_power = [&] {
    if (power_w != nullptr) watts = gpu_power_until(ev[reps]);
  };
  if (clock_mhz != nullptr)
    *clock_mhz = sm_clock_mhz(stream, poll_power);  // (queued after the last event)
  else
    poll_power();
  OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<double> us(reps);
  for (int i = 0; i < reps; ++i) us[i] = ev.ms(i, i + 1) * 1e3 / n;
  if (power_w != nullptr) *power_w = watts;
  if (energy_mj != nullptr) *energy_mj = watts * ev.ms(0, reps) / (double(reps) * n);  // W * ms
  median_us = median(us);
  min_us = us.front();
  replays = reps;
  return true;
}

// The L2 flush of FlashMLA's benchmark (tests/kernelkit/bench.py: an 8 GB memset before every
// timed call, "chill time" for the GPU); allocated once, smaller when memory is short.
DeviceBuffer& rest_buffer() {
  static DeviceBuffer buf = [] {
    size_t free_b = 0, total_b = 0;
    OPENMLA_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const size_t want = size_t(8) << 30;
    return DeviceBuffer(std::min(want, free_b / 4));
  }();
  return buf;
}

// FlashMLA's own method applied to our whole call: 30 times (10 with --quick) an 8 GB memset
// then one replay of a graph holding one call, CUDA events around the replay only; the mean.
// As in FlashMLA's bench (tests/kernelkit/bench.py: a warm-up pass of the same memset-and-call
// loop before the profiled one), the timed pass follows an untimed pass of the same loop: right
// after heavy work (the previous cell's sustained replays) the GPU stays in a slower state for
// several of these iterations (harness, per-iteration times: ~1730 us, and 1860-2310 us when
// timed straight after sustained replays, at b=128 h_q=128 s_k=32768).
double rested_time(Case& k, const Options& opt, cudaStream_t stream) {
  const GraphExec graph(stream, [&](cudaStream_t st) { k.sets[0].call(st); });
  DeviceBuffer& flush = rest_buffer();
  const int reps = opt.quick ? 10 : 30;
  Events ev(2 * reps);
  for (int i = 0; i < reps; ++i) {  // the untimed pass
    OPENMLA_CUDA_CHECK(cudaMemsetAsync(flush.get(), 0, flush.bytes(), stream));
    graph.launch(stream);
  }
  for (int i = 0; i < reps; ++i) {
    OPENMLA_CUDA_CHECK(cudaMemsetAsync(flush.get(), 0, flush.bytes(), stream));
    OPENMLA_CUDA_CHECK(cudaEventRecord(ev[2 * i], stream));
    graph.launch(stream);
    OPENMLA_CUDA_CHECK(cudaEventRecord(ev[2 * i + 1], stream));
  }
  OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
  double sum = 0;
  for (int i = 0; i < reps; ++i) sum += ev.ms(2 * i, 2 * i + 1) * 1e3;
  return sum / reps;
}

// Host microseconds spent in f().
template <class F>
double host_us_of(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

// Microseconds between CUDA events recorded on `stream` right before and after f() issues its
// work (waits for the second), and f's host time in `host_us` when given.
template <class F>
double event_us(const Events& ev, cudaStream_t stream, F&& f, double* host_us = nullptr) {
  OPENMLA_CUDA_CHECK(cudaEventRecord(ev[0], stream));
  const double h = host_us_of(f);
  OPENMLA_CUDA_CHECK(cudaEventRecord(ev[1], stream));
  OPENMLA_CUDA_CHECK(cudaEventSynchronize(ev[1]));
  if (host_us != nullptr) *host_us = h;
  return ev.ms(0, 1) * 1e3;
}

// Times the case: eager calls first (they also tell whether the operator exists), then a CUDA
// graph holding one call per input set, replayed.
void time_case(Case& k, const Options& opt, cudaStream_t stream, Result& r) {
  const int n = int(k.sets.size());
  // 1. First call: not-implemented and other errors surface here, outside any capture.
  k.sets[0].call(stream);
  OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));

  // 2. Eager: single calls on an idle stream, CUDA events around each, rotating over the sets.
  std::vector<double> eager, host;
  {
    Events ev(2);
    const int eager_reps = opt.quick ? 3 : 11;
    for (int i = 0; i < eager_reps; ++i) {
      InputSet& s = k.sets[(i + 1) % n];
      double h = 0;
      eager.push_back(event_us(ev, stream, [&] { s.call(stream); }, &h));
      host.push_back(h);
    }
  }
  r.eager_us = median(eager);
  r.host_us = median(host);
  {
    Events ev(2);
    std::vector<double> queued, empty, empty_host;
    for (int i = 0; i < (opt.quick ? 5 : 11); ++i) {
      InputSet& s = k.sets[(i + 1) % n];
      hold_stream(stream, 200.0);  // >> the host issue time of a call
      queued.push_back(event_us(ev, stream, [&] { s.call(stream); }));
      double h = 0;
      empty.push_back(event_us(ev, stream, [&] { launch_empty(stream); }, &h));
      empty_host.push_back(h);
    }
    r.eager_queued_us = median(queued);
    r.empty_eager_us = median(empty);
    r.empty_host_us = median(empty_host);
  }
  // Host time of the two halves of a decode call (plan update, operator), each issued alone on
  // an idle stream: where the eager call's host time goes.
  if (k.sets[0].plan_call && k.sets[0].op_call) {
    std::vector<double> hp, ho;
    for (int i = 0; i < (opt.quick ? 5 : 11); ++i) {
      InputSet& s = k.sets[(i + 1) % n];
      hp.push_back(host_us_of([&] { s.plan_call(stream); }));
      OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
      ho.push_back(host_us_of([&] { s.op_call(stream); }));
      OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    r.host_plan_us = median(hp);
    r.host_op_us = median(ho);
  }

  // 3. Rested: FlashMLA's measuring conditions (see rested_time), before the sustained graph
  // replays: after them the long compute-bound cells start at the power cap (700 W on the H200,
  // SM clock down to 1.1-1.5 GHz), which FlashMLA's per-case measurement never reaches.
  std::string why;
  try {
    r.rested_us = rested_time(k, opt, stream);
  } catch (const std::exception&) {  // (capture failed: reported by step 4)
    (void)cudaGetLastError();
    r.rested_us = std::numeric_limits<double>::quiet_NaN();
  }
  // 4. Graph: capture one call per set, replay; per-call time = replay time / sets.
  if (!graph_time(k, [](InputSet& s) -> auto& { return s.call; }, opt, r.eager_us, stream,
                  r.graph_us, r.graph_min_us, r.replays, why, &r.clock_mhz, &r.energy_mj,
                  &r.power_w)) {
    r.message = "CUDA-graph capture failed, eager time only: " + why;
    return;
  }
  // 5. Decode: the plan update and the operator alone (the operator after one update: the plan
  // is the same for every set), for the comparison with FlashMLA's kernel-only figures.
  if (k.sets[0].plan_call && k.sets[0].op_call) {
    double lo = 0;
    int reps = 0;
    graph_time(k, [](InputSet& s) -> auto& { return s.plan_call; }, opt, r.eager_us, stream,
               r.plan_us, lo, reps, why);
    k.sets[0].plan_call(stream);
    graph_time(k, [](InputSet& s) -> auto& { return s.op_call; }, opt, r.eager_us, stream,
               r.op_us, lo, reps, why);
  }
}

// After an error: is the context still usable (no sticky error)?
bool context_usable(std::string& why) {
  cudaError_t err = cudaDeviceSynchronize();
  if (err == cudaSuccess) err = cudaGetLastError();
  if (err == cudaSuccess) return true;
  why = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
  return false;
}

std::string gib(double bytes) { return format_double(bytes / double(1ull << 30), 2) + " GiB"; }

Result run_config(const Config& c, const Options& opt, const DeviceInfo& dev, cudaStream_t stream) {
  Result r;
  r.config = c;
  DecodeInputs din;
  PrefillInputs pin;
  if (c.op == Op::kSparsePrefill) {
    pin = make_prefill_inputs(c);
    r.work = pin.work;
  } else {
    din = make_decode_inputs(c);
    r.work = din.work;
  }
  const size_t per_set = set_bytes(c, &din, &pin);
  size_t free_b = 0, total_b = 0;
  OPENMLA_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  // Rotate over several input sets when one would sit in L2 between replays.
  int n_sets = 1;
  const double l2 = double(dev.l2_bytes > 0 ? dev.l2_bytes : (60ll << 20));
  if (r.work.bytes < 2 * l2) n_sets = int(std::ceil(4 * l2 / std::max(r.work.bytes, 1.0)));
  n_sets = std::clamp(n_sets, 1, kMaxSets);
  // Development: OPENMLA_BENCH_SETS=N overrides the rotation (e.g. 1: inputs stay in L2/TLBs).
  if (const char* e = std::getenv("OPENMLA_BENCH_SETS"))
    n_sets = std::clamp(std::atoi(e), 1, kMaxSets);
  while (n_sets > 1 && double(n_sets) * per_set > 0.6 * double(free_b)) --n_sets;
  if (double(per_set) > 0.9 * double(free_b)) {
    r.status = "error";
    r.message =
        "needs " + gib(double(per_set)) + " of device memory, " + gib(double(free_b)) + " free";
    return r;
  }
  r.sets = n_sets;
  Case k = build_case(c, &din, &pin, n_sets, stream);
  // The GPU idles a moment before the timing: the GEMM ceiling, the previous configuration and the
  // random fill of this one's (multi-GB) cache leave it power-throttled for a while, which showed
  // as erratic, up to 20 % slower figures for the first configuration of a suite. Every cell is
  // timed from the same rested state.
  OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::this_thread::sleep_for(std::chrono::milliseconds(opt.quick ? 200 : 1000));
  time_case(k, opt, stream, r);
  return r;
}

void print_device(const DeviceInfo& d) {
  std::cout << "GPU: " << d.name << ", " << d.sms << " SMs, L2 " << (d.l2_bytes >> 20) << " MiB, "
            << gib(double(d.memory_bytes)) << ", sm_" << d.cc_major << d.cc_minor << ", driver "
            << d.driver << ", runtime " << d.runtime << "\n";
}

}  // namespace

int run_gpu(const Options& opt, const std::vector<std::string>& suites, DeviceInfo& dev,
            Ceilings& ceil, std::vector<std::pair<std::string, std::vector<Result>>>& out) {
  OPENMLA_CUDA_CHECK(cudaSetDevice(0));
  cudaDeviceProp prop{};
  OPENMLA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  dev.mode = "gpu";
  dev.name = prop.name;
  dev.sms = prop.multiProcessorCount;
  dev.l2_bytes = prop.l2CacheSize;
  dev.memory_bytes = int64_t(prop.totalGlobalMem);
  dev.cc_major = prop.major;
  dev.cc_minor = prop.minor;
  OPENMLA_CUDA_CHECK(cudaDriverGetVersion(&dev.driver));
  OPENMLA_CUDA_CHECK(cudaRuntimeGetVersion(&dev.runtime));
  print_device(dev);
  if (prop.major != 9 || prop.minor != 0) {
    dev.note = "kernels are built for sm_90a only; this device is sm_" +
               std::to_string(prop.major) + std::to_string(prop.minor);
    std::cout << "warning: " << dev.note << "\n";
  }
  std::cout << "CUDA operators in this build: " << (*cuda_operators() ? cuda_operators() : "(none)")
            << "\n";

  // Ceilings (OPENMLA_BENCH_NO_CEILINGS=1 leaves them out: profiling runs of one cell).
  const char* no_ceil = std::getenv("OPENMLA_BENCH_NO_CEILINGS");
  const bool skip_ceilings = no_ceil != nullptr && no_ceil[0] == '1';
  auto ceiling = [&](const char* what, auto&& measure, const double& value, const char* unit,
                     std::string& note) {
    if (skip_ceilings) {
      note = "not measured (OPENMLA_BENCH_NO_CEILINGS=1)";
      return;
    }
    std::cerr << "[ceilings] " << what << " ..." << std::flush;
    try {
      measure();
      std::cerr << " " << format_double(value, 0) << unit << "\n";
    } catch (const std::exception& e) {
      note = std::string("not measured: ") + e.what();
      std::cerr << " failed: " << e.what() << "\n";
    }
  };
  ceiling("device-to-device copy", [&] { measure_copy_ceiling(opt.quick, ceil); }, ceil.copy_gbps,
          " GB/s", ceil.copy_note);
  ceiling("bf16 GEMM 8192^3 (cuBLAS)", [&] { measure_gemm_ceiling(opt.quick, ceil); },
          ceil.gemm_tflops, " TFLOPS", ceil.gemm_note);
  std::cout << "ceiling  device-to-device copy: " << format_double(ceil.copy_gbps, 0)
            << " GB/s (read + written; ANCHORS.md: " << format_double(kAnchorCopyGBps, 0) << ")\n";
  std::cout << "ceiling  bf16 GEMM 8192^3:      " << format_double(ceil.gemm_tflops, 0)
            << " TFLOPS (cuBLAS; ANCHORS.md: " << format_double(kAnchorGemmTflops, 0) << ")\n";
  std::cout << "time: 'graph' = median per call of CUDA-graph replays of the whole call (plan "
               "update + operator),\n      'eager' = CUDA events around one eager call,\n"
               "      'rested' = FlashMLA's own method (ANCHORS.md kernel figures): mean of 30 whole "
               "calls,\n      each replayed after an 8 GB memset, after an untimed pass of the "
               "same. Ratios > 1 are faster than "
               "FlashMLA; 'rested vs'\n      compares like with like (kernel anchors only).\n";

  int errors = 0;
  bool usable = true;
  std::string unusable_why;
  BenchStream stream;

  for (const std::string& name : suites) {
    std::vector<Config> configs = gpu_suite(name);
    if (!opt.only.empty()) {
      std::vector<Config> kept;
      for (const Config& c : configs)
        for (const std::string& t : opt.only)
          if (c.label().find(t) != std::string::npos) {
            kept.push_back(c);
            break;
          }
      configs.swap(kept);
      if (configs.empty()) continue;
    }
    std::vector<Result> results;
    int i = 0;
    for (const Config& c : configs) {
      ++i;
      std::cerr << "[" << name << " " << i << "/" << configs.size() << "] " << c.label() << " ..."
                << std::flush;
      Result r;
      r.config = c;
      if (!usable) {
        r.status = "skipped";
        r.message = "CUDA context unusable after an earlier error (" + unusable_why + ")";
      } else {
        try {
          r = run_config(c, opt, dev, stream.get());
        } catch (const Error& e) {
          r.config = c;
          r.status = mentions_not_implemented(e.what()) ? "not implemented" : "error";
          r.message = e.what();
        } catch (const std::exception& e) {
          r.config = c;
          r.status = "error";
          r.message = e.what();
        }
        if (r.status != "ok" && r.status != "not implemented") {
          ++errors;
          usable = context_usable(unusable_why);
        }
      }
      finish_result(r, ceil);
      if (r.status == "ok") {
        std::cerr << " graph " << format_double(r.graph_us, 1) << " us, eager "
                  << format_double(r.eager_us, 1) << " us, " << format_double(r.tflops, 1)
                  << " TFLOPS, " << format_double(r.gbps, 0) << " GB/s";
        std::cerr << ", rested " << format_double(r.rested_us, 1) << " us";
        if (!std::isnan(r.clock_mhz))
          std::cerr << ", SM clock after the replays " << format_double(r.clock_mhz, 0) << " MHz";
        if (!std::isnan(r.power_w))
          std::cerr << ", " << format_double(r.power_w, 0) << " W, "
                    << format_double(r.energy_mj, 1) << " mJ per call";
        if (!std::isnan(r.op_us))
          std::cerr << " | plan alone " << format_double(r.plan_us, 1) << " us, operator alone "
                    << format_double(r.op_us, 1) << " us";
        if (!std::isnan(r.host_plan_us))
          std::cerr << " | host: call " << format_double(r.host_us, 1) << " us, update "
                    << format_double(r.host_plan_us, 1) << " us, operator "
                    << format_double(r.host_op_us, 1) << " us";
        std::cerr << " | eager queued " << format_double(r.eager_queued_us, 1)
                  << " us, empty kernel eager " << format_double(r.empty_eager_us, 1) << " us";
        std::cerr << "\n";
      } else {
        std::cerr << " " << r.status << ": " << r.message << "\n";
      }
      results.push_back(std::move(r));
      // Each configuration's buffers were freed when run_config returned.
    }
    print_suite_table(name, results, true);
    std::cout.flush();
    out.emplace_back(name, std::move(results));
  }
  return errors;
}

}  // namespace openmla::bench

#endif  // OPENMLA_WITH_CUDA
