#include "runtime/control_store.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "runtime/auth.h"

namespace mla {

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status ControlPlaneStore::Set(const std::string& key, const std::string& value) {
  grpc::ClientContext ctx;
  AddBearer(ctx, api_key_);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  control::v1::RendezvousSetRequest req;
  req.set_key(prefix_ + "/" + key);
  req.set_value(value);
  control::v1::RendezvousSetResponse resp;
  absl::Status s = FromGrpc(stub_->RendezvousSet(&ctx, req, &resp));
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("rendezvous set '", key, "': ", s.message()));
  return s;
}

absl::StatusOr<std::string> ControlPlaneStore::Get(const std::string& key, absl::Duration timeout) {
  grpc::ClientContext ctx;
  AddBearer(ctx, api_key_);
  // The server waits up to the timeout; the call deadline leaves it a margin.
  const absl::Duration wait = timeout == absl::InfiniteDuration() ? absl::Hours(24) : timeout;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + wait + absl::Seconds(5)));
  control::v1::RendezvousGetRequest req;
  req.set_key(prefix_ + "/" + key);
  req.set_timeout_ms(absl::ToInt64Milliseconds(wait));
  control::v1::RendezvousGetResponse resp;
  absl::Status s = FromGrpc(stub_->RendezvousGet(&ctx, req, &resp));
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("rendezvous get '", key, "': ", s.message()));
  return resp.value();
}

}  // namespace mla
