// FP8 KV-cache format facts and the quantize / dequantize / append entry points.
#include "openmla/kv_cache.h"

#include "api/check.h"
#include "api/dispatch.h"

namespace openmla {

KVCacheFormatInfo format_info(KVCacheFormat format) {
  if (format == KVCacheFormat::kFP8V32) return {576, 512, 64, 128, 4, 656};
  return {512, 448, 64, 64, 7, 584};
}

const char* format_name(KVCacheFormat format) {
  return format == KVCacheFormat::kFP8V32 ? "V32 (656 B/token)" : "MODEL1 (584 B/token)";
}

KVCacheFormat format_for_head_dim(int d_qk) {
  if (d_qk == 576) return KVCacheFormat::kFP8V32;
  if (d_qk == 512) return KVCacheFormat::kFP8Model1;
  throw Error("q", "no FP8 cache format for head dim " + std::to_string(d_qk) +
                       " (576 -> V32, 512 -> MODEL1)");
}

int64_t fp8_page_bytes(KVCacheFormat format, int64_t page_size) {
  const int64_t raw = page_size * format_info(format).bytes_per_token;
  if (format == KVCacheFormat::kFP8V32) return raw;
  return (raw + 575) / 576 * 576;
}

static void check_format(KVCacheFormat format) {
  if (format != KVCacheFormat::kFP8V32 && format != KVCacheFormat::kFP8Model1)
    throw Error("format", "unknown KV-cache format " + std::to_string(int(format)));
}

void check_fp8_cache(const TensorView& c, const char* arg, KVCacheFormat format, Device dev) {
  const KVCacheFormatInfo info = format_info(format);
  const std::string layout = std::string("[num_pages, page_size, 1, ") +
                             std::to_string(info.bytes_per_token) + "] bytes (" +
                             format_name(format) + ")";
  check::tensor(c, arg, 4, layout.c_str());
  check::dtype(c, arg, {DType::kUInt8, DType::kFloat8E4M3});
  check::positive(c.shape[1], arg, "page_size (dim 1)");
  check::dim(c, arg, 2, 1, "h_kv: FP8 caches hold one KV head");
  check::dim(c, arg, 3, info.bytes_per_token, "bytes per token");
  if (c.strides[1] != info.bytes_per_token && c.shape[1] > 1)
    check::fail(arg, "token stride (dim 1) " + std::to_string(info.bytes_per_token) + " bytes", c);
  if (c.shape[0] > 1 && c.strides[0] < c.shape[1] * info.bytes_per_token)
    check::fail(
        arg,
        "page stride (dim 0) >= page_size * " + std::to_string(info.bytes_per_token) + " bytes", c);
  check::same_device(c, arg, dev);
}

static void check_bf16_pages(const TensorView& t, const char* arg, const KVCacheFormatInfo& info,
                             Device dev) {
  check::tensor(t, arg, 4, "[num_pages, page_size, 1, d_qk]");
  check::dtype(t, arg, {DType::kBFloat16});
  check::positive(t.shape[1], arg, "page_size (dim 1)");
  check::dim(t, arg, 2, 1, "h_kv: FP8 caches hold one KV head");
  check::dim(t, arg, 3, info.d_qk, "d_qk of the format");
  check::same_device(t, arg, dev);
}

void quantize_kv_cache(const QuantizeKVParams& p) {
  check_format(p.format);
  const KVCacheFormatInfo info = format_info(p.format);
  check_bf16_pages(p.input, "input", info, p.input.present() ? p.input.device : Device{});
  check_fp8_cache(p.cache, "cache", p.format, p.input.device);
  check::dim(p.cache, "cache", 0, p.input.shape[0], "num_pages of input");
  check::dim(p.cache, "cache", 1, p.input.shape[1], "page_size of input");
  const std::initializer_list<check::Named> ins = {{p.input, "input"}}, outs = {{p.cache, "cache"}};
  check::outputs(outs, ins);
  check::device_pointers(ins, outs);
  if (p.input.numel() == 0) return;
  detail::dispatch(p.input.device, "input", p, &cpu::quantize_kv_cache,
                   OPENMLA_CUDA_OP(quantize_kv_cache));
}

void dequantize_kv_cache(const DequantizeKVParams& p) {
  check_format(p.format);
  const KVCacheFormatInfo info = format_info(p.format);
  check_fp8_cache(p.cache, "cache", p.format, p.cache.present() ? p.cache.device : Device{});
  check_bf16_pages(p.output, "output", info, p.cache.device);
  check::dim(p.output, "output", 0, p.cache.shape[0], "num_pages of cache");
  check::dim(p.output, "output", 1, p.cache.shape[1], "page_size of cache");
  const std::initializer_list<check::Named> ins = {{p.cache, "cache"}},
                                            outs = {{p.output, "output"}};
  check::outputs(outs, ins);
  check::device_pointers(ins, outs);
  if (p.output.numel() == 0) return;
  detail::dispatch(p.cache.device, "cache", p, &cpu::dequantize_kv_cache,
                   OPENMLA_CUDA_OP(dequantize_kv_cache));
}

void append_kv_cache(const AppendKVParams& p) {
  check_format(p.format);
  const KVCacheFormatInfo info = format_info(p.format);
  check::tensor(p.input, "input", 2, "[n, d_qk]");
  check::dtype(p.input, "input", {DType::kBFloat16});
  check::dim(p.input, "input", 1, info.d_qk, "d_qk of the format");
  const Device dev = p.input.device;
  check::tensor(p.slots, "slots", 1, "[n]");
  check::dtype(p.slots, "slots", {DType::kInt32});
  check::dim(p.slots, "slots", 0, p.input.shape[0], "n of input");
  check::same_device(p.slots, "slots", dev);
  check_fp8_cache(p.cache, "cache", p.format, dev);
  const std::initializer_list<check::Named> ins = {{p.input, "input"}, {p.slots, "slots"}},
                                            outs = {{p.cache, "cache"}};
  check::outputs(outs, ins);
  check::device_pointers(ins, outs);
  if (p.input.shape[0] == 0) return;
  detail::dispatch(dev, "input", p, &cpu::append_kv_cache, OPENMLA_CUDA_OP(append_kv_cache));
}

}  // namespace openmla
