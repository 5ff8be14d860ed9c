// OpenMLA umbrella header: the whole public C++ API.
#pragma once

#include "openmla/decode.h"
#include "openmla/error.h"
#include "openmla/kv_cache.h"
#include "openmla/prefill.h"
#include "openmla/tensor.h"
#include "openmla/version.h"
