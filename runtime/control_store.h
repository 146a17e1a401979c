// The rendezvous key-value store over the coordinator's control plane: what a
// worker hands the communicator to bootstrap through.
#pragma once

#include <memory>
#include <string>

#include "mla/control/v1/control.grpc.pb.h"
#include "runtime/kv_store.h"

namespace mla {

class ControlPlaneStore final : public KeyValueStore {
 public:
  // `prefix` namespaces this group's keys (from the Register response).
  ControlPlaneStore(std::shared_ptr<control::v1::ControlPlane::StubInterface> stub, std::string prefix,
                    std::string api_key = "")
      : stub_(std::move(stub)), prefix_(std::move(prefix)), api_key_(std::move(api_key)) {}
  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override;

 private:
  std::shared_ptr<control::v1::ControlPlane::StubInterface> stub_;
  std::string prefix_;
  std::string api_key_;
};

// gRPC status -> absl status, code for code.
absl::Status FromGrpc(const grpc::Status& status);
// absl status -> gRPC status, code for code.
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace mla
