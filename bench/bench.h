// openmla-bench shared pieces: options, one benchmark configuration, one result, the FlashMLA
// anchors, host-side workload generation (SPEC §8), FLOP/byte counting, table and JSON output.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "openmla/openmla.h"

namespace openmla::bench {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The median of the timings `v` (sorted in place: v.front() is then the fastest).
template <class T>
T median(std::vector<T>& v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Options {
  std::vector<std::string> suites;  // empty: all
  std::string json_path;
  bool quick = false;
  std::vector<std::string> only;  // --only: keep configurations whose label contains one of these
  bool list = false;
  bool cpu = false;
};

// ---------------- configurations (SPEC §8) ----------------

enum class Op {
  kDenseDecode,
  kSparseDecode,
  kSparsePrefill,
  kDensePrefillForward,   // CPU mode only (no §8 suite)
  kDensePrefillBackward,  // CPU mode only
  kQuantize,              // CPU mode only
  kDequantize,            // CPU mode only
  kAppend,                // CPU mode only
};
const char* op_name(Op op);

struct Config {
  std::string suite;
  Op op = Op::kDenseDecode;
  // decode
  int b = 1, s_q = 1, h_q = 128, h_kv = 1, s_k = 0, d_qk = 576, page = 64;
  bool causal = false;
  bool batch_invariant = false;  // dense decode: DecodePlanConfig::batch_invariant
  // sparse decode / prefill
  int topk = 0;
  bool attn_sink = false;
  int extra_topk = 0, extra_page = 0;  // MODEL1 extra pool (0: none)
  bool extra_len = false;              // with extra_topk_length
  int s_kv = 0;                        // sparse prefill
  // dense prefill (CPU mode)
  int seqlen_q = 0, seqlen_k = 0;
  // FP8 tools (CPU mode)
  KVCacheFormat format = KVCacheFormat::kFP8V32;
  int num_pages = 0;

  std::string label() const;       // human-readable, unique within a suite
  std::string anchor_key() const;  // key into the anchor table ("" when none can exist)
  uint64_t seed() const;           // fixed per configuration (hash of suite + label)
};

// Names of the GPU suites, in run order.
const std::vector<std::string>& gpu_suite_names();
std::vector<Config> gpu_suite(const std::string& name);
// Small configurations for the CPU backend (tagged with the suite they stand in for).
std::vector<Config> cpu_configs();

// ---------------- FlashMLA anchors (ANCHORS.md) ----------------

// What the FlashMLA figure measured, and hence which of our times it is compared with.
enum class AnchorBasis {
  kKernel,     // attention kernel only (FlashMLA's method): compared with our graph replay time
  kEndToEnd,   // whole call incl. combine, replayed: compared with our graph replay time
  kEagerCall,  // CUDA events around one eager call: compared with our eager time
};
const char* basis_name(AnchorBasis basis);

struct Anchor {
  const char* key;
  AnchorBasis basis;
  double tflops;  // 0: not given
  double gbps;    // 0: not given
  double us;      // 0: not given
};
std::vector<Anchor> anchors_for(const std::string& key);
inline constexpr double kAnchorCopyGBps = 4270.0;  // ANCHORS.md, ceilings
inline constexpr double kAnchorGemmTflops = 794.0;

// ---------------- workloads ----------------

// Deterministic generator (splitmix64): the same inputs on every machine and standard library.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  int64_t below(int64_t n) { return int64_t(next() % uint64_t(n)); }              // [0, n)
  double normal();

 private:
  uint64_t s_;
};

// L ~ N(s_k, s_k/2), rounded, clipped to >= min_len (SPEC §8).
std::vector<int32_t> draw_lengths(int b, int s_k, int min_len, Rng& rng);

// Randomly permuted paged layout of requests with the given lengths: every page of the pool is
// owned by exactly one request; block-table entries past a request's pages name random (valid)
// pages, which a correct kernel never reads.
struct PagedLayout {
  int page_size = 0;
  int64_t num_pages = 0;
  int max_pages = 0;
  std::vector<int32_t> block_table;  // [b, max_pages]
  int32_t page_of(int i, int64_t t) const {
    return block_table[size_t(i) * max_pages + size_t(t / page_size)];
  }
};
PagedLayout make_paged(const std::vector<int32_t>& lengths, int page_size, Rng& rng);

// Sparse indices [b, s_q, topk] of cache slots: per query min(topk, L) distinct random tokens of
// the request (through its block table), the rest -1.
std::vector<int32_t> make_sparse_indices(const std::vector<int32_t>& lengths,
                                         const PagedLayout& layout, int s_q, int topk, Rng& rng);

// Sparse-prefill indices [s_q, 1, topk]: per query topk distinct random positions of [0, s_kv).
std::vector<int32_t> make_prefill_indices(int s_q, int s_kv, int topk, Rng& rng);

// Work of one call by the formulas of SPEC §8.
struct Work {
  double flops = 0;
  double bytes = 0;
};
// Dense decode: attended tokens per query (causal: L - s_q + r + 1), unique KV tokens = sum L.
Work dense_decode_work(const Config& c, const std::vector<int32_t>& lengths);
// Sparse decode: valid indices per query (first topk_length of each pool), unique tokens read.
// `lengths` / `extra_lengths` bound the unique-token marks (tokens per request of each pool).
Work sparse_decode_work(const Config& c, const std::vector<int32_t>& indices,
                        const std::vector<int32_t>& topk_length,
                        const std::vector<int32_t>& extra_indices,
                        const std::vector<int32_t>& extra_topk_length, int64_t num_slots,
                        int64_t extra_num_slots);
// Sparse prefill: valid indices of every query.
Work sparse_prefill_work(const Config& c, const std::vector<int32_t>& indices);

// Host-side inputs of one decode configuration (everything but the bulk random data, which each
// runner fills where it lives), and the work of one call.
struct DecodeInputs {
  std::vector<int32_t> lengths;  // cache_seqlens [b]
  PagedLayout layout;
  std::vector<int32_t> indices;  // sparse: [b, s_q, topk]
  std::vector<int32_t> extra_lengths;
  PagedLayout extra_layout;
  std::vector<int32_t> extra_indices;            // [b, s_q, extra_topk]
  std::vector<int32_t> extra_topk_length;        // [b] or empty
  std::vector<float> attn_sink;                  // [h_q] or empty
  int64_t page_bytes = 0, extra_page_bytes = 0;  // FP8 page strides
  Work work;
};
DecodeInputs make_decode_inputs(const Config& c);

struct PrefillInputs {
  std::vector<int32_t> indices;  // [s_q, 1, topk]
  std::vector<float> attn_sink;  // [h_q] or empty
  Work work;
};
PrefillInputs make_prefill_inputs(const Config& c);

// ---------------- results, table, JSON ----------------

struct AnchorCompare {
  Anchor anchor;
  double ours_us = kNaN;  // the time of ours it is compared with
  double ratio = kNaN;    // > 1: faster than FlashMLA (rate ratio, or time ratio when no rate)
  double rested_ratio = kNaN;  // kernel anchors: the same, from Result::rested_us (same method)
};

struct Result {
  Config config;
  std::string status = "ok";  // "ok" | "not implemented" | "error" | "skipped"
  std::string message;
  double graph_us = kNaN;  // median per call, CUDA-graph replay (GPU) / median wall time (CPU)
  double graph_min_us = kNaN;
  double eager_us = kNaN;  // median of single eager calls, CUDA events
  double host_us = kNaN;   // host time to issue one eager call (plan update + operator)
  double host_plan_us = kNaN, host_op_us = kNaN;  // the two halves, each issued alone
  // Where an eager call's time goes: the same call queued behind a kernel that holds the stream
  // until the host has issued it (events around the call: GPU time alone, no host latency), and
  // an empty kernel timed like the eager call (launch floor of this host and driver).
  double eager_queued_us = kNaN, empty_eager_us = kNaN, empty_host_us = kNaN;
  double plan_us = kNaN;   // decode: graph replay of DecodePlan::update alone
  double op_us = kNaN;     // decode: graph replay of the operator alone (plan updated before)
  // FlashMLA's own method (how ANCHORS.md's kernel figures were taken): every call follows an
  // 8 GB memset that flushes L2 and gives the GPU a rest; mean over 30 calls of the whole call
  // (one CUDA-graph replay each), CUDA events around the call only.
  double rested_us = kNaN;
  // SM clock right after the graph replays (a probe kernel queued behind them): below the
  // maximum when sustained replays hit the power cap.
  double clock_mhz = kNaN;
  // The board's average power over the graph replays (NVML's energy counter) and the energy
  // per call it implies; at h_q = 128 the replays run at the power cap (700 W on the H200).
  double energy_mj = kNaN, power_w = kNaN;
  int sets = 0;            // input sets rotated over (L2)
  int replays = 0;
  Work work;
  double tflops = kNaN, gbps = kNaN;  // from graph_us (eager_us when no graph time)
  double pct_gemm = kNaN, pct_copy = kNaN;
  std::vector<AnchorCompare> anchors;
};

struct Ceilings {
  double copy_gbps = kNaN;
  double gemm_tflops = kNaN;
  std::string copy_note, gemm_note;  // how measured, or why not
};

struct DeviceInfo {
  std::string mode;  // "gpu" | "cpu"
  std::string name;
  int sms = 0;
  int64_t l2_bytes = 0;
  int64_t memory_bytes = 0;
  int driver = 0, runtime = 0;
  int cc_major = 0, cc_minor = 0;
  std::string note;
};

// Fills rates, percentages of the ceilings and the anchor ratios of `r`.
void finish_result(Result& r, const Ceilings& ceil);
void print_suite_table(const std::string& suite, const std::vector<Result>& results, bool gpu);
void write_json(const std::string& path, const Options& opt, const DeviceInfo& dev,
                const Ceilings& ceil,
                const std::vector<std::pair<std::string, std::vector<Result>>>& suites);

std::string format_double(double v, int precision);
std::string iso_time_now();

// ---------------- runners ----------------

// CPU backend on the small configurations; returns the number of configs that errored.
int run_cpu(const Options& opt, const std::vector<std::string>& suites, DeviceInfo& dev,
            std::vector<std::pair<std::string, std::vector<Result>>>& out);

#if defined(OPENMLA_WITH_CUDA)
// Number of CUDA devices; 0 with the reason in `why` when there is none or no usable driver.
int cuda_device_count(std::string& why);
// Device facts, the two ceilings, then every suite; returns the number of configs that errored.
int run_gpu(const Options& opt, const std::vector<std::string>& suites, DeviceInfo& dev,
            Ceilings& ceil, std::vector<std::pair<std::string, std::vector<Result>>>& out);
#endif

}  // namespace openmla::bench
