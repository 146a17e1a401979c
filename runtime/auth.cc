#include "runtime/auth.h"

#include <string_view>

namespace mla {
namespace {

constexpr std::string_view kPrefix = "Bearer ";

// Compares in time independent of where the strings differ.
bool SameSecret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
  return diff == 0 && !b.empty();
}

template <typename Map>
bool Authorized(const Map& metadata, const std::string& api_key) {
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return false;
  std::string_view value(it->second.data(), it->second.size());
  if (value.substr(0, kPrefix.size()) != kPrefix) return false;
  return SameSecret(value.substr(kPrefix.size()), api_key);
}

class BearerInterceptor : public grpc::experimental::Interceptor {
 public:
  BearerInterceptor(grpc::experimental::ServerRpcInfo* info, const std::string& api_key)
      : info_(info), api_key_(api_key) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      std::string_view method = info_->method();
      const bool checked = method.substr(0, 17) == "/grpc.reflection.";
      if (checked && !Authorized(*methods->GetRecvInitialMetadata(), api_key_)) info_->server_context()->TryCancel();
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* info_;
  const std::string& api_key_;
};

}  // namespace

grpc::Status CheckBearer(const grpc::ServerContext& ctx, const std::string& api_key) {
  if (api_key.empty() || Authorized(ctx.client_metadata(), api_key)) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "missing or wrong API key (expected the metadata 'authorization: Bearer <key>')");
}

grpc::experimental::Interceptor* BearerInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new BearerInterceptor(info, api_key_);
}

void AddBearer(grpc::ClientContext& ctx, const std::string& api_key) {
  if (!api_key.empty()) ctx.AddMetadata("authorization", std::string(kPrefix) + api_key);
}

}  // namespace mla
