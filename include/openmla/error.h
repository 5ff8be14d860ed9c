// openmla::Error: the one exception type of the library; it names the offending argument.
#pragma once

#include <stdexcept>
#include <string>

namespace openmla {

class Error : public std::runtime_error {
 public:
  // `argument` is the public name of the argument at fault ("q", "cache_seqlens", ...), or a
  // subsystem name ("cuda", "backend") when no single argument is to blame.
  Error(std::string argument, const std::string& message)
      : std::runtime_error("openmla: " + argument + ": " + message),
        argument_(std::move(argument)) {}

  const std::string& argument() const noexcept { return argument_; }

 private:
  std::string argument_;
};

}  // namespace openmla
