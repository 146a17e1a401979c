// mla-launch: brings up one node's share of a tensor-parallel group and
// supervises it.
//   mla-launch --model DIR [--tp N] [--nnodes K --node-rank I --coordinator HOST:PORT] ...
// (flags: launch_options.h). Node 0 runs mla-coordinator; every node runs
// tp / nnodes mla-worker processes; both binaries are found next to mla-launch
// (hidden --bin-dir DIR overrides, for tests).
//
// Supervision: when any child ends, the coordinator gets up to 1 s to end
// in-flight requests itself (UNAVAILABLE), then the rest are stopped (SIGTERM,
// SIGKILL after --grace-ms) and reaped. A child that exited with status 0 ends
// the group cleanly (exit 0); any other end is a failure: the group is spawned
// again while --restart allows, else exit 1. SIGTERM/SIGINT/SIGHUP to the
// launcher stops the group: exit 0 when every child ended cleanly, else 1.
//
// Process hygiene: no threads and no gRPC here; children are posix_spawn'ed
// through this binary's hidden --exec-child trampoline (child_process.h), which
// arms PR_SET_PDEATHSIG=SIGKILL before exec, so even a SIGKILLed launcher leaves
// no child behind. Children stay in the launcher's process group.
//
// Exit codes: 0 clean shutdown; 1 a child failed (restarts spent) or could not be
// spawned; 2 bad flags, a missing model directory or missing child binaries.
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "launcher/child_process.h"
#include "launcher/launch_options.h"

namespace mla {
namespace {

constexpr absl::Duration kCoordinatorDrain = absl::Seconds(1);

struct Child {
  std::string name;  // "coordinator", "worker rank 1"
  ChildProcess process;
};

// The signals the supervisor waits for, blocked so they queue for sigwaitinfo
// (no handlers, no races with waitpid). Children start with an empty mask.
class SupervisorSignals {
 public:
  SupervisorSignals() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGCHLD);
    sigaddset(&set_, SIGTERM);
    // SIGINT/SIGHUP inherited as ignored (a background job in a script, nohup) stay ignored.
    for (int sig : {SIGINT, SIGHUP}) {
      struct sigaction old {};
      if (sigaction(sig, nullptr, &old) == 0 && old.sa_handler != SIG_IGN) sigaddset(&set_, sig);
    }
    signal(SIGCHLD, SIG_DFL);  // an inherited SIG_IGN would let the kernel reap our children
    sigprocmask(SIG_BLOCK, &set_, nullptr);
  }

  // Blocks until the next signal of the set; returns it.
  int Next() {
    for (;;) {
      int sig = sigwaitinfo(&set_, nullptr);
      if (sig > 0) return sig;
    }
  }

  // Consumes pending signals; true if one of them asked the launcher to stop.
  bool TakeStopRequest() {
    timespec zero{0, 0};
    bool stop = false;
    for (int sig; (sig = sigtimedwait(&set_, nullptr, &zero)) > 0;) stop |= sig != SIGCHLD;
    return stop;
  }

 private:
  sigset_t set_;
};

int Fail(int code, const absl::Status& status) {
  std::cerr << "mla-launch: error: " << status.message() << "\n";
  return code;
}

int64_t UsableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return std::max(1u, std::thread::hardware_concurrency());
}

std::string OwnDirectory() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

absl::Status CheckExecutable(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || access(path.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is not an executable file (mla-launch runs mla-coordinator and mla-worker from "
                           "its own directory)"));
  }
  return absl::OkStatus();
}

struct Binaries {
  std::string coordinator;
  std::string worker;
};

absl::StatusOr<Binaries> FindBinaries(const LaunchOptions& o) {
  const std::string dir = o.bin_dir.empty() ? OwnDirectory() : o.bin_dir;
  Binaries b{dir + "/mla-coordinator", dir + "/mla-worker"};
  if (o.runs_coordinator()) {
    if (absl::Status s = CheckExecutable(b.coordinator); !s.ok()) return s;
  }
  if (absl::Status s = CheckExecutable(b.worker); !s.ok()) return s;
  return b;
}

std::vector<ChildProcess*> Processes(std::vector<Child>& group) {
  std::vector<ChildProcess*> out;
  for (Child& c : group) out.push_back(&c.process);
  return out;
}

// Stops every child (SIGTERM, grace, SIGKILL) and reports the ones that did not
// end cleanly except `skip` (already reported). True if all of them ended cleanly.
bool StopGroup(std::vector<Child>& group, absl::Duration grace, size_t skip = SIZE_MAX) {
  std::vector<ChildProcess*> processes = Processes(group);
  std::vector<ExitStatus> statuses = StopAll(processes, grace);
  bool clean = true;
  for (size_t i = 0; i < group.size(); ++i) {
    if (i == skip || statuses[i].clean()) continue;
    clean = false;
    std::cerr << "mla-launch: " << group[i].name << " (pid " << group[i].process.pid() << ") "
              << statuses[i].Describe() << " while the group was stopping\n";
  }
  return clean;
}

// The coordinator first (node 0), then the local workers. On a spawn failure
// the children already started are stopped.
absl::StatusOr<std::vector<Child>> SpawnGroup(const LaunchOptions& o, const Binaries& bin) {
  std::vector<Child> group;
  auto spawn = [&](std::string name, const std::string& path, const std::vector<std::string>& args,
                   const std::vector<std::string>& env) -> absl::Status {
    absl::StatusOr<ChildProcess> p = ChildProcess::Spawn(path, args, env, /*die_with_parent=*/true);
    if (!p.ok()) {
      return absl::Status(p.status().code(), absl::StrCat("cannot start the ", name, ": ", p.status().message()));
    }
    group.push_back(Child{std::move(name), std::move(*p)});
    return absl::OkStatus();
  };
  absl::Status status;
  if (o.runs_coordinator()) status = spawn("coordinator", bin.coordinator, CoordinatorArgsWithServing(o), ChildEnv(o));
  for (int64_t j = 0; status.ok() && j < o.local_world_size(); ++j) {
    status = spawn(WorkerName(o, j), bin.worker, WorkerArgs(o, j), WorkerEnv(o));
  }
  if (!status.ok()) {
    StopGroup(group, absl::Milliseconds(o.grace_ms));
    return status;
  }
  return group;
}

struct GroupEnd {
  bool stop_requested = false;
  size_t child = 0;  // the child that ended first, when !stop_requested
  ExitStatus status;
};

// Waits (no polling loop: sigwaitinfo) until a child ends or a stop is asked for.
GroupEnd Supervise(std::vector<Child>& group, SupervisorSignals& signals) {
  for (;;) {
    for (size_t i = 0; i < group.size(); ++i) {
      std::optional<ExitStatus> s = group[i].process.Poll();
      if (!s) continue;
      // A terminal's ^C reaches the whole process group: a child that died of it
      // before we read our own SIGINT is part of a requested stop, not a failure.
      if (signals.TakeStopRequest()) return GroupEnd{true, 0, {}};
      return GroupEnd{false, i, *s};
    }
    if (signals.Next() != SIGCHLD) return GroupEnd{true, 0, {}};
  }
}

int Run(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help") {
      std::cout << kLaunchUsage;
      return 0;
    }
  }
  absl::StatusOr<LaunchOptions> options = ParseLaunchOptions(argc, argv, UsableCores());
  if (!options.ok()) return Fail(2, options.status());
  const LaunchOptions& o = *options;
  if (absl::Status s = CheckModelDir(o.model_dir); !s.ok()) return Fail(2, s);
  absl::StatusOr<Binaries> binaries = FindBinaries(o);
  if (!binaries.ok()) return Fail(2, binaries.status());
  const absl::Duration grace = absl::Milliseconds(o.grace_ms);

  SupervisorSignals signals;  // before the first spawn, so no SIGCHLD or SIGTERM is missed
  for (int64_t restart = 0;; ++restart) {
    absl::StatusOr<std::vector<Child>> group = SpawnGroup(o, *binaries);
    if (!group.ok()) return Fail(1, group.status());
    std::cout << ServingLine(o) << std::endl;

    GroupEnd end = Supervise(*group, signals);
    if (end.stop_requested) {
      // Node 0 drains: only the coordinator is told; it lets running requests
      // finish, then sends its workers (on every node) a shutdown.
      if (o.runs_coordinator() && (*group)[0].process.running()) {
        (*group)[0].process.Signal(SIGTERM).IgnoreError();
        (*group)[0].process.Wait(absl::Milliseconds(o.shutdown_timeout_ms) + grace);
        for (Child& c : *group) c.process.Wait(grace);
      }
      return StopGroup(*group, grace) ? 0 : 1;
    }

    Child& first = (*group)[end.child];
    Child* coordinator = o.runs_coordinator() ? &(*group)[0] : nullptr;
    // Let the coordinator fail in-flight requests with UNAVAILABLE itself.
    if (coordinator != nullptr && coordinator != &first) coordinator->process.Wait(kCoordinatorDrain);
    StopGroup(*group, grace, end.child);
    std::cerr << "mla-launch: " << first.name << " (pid " << first.process.pid() << ") " << end.status.Describe()
              << "\n";
    if (end.status.success()) return 0;
    if (restart >= o.restarts || signals.TakeStopRequest()) return 1;
    std::cerr << "mla-launch: restarting the group (restart " << restart + 1 << " of " << o.restarts << ")\n";
  }
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  mla::MaybeRunExecChild(argc, argv);  // the --exec-child trampoline never returns
  return mla::Run(argc, argv);
}
