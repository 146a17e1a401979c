#include "runtime/control_service.h"

#include <glog/logging.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "runtime/auth.h"
#include "runtime/control_store.h"

namespace mla {

namespace cv1 = control::v1;

grpc::Status ControlService::Register(grpc::ServerContext* ctx, const cv1::RegisterRequest* req,
                                      cv1::RegisterResponse* resp) {
  if (grpc::Status auth = CheckBearer(*ctx, api_key_); !auth.ok()) return auth;
  const int world = engine_.world_size();
  if (req->local_world_size() < 1 || req->local_rank() < 0 || req->local_rank() >= req->local_world_size() ||
      req->node_rank() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("local_rank ", req->local_rank(), " of local_world_size ",
                                     req->local_world_size(), " on node ", req->node_rank(), " (expected 0 <= ",
                                     "local_rank < local_world_size, node >= 0)"));
  }
  const int rank = req->node_rank() * req->local_world_size() + req->local_rank();
  if (rank >= world) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("node ", req->node_rank(), " local rank ", req->local_rank(), " is rank ", rank,
                                     " (expected < the group's world size ", world, ")"));
  }
  absl::MutexLock lock(&mu_);
  if (registered_[static_cast<size_t>(rank)]) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                        absl::StrCat("rank ", rank, " is already registered; restart the whole group"));
  }
  registered_[static_cast<size_t>(rank)] = true;
  LOG(INFO) << "registered rank " << rank << ": " << req->host() << " " << req->device() << " pid " << req->pid();
  resp->set_rank(rank);
  resp->set_world_size(world);
  resp->set_rendezvous_prefix(prefix_);
  return grpc::Status::OK;
}

grpc::Status ControlService::RendezvousSet(grpc::ServerContext* ctx, const cv1::RendezvousSetRequest* req,
                                           cv1::RendezvousSetResponse*) {
  if (grpc::Status auth = CheckBearer(*ctx, api_key_); !auth.ok()) return auth;
  return ToGrpc(store_.Set(req->key(), req->value()));
}

grpc::Status ControlService::RendezvousGet(grpc::ServerContext* ctx, const cv1::RendezvousGetRequest* req,
                                           cv1::RendezvousGetResponse* resp) {
  if (grpc::Status auth = CheckBearer(*ctx, api_key_); !auth.ok()) return auth;
  absl::StatusOr<std::string> v = store_.Get(req->key(), absl::Milliseconds(req->timeout_ms()));
  if (!v.ok()) return ToGrpc(v.status());
  resp->set_value(*v);
  return grpc::Status::OK;
}

grpc::Status ControlService::Steps(grpc::ServerContext* ctx,
                                   grpc::ServerReaderWriter<cv1::StepPlan, cv1::WorkerMessage>* stream) {
  if (grpc::Status auth = CheckBearer(*ctx, api_key_); !auth.ok()) return auth;
  cv1::WorkerMessage first;
  if (!stream->Read(&first) || !first.has_ready()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a step stream opens with WorkerReady");
  }
  auto link = std::make_shared<WorkerLink>(first.ready());
  if (absl::Status s = engine_.Attach(link); !s.ok()) return ToGrpc(s);
  // One thread reads results while this one writes plans: gRPC allows one
  // reader and one writer on a stream at a time.
  absl::Notification reader_done;
  std::thread reader([&] {
    cv1::WorkerMessage m;
    while (stream->Read(&m)) {
      if (m.has_result()) link->PushResult(m.result());
    }
    link->MarkDead("its step stream closed (the worker exited or lost its connection)");
    reader_done.Notify();
  });
  bool shutdown = false;
  while (std::optional<cv1::StepPlan> plan = link->NextPlan()) {
    if (!stream->Write(*plan)) {
      link->MarkDead("writing to its step stream failed");
      break;
    }
    if (plan->shutdown()) {
      shutdown = true;
      break;
    }
  }
  // After a shutdown plan the worker closes its side; give it a moment to.
  if (shutdown) reader_done.WaitForNotificationWithTimeout(absl::Seconds(2));
  link->MarkDead("the coordinator closed its step stream");
  ctx->TryCancel();  // unblocks the reader if the worker is still connected
  reader.join();
  return grpc::Status::OK;
}

}  // namespace mla
