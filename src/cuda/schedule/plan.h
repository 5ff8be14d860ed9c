// Split-KV planner and combine for the decoders (host side of schedule/plan.cu).
#pragma once

#include <cuda_runtime.h>

#include "backend.h"
#include "cuda/params.h"

namespace openmla::sm90 {

// Whether the attention kernel build that runs plans inline has the wide table (kernel.cuh: up
// to kInlinePlanMaxBatch requests): the narrow kernel and the main kernel's pair-merge build.
inline bool wide_plan_table(bool narrow, bool merge_pairs) { return narrow || merge_pairs; }

// Per-request working arrays of the planner for batches too big for its shared memory.
struct PlanScratch {
  long long* prefix;  // [b]
  int* first_part;    // [b]
  int* last_part;     // [b]
};

struct PlanState {
  PlanBuffers buf{};
  PlanScratch scratch{};
  int m_blocks = 1;
  int rows = 1;  // query rows per KV head
  size_t slot_rows = 0;  // accum_slots * h_kv * rows: rows of partial results
  // Fixed at creation (development switches are read then): inline plans disabled; pair merges
  // possible (sync words allocated for config.batch requests).
  bool no_inline = false, can_merge = false;
  // K evict-last in the main kernel (PlanBuffers::k_evict_last) possible for the plan's shapes
  // (chosen per batch by set_batch).
  bool k_evict_last_ok = false;
};

PlanState& plan_state(const DecodePlan& plan);

// Partial results in one buffer (the plan's, or a call's workspace): lse_accum [slot_rows] fp32
// at its start, o_accum [slot_rows][512] fp32 at partials_offset (256-byte aligned).
size_t partials_offset(size_t slot_rows);
void set_partials(PlanBuffers& buf, void* base, size_t slot_rows);

// Whether dense decode runs the narrow (transposed, <= 32 query rows per KV head) kernel for
// `rows` query rows per KV head; the planner sizes its pieces by the kernel (decode_dense/
// launch.cu, which also honours OPENMLA_DECODE_NO_NARROW).
bool uses_narrow_kernel(int rows);

// Merges the partial results of split requests into out/lse (requests not split are skipped).
void launch_combine(const DenseDecodeKernelParams& p, cudaStream_t stream);

}  // namespace openmla::sm90
