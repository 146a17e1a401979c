#include "runtime/kv_store.h"

#include "absl/strings/str_cat.h"

namespace mla {

absl::Status InMemoryKeyValueStore::Set(const std::string& key, const std::string& value) {
  absl::MutexLock lock(&mu_);
  values_.insert_or_assign(key, value);
  changed_.SignalAll();
  return absl::OkStatus();
}

absl::StatusOr<std::string> InMemoryKeyValueStore::Get(const std::string& key, absl::Duration timeout) {
  // InfiniteFuture when the timeout is infinite; in the past when it is <= 0.
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  while (true) {
    auto it = values_.find(key);
    if (it != values_.end()) return it->second;
    // WaitWithDeadline returns true once the deadline has passed.
    if (absl::Now() >= deadline || changed_.WaitWithDeadline(&mu_, deadline)) {
      it = values_.find(key);
      if (it != values_.end()) return it->second;
      return absl::DeadlineExceededError(
          absl::StrCat("key-value store: key '", key, "' not set within ", absl::FormatDuration(timeout)));
    }
  }
}

}  // namespace mla
