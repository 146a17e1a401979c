// The client API (mla.serving.v1.Inference) and grpc.health.v1, in front of the engine.
#pragma once

#include <string>

#include "grpc/health/v1/health.grpc.pb.h"
#include "mla/serving/v1/serving.grpc.pb.h"
#include "runtime/engine.h"

namespace mla {

class InferenceService final : public serving::v1::Inference::Service {
 public:
  InferenceService(Engine& engine, std::string architecture, std::string backend, std::string api_key,
                   ServingMetrics* metrics)
      : engine_(engine),
        architecture_(std::move(architecture)),
        backend_(std::move(backend)),
        api_key_(std::move(api_key)),
        metrics_(metrics) {}

  grpc::Status Generate(grpc::ServerContext* ctx, const serving::v1::GenerateRequest* req,
                        grpc::ServerWriter<serving::v1::GenerateResponse>* writer) override;
  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const serving::v1::GetModelInfoRequest* req,
                            serving::v1::ModelInfo* info) override;

 private:
  Engine& engine_;
  const std::string architecture_;
  const std::string backend_;
  const std::string api_key_;
  ServingMetrics* metrics_;
};

// Liveness on "" (the process answers), readiness on the Inference service
// name (SERVING once every worker is ready, NOT_SERVING while loading or after
// a failure).
class HealthService final : public grpc::health::v1::Health::Service {
 public:
  explicit HealthService(Engine& engine) : engine_(engine) {}
  grpc::Status Check(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                     grpc::health::v1::HealthCheckResponse* resp) override;
  grpc::Status Watch(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) override;

 private:
  // nullopt for an unknown service.
  std::optional<grpc::health::v1::HealthCheckResponse::ServingStatus> StatusOf(const std::string& service);
  Engine& engine_;
};

}  // namespace mla
