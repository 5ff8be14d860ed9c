// openmla-bench output: derived rates and anchor ratios, the per-suite table, the JSON file.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <sstream>

#include "bench.h"

namespace openmla::bench {

std::string format_double(double v, int precision) {
  if (!std::isfinite(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

std::string iso_time_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void finish_result(Result& r, const Ceilings& ceil) {
  const double t = std::isfinite(r.graph_us) ? r.graph_us : r.eager_us;
  if (std::isfinite(t) && t > 0) {
    r.tflops = r.work.flops > 0 ? r.work.flops / t * 1e-6 : kNaN;
    r.gbps = r.work.bytes / t * 1e-3;
    r.pct_gemm = 100.0 * r.tflops / ceil.gemm_tflops;  // NaN when the ceiling is unknown
    r.pct_copy = 100.0 * r.gbps / ceil.copy_gbps;
  }
  r.anchors.clear();
  if (r.status != "ok") return;
  for (const Anchor& a : anchors_for(r.config.anchor_key())) {
    AnchorCompare ac;
    ac.anchor = a;
    ac.ours_us = a.basis == AnchorBasis::kEagerCall ? r.eager_us : r.graph_us;
    auto ratio = [&](double us) {
      if (!std::isfinite(us) || us <= 0) return kNaN;
      if (a.tflops > 0) return (r.work.flops / us * 1e-6) / a.tflops;
      if (a.gbps > 0) return (r.work.bytes / us * 1e-3) / a.gbps;
      if (a.us > 0) return a.us / us;
      return kNaN;
    };
    ac.ratio = ratio(ac.ours_us);
    if (a.basis == AnchorBasis::kKernel) ac.rested_ratio = ratio(r.rested_us);
    r.anchors.push_back(ac);
  }
}

namespace {

std::string anchor_text(const Anchor& a) {
  std::string s;
  if (a.tflops > 0)
    s = format_double(a.tflops, 0) + " TFLOPS";
  else if (a.gbps > 0)
    s = format_double(a.gbps, 0) + " GB/s";
  else
    s = format_double(a.us, 1) + " us";
  const char* tag = a.basis == AnchorBasis::kKernel      ? " (kernel)"
                    : a.basis == AnchorBasis::kEagerCall ? " (eager)"
                                                         : " (e2e)";
  return s + tag;
}

void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(header.size(), 0);
  for (size_t i = 0; i < header.size(); ++i) w[i] = header[i].size();
  for (const auto& row : rows)
    if (row.size() == header.size())
      for (size_t i = 0; i < row.size(); ++i) w[i] = std::max(w[i], row[i].size());
  auto line = [&](const std::vector<std::string>& row) {
    std::string s;
    if (row.size() != header.size()) {  // a status row: config, then free text
      s = row[0] + std::string(w[0] - std::min(w[0], row[0].size()), ' ');
      for (size_t i = 1; i < row.size(); ++i) s += "  " + row[i];
    } else {
      for (size_t i = 0; i < row.size(); ++i) {
        const std::string pad(w[i] - row[i].size(), ' ');
        s += i == 0 ? row[i] + pad : "  " + pad + row[i];  // first column left, others right
      }
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    std::cout << s << "\n";
  };
  line(header);
  size_t total = 0;
  for (size_t x : w) total += x + 2;
  std::cout << std::string(total - 2, '-') << "\n";
  for (const auto& row : rows) line(row);
}

}  // namespace

void print_suite_table(const std::string& suite, const std::vector<Result>& results, bool gpu) {
  std::cout << "\n== " << suite << " ==\n";
  std::vector<std::vector<std::string>> rows;
  if (gpu) {
    for (const Result& r : results) {
      if (r.status != "ok") {
        rows.push_back({r.config.label(), r.status + ": " + r.message});
        continue;
      }
      std::string fm, ratio, rested;
      for (const AnchorCompare& ac : r.anchors) {
        fm += (fm.empty() ? "" : "; ") + anchor_text(ac.anchor);
        ratio += (ratio.empty() ? "" : "; ") + format_double(ac.ratio, 2) + "x";
        if (std::isfinite(ac.rested_ratio)) rested = format_double(ac.rested_ratio, 2) + "x";
      }
      rows.push_back({r.config.label(), format_double(r.graph_us, 1), format_double(r.eager_us, 1),
                      format_double(r.rested_us, 1), format_double(r.tflops, 1),
                      format_double(r.gbps, 0), format_double(r.pct_gemm, 1),
                      format_double(r.pct_copy, 1), fm.empty() ? "-" : fm,
                      ratio.empty() ? "-" : ratio, rested.empty() ? "-" : rested});
      if (!r.message.empty()) rows.push_back({"", "note: " + r.message});
    }
    print_table({"config", "graph us", "eager us", "rested us", "TFLOPS", "GB/s", "%GEMM",
                 "%copy", "FlashMLA", "vs FlashMLA", "rested vs"},
                rows);
  } else {
    for (const Result& r : results) {
      if (r.status != "ok") {
        rows.push_back({std::string(op_name(r.config.op)) + " " + r.config.label(),
                        r.status + ": " + r.message});
        continue;
      }
      rows.push_back({std::string(op_name(r.config.op)) + " " + r.config.label(),
                      format_double(r.graph_us / 1000.0, 3), format_double(r.tflops * 1000.0, 2),
                      format_double(r.gbps, 2), std::to_string(r.replays)});
    }
    print_table({"config", "ms/call", "GFLOPS", "GB/s", "reps"}, rows);
  }
}

// ---------------- JSON ----------------

namespace {

class JsonWriter {
 public:
  explicit JsonWriter(std::ostream& os) : os_(os) {}
  void begin_object() { open('{'); }
  void end_object() { close('}'); }
  void begin_array() { open('['); }
  void end_array() { close(']'); }
  JsonWriter& key(const std::string& k) {
    comma();
    indent();
    os_ << quote(k) << ": ";
    after_key_ = true;
    return *this;
  }
  void value(const std::string& v) { scalar(quote(v)); }
  void value(const char* v) { scalar(quote(v)); }
  void value(double v) {
    if (!std::isfinite(v)) return scalar("null");
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    scalar(buf);
  }
  void value(int v) { scalar(std::to_string(v)); }
  void value(int64_t v) { scalar(std::to_string(v)); }
  void value(bool v) { scalar(v ? "true" : "false"); }

 private:
  static std::string quote(const std::string& s) {
    std::string q = "\"";
    for (char ch : s) {
      if (ch == '"' || ch == '\\') {
        q += '\\';
        q += ch;
      } else if (uint8_t(ch) < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(uint8_t(ch)));
        q += buf;
      } else {
        q += ch;
      }
    }
    return q + "\"";
  }
  void comma() {
    if (after_key_) return;
    if (!first_.empty()) {
      if (!first_.back()) os_ << ",";
      first_.back() = false;
      os_ << "\n";
    }
  }
  void indent() { os_ << std::string(2 * first_.size(), ' '); }
  void scalar(const std::string& s) {
    if (!after_key_) {
      comma();
      indent();
    }
    after_key_ = false;
    os_ << s;
  }
  void open(char ch) {
    if (!after_key_) {
      comma();
      indent();
    }
    after_key_ = false;
    os_ << ch;
    first_.push_back(true);
  }
  void close(char ch) {
    const bool empty = first_.back();
    first_.pop_back();
    if (!empty) {
      os_ << "\n";
      indent();
    }
    os_ << ch;
  }
  std::ostream& os_;
  std::vector<bool> first_;  // per open container: nothing written yet
  bool after_key_ = false;
};

void write_config(JsonWriter& j, const Config& c) {
  j.key("op").value(op_name(c.op));
  j.key("label").value(c.label());
  switch (c.op) {
    case Op::kDenseDecode:
      j.key("b").value(c.b);
      j.key("s_q").value(c.s_q);
      j.key("h_q").value(c.h_q);
      j.key("h_kv").value(c.h_kv);
      j.key("s_k").value(c.s_k);
      j.key("d_qk").value(c.d_qk);
      j.key("d_v").value(512);
      j.key("page_size").value(c.page);
      j.key("causal").value(c.causal);
      break;
    case Op::kSparseDecode:
      j.key("format").value(c.format == KVCacheFormat::kFP8V32 ? "V32" : "MODEL1");
      j.key("b").value(c.b);
      j.key("s_q").value(c.s_q);
      j.key("h_q").value(c.h_q);
      j.key("s_k").value(c.s_k);
      j.key("d_qk").value(c.d_qk);
      j.key("topk").value(c.topk);
      j.key("page_size").value(c.page);
      j.key("extra_topk").value(c.extra_topk);
      j.key("extra_page_size").value(c.extra_page);
      j.key("extra_topk_length").value(c.extra_len);
      j.key("attn_sink").value(c.attn_sink);
      break;
    case Op::kSparsePrefill:
      j.key("s_q").value(c.s_q);
      j.key("h_q").value(c.h_q);
      j.key("d_qk").value(c.d_qk);
      j.key("topk").value(c.topk);
      j.key("s_kv").value(c.s_kv);
      j.key("attn_sink").value(c.attn_sink);
      break;
    case Op::kDensePrefillForward:
    case Op::kDensePrefillBackward:
      j.key("batch").value(c.b);
      j.key("seqlen_q").value(c.seqlen_q);
      j.key("seqlen_k").value(c.seqlen_k);
      j.key("h_q").value(c.h_q);
      j.key("h_kv").value(c.h_kv);
      j.key("d_qk").value(c.d_qk);
      j.key("causal").value(c.causal);
      break;
    case Op::kQuantize:
    case Op::kDequantize:
    case Op::kAppend:
      j.key("format").value(c.format == KVCacheFormat::kFP8V32 ? "V32" : "MODEL1");
      j.key("num_pages").value(c.num_pages);
      j.key("page_size").value(c.page);
      if (c.op == Op::kAppend) j.key("tokens").value(c.b);
      break;
  }
}

}  // namespace

void write_json(const std::string& path, const Options& opt, const DeviceInfo& dev,
                const Ceilings& ceil,
                const std::vector<std::pair<std::string, std::vector<Result>>>& suites) {
  std::ofstream f(path);
  if (!f) throw Error("--json", "cannot open '" + path + "' for writing");
  JsonWriter j(f);
  j.begin_object();
  j.key("tool").value("openmla-bench");
  j.key("openmla_version")
      .value(std::to_string(kVersionMajor) + "." + std::to_string(kVersionMinor) + "." +
             std::to_string(kVersionPatch));
  j.key("cuda_operators").value(cuda_operators());
  j.key("date").value(iso_time_now());
  // The commit measured: the GPU machine gets a copy of the tree without .git, so scripts/gpu-check
  // passes it in (OPENMLA_COMMIT, from git where available).
  const char* commit = std::getenv("OPENMLA_COMMIT");
  j.key("commit").value(commit && *commit ? commit : "unknown");
  j.key("mode").value(dev.mode);
  j.key("quick").value(opt.quick);
  j.key("device").begin_object();
  j.key("name").value(dev.name);
  if (dev.mode == "gpu") {
    j.key("sms").value(dev.sms);
    j.key("l2_bytes").value(dev.l2_bytes);
    j.key("memory_bytes").value(dev.memory_bytes);
    j.key("compute_capability")
        .value(std::to_string(dev.cc_major) + "." + std::to_string(dev.cc_minor));
    j.key("driver_version").value(dev.driver);
    j.key("runtime_version").value(dev.runtime);
  }
  if (!dev.note.empty()) j.key("note").value(dev.note);
  j.end_object();
  j.key("ceilings").begin_object();
  j.key("copy_gbps").value(ceil.copy_gbps);
  j.key("copy_method").value(ceil.copy_note);
  j.key("gemm_tflops").value(ceil.gemm_tflops);
  j.key("gemm_method").value(ceil.gemm_note);
  j.key("anchor_copy_gbps").value(kAnchorCopyGBps);
  j.key("anchor_gemm_tflops").value(kAnchorGemmTflops);
  j.end_object();
  j.key("suites").begin_array();
  for (const auto& [name, results] : suites) {
    j.begin_object();
    j.key("name").value(name);
    j.key("results").begin_array();
    for (const Result& r : results) {
      j.begin_object();
      j.key("config").begin_object();
      write_config(j, r.config);
      j.end_object();
      j.key("status").value(r.status);
      if (!r.message.empty()) j.key("message").value(r.message);
      j.key("flops").value(r.work.flops);
      j.key("bytes").value(r.work.bytes);
      if (dev.mode == "gpu") {
        j.key("graph_us").value(r.graph_us);
        j.key("graph_min_us").value(r.graph_min_us);
        j.key("eager_us").value(r.eager_us);
        j.key("rested_us").value(r.rested_us);
        j.key("host_issue_us").value(r.host_us);
        j.key("host_plan_update_us").value(r.host_plan_us);
        j.key("host_operator_us").value(r.host_op_us);
        j.key("eager_queued_us").value(r.eager_queued_us);
        j.key("empty_kernel_eager_us").value(r.empty_eager_us);
        j.key("empty_kernel_host_us").value(r.empty_host_us);
        j.key("sm_clock_mhz_after_graph").value(r.clock_mhz);
        j.key("graph_power_w").value(r.power_w);
        j.key("graph_energy_mj_per_call").value(r.energy_mj);
        j.key("input_sets").value(r.sets);
        j.key("replays").value(r.replays);
      } else {
        j.key("wall_us").value(r.graph_us);
        j.key("reps").value(r.replays);
      }
      j.key("tflops").value(r.tflops);
      j.key("gbps").value(r.gbps);
      j.key("pct_gemm_ceiling").value(r.pct_gemm);
      j.key("pct_copy_ceiling").value(r.pct_copy);
      j.key("flashmla").begin_array();
      for (const AnchorCompare& ac : r.anchors) {
        j.begin_object();
        j.key("basis").value(basis_name(ac.anchor.basis));
        if (ac.anchor.tflops > 0) j.key("tflops").value(ac.anchor.tflops);
        if (ac.anchor.gbps > 0) j.key("gbps").value(ac.anchor.gbps);
        if (ac.anchor.us > 0) j.key("us").value(ac.anchor.us);
        j.key("ours_us").value(ac.ours_us);
        j.key("ratio").value(ac.ratio);
        if (std::isfinite(ac.rested_ratio)) j.key("rested_ratio").value(ac.rested_ratio);
        j.end_object();
      }
      j.end_array();
      j.end_object();
    }
    j.end_array();
    j.end_object();
  }
  j.end_array();
  j.end_object();
  f << "\n";
  if (!f) throw Error("--json", "writing '" + path + "' failed");
}

}  // namespace openmla::bench
