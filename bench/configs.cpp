// openmla-bench: the SPEC §8 suites, the small CPU-mode configurations, the FlashMLA anchor table
// and the host-side workload generation and FLOP/byte counting.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "bench.h"

namespace openmla::bench {

const char* op_name(Op op) {
  switch (op) {
    case Op::kDenseDecode:
      return "dense_decode";
    case Op::kSparseDecode:
      return "sparse_decode";
    case Op::kSparsePrefill:
      return "sparse_prefill";
    case Op::kDensePrefillForward:
      return "dense_prefill_forward";
    case Op::kDensePrefillBackward:
      return "dense_prefill_backward";
    case Op::kQuantize:
      return "quantize_kv_cache";
    case Op::kDequantize:
      return "dequantize_kv_cache";
    case Op::kAppend:
      return "append_kv_cache";
  }
  return "?";
}

std::string Config::label() const {
  std::ostringstream os;
  switch (op) {
    case Op::kDenseDecode:
      os << "b=" << b << " h_q=" << h_q << " s_q=" << s_q << (causal ? " causal" : "")
         << " s_k=" << s_k;
      if (d_qk != 576) os << " d_qk=" << d_qk;
      if (page != 64) os << " page=" << page;
      if (batch_invariant) os << " batch-invariant";
      break;
    case Op::kSparseDecode:
      os << (format == KVCacheFormat::kFP8V32 ? "V32" : "MODEL1") << " b=" << b << " h_q=" << h_q
         << " s_q=" << s_q << " s_k=" << s_k << " topk=" << topk;
      if (page != 64 || extra_topk > 0) os << "/p" << page;
      if (extra_topk > 0) os << " extra=" << extra_topk << "/p" << extra_page;
      if (extra_len) os << " extra_len";
      if (attn_sink) os << " sink";
      break;
    case Op::kSparsePrefill:
      os << "s_q=" << s_q << " d_qk=" << d_qk << " h_q=" << h_q << " topk=" << topk
         << " s_kv=" << s_kv << (attn_sink ? " sink" : "");
      break;
    case Op::kDensePrefillForward:
    case Op::kDensePrefillBackward:
      os << "batch=" << b << " seqlen=" << seqlen_q << "/" << seqlen_k << " h_q=" << h_q
         << " h_kv=" << h_kv << " d_qk=" << d_qk << (causal ? " causal" : "");
      break;
    case Op::kQuantize:
    case Op::kDequantize:
      os << (format == KVCacheFormat::kFP8V32 ? "V32" : "MODEL1") << " pages=" << num_pages
         << " page=" << page;
      break;
    case Op::kAppend:
      os << (format == KVCacheFormat::kFP8V32 ? "V32" : "MODEL1") << " n=" << b
         << " pages=" << num_pages << " page=" << page;
      break;
  }
  return os.str();
}

std::string Config::anchor_key() const {
  std::ostringstream os;
  if (op == Op::kDenseDecode) {
    if (d_qk != 576 || page != 64 || h_kv != 1 || batch_invariant) return "";
    os << "dense b=" << b << " h_q=" << h_q << " s_q=" << s_q << (causal ? " causal" : "")
       << " s_k=" << s_k;
  } else if (op == Op::kSparseDecode && format == KVCacheFormat::kFP8V32) {
    if (s_k != 32768 || !attn_sink || extra_topk > 0 || page != 64) return "";
    os << "v32 b=" << b << " h_q=" << h_q << " s_q=" << s_q << " topk=" << topk;
  } else if (op == Op::kSparseDecode) {
    if (s_k != 16384 || !attn_sink || topk != 128 || page != 256 || s_q != 2) return "";
    os << "model1 b=" << b << " h_q=" << h_q << " extra=" << extra_topk << " p=" << extra_page
       << (extra_len ? " len" : "");
  } else if (op == Op::kSparsePrefill) {
    if (s_q != 4096 || !attn_sink) return "";
    os << "prefill d_qk=" << d_qk << " h_q=" << h_q << " topk=" << topk << " s_kv=" << s_kv;
  } else {
    return "";
  }
  return os.str();
}

uint64_t Config::seed() const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (char ch : suite + "|" + label()) {
    h ^= uint8_t(ch);
    h *= 1099511628211ull;
  }
  return h;
}

// ---------------- suites ----------------

const std::vector<std::string>& gpu_suite_names() {
  static const std::vector<std::string> names = {
      "dense-decode",  "dense-decode-latency", "dense-decode-bi", "dense-decode-pages",
      "dense-decode-mtp",
      "sparse-decode", "sparse-decode-model1", "sparse-prefill"};
  return names;
}

std::vector<Config> gpu_suite(const std::string& name) {
  std::vector<Config> v;
  // A dense-decode cell of this suite (page 64, h_kv 1, d 576, varlen; causal when s_q > 1).
  auto dense = [&](int b, int s_k, int h_q, int s_q) -> Config& {
    Config c;
    c.suite = name;
    c.op = Op::kDenseDecode;
    c.b = b;
    c.s_k = s_k;
    c.h_q = h_q;
    c.s_q = s_q;
    c.causal = s_q > 1;
    v.push_back(c);
    return v.back();
  };
  if (name == "dense-decode") {
    // b=128, d=576/512, page 64, h_kv=1, varlen.
    const std::pair<int, int> heads[] = {{128, 1}, {128, 2}, {64, 1}, {32, 1}, {16, 1}};
    for (auto [h_q, s_q] : heads)
      for (int s_k : {4096, 8192, 16384, 32768}) dense(128, s_k, h_q, s_q);
  } else if (name == "dense-decode-latency") {
    const int rows[][3] = {{1, 4096, 128}, {8, 8192, 128}, {4, 65536, 128}, {32, 4096, 16}};
    for (auto& r : rows) dense(r[0], r[1], r[2], 1);
  } else if (name == "dense-decode-bi") {
    // Not a SPEC §8 suite: the cost of DecodePlanConfig::batch_invariant (no split-KV) on cells of
    // the two suites above; compare with the same labels there.
    const int rows[][4] = {{1, 4096, 128, 1},
                           {8, 8192, 128, 1},
                           {128, 4096, 128, 1},
                           {128, 8192, 16, 1},
                           {128, 8192, 128, 2}};
    for (auto& r : rows) dense(r[0], r[1], r[2], r[3]).batch_invariant = true;
  } else if (name == "dense-decode-pages") {
    // Not a SPEC §8 suite: the page sizes engines use besides 64 (1 in SGLang's default pool,
    // 16/32 in vLLM's), on one compute-bound and one memory-bound cell of dense-decode (b=128,
    // s_k=8192); page 64 is the same cell as there.
    for (int h_q : {128, 16})
      for (int page : {1, 2, 4, 8, 16, 32, 64, 128, 256}) dense(128, 8192, h_q, 1).page = page;
  } else if (name == "dense-decode-mtp") {
    // Not a SPEC §8 suite: two query tokens per request (MTP / speculative decoding) at h_q=128
    // and batches below the dense-decode suite's 128, where a request spans many parts and its
    // four m-block CTAs per part read each block.
    const int rows[][2] = {{1, 4096}, {1, 32768}, {2, 8192}, {4, 8192},  {8, 8192},
                           {8, 32768}, {16, 8192}, {32, 8192}, {64, 8192}};
    for (auto& r : rows) dense(r[0], r[1], 128, 2);
  } else if (name == "sparse-decode") {
    auto add = [&](int b, int h_q, int topk) {
      Config c;
      c.suite = name;
      c.op = Op::kSparseDecode;
      c.format = KVCacheFormat::kFP8V32;
      c.d_qk = 576;
      c.b = b;
      c.h_q = h_q;
      c.s_q = 2;
      c.s_k = 32768;
      c.topk = topk;
      c.page = 64;
      c.attn_sink = true;
      v.push_back(c);
    };
    for (int b : {2, 64, 74, 128}) add(b, 128, 2048);
    for (int h_q : {64, 128}) add(148, h_q, 16384);
  } else if (name == "sparse-decode-model1") {
    struct Row {
      int h_q, extra, page;
      bool len;
    };
    const Row rows[] = {
        {64, 512, 64, false}, {128, 1024, 64, false}, {64, 1024, 2, true}, {128, 1024, 2, true}};
    for (const Row& r : rows)
      for (int b : {64, 128}) {
        Config c;
        c.suite = name;
        c.op = Op::kSparseDecode;
        c.format = KVCacheFormat::kFP8Model1;
        c.d_qk = 512;
        c.b = b;
        c.h_q = r.h_q;
        c.s_q = 2;
        c.s_k = 16384;
        c.topk = 128;
        c.page = 256;
        c.extra_topk = r.extra;
        c.extra_page = r.page;
        c.extra_len = r.len;
        c.attn_sink = true;
        v.push_back(c);
      }
  } else if (name == "sparse-prefill") {
    auto add = [&](int d_qk, int h_q, int topk, int s_kv) {
      Config c;
      c.suite = name;
      c.op = Op::kSparsePrefill;
      c.s_q = 4096;
      c.d_qk = d_qk;
      c.h_q = h_q;
      c.topk = topk;
      c.s_kv = s_kv;
      c.attn_sink = true;
      v.push_back(c);
    };
    for (int s_kv : {8192, 32768, 65536, 131072}) add(576, 128, 2048, s_kv);
    for (int s_kv : {8192, 65536}) add(512, 64, 512, s_kv);
    for (int s_kv : {8192, 65536}) add(512, 128, 1024, s_kv);
  }
  return v;
}

std::vector<Config> cpu_configs() {
  std::vector<Config> v;
  {
    Config c;
    c.suite = "dense-decode";
    c.op = Op::kDenseDecode;
    c.b = 2;
    c.s_q = 1;
    c.h_q = 16;
    c.s_k = 512;
    v.push_back(c);
    c.s_q = 2;
    c.causal = true;
    v.push_back(c);
  }
  {
    Config c;
    c.suite = "sparse-decode";
    c.op = Op::kSparseDecode;
    c.format = KVCacheFormat::kFP8V32;
    c.d_qk = 576;
    c.b = 2;
    c.s_q = 2;
    c.h_q = 16;
    c.s_k = 2048;
    c.topk = 256;
    c.attn_sink = true;
    v.push_back(c);
  }
  {
    Config c;
    c.suite = "sparse-decode-model1";
    c.op = Op::kSparseDecode;
    c.format = KVCacheFormat::kFP8Model1;
    c.d_qk = 512;
    c.b = 2;
    c.s_q = 2;
    c.h_q = 16;
    c.s_k = 1024;
    c.topk = 128;
    c.page = 256;
    c.extra_topk = 128;
    c.extra_page = 2;
    c.extra_len = true;
    c.attn_sink = true;
    v.push_back(c);
  }
  {
    Config c;
    c.suite = "sparse-prefill";
    c.op = Op::kSparsePrefill;
    c.s_q = 64;
    c.d_qk = 576;
    c.h_q = 16;
    c.topk = 256;
    c.s_kv = 2048;
    c.attn_sink = true;
    v.push_back(c);
  }
  for (Op op : {Op::kDensePrefillForward, Op::kDensePrefillBackward}) {
    Config c;
    c.suite = "dense-prefill";
    c.op = op;
    c.b = 2;
    c.seqlen_q = 128;
    c.seqlen_k = 128;
    c.h_q = 4;
    c.h_kv = 4;
    c.d_qk = 192;
    c.causal = true;
    v.push_back(c);
  }
  for (Op op : {Op::kQuantize, Op::kDequantize, Op::kAppend})
    for (KVCacheFormat f : {KVCacheFormat::kFP8V32, KVCacheFormat::kFP8Model1}) {
      Config c;
      c.suite = "fp8-kv";
      c.op = op;
      c.format = f;
      c.d_qk = format_info(f).d_qk;
      c.num_pages = 64;
      c.page = 64;
      c.b = 1024;  // tokens appended
      v.push_back(c);
    }
  return v;
}

// ---------------- FlashMLA anchors ----------------
//
// Transcribed from ../shared/ANCHORS.md ("Anchors: what OpenMLA must beat"): FlashMLA
// (deepseek-ai/FlashMLA, April 2026) on the lent H200, 2026-11-29, SPEC §8 configurations and
// formulas. Keys are Config::anchor_key(). Keep this table in step with ANCHORS.md.
namespace {
constexpr AnchorBasis K = AnchorBasis::kKernel, E = AnchorBasis::kEndToEnd,
                      C = AnchorBasis::kEagerCall;
const Anchor kAnchors[] = {
    // Dense decode, b=128, varlen, page 64, d=576/512: attention kernel only.
    {"dense b=128 h_q=128 s_q=1 s_k=4096", K, 608, 0, 0},
    {"dense b=128 h_q=128 s_q=1 s_k=8192", K, 655, 0, 0},
    {"dense b=128 h_q=128 s_q=1 s_k=16384", K, 678, 0, 0},
    {"dense b=128 h_q=128 s_q=1 s_k=32768", K, 690, 0, 0},
    {"dense b=128 h_q=128 s_q=2 causal s_k=4096", K, 693, 0, 0},
    {"dense b=128 h_q=128 s_q=2 causal s_k=8192", K, 725, 0, 0},
    {"dense b=128 h_q=128 s_q=2 causal s_k=16384", K, 742, 0, 0},
    {"dense b=128 h_q=128 s_q=2 causal s_k=32768", K, 746, 0, 0},
    {"dense b=128 h_q=64 s_q=1 s_k=4096", K, 0, 3559, 0},
    {"dense b=128 h_q=64 s_q=1 s_k=8192", K, 0, 3775, 0},
    {"dense b=128 h_q=64 s_q=1 s_k=16384", K, 0, 3980, 0},
    {"dense b=128 h_q=64 s_q=1 s_k=32768", K, 0, 4139, 0},
    {"dense b=128 h_q=32 s_q=1 s_k=4096", K, 0, 3575, 0},
    {"dense b=128 h_q=32 s_q=1 s_k=8192", K, 0, 3829, 0},
    {"dense b=128 h_q=32 s_q=1 s_k=16384", K, 0, 4018, 0},
    {"dense b=128 h_q=32 s_q=1 s_k=32768", K, 0, 4184, 0},
    {"dense b=128 h_q=16 s_q=1 s_k=4096", K, 0, 3569, 0},
    {"dense b=128 h_q=16 s_q=1 s_k=8192", K, 0, 3810, 0},
    {"dense b=128 h_q=16 s_q=1 s_k=16384", K, 0, 4044, 0},
    {"dense b=128 h_q=16 s_q=1 s_k=32768", K, 0, 4200, 0},
    // Dense decode, whole call (metadata + attention + combine), CUDA events around one eager
    // call. ANCHORS.md's "s_q=2" row is the causal configuration of the suite.
    {"dense b=128 h_q=128 s_q=1 s_k=4096", C, 523, 0, 280.6},
    {"dense b=128 h_q=128 s_q=2 causal s_k=8192", C, 675, 0, 869.4},
    {"dense b=128 h_q=16 s_q=1 s_k=8192", C, 0, 3679, 331.3},
    {"dense b=128 h_q=16 s_q=1 s_k=32768", C, 0, 4179, 1163.4},
    {"dense b=1 h_q=128 s_q=1 s_k=4096", C, 0, 0, 54.5},
    {"dense b=8 h_q=128 s_q=1 s_k=8192", C, 226, 0, 77.8},
    {"dense b=32 h_q=16 s_q=1 s_k=4096", C, 0, 1940, 76.6},
    {"dense b=4 h_q=128 s_q=1 s_k=65536", C, 440, 0, 175.4},
    // Sparse decode, V32 FP8, s_k=32768, attn_sink, end to end incl. combine.
    {"v32 b=2 h_q=128 s_q=2 topk=2048", E, 116, 0, 19.6},
    {"v32 b=64 h_q=128 s_q=2 topk=2048", E, 419, 0, 174.1},
    {"v32 b=74 h_q=128 s_q=2 topk=2048", E, 398, 0, 212.2},
    {"v32 b=128 h_q=128 s_q=2 topk=2048", E, 423, 0, 345.5},
    {"v32 b=148 h_q=64 s_q=2 topk=16384", E, 355, 0, 1903},
    {"v32 b=148 h_q=128 s_q=2 topk=16384", E, 468, 0, 2889},
    {"v32 b=128 h_q=128 s_q=1 topk=2048", E, 415, 0, 176.1},
    {"v32 b=64 h_q=64 s_q=1 topk=2048", E, 233, 0, 78.4},
    {"v32 b=128 h_q=64 s_q=1 topk=2048", E, 306, 0, 119.2},
    {"v32 b=64 h_q=64 s_q=2 topk=2048", E, 307, 0, 119.1},
    {"v32 b=128 h_q=64 s_q=2 topk=2048", E, 317, 0, 230.5},
    // Sparse decode, MODEL1 FP8, s_q=2, s_k=16384, topk=128 in pages of 256, extra pool.
    {"model1 b=64 h_q=64 extra=512 p=64", E, 219, 0, 49.0},
    {"model1 b=128 h_q=64 extra=512 p=64", E, 235, 0, 91.3},
    {"model1 b=64 h_q=128 extra=1024 p=64", E, 362, 0, 106.8},
    {"model1 b=128 h_q=128 extra=1024 p=64", E, 371, 0, 208.6},
    {"model1 b=64 h_q=64 extra=1024 p=2 len", E, 142, 0, 71.1},
    {"model1 b=128 h_q=64 extra=1024 p=2 len", E, 181, 0, 118.9},
    {"model1 b=64 h_q=128 extra=1024 p=2 len", E, 239, 0, 82.9},
    {"model1 b=128 h_q=128 extra=1024 p=2 len", E, 283, 0, 142.7},
    // Sparse prefill, s_q=4096, attn_sink (one kernel).
    {"prefill d_qk=576 h_q=128 topk=2048 s_kv=8192", K, 690, 0, 0},
    {"prefill d_qk=576 h_q=128 topk=2048 s_kv=32768", K, 640, 0, 0},
    {"prefill d_qk=576 h_q=128 topk=2048 s_kv=65536", K, 595, 0, 0},
    {"prefill d_qk=576 h_q=128 topk=2048 s_kv=131072", K, 564, 0, 0},
    {"prefill d_qk=512 h_q=64 topk=512 s_kv=8192", K, 523, 0, 0},
    {"prefill d_qk=512 h_q=64 topk=512 s_kv=65536", K, 466, 0, 0},
    {"prefill d_qk=512 h_q=128 topk=1024 s_kv=8192", K, 625, 0, 0},
    {"prefill d_qk=512 h_q=128 topk=1024 s_kv=65536", K, 576, 0, 0},
};
}  // namespace

const char* basis_name(AnchorBasis basis) {
  switch (basis) {
    case AnchorBasis::kKernel:
      return "kernel";
    case AnchorBasis::kEndToEnd:
      return "end-to-end";
    case AnchorBasis::kEagerCall:
      return "eager call";
  }
  return "?";
}

std::vector<Anchor> anchors_for(const std::string& key) {
  std::vector<Anchor> v;
  if (key.empty()) return v;
  for (const Anchor& a : kAnchors)
    if (key == a.key) v.push_back(a);
  return v;
}

// ---------------- workloads ----------------

double Rng::normal() {
  // Box-Muller; u1 in (0, 1] so that log(u1) is finite.
  const double u1 = 1.0 - uniform(), u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

std::vector<int32_t> draw_lengths(int b, int s_k, int min_len, Rng& rng) {
  std::vector<int32_t> len(b);
  for (int i = 0; i < b; ++i) {
    const double l = std::round(s_k + 0.5 * s_k * rng.normal());
    len[i] = int32_t(std::max<double>(min_len, l));
  }
  return len;
}

PagedLayout make_paged(const std::vector<int32_t>& lengths, int page_size, Rng& rng) {
  PagedLayout L;
  L.page_size = page_size;
  const int b = int(lengths.size());
  std::vector<int> pages(b);
  for (int i = 0; i < b; ++i) {
    pages[i] = int((int64_t(lengths[i]) + page_size - 1) / page_size);
    L.num_pages += pages[i];
    L.max_pages = std::max(L.max_pages, pages[i]);
  }
  L.max_pages = std::max(L.max_pages, 1);
  L.num_pages = std::max<int64_t>(L.num_pages, 1);
  std::vector<int32_t> perm(L.num_pages);
  std::iota(perm.begin(), perm.end(), 0);
  for (int64_t j = L.num_pages - 1; j > 0; --j) std::swap(perm[j], perm[rng.below(j + 1)]);
  L.block_table.assign(size_t(b) * L.max_pages, 0);
  int64_t next = 0;
  for (int i = 0; i < b; ++i)
    for (int p = 0; p < L.max_pages; ++p)
      L.block_table[size_t(i) * L.max_pages + p] =
          p < pages[i] ? perm[next++] : int32_t(rng.below(L.num_pages));
  return L;
}

std::vector<int32_t> make_sparse_indices(const std::vector<int32_t>& lengths,
                                         const PagedLayout& layout, int s_q, int topk, Rng& rng) {
  const int b = int(lengths.size());
  std::vector<int32_t> idx(size_t(b) * s_q * topk, -1);
  std::vector<int32_t> pos;
  for (int i = 0; i < b; ++i) {
    const int64_t L = lengths[i];
    pos.resize(L);
    std::iota(pos.begin(), pos.end(), 0);
    const int64_t k = std::min<int64_t>(topk, L);
    for (int r = 0; r < s_q; ++r) {
      // Partial Fisher-Yates: the first k entries become a uniform random k-subset (whatever
      // order `pos` was left in by the previous query).
      int32_t* row = idx.data() + (size_t(i) * s_q + r) * topk;
      for (int64_t j = 0; j < k; ++j) {
        std::swap(pos[j], pos[j + rng.below(L - j)]);
        const int64_t t = pos[j];
        row[j] = int32_t(int64_t(layout.page_of(i, t)) * layout.page_size + t % layout.page_size);
      }
    }
  }
  return idx;
}

Work dense_decode_work(const Config& c, const std::vector<int32_t>& lengths) {
  Work w;
  const int d_v = 512;
  double attended = 0, tokens = 0;
  for (int32_t L : lengths) {
    tokens += L;
    for (int r = 0; r < c.s_q; ++r)
      attended += c.causal ? std::clamp<double>(double(L) - c.s_q + r + 1, 0, L) : L;
  }
  w.flops = 2.0 * c.h_q * attended * (c.d_qk + d_v);
  w.bytes = double(c.b) * c.s_q * c.h_q * c.d_qk * 2 + tokens * c.h_kv * c.d_qk * 2 +
            double(c.b) * c.s_q * c.h_q * d_v * 2;
  return w;
}

namespace {
// Valid (counted) indices of one pool and its unique slots.
void count_pool(const Config& c, const std::vector<int32_t>& indices,
                const std::vector<int32_t>& topk_length, int64_t num_slots, double& attended,
                double& unique) {
  if (indices.empty()) return;
  const int64_t topk = int64_t(indices.size()) / (int64_t(c.b) * c.s_q);
  std::vector<uint8_t> seen(size_t(num_slots), 0);
  for (int i = 0; i < c.b; ++i) {
    int64_t n = topk;
    if (!topk_length.empty()) n = std::clamp<int64_t>(topk_length[i], 0, topk);
    for (int r = 0; r < c.s_q; ++r) {
      const int32_t* row = indices.data() + (size_t(i) * c.s_q + r) * topk;
      for (int64_t k = 0; k < n; ++k) {
        const int64_t s = row[k];
        if (s < 0 || s >= num_slots) continue;
        attended += 1;
        if (!seen[s]) {
          seen[s] = 1;
          unique += 1;
        }
      }
    }
  }
}
}  // namespace

Work sparse_decode_work(const Config& c, const std::vector<int32_t>& indices,
                        const std::vector<int32_t>& topk_length,
                        const std::vector<int32_t>& extra_indices,
                        const std::vector<int32_t>& extra_topk_length, int64_t num_slots,
                        int64_t extra_num_slots) {
  Work w;
  const int d_v = 512;
  const int bpt = format_info(c.format).bytes_per_token;
  double attended = 0, unique = 0;
  count_pool(c, indices, topk_length, num_slots, attended, unique);
  count_pool(c, extra_indices, extra_topk_length, extra_num_slots, attended, unique);
  w.flops = 2.0 * c.h_q * attended * (c.d_qk + d_v);
  w.bytes = double(c.b) * c.s_q * c.h_q * c.d_qk * 2 + unique * bpt +
            double(c.b) * c.s_q * c.h_q * d_v * 2;
  return w;
}

Work sparse_prefill_work(const Config& c, const std::vector<int32_t>& indices) {
  Work w;
  const int d_v = 512;
  double valid = 0;
  for (int32_t i : indices) valid += (i >= 0 && i < c.s_kv) ? 1 : 0;
  w.flops = 2.0 * c.h_q * valid * (c.d_qk + d_v);
  w.bytes =
      valid * c.d_qk * 2 + double(c.s_q) * c.h_q * c.d_qk * 2 + double(c.s_q) * c.h_q * d_v * 2;
  return w;
}

std::vector<int32_t> make_prefill_indices(int s_q, int s_kv, int topk, Rng& rng) {
  std::vector<int32_t> idx(size_t(s_q) * topk, -1);
  std::vector<int32_t> pos(s_kv);
  std::iota(pos.begin(), pos.end(), 0);
  const int k = std::min(topk, s_kv);
  for (int r = 0; r < s_q; ++r) {
    int32_t* row = idx.data() + size_t(r) * topk;
    for (int j = 0; j < k; ++j) {
      std::swap(pos[j], pos[j + rng.below(s_kv - j)]);
      row[j] = pos[j];
    }
  }
  return idx;
}

DecodeInputs make_decode_inputs(const Config& c) {
  DecodeInputs in;
  Rng rng(c.seed());
  in.lengths = draw_lengths(c.b, c.s_k, c.s_q, rng);
  in.layout = make_paged(in.lengths, c.page, rng);
  if (c.op == Op::kDenseDecode) {
    in.work = dense_decode_work(c, in.lengths);
    return in;
  }
  in.page_bytes = fp8_page_bytes(c.format, c.page);
  in.indices = make_sparse_indices(in.lengths, in.layout, c.s_q, c.topk, rng);
  if (c.extra_topk > 0) {
    // The extra pool: its own lengths (same distribution) in pages of extra_page.
    in.extra_lengths = draw_lengths(c.b, c.s_k, c.s_q, rng);
    in.extra_layout = make_paged(in.extra_lengths, c.extra_page, rng);
    in.extra_page_bytes = fp8_page_bytes(c.format, c.extra_page);
    in.extra_indices =
        make_sparse_indices(in.extra_lengths, in.extra_layout, c.s_q, c.extra_topk, rng);
    if (c.extra_len) {
      in.extra_topk_length.resize(c.b);
      for (auto& l : in.extra_topk_length) l = int32_t(1 + rng.below(c.extra_topk));
    }
  }
  if (c.attn_sink) {
    in.attn_sink.resize(c.h_q);
    for (auto& s : in.attn_sink) s = float(rng.normal());
  }
  in.work = sparse_decode_work(c, in.indices, {}, in.extra_indices, in.extra_topk_length,
                               in.layout.num_pages * c.page,
                               c.extra_topk > 0 ? in.extra_layout.num_pages * c.extra_page : 0);
  return in;
}

PrefillInputs make_prefill_inputs(const Config& c) {
  PrefillInputs in;
  Rng rng(c.seed());
  in.indices = make_prefill_indices(c.s_q, c.s_kv, c.topk, rng);
  if (c.attn_sink) {
    in.attn_sink.resize(c.h_q);
    for (auto& s : in.attn_sink) s = float(rng.normal());
  }
  in.work = sparse_prefill_work(c, in.indices);
  return in;
}

}  // namespace openmla::bench
