#include "runtime/inference_service.h"

#include <glog/logging.h>

#include "absl/strings/str_cat.h"
#include "runtime/auth.h"
#include "runtime/control_store.h"
#include "runtime/engine_metrics.h"
#include "runtime/kv_cache.h"

namespace mla {

namespace sv1 = serving::v1;
namespace hv1 = grpc::health::v1;

namespace {

sv1::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return sv1::FINISH_REASON_LENGTH;
    case FinishReason::kStop: return sv1::FINISH_REASON_STOP;
    case FinishReason::kCancelled: return sv1::FINISH_REASON_CANCELLED;
    case FinishReason::kNone: break;
  }
  return sv1::FINISH_REASON_UNSPECIFIED;
}

Request::Params ParamsFrom(const sv1::GenerateRequest& req) {
  Request::Params p;
  p.prompt_ids.assign(req.prompt_token_ids().begin(), req.prompt_token_ids().end());
  p.max_new_tokens = req.max_new_tokens();
  p.sampling.temperature = req.sampling().temperature();
  p.sampling.top_k = req.sampling().top_k();
  p.sampling.top_p = req.sampling().has_top_p() ? req.sampling().top_p() : 1.0f;
  p.sampling.seed = req.sampling().seed();
  p.top_logprobs = req.top_logprobs();
  p.ignore_eos = req.ignore_eos();
  p.stop_token_ids.assign(req.stop_token_ids().begin(), req.stop_token_ids().end());
  p.client_id = req.request_id();
  return p;
}

int64_t Micros(absl::Duration d) { return absl::ToInt64Microseconds(d); }

}  // namespace

grpc::Status InferenceService::Generate(grpc::ServerContext* ctx, const sv1::GenerateRequest* req,
                                        grpc::ServerWriter<sv1::GenerateResponse>* writer) {
  if (grpc::Status auth = CheckBearer(*ctx, api_key_); !auth.ok()) return auth;
  Request::Params params = ParamsFrom(*req);
  absl::Status admitted = engine_.Validate(params);
  auto request = std::make_shared<Request>(std::move(params));
  if (admitted.ok()) admitted = engine_.Submit(request);
  if (!admitted.ok()) {
    if (metrics_ != nullptr) RecordRejected(*metrics_, admitted.code());
    return ToGrpc(admitted);
  }
  int32_t index = 0;
  while (true) {
    std::vector<GeneratedTokenInfo> tokens;
    FinishReason reason;
    absl::Status status;
    const bool done = request->Next(absl::Milliseconds(50), &tokens, &reason, &status);
    for (const GeneratedTokenInfo& t : tokens) {
      sv1::GenerateResponse resp;
      sv1::GeneratedToken* g = resp.mutable_token();
      g->set_index(index++);
      g->set_token_id(t.token_id);
      g->set_logprob(t.logprob);
      for (const auto& [id, lp] : t.top_logprobs) {
        sv1::TokenLogprob* e = g->add_top_logprobs();
        e->set_token_id(id);
        e->set_logprob(lp);
      }
      if (!writer->Write(resp)) {
        request->Cancel();
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
    }
    if (done) {
      if (!status.ok()) return ToGrpc(status);
      sv1::GenerateResponse resp;
      sv1::GenerateFinal* f = resp.mutable_final();
      f->set_finish_reason(ToProto(reason));
      f->set_prompt_tokens(static_cast<int32_t>(request->params().prompt_ids.size()));
      f->set_completion_tokens(index);
      const absl::Time first = request->first_token_time();
      if (first != absl::InfinitePast()) f->set_time_to_first_token_us(Micros(first - request->arrival()));
      f->set_total_time_us(Micros(absl::Now() - request->arrival()));
      f->set_cached_prompt_tokens(static_cast<int32_t>(request->cached_prompt_tokens()));
      const absl::Time admitted = request->admitted_time();
      if (admitted != absl::InfinitePast()) f->set_queue_time_us(Micros(admitted - request->arrival()));
      writer->Write(resp);
      return grpc::Status::OK;
    }
    if (ctx->IsCancelled()) {
      request->Cancel();
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
    }
  }
}

grpc::Status InferenceService::GetModelInfo(grpc::ServerContext* ctx, const sv1::GetModelInfoRequest*,
                                            sv1::ModelInfo* info) {
  if (grpc::Status auth = CheckBearer(*ctx, api_key_); !auth.ok()) return auth;
  const ModelConfig& c = engine_.config();
  info->set_architecture(architecture_);
  info->set_model_type(c.model_type);
  info->set_vocab_size(c.vocab_size);
  info->set_hidden_size(c.hidden_size);
  info->set_num_layers(c.num_hidden_layers);
  info->set_num_attention_heads(c.num_attention_heads);
  info->set_kv_lora_rank(c.kv_lora_rank);
  info->set_qk_rope_head_dim(c.qk_rope_head_dim);
  info->set_max_context(engine_.max_model_len());
  info->set_cache_blocks_in_use(engine_.blocks_in_use());
  info->set_prefix_caching(engine_.prefix_caching());
  info->set_tp_size(engine_.world_size());
  info->set_backend(backend_);
  info->set_cache_blocks(engine_.num_blocks());
  info->set_block_size(static_cast<int32_t>(kDefaultBlockSize));
  info->set_eos_token_id(c.eos_token_id);
  for (const control::v1::WorkerReady& r : engine_.ranks()) {
    const int64_t tokens = r.cache_blocks() * r.block_size();
    if (tokens > 0) info->set_kv_cache_bytes_per_token(r.cache_bytes() / tokens);
    sv1::RankInfo* ri = info->add_ranks();
    ri->set_rank(r.rank());
    ri->set_host(r.host());
    ri->set_device(r.device());
    ri->set_pid(r.pid());
    ri->set_cache_blocks(r.cache_blocks());
    ri->set_decode_kernel(r.decode_kernel());
    ri->mutable_weight_bytes()->set_attention(r.weight_bytes().attention());
    ri->mutable_weight_bytes()->set_experts(r.weight_bytes().experts());
    ri->mutable_weight_bytes()->set_embeddings(r.weight_bytes().embeddings());
    ri->mutable_weight_bytes()->set_replicated(r.weight_bytes().replicated());
  }
  return grpc::Status::OK;
}

std::optional<hv1::HealthCheckResponse::ServingStatus> HealthService::StatusOf(const std::string& service) {
  if (service.empty()) return hv1::HealthCheckResponse::SERVING;  // liveness: we answer
  if (service == sv1::Inference::service_full_name()) {
    // Ready only while taking requests: not while loading, draining or failed.
    return engine_.state() == EngineState::kServing ? hv1::HealthCheckResponse::SERVING
                                                    : hv1::HealthCheckResponse::NOT_SERVING;
  }
  return std::nullopt;
}

grpc::Status HealthService::Check(grpc::ServerContext*, const hv1::HealthCheckRequest* req,
                                  hv1::HealthCheckResponse* resp) {
  auto status = StatusOf(req->service());
  if (!status) return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown service '", req->service(), "'"));
  resp->set_status(*status);
  return grpc::Status::OK;
}

grpc::Status HealthService::Watch(grpc::ServerContext* ctx, const hv1::HealthCheckRequest* req,
                                  grpc::ServerWriter<hv1::HealthCheckResponse>* writer) {
  std::optional<hv1::HealthCheckResponse::ServingStatus> last;
  while (!ctx->IsCancelled()) {
    auto now = StatusOf(req->service()).value_or(hv1::HealthCheckResponse::SERVICE_UNKNOWN);
    if (!last || *last != now) {
      hv1::HealthCheckResponse resp;
      resp.set_status(now);
      if (!writer->Write(resp)) break;
      last = now;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  return grpc::Status::OK;
}

}  // namespace mla
