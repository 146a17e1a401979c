// The rendezvous key-value store that collective libraries bootstrap through
// (Gloo addresses, later the NCCL unique id). The worker implements it over the
// coordinator's control plane; the communicator only sees this interface.
#pragma once

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace mla {

// Keys are set once per rendezvous; a later Set of the same key overwrites it.
// Implementations are thread-safe: ranks may Set and Get concurrently.
class KeyValueStore {
 public:
  virtual ~KeyValueStore() = default;

  virtual absl::Status Set(const std::string& key, const std::string& value) = 0;

  // Blocks until `key` exists or `timeout` passes; then DeadlineExceeded naming
  // the key and the timeout. A zero or negative timeout checks once, at once;
  // absl::InfiniteDuration() waits forever.
  virtual absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) = 0;
};

// One process's store: for tests, and for ranks that are threads of one process.
class InMemoryKeyValueStore final : public KeyValueStore {
 public:
  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override;

 private:
  absl::Mutex mu_;
  absl::CondVar changed_;  // signalled on every Set
  absl::flat_hash_map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mla
