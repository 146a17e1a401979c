// The coordinator's ControlPlane service: worker registration, the rendezvous
// store, and one step stream per worker, wired to the engine.
#pragma once

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "mla/control/v1/control.grpc.pb.h"
#include "runtime/engine.h"
#include "runtime/kv_store.h"

namespace mla {

class ControlService final : public control::v1::ControlPlane::Service {
 public:
  ControlService(Engine& engine, std::string rendezvous_prefix, std::string api_key = "")
      : engine_(engine), prefix_(std::move(rendezvous_prefix)), api_key_(std::move(api_key)) {
    registered_.resize(static_cast<size_t>(engine.world_size()), false);
  }

  grpc::Status Register(grpc::ServerContext* ctx, const control::v1::RegisterRequest* req,
                        control::v1::RegisterResponse* resp) override;
  grpc::Status RendezvousSet(grpc::ServerContext* ctx, const control::v1::RendezvousSetRequest* req,
                             control::v1::RendezvousSetResponse* resp) override;
  grpc::Status RendezvousGet(grpc::ServerContext* ctx, const control::v1::RendezvousGetRequest* req,
                             control::v1::RendezvousGetResponse* resp) override;
  grpc::Status Steps(grpc::ServerContext* ctx,
                     grpc::ServerReaderWriter<control::v1::StepPlan, control::v1::WorkerMessage>* stream) override;

 private:
  Engine& engine_;
  const std::string prefix_;
  const std::string api_key_;
  InMemoryKeyValueStore store_;
  absl::Mutex mu_;
  std::vector<bool> registered_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mla
