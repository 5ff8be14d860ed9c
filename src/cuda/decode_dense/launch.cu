// Dense decode launcher: CUDA-specific checks, TMA map of the paged cache, kernel + combine.
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <string>

#include "backend.h"
#include "cuda/common/cuda_check.h"
#include "cuda/common/launch.h"
#include "cuda/common/tma.h"
#include "cuda/decode_dense/instances.h"
#include "cuda/schedule/plan.h"

namespace openmla::sm90 {

namespace {

using namespace dense_decode_detail;

void require_aligned(const TensorView& t, const char* arg, int64_t bytes_align, int dims_checked) {
  const auto addr = reinterpret_cast<uintptr_t>(t.data);
  const int64_t es = static_cast<int64_t>(dtype_size(t.dtype));
  bool ok = addr % bytes_align == 0;
  for (int d = 0; d < dims_checked; ++d)
    if (t.shape[d] > 1 && (t.strides[d] * es) % bytes_align != 0) ok = false;
  if (!ok)
    throw Error(arg, "the CUDA kernel needs a " + std::to_string(bytes_align) +
                         "-byte aligned base and strides that are multiples of " +
                         std::to_string(bytes_align) + " bytes, got " + t.describe());
}

// Development switch: OPENMLA_DECODE_NO_TMA_TILES=1 copies every Q and output tile with the
// threads (cp.async loads, st.global stores).
bool tma_disabled() {
  static const bool v = env_flag("OPENMLA_DECODE_NO_TMA_TILES");
  return v;
}
// OPENMLA_DECODE_NO_TMA_STORES=1: output tiles only.
bool tma_stores_disabled() {
  static const bool v = env_flag("OPENMLA_DECODE_NO_TMA_STORES");
  return v;
}

// Tiles of `tile` query rows (64 in the main kernel, 16 or 32 in the narrow one) of q or out
// ([b, s_q, h_q, d]) as boxes of a 4-D map: box {64 dims, heads, positions, 1} (see
// DenseDecodeKernelParams::q_tma). False when a tile is not one box or the copy engine cannot
// describe the tensor (then the kernels copy with their threads).
bool make_rows_map(const TensorView& t, const char* arg, int64_t group, int tile,
                   CUtensorMapDataType dtype, CUtensorMap& map) {
  const int64_t b = t.shape[0], s_q = t.shape[1], h_q = t.shape[2], d = t.shape[3];
  uint32_t box_h = 0, box_s = 0;
  if (group % tile == 0) {
    box_h = static_cast<uint32_t>(tile);
    box_s = 1;
  } else if (tile % group == 0) {
    box_h = static_cast<uint32_t>(group);
    box_s = static_cast<uint32_t>(tile / group);
  } else {
    return false;
  }
  // Strides of size-1 dimensions do not matter: give the encoder valid ones.
  const int64_t es = 2;
  const int64_t sh = h_q > 1 ? t.strides[2] : d;
  const int64_t ss = s_q > 1 ? t.strides[1] : sh * h_q;
  const int64_t sb = b > 1 ? t.strides[0] : ss * s_q;
  if (sh <= 0 || ss <= 0 || sb <= 0) return false;
  const uint64_t dims[4] = {static_cast<uint64_t>(d), static_cast<uint64_t>(h_q),
                            static_cast<uint64_t>(s_q), static_cast<uint64_t>(b)};
  const uint64_t strides[3] = {static_cast<uint64_t>(sh * es), static_cast<uint64_t>(ss * es),
                               static_cast<uint64_t>(sb * es)};
  const uint32_t box[4] = {64, box_h, box_s, 1};
  try {
    map = make_tensor_map_4d(arg, t.data, dtype, dims, strides, box);
  } catch (const Error&) {
    return false;  // e.g. overlapping strides the encoder rejects
  }
  return true;
}

// The partial outputs [accum_slots * h_kv][rows][512] fp32 (o_accum: the plan's or the call's
// workspace) as boxes of 64 rows x 32.
bool make_accum_map(const PlanState& st, float* o_accum, int64_t h_kv, CUtensorMap& map) {
  if (st.buf.accum_slots <= 0 || o_accum == nullptr) return false;
  const uint64_t dims[4] = {512, static_cast<uint64_t>(st.rows),
                            static_cast<uint64_t>(st.buf.accum_slots * h_kv), 1};
  const uint64_t row = 512 * sizeof(float);
  const uint64_t strides[3] = {row, row * static_cast<uint64_t>(st.rows), row * dims[1] * dims[2]};
  const uint32_t box[4] = {32, 64, 1, 1};
  try {
    map = make_tensor_map_4d("plan", o_accum, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, dims, strides, box);
  } catch (const Error&) {
    return false;
  }
  return true;
}

}  // namespace

// The narrow kernel gathers pages of 1 token (boxes of at most this many tokens) with 16-byte
// cp.async copies instead of copy-engine boxes of 1 token x 64 dims: each box with per-thread
// coordinates is a ~16-instruction issue loop, so even four issuing warps stream pages of 1 at
// only ~1.6 TB/s, the gathers at ~2.1 TB/s (the SM's outstanding copies); from pages of 2 the
// four warps' boxes are faster. H200, b=128 h_q=16 s_k=8192 (quick, us): page 1 gathers 598,
// boxes 691 (one warp: 2334); page 2 gathers 611, boxes 418; page 4 578 / 293. Development
// switch for A/B measurements: OPENMLA_DECODE_GATHER_BOX=N (0: never gather).
static int gather_max_box() {
  static const int v = env_int("OPENMLA_DECODE_GATHER_BOX", 1);
  return v;
}

// Few query rows per KV head: the transposed, ring-buffered kernel. Development switch for A/B
// measurements: OPENMLA_DECODE_NO_NARROW=1 sends every shape to the main kernel.
bool uses_narrow_kernel(int rows) {
  static const bool disabled = env_flag("OPENMLA_DECODE_NO_NARROW");
  return rows <= 32 && !disabled;
}

void dense_decode(const DenseDecodeParams& p) {
  const int64_t b = p.q.shape[0], s_q = p.q.shape[1], h_q = p.q.shape[2], d_qk = p.q.shape[3];
  const int64_t num_pages = p.k_cache.shape[0], page_size = p.k_cache.shape[1];
  const int64_t h_kv = p.k_cache.shape[2];
  PlanState& st = plan_state(*p.plan);  // (updated for this batch: checked by the API layer)
  require_aligned(p.q, "q", 16, 3);
  require_aligned(p.out, "out", 16, 3);
  require_aligned(p.k_cache, "k_cache", 16, 3);
  if (num_pages > (int64_t(1) << 31) - 1 || b * s_q * h_q > (int64_t(1) << 31) - 1)
    throw Error("k_cache", "sizes beyond int32 are not supported by the CUDA kernel");
  OPENMLA_CUDA_CHECK(cudaSetDevice(p.q.device.index));

  const bool fp16 = p.q.dtype == DType::kFloat16;
  const uint64_t dims[4] = {static_cast<uint64_t>(d_qk), static_cast<uint64_t>(h_kv),
                            static_cast<uint64_t>(page_size), static_cast<uint64_t>(num_pages)};
  const uint64_t strides[3] = {static_cast<uint64_t>(p.k_cache.strides[2] * 2),
                               static_cast<uint64_t>(p.k_cache.strides[1] * 2),
                               static_cast<uint64_t>(p.k_cache.strides[0] * 2)};
  // Boxes of up to 64 tokens that never straddle a page: blocks start at multiples of 64.
  const int page_tokens = static_cast<int>(std::min<int64_t>(page_size, 1 << 30));
  const int box_tokens = std::gcd(page_tokens, 64);
  const uint32_t box[4] = {64, 1, static_cast<uint32_t>(box_tokens), 1};
  const auto dtype = fp16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUtensorMap map = make_tensor_map_4d("k_cache", p.k_cache.data, dtype, dims, strides, box);

  DenseDecodeKernelParams kp{};
  kp.q = p.q.data;
  kp.q_stride_b = p.q.strides[0];
  kp.q_stride_s = p.q.strides[1];
  kp.q_stride_h = p.q.strides[2];
  kp.out = p.out.data;
  kp.o_stride_b = p.out.strides[0];
  kp.o_stride_s = p.out.strides[1];
  kp.o_stride_h = p.out.strides[2];
  kp.lse = static_cast<float*>(p.lse.data);
  kp.lse_stride_b = p.lse.strides[0];
  kp.lse_stride_h = p.lse.strides[1];
  kp.lse_stride_s = p.lse.strides[2];
  kp.block_table = static_cast<const int32_t*>(p.block_table.data);
  kp.bt_stride = p.block_table.strides[0];
  kp.max_pages = static_cast<int>(p.block_table.shape[1]);
  kp.seqlens = static_cast<const int32_t*>(p.cache_seqlens.data);
  kp.seqlens_stride = p.cache_seqlens.strides[0];
  kp.k = p.k_cache.data;
  kp.k_stride_page = p.k_cache.strides[0] * 2;
  kp.k_stride_tok = p.k_cache.strides[1] * 2;
  kp.k_stride_h = p.k_cache.strides[2] * 2;
  kp.num_pages = static_cast<int>(num_pages);
  kp.page_size = static_cast<int>(page_size);
  kp.box_tokens = box_tokens;
  kp.page_div = make_fast_div(static_cast<uint32_t>(page_tokens));
  kp.box_shift = static_cast<int>(ceil_log2(static_cast<uint32_t>(box_tokens)));  // (2^k tokens)
  kp.batch = static_cast<int>(b);
  kp.s_q = static_cast<int>(s_q);
  kp.h_q = static_cast<int>(h_q);
  kp.h_kv = static_cast<int>(h_kv);
  kp.group = static_cast<int>(h_q / h_kv);
  kp.rows = st.rows;
  kp.m_blocks = st.m_blocks;
  kp.scale = p.softmax_scale;
  kp.scale_log2 = p.softmax_scale * 1.4426950408889634f;
  kp.causal = p.causal ? 1 : 0;
  kp.fp16 = fp16 ? 1 : 0;
  kp.plan = st.buf;
  // Partial results in the caller's workspace (checked by the API layer: big enough, aligned).
  if (p.workspace.present() && st.slot_rows > 0)
    set_partials(kp.plan, p.workspace.data, st.slot_rows);

  const auto stream = static_cast<cudaStream_t>(p.stream);
  const dim3 grid(st.m_blocks, static_cast<unsigned>(h_kv), st.buf.num_parts);
  const bool narrow = uses_narrow_kernel(st.rows);
  kp.k_gather = narrow && box_tokens <= gather_max_box() ? 1 : 0;
  Maps maps{map, map, map, map};  // (q, out, accum: each unused unless its flag is set)
  const int tile = !narrow ? 64 : st.rows <= 16 ? 16 : 32;
  const bool tma = !tma_disabled();
  kp.q_tma = tma && make_rows_map(p.q, "q", kp.group, tile, dtype, maps.q) ? 1 : 0;
  const bool tma_st = tma && !narrow && !tma_stores_disabled();
  kp.o_tma = tma_st && make_rows_map(p.out, "out", kp.group, 64, dtype, maps.out) ? 1 : 0;
  kp.a_tma = tma_st && make_accum_map(st, kp.plan.o_accum, h_kv, maps.accum) ? 1 : 0;
#if defined(OPENMLA_DECODE_PROFILE)
  // Profile builds: OPENMLA_PROF_SKIP=attention|combine leaves that kernel out (wrong results;
  // for timing the other one alone).
  static const std::string prof_skip = [] {
    const char* v = std::getenv("OPENMLA_PROF_SKIP");
    return std::string(v != nullptr ? v : "");
  }();
  if (prof_skip == "attention") {
    launch_combine(kp, stream);
    return;
  }
#endif
  // (set_batch plans batches over kInlineSmallBatch inline only for the builds with the wide
  // table.)
  if (kp.plan.inline_plan && b > kInlineSmallBatch && !wide_plan_table(narrow, kp.plan.merge_pairs))
    throw Error("plan", "internal: an inline plan for " + std::to_string(b) +
                            " requests needs the wide plan table");
  if (d_qk == 576) {
    if (fp16)
      launch_any<9, true>(maps, kp, grid, narrow, stream);
    else
      launch_any<9, false>(maps, kp, grid, narrow, stream);
  } else {
    if (fp16)
      launch_any<8, true>(maps, kp, grid, narrow, stream);
    else
      launch_any<8, false>(maps, kp, grid, narrow, stream);
  }
#if defined(OPENMLA_DECODE_PROFILE)
  if (prof_skip == "combine") return;
#endif
  launch_combine(kp, stream);
}

}  // namespace openmla::sm90
