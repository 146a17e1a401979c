// The CPU transport: Gloo collectives over TCP, bootstrapped through a
// KeyValueStore (no Gloo header leaks out of this file's .cc).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "runtime/communicator.h"
#include "runtime/kv_store.h"

namespace mla {

struct GlooOptions {
  // Address this rank listens on (multi-node: an address of its own host that
  // the other ranks can reach).
  std::string hostname = "127.0.0.1";
  // Key prefix in the store, so a restarted group does not see a previous
  // group's addresses: use a fresh prefix per group incarnation.
  std::string prefix = "gloo";
  // Bounds every collective, and each of the rendezvous' two phases (waiting
  // for the ranks' addresses in the store, then connecting): a dead or hung peer
  // gives an error (Unavailable or DeadlineExceeded) rather than a hang.
  absl::Duration timeout = absl::Seconds(30);
};

// Joins the group of `size` ranks as `rank`: publishes this rank's addresses
// under options.prefix in `store`, waits for every other rank's, connects to all.
// `store` is only used during this call. Size 1 needs no peers and returns
// MakeLocalCommunicator(). Errors: InvalidArgument (rank, size, timeout,
// hostname); DeadlineExceeded when a rank does not arrive within the timeout;
// Unavailable when a peer cannot be reached. Ignores SIGPIPE process-wide if
// it still has its default action: Gloo writes to sockets with writev, and a
// write to a dead peer must become an error, not a killed process.
absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(KeyValueStore& store, int rank, int size,
                                                                     const GlooOptions& options);

}  // namespace mla
