// One request's sequence as the scheduler sees it: its tokens (prompt, then
// generated), how many of them the latent cache holds, and its block table.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "runtime/request.h"

namespace mla {

class Sequence {
 public:
  Sequence(std::shared_ptr<Request> request, int64_t id)
      : request_(std::move(request)), id_(id), tokens_(request_->params().prompt_ids) {}

  Request& request() { return *request_; }
  const std::shared_ptr<Request>& request_ptr() const { return request_; }
  int64_t id() const { return id_; }

  // Prompt, then every generated token.
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t prompt_len() const { return static_cast<int64_t>(request_->params().prompt_ids.size()); }
  int64_t num_generated() const { return num_tokens() - prompt_len(); }
  void AppendToken(int32_t token) { tokens_.push_back(token); }
  // Tokens not yet in the cache: the rest of the prompt, or the last sampled token.
  int64_t num_uncomputed() const { return num_tokens() - num_computed; }

  // Tokens whose latents the cache holds (positions [0, num_computed)).
  int64_t num_computed = 0;
  // Cache blocks in position order, and the chain hashes of the full ones
  // registered or matched so far (block_hashes[i] covers block i).
  std::vector<int32_t> block_table;
  std::vector<uint64_t> block_hashes;
  // Prompt tokens served from the prefix cache at first admission.
  int64_t cached_prompt_tokens = -1;  // -1: not admitted yet
  absl::Time first_scheduled = absl::InfinitePast();
  absl::Time last_token_time = absl::InfinitePast();

 private:
  std::shared_ptr<Request> request_;
  int64_t id_;
  std::vector<int32_t> tokens_;
};

}  // namespace mla
