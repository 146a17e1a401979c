#include "runtime/gloo_communicator.h"

#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gloo/allgather.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/common/error.h"
#include "gloo/common/logging.h"
#include "gloo/gather.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/device.h"

namespace mla {
namespace {

// AllReduceSum gathers at most this many floats per rank per round, which bounds
// its scratch buffer to kAllReduceChunkFloats * size floats (16 MiB per rank).
constexpr size_t kAllReduceChunkFloats = size_t{4} << 20;

// Carries a KeyValueStore error through Gloo's rendezvous, which only knows
// exceptions, back to our boundary with its code intact.
class StoreError : public std::exception {
 public:
  explicit StoreError(absl::Status status) : status_(std::move(status)), what_(status_.ToString()) {}
  const absl::Status& status() const { return status_; }
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  absl::Status status_;
  std::string what_;
};

// Gloo's view of our store during one rendezvous: keys live under "<prefix>/",
// and every wait ends by one deadline, so the whole rendezvous is bounded by the
// timeout however late the ranks arrive one after another.
class GlooStore final : public gloo::rendezvous::Store {
 public:
  GlooStore(KeyValueStore& store, std::string prefix, absl::Duration timeout)
      : store_(store), prefix_(std::move(prefix)), timeout_(timeout), deadline_(absl::Now() + timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    absl::Status status = store_.Set(Key(key), std::string(data.begin(), data.end()));
    if (!status.ok()) throw StoreError(std::move(status));
  }

  std::vector<char> get(const std::string& key) override {
    const std::string value = Get(key, deadline_);
    return std::vector<char>(value.begin(), value.end());
  }

  void wait(const std::vector<std::string>& keys) override { Wait(keys, deadline_); }

  // Gloo passes its context timeout, which the rendezvous shortens for the
  // connect phase (see CreateGlooCommunicator); the store keeps its own deadline.
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override {
    Wait(keys, deadline_);
  }

 private:
  std::string Key(const std::string& key) const { return absl::StrCat(prefix_, "/", key); }

  std::string Get(const std::string& key, absl::Time deadline) {
    absl::StatusOr<std::string> value = store_.Get(Key(key), std::max(deadline - absl::Now(), absl::ZeroDuration()));
    if (value.ok()) return *std::move(value);
    if (absl::IsDeadlineExceeded(value.status())) {
      // Gloo's keys are rank numbers: a rank that has not published its addresses.
      throw StoreError(absl::DeadlineExceededError(absl::StrCat(
          "key '", Key(key), "' not in the store within the ", absl::FormatDuration(timeout_),
          " rendezvous timeout (has every rank started?)")));
    }
    throw StoreError(value.status());
  }

  void Wait(const std::vector<std::string>& keys, absl::Time deadline) {
    for (const std::string& key : keys) Get(key, deadline);
  }

  KeyValueStore& store_;
  const std::string prefix_;
  const absl::Duration timeout_;
  const absl::Time deadline_;
};

// Call only inside a catch handler: turns the exception in flight into a Status
// whose message starts with `where`. Gloo reports a peer that went away as an
// IoException ("Connection closed by peer", "Connection reset by peer", "Socket
// closed") and a peer that does not answer as an IoException with "Timed out" or
// "timeout" in its message.
absl::Status CurrentExceptionToStatus(absl::string_view where) {
  try {
    throw;
  } catch (const StoreError& e) {
    return absl::Status(e.status().code(), absl::StrCat(where, ": ", e.status().message()));
  } catch (const gloo::IoException& e) {
    const std::string lower = absl::AsciiStrToLower(e.what());
    if (absl::StrContains(lower, "timed out") || absl::StrContains(lower, "timeout")) {
      return absl::DeadlineExceededError(absl::StrCat(where, ": ", e.what()));
    }
    return absl::UnavailableError(absl::StrCat(where, ": ", e.what()));
  } catch (const gloo::EnforceNotMet& e) {
    return absl::InternalError(absl::StrCat(where, ": ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(where, ": ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat(where, ": unknown exception"));
  }
}

// Gloo writes with writev(2), which raises SIGPIPE when the peer has closed its
// socket; with the default action that kills the process instead of giving the
// IoException we turn into Unavailable. A handler someone installed is kept.
void IgnoreSigpipeIfDefault() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current = {};
    if (sigaction(SIGPIPE, nullptr, &current) != 0) return;
    if ((current.sa_flags & SA_SIGINFO) == 0 && current.sa_handler == SIG_DFL) {
      struct sigaction ignore = {};
      ignore.sa_handler = SIG_IGN;
      sigemptyset(&ignore.sa_mask);
      sigaction(SIGPIPE, &ignore, nullptr);
    }
  });
}

// The numeric forms of `hostname`'s addresses, in getaddrinfo's order. Gloo's
// CreateDeviceAttr dereferences an unset pointer when getaddrinfo fails (it checks
// for -1; getaddrinfo returns EAI_* codes), so we resolve here and hand it only
// numeric addresses, whose lookup cannot fail.
absl::StatusOr<std::vector<std::string>> NumericAddresses(const std::string& hostname) {
  struct addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  struct addrinfo* result = nullptr;
  const int rv = getaddrinfo(hostname.c_str(), nullptr, &hints, &result);
  if (rv != 0) {
    const std::string message = absl::StrCat("cannot resolve hostname '", hostname, "': ", gai_strerror(rv));
    return rv == EAI_AGAIN ? absl::UnavailableError(message) : absl::InvalidArgumentError(message);
  }
  std::vector<std::string> addresses;
  for (const struct addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    char host[NI_MAXHOST];
    if (getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof(host), nullptr, 0, NI_NUMERICHOST) != 0) continue;
    if (std::find(addresses.begin(), addresses.end(), host) == addresses.end()) addresses.emplace_back(host);
  }
  freeaddrinfo(result);
  if (addresses.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("hostname '", hostname, "' has no usable address"));
  }
  return addresses;
}

// A TCP device listening on the first of hostname's addresses that can be bound.
absl::StatusOr<std::shared_ptr<gloo::transport::Device>> ListenOn(const std::string& hostname) {
  absl::StatusOr<std::vector<std::string>> addresses = NumericAddresses(hostname);
  if (!addresses.ok()) return addresses.status();
  absl::Status last;
  for (const std::string& address : *addresses) {
    try {
      gloo::transport::tcp::attr attr;
      attr.hostname = address;
      return gloo::transport::tcp::CreateDevice(attr);
    } catch (...) {
      last = CurrentExceptionToStatus(absl::StrCat("listening on ", address));
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("cannot listen on hostname '", hostname, "': ", last.message()));
}

class GlooCommunicator final : public Communicator {
 public:
  explicit GlooCommunicator(std::shared_ptr<gloo::rendezvous::Context> context)
      : context_(std::move(context)), rank_(context_->rank), size_(context_->size) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  // Gather to all, then every rank sums rank 0..size-1 in order: the same bits on
  // every rank and run, independent of count. (Gloo's ring allreduce also gives
  // every rank the same bits, but which rank starts an element's sum depends on
  // the element's segment, i.e. on count: the same row would round differently
  // at different batch sizes.)
  absl::Status AllReduceSum(float* data, size_t count) override {
    if (absl::Status s = comm_internal::CheckAllReduce(data, count); !s.ok()) return s;
    const size_t n = static_cast<size_t>(size_);
    for (size_t begin = 0; begin < count; begin += kAllReduceChunkFloats) {
      const size_t len = std::min(kAllReduceChunkFloats, count - begin);
      scratch_.resize(len * n);
      float* parts = scratch_.data();  // [size][len]
      absl::Status s = Run("AllReduceSum", [&] {
        gloo::AllgatherOptions opts(context_);
        opts.setInput(data + begin, len);
        opts.setOutput(parts, len * n);
        gloo::allgather(opts);
      });
      if (!s.ok()) return s;
      float* acc = data + begin;
      std::copy(parts, parts + len, acc);
      for (size_t r = 1; r < n; ++r) {
        const float* part = parts + r * len;
        for (size_t i = 0; i < len; ++i) acc[i] += part[i];
      }
    }
    return absl::OkStatus();
  }

  absl::Status AllGather(const float* in, size_t count, float* out) override {
    if (absl::Status s = comm_internal::CheckAllGather(in, count, out, rank_, size_); !s.ok()) return s;
    if (count == 0) return absl::OkStatus();
    return Run("AllGather", [&] {
      gloo::AllgatherOptions opts(context_);
      // Without an input Gloo takes out + rank * count as this rank's part.
      if (in != out + static_cast<size_t>(rank_) * count) opts.setInput(const_cast<float*>(in), count);
      opts.setOutput(out, count * static_cast<size_t>(size_));
      gloo::allgather(opts);
    });
  }

  absl::Status Gather(const float* in, size_t count, float* out, int root) override {
    if (absl::Status s = comm_internal::CheckGather(in, count, out, root, rank_, size_); !s.ok()) return s;
    if (count == 0) return absl::OkStatus();
    return Run("Gather", [&] {
      gloo::GatherOptions opts(context_);
      opts.setRoot(root);
      // Gloo copies root's own input with memcpy; an in-place input must skip that.
      const bool in_place = rank_ == root && in == out + static_cast<size_t>(root) * count;
      std::vector<float> own;
      if (in_place) {
        own.assign(in, in + count);
        opts.setInput(own.data(), count);
      } else {
        opts.setInput(const_cast<float*>(in), count);
      }
      if (rank_ == root) opts.setOutput(out, count * static_cast<size_t>(size_));
      gloo::gather(opts);
    });
  }

  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    if (absl::Status s = comm_internal::CheckBroadcast(data, bytes, root, size_); !s.ok()) return s;
    if (bytes == 0) return absl::OkStatus();
    return Run("Broadcast", [&] {
      gloo::BroadcastOptions opts(context_);
      opts.setRoot(root);
      opts.setOutput(static_cast<uint8_t*>(data), bytes);
      gloo::broadcast(opts);
    });
  }

  absl::Status Barrier() override {
    return Run("Barrier", [&] {
      gloo::BarrierOptions opts(context_);
      gloo::barrier(opts);
    });
  }

 private:
  // Runs one Gloo collective: no exception escapes, and the first transport error
  // marks the group out of step for good.
  template <typename Fn>
  absl::Status Run(absl::string_view op, Fn&& fn) {
    if (!broken_.ok()) {
      return absl::UnavailableError(absl::StrCat("Gloo ", op, " on rank ", rank_, " of ", size_,
                                                 ": group unusable after an earlier failure: ", broken_.message()));
    }
    try {
      fn();
      return absl::OkStatus();
    } catch (...) {
      broken_ = CurrentExceptionToStatus(absl::StrCat("Gloo ", op, " on rank ", rank_, " of ", size_));
      return broken_;
    }
  }

  std::shared_ptr<gloo::rendezvous::Context> context_;
  const int rank_;
  const int size_;
  std::vector<float> scratch_;  // AllReduceSum: [size][chunk]
  absl::Status broken_;         // the first transport error, if any
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(KeyValueStore& store, int rank, int size,
                                                                     const GlooOptions& options) {
  if (size < 1) return absl::InvalidArgumentError(absl::StrCat("CreateGlooCommunicator: size ", size, " < 1"));
  if (rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("CreateGlooCommunicator: rank ", rank, " is outside [0, ", size, ")"));
  }
  // Gloo counts whole milliseconds, and 0 means no timeout at all.
  if (options.timeout < absl::Milliseconds(1) || options.timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("CreateGlooCommunicator: timeout ",
                                                   absl::FormatDuration(options.timeout),
                                                   " must be finite and at least 1ms"));
  }
  if (options.hostname.empty()) {
    return absl::InvalidArgumentError("CreateGlooCommunicator: hostname is empty");
  }
  if (size == 1) return MakeLocalCommunicator();
  IgnoreSigpipeIfDefault();

  const std::string where = absl::StrCat("Gloo rendezvous of rank ", rank, " of ", size, " (prefix '",
                                         options.prefix, "')");
  absl::StatusOr<std::shared_ptr<gloo::transport::Device>> device = ListenOn(options.hostname);
  if (!device.ok()) return absl::Status(device.status().code(), absl::StrCat(where, ": ", device.status().message()));
  try {
    auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    // Every pair copies the context timeout when connectFullMesh creates it, and
    // waits 5x that for its peer to connect (a peer that published its address
    // and died); pairs use it for nothing else in async mode. A fifth of ours
    // makes that wait our timeout; collectives then read the full one.
    const std::chrono::milliseconds full = absl::ToChronoMilliseconds(options.timeout);
    context->setTimeout((full + std::chrono::milliseconds(4)) / 5);
    GlooStore gloo_store(store, options.prefix, options.timeout);
    context->connectFullMesh(gloo_store, *device);
    context->setTimeout(full);
    return std::unique_ptr<Communicator>(std::make_unique<GlooCommunicator>(std::move(context)));
  } catch (...) {
    return CurrentExceptionToStatus(where);
  }
}

}  // namespace mla
