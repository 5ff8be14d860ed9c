#include <gtest/gtest.h>

#include "openmla/openmla.h"
TEST(Smoke, Version) { EXPECT_GE(openmla::kVersionMinor, 0); }
