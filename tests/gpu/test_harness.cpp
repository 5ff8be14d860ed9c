// The GPU test harness itself: the build has the CUDA backend, DeviceTensor mirrors padded host
// layouts exactly, poison reads back as NaN, and the comparison helpers see a difference.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "gpu/device_tensor.h"

namespace openmla::test {
namespace {

TEST(GpuHarness, BuiltWithCuda) {
  EXPECT_TRUE(built_with_cuda());
  // The FP8 tools have kernels since the skeleton; others join the list as they land.
  EXPECT_TRUE(has_cuda_kernel("quantize_kv_cache")) << cuda_operators();
  EXPECT_FALSE(has_cuda_kernel("quantize"));  // whole names only
}

TEST(GpuHarness, ReportsWhyNoGpu) {
  std::string why;
  const bool ok = gpu_available(&why);
  EXPECT_FALSE(why.empty());
  if (!ok) GTEST_SKIP() << "no usable GPU (" << why << "): the skip path works";
}

class GpuHarnessDevice : public GpuTest {};

TEST_F(GpuHarnessDevice, RoundTripKeepsLayoutAndPadding) {
  std::mt19937_64 rng(1);
  HostTensor h(DType::kBFloat16, {3, 5, 7}, /*pad=*/9);
  for (auto& b : h.storage) b = uint8_t(rng());
  DeviceTensor d = DeviceTensor::from(h);
  EXPECT_EQ(d.view.device, cuda_device(0));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(d.view.shape[i], h.view.shape[i]);
    EXPECT_EQ(d.view.strides[i], h.view.strides[i]);
  }
  EXPECT_TRUE(bytes_equal("round trip", d.to_host(h), h));
}

TEST_F(GpuHarnessDevice, PoisonReadsAsNaNAndFailsClose) {
  std::mt19937_64 rng(2);
  Twin t(HostTensor(DType::kBFloat16, {4, 64}, /*pad=*/4));
  fill_randn(t.host, rng);
  t.upload();
  EXPECT_TRUE(close("uploaded", t.fetch(), t.host, kDecodeOut));
  t.dev.poison();
  const HostTensor got = t.fetch();
  got.for_each([&](int64_t o) { EXPECT_TRUE(std::isnan(got.get_flat(o))); });
  EXPECT_FALSE(close("poisoned", got, t.host, kDecodeOut));
  EXPECT_FALSE(bytes_equal("poisoned", got, t.host));
}

TEST_F(GpuHarnessDevice, RunAndCompareSeesAWrongDeviceResult) {
  // "Operator": copies src to dst on the host; on the device it writes nothing, so the poisoned
  // output must fail the comparison.
  std::mt19937_64 rng(3);
  TwinSet t;
  fill_randn(t.add("src", HostTensor(DType::kFloat32, {8, 16})).host, rng);
  t.add("dst", HostTensor(DType::kFloat32, {8, 16}));
  t.upload_all();
  struct P {
    TensorView src, dst;
  };
  auto make = [&](Side s) { return P{t.view("src", s), t.view("dst", s)}; };
  auto op = [](const P& p) {
    if (p.src.device.type == DeviceType::kCPU)
      std::memcpy(p.dst.data, p.src.data, size_t(p.src.numel()) * 4);
  };
  EXPECT_FALSE(run_and_compare(t, make, op, {{"dst", kLse}}));
  // And passes when the device does the same.
  auto op2 = [](const P& p) {
    if (p.src.device.type == DeviceType::kCPU)
      std::memcpy(p.dst.data, p.src.data, size_t(p.src.numel()) * 4);
    else
      OPENMLA_CUDA_CHECK(
          cudaMemcpy(p.dst.data, p.src.data, size_t(p.src.numel()) * 4, cudaMemcpyDeviceToDevice));
  };
  EXPECT_TRUE(run_and_compare(t, make, op2, {{"dst", kLse}, {"src", kLse, true}}));
}

}  // namespace
}  // namespace openmla::test
