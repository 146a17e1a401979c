// Bearer-token checks for the gRPC services (--api-key). Health is never
// checked, so probes keep working; every other call carries
// "authorization: Bearer <key>".
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <string>

namespace mla {

// OK when no key is configured or the call carries it; else UNAUTHENTICATED.
grpc::Status CheckBearer(const grpc::ServerContext& ctx, const std::string& api_key);

// The library services (server reflection) have no handler of ours to check
// the key in: this interceptor cancels their calls that lack it.
class BearerInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit BearerInterceptorFactory(std::string api_key) : api_key_(std::move(api_key)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

 private:
  std::string api_key_;
};

// Adds the key to a client call (workers' control-plane calls); no-op when empty.
void AddBearer(grpc::ClientContext& ctx, const std::string& api_key);

}  // namespace mla
