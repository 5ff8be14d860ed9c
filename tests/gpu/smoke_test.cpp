#include <gtest/gtest.h>
#include "openmla/openmla.h"
TEST(GpuSmoke, BuiltWithCuda) { EXPECT_TRUE(openmla::built_with_cuda()); }
