// Thin inline-PTX helpers for sm_90a: mbarriers, TMA tensor loads, proxy fences, named barriers,
// wgmma group control and shared-memory matrix descriptors (PTX ISA 9.7.15.5.1).
#pragma once

#include <cuda.h>

#include <cstdint>

namespace openmla::sm90 {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- programmatic dependent launch (no-ops when the kernel was launched without it) ----
// Blocks until every grid this one depends on has completed and its memory is visible: call it
// before the first global read or write of anything another kernel produces or consumes.
__device__ __forceinline__ void grid_dependency_wait() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
}
// Lets the next kernel in the stream (launched with PDL) start its prologue now; it still waits
// for this grid to finish in its own grid_dependency_wait.
__device__ __forceinline__ void grid_launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// ---- mbarrier ----
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// Whether the phase with `parity` has completed (does not wait).
__device__ __forceinline__ bool mbar_test_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}" : "=r"(done) : "r"(smem_addr(bar)), "r"(parity) : "memory");
  return done != 0;
}

// ---- cp.async (16-byte global -> shared copies; `src_bytes` < 16 zero-fills the rest) ----
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;" ::: "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
// Until at most N of the thread's committed cp.async groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// ---- TMA (bulk tensor copy engine) and friends, predicated: no branch, `pred` false makes them
// no-ops (a divergent branch next to wgmma makes ptxas serialize the wgmma).
// 4-D tile load completing on an mbarrier, with an L2 cache policy (from createpolicy).
__device__ __forceinline__ void tma_load_4d_pred(void* dst, const CUtensorMap* map, uint64_t* bar,
                                                 int c0, int c1, int c2, int c3, uint64_t policy,
                                                 bool pred) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %8, 0;\n"
      "@p cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      ".L2::cache_hint [%0], [%1, {%3, %4, %5, %6}], [%2], %7;\n}" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
      "l"(policy), "r"(static_cast<int>(pred))
      : "memory");
}
// Tile stores shared -> global (bulk groups; boxes past the tensor's bounds are clipped), with
// an L2 cache policy. commit / wait: the issuing thread's groups; wait_read only until the copy
// engine has read shared memory (it may then be rewritten, or the CTA exit: the grid's
// completion includes the writes).
__device__ __forceinline__ void tma_store_4d_pred(const CUtensorMap* map, const void* src, int c0,
                                                  int c1, int c2, int c3, uint64_t policy,
                                                  bool pred) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %7, 0;\n"
      "@p cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group.L2::cache_hint"
      " [%0, {%2, %3, %4, %5}], [%1], %6;\n}" ::"l"(reinterpret_cast<uint64_t>(map)),
      "r"(smem_addr(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "l"(policy),
      "r"(static_cast<int>(pred))
      : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
}
// Linear bulk copy global -> shared completing on an mbarrier (16-byte aligned, bytes % 16 == 0).
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes,
                                          uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
          "r"(smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}
// Until the issuing thread's bulk groups are complete, writes to global memory included.
__device__ __forceinline__ void bulk_wait_all() {
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx_pred(uint64_t* bar, uint32_t bytes,
                                                           bool pred) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %2, 0;\n"
      "@p mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n}" ::"r"(smem_addr(bar)),
      "r"(bytes), "r"(static_cast<int>(pred))
      : "memory");
}
__device__ __forceinline__ void mbar_arrive_pred(uint64_t* bar, bool pred) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %1, 0;\n"
      "@p mbarrier.arrive.shared::cta.b64 _, [%0];\n}" ::"r"(smem_addr(bar)),
      "r"(static_cast<int>(pred))
      : "memory");
}
// Predicated 32-bit global load: `fallback` when `pred` is false (the address is not touched).
// Deliberately not .nc: ptxas may hoist non-coherent loads above griddepcontrol.wait.
__device__ __forceinline__ int ld_pred(const int32_t* ptr, bool pred, int fallback) {
  int v = fallback;
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %2, 0;\n@p ld.global.b32 %0, [%1];\n}"
      : "+r"(v)
      : "l"(ptr), "r"(static_cast<int>(pred)));
  return v;
}
__device__ __forceinline__ uint64_t l2_policy_evict_first() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}
// L2 evict-last policy, used for the split-KV partial results (written by the attention kernel,
// read once by the combine right after). Without a persisting-L2 set-aside (the default, which
// a library should not change) ncu showed no residency gain: the combine still read ~25 MB of
// them from DRAM at b=128 h_q=64 s_k=4096.
__device__ __forceinline__ uint64_t l2_policy_evict_last() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}
// Global stores and loads with an L2 cache policy (from createpolicy).
__device__ __forceinline__ void st_global_hint(float* ptr, float a, uint64_t policy) {
  asm volatile("st.global.L2::cache_hint.f32 [%0], %1, %2;" ::"l"(ptr), "f"(a), "l"(policy)
               : "memory");
}
__device__ __forceinline__ void st_global_hint(float* ptr, float a, float b, uint64_t policy) {
  asm volatile("st.global.L2::cache_hint.v2.f32 [%0], {%1, %2}, %3;" ::"l"(ptr), "f"(a), "f"(b),
               "l"(policy)
               : "memory");
}
__device__ __forceinline__ float4 ld_global_hint(const float* ptr, uint64_t policy) {
  float4 v;
  asm volatile("ld.global.L2::cache_hint.v4.f32 {%0, %1, %2, %3}, [%4], %5;"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "l"(ptr), "l"(policy)
               : "memory");
  return v;
}
__device__ __forceinline__ void tma_prefetch_desc(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Generic-proxy shared-memory writes made visible to the async proxy (wgmma, TMA) — needed after
// st.shared of an operand and before the barrier that lets wgmma read it.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// Generic <-> async proxy ordering for global memory (copy-engine writes before a generic release;
// a generic acquire before copy-engine reads).
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;" ::: "memory");
}

// Acquire load at GPU scope (a flag another CTA releases).
__device__ __forceinline__ int ld_acquire_gpu(const int32_t* ptr) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(ptr) : "memory");
  return v;
}

// Named barrier over `threads` threads (multiple of 32); id 0 is __syncthreads.
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// Signal-only side of a named barrier: counts toward `threads` without waiting (the waiting side
// uses named_barrier with the same id and count).
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// ---- wgmma group control ----
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator reads/writes across an in-flight wgmma.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// ---- shared-memory matrix descriptors, 128-byte swizzle ----
// Tiles live in "swizzle atoms": 8 rows of 128 bytes (64 bf16), 1024-byte aligned; inside an atom
// the 16-byte unit u of row r sits at unit u ^ (r % 8) (what TMA's 128B swizzle writes).
//  K-major operand (rows = M or N, 64 K-elements per row): SBO = 1024 B between 8-row groups; LBO
//    unused; advance the start address by 32 B per k16 step.
//  MN-major operand (rows = K, 64 MN-elements per row): SBO = 1024 B between 8-row K groups; LBO =
//    bytes between consecutive 64-element MN column blocks.
__device__ __forceinline__ uint64_t make_desc_sw128(uint32_t smem_byte_addr, uint32_t lbo_bytes,
                                                    uint32_t sbo_bytes) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((smem_byte_addr & 0x3ffff) >> 4);
  d |= static_cast<uint64_t>((lbo_bytes >> 4) & 0x3fff) << 16;
  d |= static_cast<uint64_t>((sbo_bytes >> 4) & 0x3fff) << 32;
  d |= static_cast<uint64_t>(1) << 62;  // layout type 1: 128-byte swizzle
  return d;
}

// Descriptor `d` (make_desc_sw128) with its start address advanced by `bytes`, for tiles below
// 256 KB: only the low word changes (the 14-bit start field cannot carry into LBO), and the high
// word stays the compile-time constant make_desc_sw128 gives it, so a use costs one 32-bit add
// (a 64-bit add cost two or three uniform instructions per wgmma operand, with the carry). The
// low word passes through an opaque move, so the compiler rebuilds each descriptor where it is
// used instead of keeping dozens of loop-invariant ones live.
__device__ __forceinline__ uint64_t desc_at(uint64_t d, uint32_t bytes) {
  uint32_t lo;
  asm volatile("mov.b32 %0, %1;" : "=r"(lo) : "r"(static_cast<uint32_t>(d)));
  lo += bytes >> 4;
  return (d & 0xffffffff00000000ull) | lo;
}

// Four 8x8 b16 matrices from a warp's registers to shared memory (lane l gives the address of
// row l % 8 of matrix l / 8; register i of lane l holds row l / 4, columns 2 (l % 4), +1 of
// matrix i).
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2,
                                            uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(addr),
               "r"(r0), "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}
// The inverse: four 8x8 b16 matrices from shared memory to a warp's registers (same addressing
// and register layout as stmatrix_x4).
__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                            uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr)
               : "memory");
}

// Byte offset of element (row, col) of a K-major SW128 tile of 64-element rows (col < 64).
__device__ __forceinline__ uint32_t sw128_offset(int row, int col_elems_x2_bytes) {
  const int unit = col_elems_x2_bytes >> 4, within = col_elems_x2_bytes & 15;
  return row * 128 + ((unit ^ (row & 7)) << 4) + within;
}

}  // namespace openmla::sm90
