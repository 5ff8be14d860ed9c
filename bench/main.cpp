// openmla-bench: the SPEC §8 benchmark suites on the GPU (with the copy and GEMM ceilings measured
// on the spot and the FlashMLA figures of ANCHORS.md beside every cell), or, with no GPU, the CPU
// reference backend on small configurations.
#include <algorithm>
#include <cstring>
#include <iostream>
#include <map>

#include "bench.h"

namespace {

using namespace openmla::bench;

const char* kUsage =
    "usage: openmla-bench [--suite NAME]... [--only TEXT]... [--json FILE] [--quick] [--list] [--cpu]\n"
    "  --suite NAME  run this suite (repeatable; default: all). GPU suites (SPEC section 8):\n"
    "                dense-decode, dense-decode-latency, dense-decode-bi (batch-invariant\n"
    "                schedule cost; not a SPEC suite), dense-decode-pages (page sizes 1-256;\n"
    "                not a SPEC suite), dense-decode-mtp (s_q=2 at batches 1-64; not a SPEC\n"
    "                suite), sparse-decode, sparse-decode-model1, sparse-prefill.\n"
    "                CPU mode also knows dense-prefill and fp8-kv.\n"
    "  --only TEXT   GPU mode: run only the configurations whose label contains TEXT (repeatable;\n"
    "                e.g. --only 'b=128 h_q=128 s_q=1 s_k=4096'), for profiling one cell\n"
    "  --json FILE   write every result (and the ceilings and device) as JSON\n"
    "  --quick       fewer repetitions (same configurations)\n"
    "  --list        list the suites and their configurations, then exit\n"
    "  --cpu         run the CPU backend on small configurations even when a GPU is present\n";

const std::vector<std::string> kCpuOnlySuites = {"dense-prefill", "fp8-kv"};

bool known_suite(const std::string& s) {
  const auto& g = gpu_suite_names();
  return std::find(g.begin(), g.end(), s) != g.end() ||
         std::find(kCpuOnlySuites.begin(), kCpuOnlySuites.end(), s) != kCpuOnlySuites.end();
}

int parse(int argc, char** argv, Options& opt) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name, std::string& dst) -> bool {
      const std::string eq = std::string(name) + "=";
      if (a == name) {
        if (i + 1 >= argc) {
          std::cerr << "openmla-bench: " << name << " needs a value\n" << kUsage;
          return false;
        }
        dst = argv[++i];
        return true;
      }
      if (a.rfind(eq, 0) == 0) {
        dst = a.substr(eq.size());
        return true;
      }
      return false;
    };
    std::string v;
    if (a == "--suite" || a.rfind("--suite=", 0) == 0) {
      if (!value("--suite", v)) return 2;
      if (v == "all") continue;
      if (!known_suite(v)) {
        std::cerr << "openmla-bench: unknown suite '" << v << "'\n" << kUsage;
        return 2;
      }
      if (std::find(opt.suites.begin(), opt.suites.end(), v) == opt.suites.end())
        opt.suites.push_back(v);
    } else if (a == "--only" || a.rfind("--only=", 0) == 0) {
      if (!value("--only", v)) return 2;
      opt.only.push_back(v);
    } else if (a == "--json" || a.rfind("--json=", 0) == 0) {
      if (!value("--json", opt.json_path)) return 2;
    } else if (a == "--quick") {
      opt.quick = true;
    } else if (a == "--list") {
      opt.list = true;
    } else if (a == "--cpu") {
      opt.cpu = true;
    } else if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 1;
    } else {
      std::cerr << "openmla-bench: unknown argument '" << a << "'\n" << kUsage;
      return 2;
    }
  }
  return 0;
}

void list_suites() {
  for (const std::string& name : gpu_suite_names()) {
    const auto configs = gpu_suite(name);
    std::cout << name << " (GPU, " << configs.size() << " configurations)\n";
    for (const Config& c : configs) {
      std::cout << "  " << c.label();
      const auto anchors = anchors_for(c.anchor_key());
      for (size_t i = 0; i < anchors.size(); ++i) {
        const Anchor& a = anchors[i];
        std::cout << (i ? "; " : "   FlashMLA: ");
        if (a.tflops > 0)
          std::cout << a.tflops << " TFLOPS";
        else if (a.gbps > 0)
          std::cout << a.gbps << " GB/s";
        if (a.us > 0) std::cout << (a.tflops > 0 || a.gbps > 0 ? ", " : "") << a.us << " us";
        std::cout << " (" << basis_name(a.basis) << ")";
      }
      std::cout << "\n";
    }
  }
  std::cout << "CPU mode (no GPU, or --cpu): small configurations\n";
  for (const Config& c : cpu_configs())
    std::cout << "  [" << c.suite << "] " << op_name(c.op) << " " << c.label() << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::cout.setf(std::ios::unitbuf);  // keep stdout and the stderr progress lines in order in logs
  Options opt;
  if (int rc = parse(argc, argv, opt)) return rc == 1 ? 0 : rc;
  if (opt.list) {
    list_suites();
    return 0;
  }

  DeviceInfo dev;
  Ceilings ceil;
  std::vector<std::pair<std::string, std::vector<Result>>> results;
  int errors = 0;
  bool gpu = false;
  std::string why;
  if (opt.cpu) {
    why = "--cpu given";
  } else {
#if defined(OPENMLA_WITH_CUDA)
    gpu = cuda_device_count(why) > 0;
#else
    why = "this build of OpenMLA has no CUDA backend";
#endif
  }

  std::cout << "openmla-bench " << openmla::kVersionMajor << "." << openmla::kVersionMinor << "."
            << openmla::kVersionPatch << "  " << iso_time_now() << (opt.quick ? "  (quick)" : "")
            << "\n";
  try {
    if (gpu) {
#if defined(OPENMLA_WITH_CUDA)
      std::vector<std::string> suites;
      for (const std::string& s : opt.suites.empty() ? gpu_suite_names() : opt.suites) {
        if (std::find(kCpuOnlySuites.begin(), kCpuOnlySuites.end(), s) != kCpuOnlySuites.end())
          std::cout << "note: suite '" << s << "' exists in CPU mode only; skipped\n";
        else
          suites.push_back(s);
      }
      errors = run_gpu(opt, suites, dev, ceil, results);
#endif
    } else {
      std::cout << "No GPU used (" << why
                << "): running the CPU reference backend on small "
                   "configurations (time per call, std::chrono).\n";
      dev.note = why;
      errors = run_cpu(opt, opt.suites, dev, results);
    }
  } catch (const std::exception& e) {
    std::cerr << "openmla-bench: " << e.what() << "\n";
    ++errors;
  }

  std::map<std::string, int> counts;
  int total = 0;
  for (const auto& [name, rs] : results)
    for (const Result& r : rs) {
      ++counts[r.status];
      ++total;
    }
  std::cout << "\nsummary: " << total << " configurations";
  for (const auto& [status, n] : counts) std::cout << ", " << n << " " << status;
  std::cout << (errors ? "  (ERRORS)" : "") << "\n";

  if (!opt.json_path.empty()) {
    try {
      write_json(opt.json_path, opt, dev, ceil, results);
      std::cout << "results written to " << opt.json_path << "\n";
    } catch (const std::exception& e) {
      std::cerr << "openmla-bench: " << e.what() << "\n";
      ++errors;
    }
  }
  return errors ? 1 : 0;
}
