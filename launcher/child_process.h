// RAII child processes for the launcher: spawn with posix_spawn (exec at once,
// so a child never runs any of the parent's code such as gRPC), signal, poll,
// wait with a timeout, stop (SIGTERM, grace, SIGKILL) and always reap.
//
// Dying with the parent. posix_spawn has no hook to run prctl() in the child,
// so a child that must not outlive its parent is spawned through the parent's
// own binary (/proc/self/exe) in a hidden trampoline mode:
//   <exe> --exec-child <parent pid> <report fd> <path> <args...>
// The trampoline sets PR_SET_PDEATHSIG to SIGKILL, exits if getppid() is no
// longer the parent (it died before prctl took effect), then execv's <path>.
// The death signal survives execve (the binaries are not setuid), so the real
// child is SIGKILLed when the spawning thread exits, even by SIGKILL. An execv
// failure is written (errno) to <report fd> so Spawn returns it as a Status.
// Every binary that spawns with die_with_parent must therefore call
// MaybeRunExecChild(argc, argv) first thing in main(), and spawn from a thread
// that outlives its children (the launcher is single-threaded).
#pragma once

#include <sys/types.h>

#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace mla {

// How a reaped child ended.
struct ExitStatus {
  bool signaled = false;   // true: killed by signal `code_or_signal`; false: exit status
  int code_or_signal = 0;

  static ExitStatus FromWaitStatus(int wait_status);
  // "exited with status 3" / "was killed by signal 9 (Killed)".
  std::string Describe() const;
  // Exited with status 0.
  bool success() const { return !signaled && code_or_signal == 0; }
  // Ended the way a requested stop ends: status 0, or killed by SIGTERM or SIGINT.
  bool clean() const;
};

class ChildProcess {
 public:
  // Runs `path` (no PATH search) with argv = {path, args...} and the parent's
  // environment plus `extra_env` ("NAME=VALUE", overriding a variable of the
  // same name). The child starts with an empty signal mask; ignored signals stay
  // ignored, as across any exec. A missing or non-executable binary is an error
  // naming `path` (NotFound / PermissionDenied / ...), never a child that exits 127.
  static absl::StatusOr<ChildProcess> Spawn(const std::string& path, const std::vector<std::string>& args,
                                            const std::vector<std::string>& extra_env,
                                            bool die_with_parent = true);

  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  // SIGKILLs and reaps the child if it has not been reaped yet.
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  // Spawned and not reaped yet (Poll/Wait/Stop update it).
  bool running() const { return pid_ > 0 && !exit_.has_value(); }
  // The exit status once reaped.
  const std::optional<ExitStatus>& exit_status() const { return exit_; }

  // FailedPrecondition once reaped: the pid may belong to another process by then.
  absl::Status Signal(int sig);
  // Non-blocking reap; returns the exit description once it has exited.
  std::optional<ExitStatus> Poll();
  // Waits up to `timeout` (absl::InfiniteDuration() blocks); nullopt if still running.
  std::optional<ExitStatus> Wait(absl::Duration timeout);
  // SIGTERM, wait `grace`, SIGKILL, reap.
  ExitStatus Stop(absl::Duration grace);

 private:
  ChildProcess(pid_t pid, int pidfd) : pid_(pid), pidfd_(pidfd) {}
  void Reset();

  pid_t pid_ = -1;
  int pidfd_ = -1;  // pollable until the child exits; -1 where pidfd_open is missing
  std::optional<ExitStatus> exit_;
};

// Stops several children with one shared grace period: SIGTERM to all running
// ones, wait until all exit or `grace` passes, SIGKILL the rest, reap all.
// Returns each child's exit status, in order (also for children already reaped).
std::vector<ExitStatus> StopAll(std::span<ChildProcess* const> children, absl::Duration grace);

// Call first in main() of any binary that spawns with die_with_parent: runs the
// trampoline (and never returns) when argv[1] is "--exec-child", else returns.
void MaybeRunExecChild(int argc, char** argv);

}  // namespace mla
