// openmla-bench CPU mode: the CPU reference backend on small configurations (no GPU present, or
// --cpu), timed per call with std::chrono. Meant to finish in seconds on two cores.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>
#include <thread>

#include "bench.h"
#include "common/numeric.h"

namespace openmla::bench {

namespace {

// An owning, contiguous host tensor.
struct HostBuf {
  std::vector<uint8_t> bytes;
  TensorView view;
  HostBuf() = default;
  HostBuf(DType dtype, std::initializer_list<int64_t> shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    bytes.assign(size_t(std::max<int64_t>(n, 1)) * dtype_size(dtype), 0);
    view = TensorView::contiguous(bytes.data(), dtype, kCPU, shape);
  }
  HostBuf(const HostBuf&) = delete;
  HostBuf& operator=(const HostBuf&) = delete;
  HostBuf(HostBuf&& o) noexcept : bytes(std::move(o.bytes)), view(o.view) {}
  HostBuf& operator=(HostBuf&& o) noexcept {
    bytes = std::move(o.bytes);
    view = o.view;
    return *this;
  }
  template <class T>
  T* as() {
    return reinterpret_cast<T*>(bytes.data());
  }
};

void fill_bf16(HostBuf& t, Rng& rng, double sigma = 1.0) {
  const size_t n = t.bytes.size() / 2;
  uint16_t* p = t.as<uint16_t>();
  for (size_t i = 0; i < n; ++i) p[i] = num::f32_to_bf16(float(sigma * rng.normal()));
}

HostBuf from_i32(const std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
  HostBuf t(DType::kInt32, shape);
  if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), v.size() * 4);
  return t;
}

HostBuf from_f32(const std::vector<float>& v) {
  HostBuf t(DType::kFloat32, {int64_t(v.size())});
  if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), v.size() * 4);
  return t;
}

// A quantized FP8 cache of random bf16 tokens: [num_pages, page, 1, bytes_per_token], page stride
// `page_bytes`.
HostBuf make_fp8_cache(KVCacheFormat f, int64_t num_pages, int page, int64_t page_bytes, Rng& rng) {
  const KVCacheFormatInfo info = format_info(f);
  HostBuf src(DType::kBFloat16, {num_pages, page, 1, info.d_qk});
  fill_bf16(src, rng);
  HostBuf cache;
  cache.bytes.assign(size_t(num_pages * page_bytes), 0);
  cache.view = TensorView::strided(cache.bytes.data(), DType::kUInt8, kCPU,
                                   {num_pages, page, 1, info.bytes_per_token},
                                   {page_bytes, info.bytes_per_token, info.bytes_per_token, 1});
  QuantizeKVParams qp;
  qp.input = src.view;
  qp.cache = cache.view;
  qp.format = f;
  quantize_kv_cache(qp);
  return cache;
}

// Everything one CPU call needs; `call` runs it once.
struct Prepared {
  std::vector<HostBuf> keep;
  std::function<void()> call;
  Work work;
};

Prepared prepare(const Config& c) {
  Prepared p;
  Rng rng(c.seed() ^ 0xda7aull);
  auto keep = [&](HostBuf&& b) -> TensorView {
    p.keep.push_back(std::move(b));
    return p.keep.back().view;  // the view points at the heap buffer, which moves do not touch
  };
  switch (c.op) {
    case Op::kDenseDecode: {
      DecodeInputs in = make_decode_inputs(c);
      p.work = in.work;
      DenseDecodeParams dp;
      HostBuf q(DType::kBFloat16, {c.b, c.s_q, c.h_q, c.d_qk});
      fill_bf16(q, rng);
      HostBuf kc(DType::kBFloat16, {in.layout.num_pages, c.page, c.h_kv, c.d_qk});
      fill_bf16(kc, rng);
      dp.q = keep(std::move(q));
      dp.k_cache = keep(std::move(kc));
      dp.block_table = keep(from_i32(in.layout.block_table, {c.b, in.layout.max_pages}));
      dp.cache_seqlens = keep(from_i32(in.lengths, {c.b}));
      dp.out = keep(HostBuf(DType::kBFloat16, {c.b, c.s_q, c.h_q, 512}));
      dp.lse = keep(HostBuf(DType::kFloat32, {c.b, c.h_q, c.s_q}));
      dp.causal = c.causal;
      p.call = [dp] { dense_decode(dp); };
      break;
    }
    case Op::kSparseDecode: {
      DecodeInputs in = make_decode_inputs(c);
      p.work = in.work;
      SparseDecodeParams sp;
      HostBuf q(DType::kBFloat16, {c.b, c.s_q, c.h_q, c.d_qk});
      fill_bf16(q, rng);
      sp.q = keep(std::move(q));
      sp.k_cache = keep(make_fp8_cache(c.format, in.layout.num_pages, c.page, in.page_bytes, rng));
      sp.indices = keep(from_i32(in.indices, {c.b, c.s_q, c.topk}));
      if (!in.attn_sink.empty()) sp.attn_sink = keep(from_f32(in.attn_sink));
      if (c.extra_topk > 0) {
        sp.extra_k_cache = keep(make_fp8_cache(c.format, in.extra_layout.num_pages, c.extra_page,
                                               in.extra_page_bytes, rng));
        sp.extra_indices = keep(from_i32(in.extra_indices, {c.b, c.s_q, c.extra_topk}));
        if (!in.extra_topk_length.empty())
          sp.extra_topk_length = keep(from_i32(in.extra_topk_length, {c.b}));
      }
      sp.out = keep(HostBuf(DType::kBFloat16, {c.b, c.s_q, c.h_q, 512}));
      sp.lse = keep(HostBuf(DType::kFloat32, {c.b, c.h_q, c.s_q}));
      p.call = [sp] { sparse_decode(sp); };
      break;
    }
    case Op::kSparsePrefill: {
      PrefillInputs in = make_prefill_inputs(c);
      p.work = in.work;
      SparsePrefillParams sp;
      HostBuf q(DType::kBFloat16, {c.s_q, c.h_q, c.d_qk});
      fill_bf16(q, rng);
      HostBuf kv(DType::kBFloat16, {c.s_kv, 1, c.d_qk});
      fill_bf16(kv, rng);
      sp.q = keep(std::move(q));
      sp.kv = keep(std::move(kv));
      sp.indices = keep(from_i32(in.indices, {c.s_q, 1, c.topk}));
      if (!in.attn_sink.empty()) sp.attn_sink = keep(from_f32(in.attn_sink));
      sp.out = keep(HostBuf(DType::kBFloat16, {c.s_q, c.h_q, 512}));
      sp.max_logits = keep(HostBuf(DType::kFloat32, {c.s_q, c.h_q}));
      sp.lse = keep(HostBuf(DType::kFloat32, {c.s_q, c.h_q}));
      p.call = [sp] { sparse_prefill(sp); };
      break;
    }
    case Op::kDensePrefillForward:
    case Op::kDensePrefillBackward: {
      const int d_v = 128;
      const int64_t tq = int64_t(c.b) * c.seqlen_q, tk = int64_t(c.b) * c.seqlen_k;
      std::vector<int32_t> cu_q(c.b + 1), cu_k(c.b + 1);
      double pairs = 0;
      for (int i = 0; i <= c.b; ++i) {
        cu_q[i] = i * c.seqlen_q;
        cu_k[i] = i * c.seqlen_k;
      }
      for (int r = 0; r < c.seqlen_q; ++r)
        pairs += c.causal ? std::clamp(c.seqlen_k - c.seqlen_q + r + 1, 0, c.seqlen_k) : c.seqlen_k;
      pairs *= c.b;
      DensePrefillParams fp;
      HostBuf q(DType::kBFloat16, {tq, c.h_q, c.d_qk}), k(DType::kBFloat16, {tk, c.h_kv, c.d_qk}),
          v(DType::kBFloat16, {tk, c.h_kv, d_v});
      fill_bf16(q, rng);
      fill_bf16(k, rng);
      fill_bf16(v, rng);
      fp.q = keep(std::move(q));
      fp.k = keep(std::move(k));
      fp.v = keep(std::move(v));
      fp.cu_seqlens_q = keep(from_i32(cu_q, {c.b + 1}));
      fp.cu_seqlens_k = keep(from_i32(cu_k, {c.b + 1}));
      fp.out = keep(HostBuf(DType::kBFloat16, {tq, c.h_q, d_v}));
      fp.lse = keep(HostBuf(DType::kFloat32, {c.h_q, tq}));
      fp.max_seqlen_q = c.seqlen_q;
      fp.max_seqlen_k = c.seqlen_k;
      fp.causal = c.causal;
      const double io = 2.0 * (tq * c.h_q * (c.d_qk + d_v) + tk * c.h_kv * (c.d_qk + d_v));
      if (c.op == Op::kDensePrefillForward) {
        p.work.flops = 2.0 * pairs * c.h_q * (c.d_qk + d_v);
        p.work.bytes = io;
        p.call = [fp] { dense_prefill_forward(fp); };
      } else {
        dense_prefill_forward(fp);  // out and lse for the backward
        DensePrefillBackwardParams bp;
        HostBuf dout(DType::kBFloat16, {tq, c.h_q, d_v});
        fill_bf16(dout, rng);
        bp.dout = keep(std::move(dout));
        bp.q = fp.q;
        bp.k = fp.k;
        bp.v = fp.v;
        bp.out = fp.out;
        bp.lse = fp.lse;
        bp.cu_seqlens_q = fp.cu_seqlens_q;
        bp.cu_seqlens_k = fp.cu_seqlens_k;
        bp.dq = keep(HostBuf(DType::kBFloat16, {tq, c.h_q, c.d_qk}));
        bp.dk = keep(HostBuf(DType::kBFloat16, {tk, c.h_kv, c.d_qk}));
        bp.dv = keep(HostBuf(DType::kBFloat16, {tk, c.h_kv, d_v}));
        bp.max_seqlen_q = c.seqlen_q;
        bp.max_seqlen_k = c.seqlen_k;
        bp.causal = c.causal;
        // Recompute S, then dP, dV, dQ, dK: 3 products over d_qk and 2 over d_v per pair.
        p.work.flops = 2.0 * pairs * c.h_q * (3.0 * c.d_qk + 2.0 * d_v);
        p.work.bytes = 2.0 * io + 2.0 * tq * c.h_q * d_v;
        p.call = [bp] { dense_prefill_backward(bp); };
      }
      break;
    }
    case Op::kQuantize:
    case Op::kDequantize:
    case Op::kAppend: {
      const KVCacheFormatInfo info = format_info(c.format);
      const int64_t page_bytes = fp8_page_bytes(c.format, c.page);
      if (c.op == Op::kAppend) {
        HostBuf cache = make_fp8_cache(c.format, c.num_pages, c.page, page_bytes, rng);
        HostBuf in(DType::kBFloat16, {c.b, info.d_qk});
        fill_bf16(in, rng);
        std::vector<int32_t> slots(size_t(c.num_pages) * c.page);
        for (size_t i = 0; i < slots.size(); ++i) slots[i] = int32_t(i);
        for (size_t i = slots.size() - 1; i > 0; --i) std::swap(slots[i], slots[rng.below(i + 1)]);
        slots.resize(c.b);
        AppendKVParams ap;
        ap.cache = keep(std::move(cache));
        ap.input = keep(std::move(in));
        ap.slots = keep(from_i32(slots, {c.b}));
        ap.format = c.format;
        p.work.bytes = double(c.b) * (2.0 * info.d_qk + info.bytes_per_token + 4);
        p.call = [ap] { append_kv_cache(ap); };
      } else {
        HostBuf cache = make_fp8_cache(c.format, c.num_pages, c.page, page_bytes, rng);
        HostBuf bf(DType::kBFloat16, {c.num_pages, c.page, 1, info.d_qk});
        fill_bf16(bf, rng);
        p.work.bytes = double(c.num_pages) * c.page * (2.0 * info.d_qk + info.bytes_per_token);
        if (c.op == Op::kQuantize) {
          QuantizeKVParams qp;
          qp.input = keep(std::move(bf));
          qp.cache = keep(std::move(cache));
          qp.format = c.format;
          p.call = [qp] { quantize_kv_cache(qp); };
        } else {
          DequantizeKVParams dp;
          dp.cache = keep(std::move(cache));
          dp.output = keep(std::move(bf));
          dp.format = c.format;
          p.call = [dp] { dequantize_kv_cache(dp); };
        }
      }
      break;
    }
  }
  return p;
}

}  // namespace

int run_cpu(const Options& opt, const std::vector<std::string>& suites, DeviceInfo& dev,
            std::vector<std::pair<std::string, std::vector<Result>>>& out) {
  dev.mode = "cpu";
  dev.name =
      "CPU reference backend (" + std::to_string(std::thread::hardware_concurrency()) + " threads)";
  std::vector<Config> configs;
  for (const Config& c : cpu_configs())
    if (suites.empty() || std::find(suites.begin(), suites.end(), c.suite) != suites.end())
      configs.push_back(c);
  const double budget_s = opt.quick ? 0.05 : 0.25;
  const int max_reps = opt.quick ? 3 : 10;
  Ceilings none;
  int errors = 0;
  int n = 0;
  for (const Config& c : configs) {
    ++n;
    Result r;
    r.config = c;
    std::cerr << "[cpu " << n << "/" << configs.size() << "] " << c.suite << ": " << op_name(c.op)
              << " " << c.label() << " ..." << std::flush;
    try {
      Prepared p = prepare(c);
      r.work = p.work;
      p.call();  // warm-up
      std::vector<double> us;
      const auto start = std::chrono::steady_clock::now();
      while (int(us.size()) < max_reps) {
        const auto t0 = std::chrono::steady_clock::now();
        p.call();
        const auto t1 = std::chrono::steady_clock::now();
        us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
        if (std::chrono::duration<double>(t1 - start).count() > budget_s && us.size() >= 1) break;
      }
      r.graph_us = median(us);
      r.graph_min_us = us.front();
      r.replays = int(us.size());
      std::cerr << " " << format_double(r.graph_us / 1000.0, 3) << " ms\n";
    } catch (const std::exception& e) {
      r.status = "error";
      r.message = e.what();
      ++errors;
      std::cerr << " error: " << e.what() << "\n";
    }
    finish_result(r, none);
    auto it = std::find_if(out.begin(), out.end(), [&](auto& s) { return s.first == c.suite; });
    if (it == out.end()) {
      out.emplace_back(c.suite, std::vector<Result>{});
      it = out.end() - 1;
    }
    it->second.push_back(r);
  }
  for (const auto& [name, results] : out) print_suite_table(name, results, false);
  return errors;
}

}  // namespace openmla::bench
