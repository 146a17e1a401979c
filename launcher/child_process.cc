#include "launcher/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

extern char** environ;

namespace mla {
namespace {

constexpr char kExecChildFlag[] = "--exec-child";
// Trampoline exit codes, seen only when something went wrong before the exec.
constexpr int kExitBadTrampolineArgs = 2;
constexpr int kExitParentGone = 125;
constexpr int kExitExecFailed = 127;

absl::Status SpawnError(const std::string& path, int error_number) {
  return absl::ErrnoToStatus(error_number, absl::StrCat("cannot run ", path));
}

// NUL-terminated pointer array over `strings` (which must outlive it).
std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

std::string EnvName(const std::string& entry) { return entry.substr(0, entry.find('=')); }

absl::StatusOr<std::vector<std::string>> ChildEnvironment(const std::vector<std::string>& extra_env) {
  std::set<std::string> overridden;
  for (const std::string& entry : extra_env) {
    size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("environment entry '", entry, "' (expected NAME=VALUE)"));
    }
    overridden.insert(entry.substr(0, eq));
  }
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string entry = *e;
    if (!overridden.count(EnvName(entry))) env.push_back(std::move(entry));
  }
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  return env;
}

// Reads the trampoline's exec report: 0 once the exec succeeded (the pipe closed
// on exec), else the errno of the failed exec.
int ReadExecReport(int fd) {
  int error_number = 0;
  size_t got = 0;
  char* bytes = reinterpret_cast<char*>(&error_number);
  while (got < sizeof(error_number)) {
    ssize_t n = read(fd, bytes + got, sizeof(error_number) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  return got == sizeof(error_number) ? error_number : 0;
}

void WriteExecReport(int fd, int error_number) {
  const char* bytes = reinterpret_cast<const char*>(&error_number);
  size_t done = 0;
  while (done < sizeof(error_number)) {
    ssize_t n = write(fd, bytes + done, sizeof(error_number) - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

// argv: <argv0> --exec-child <parent pid> <report fd> <path> <args...>.
// Returns only when it could not exec.
int RunExecChild(int argc, char** argv) {
  int64_t parent = 0;
  int report_fd = -1;
  if (argc < 5 || !absl::SimpleAtoi(argv[2], &parent) || !absl::SimpleAtoi(argv[3], &report_fd)) {
    static constexpr char kMessage[] = "--exec-child is internal: <parent pid> <report fd> <path> <args...>\n";
    (void)!write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
    return kExitBadTrampolineArgs;
  }
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
    WriteExecReport(report_fd, errno);
    return kExitExecFailed;
  }
  // The parent may have died between posix_spawn and prctl: no signal would come.
  if (getppid() != static_cast<pid_t>(parent)) return kExitParentGone;
  fcntl(report_fd, F_SETFD, FD_CLOEXEC);
  execv(argv[4], argv + 4);
  WriteExecReport(report_fd, errno);
  return kExitExecFailed;
}

int OpenPidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
#else
  return -1;
#endif
}

}  // namespace

ExitStatus ExitStatus::FromWaitStatus(int wait_status) {
  if (WIFSIGNALED(wait_status)) return ExitStatus{true, WTERMSIG(wait_status)};
  return ExitStatus{false, WEXITSTATUS(wait_status)};
}

std::string ExitStatus::Describe() const {
  if (signaled) {
    const char* name = strsignal(code_or_signal);
    return absl::StrCat("was killed by signal ", code_or_signal, " (", name ? name : "unknown", ")");
  }
  if (code_or_signal < 0) return "ended with an unknown status (reaped elsewhere)";
  return absl::StrCat("exited with status ", code_or_signal);
}

bool ExitStatus::clean() const {
  return success() || (signaled && (code_or_signal == SIGTERM || code_or_signal == SIGINT));
}

absl::StatusOr<ChildProcess> ChildProcess::Spawn(const std::string& path, const std::vector<std::string>& args,
                                                 const std::vector<std::string>& extra_env,
                                                 bool die_with_parent) {
  if (path.empty()) return absl::InvalidArgumentError("cannot run an empty path");
  absl::StatusOr<std::vector<std::string>> env = ChildEnvironment(extra_env);
  if (!env.ok()) return env.status();

  int report[2] = {-1, -1};
  std::string exe = path;
  std::vector<std::string> argv = {path};
  if (die_with_parent) {
    if (pipe2(report, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2 for the exec report");
    exe = "/proc/self/exe";  // resolved in the child: still this binary, even if replaced on disk
    argv = {path, kExecChildFlag, absl::StrCat(getpid()), absl::StrCat(report[1]), path};
  }
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> argv_c = CStrings(argv);
  std::vector<char*> env_c = CStrings(*env);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  // Same fd: clears FD_CLOEXEC in the child only (glibc >= 2.29), so only the
  // trampoline holds the write end, and it sets FD_CLOEXEC again before execv.
  if (die_with_parent) posix_spawn_file_actions_adddup2(&actions, report[1], report[1]);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty;
  sigemptyset(&empty);
  posix_spawnattr_setsigmask(&attr, &empty);  // the launcher blocks SIGCHLD/SIGTERM/SIGINT
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);

  pid_t pid = -1;
  int rc = posix_spawn(&pid, exe.c_str(), &actions, &attr, argv_c.data(), env_c.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  if (die_with_parent) close(report[1]);
  if (rc != 0) {
    if (die_with_parent) {
      close(report[0]);
      return absl::ErrnoToStatus(rc, absl::StrCat("cannot run ", path, " through /proc/self/exe --exec-child"));
    }
    return SpawnError(path, rc);
  }
  if (die_with_parent) {
    int exec_errno = ReadExecReport(report[0]);
    close(report[0]);
    if (exec_errno != 0) {
      int status;
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return SpawnError(path, exec_errno);
    }
  }
  return ChildProcess(pid, OpenPidfd(pid));
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)), pidfd_(std::exchange(other.pidfd_, -1)), exit_(other.exit_) {
  other.exit_.reset();
}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    Reset();
    pid_ = std::exchange(other.pid_, -1);
    pidfd_ = std::exchange(other.pidfd_, -1);
    exit_ = other.exit_;
    other.exit_.reset();
  }
  return *this;
}

ChildProcess::~ChildProcess() { Reset(); }

void ChildProcess::Reset() {
  if (running()) {
    kill(pid_, SIGKILL);
    Wait(absl::InfiniteDuration());
  }
  if (pidfd_ >= 0) close(pidfd_);
  pid_ = -1;
  pidfd_ = -1;
  exit_.reset();
}

absl::Status ChildProcess::Signal(int sig) {
  if (!running()) {
    return absl::FailedPreconditionError(absl::StrCat("child ", pid_, " is not running (already reaped)"));
  }
  if (kill(pid_, sig) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("kill(", pid_, ", ", sig, ")"));
  return absl::OkStatus();
}

std::optional<ExitStatus> ChildProcess::Poll() {
  if (exit_ || pid_ <= 0) return exit_;
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) {
    exit_ = ExitStatus::FromWaitStatus(status);
  } else if (r < 0 && errno == ECHILD) {
    exit_ = ExitStatus{false, -1};  // reaped by someone else (SIGCHLD ignored, waitpid(-1))
  }
  return exit_;
}

std::optional<ExitStatus> ChildProcess::Wait(absl::Duration timeout) {
  if (Poll() || pid_ <= 0) return exit_;
  if (timeout == absl::InfiniteDuration()) {
    int status = 0;
    pid_t r;
    do {
      r = waitpid(pid_, &status, 0);
    } while (r < 0 && errno == EINTR);
    exit_ = r == pid_ ? ExitStatus::FromWaitStatus(status) : ExitStatus{false, -1};
    return exit_;
  }
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return Poll();
    if (pidfd_ >= 0) {
      // Round up so a sub-millisecond remainder sleeps instead of spinning.
      int64_t ms = std::min<int64_t>(INT_MAX, absl::ToInt64Milliseconds(left + absl::Microseconds(999)));
      pollfd p{pidfd_, POLLIN, 0};
      poll(&p, 1, static_cast<int>(ms));
    } else {
      absl::SleepFor(std::min(left, absl::Milliseconds(10)));  // kernels before 5.3: no pidfd
    }
    if (Poll()) return exit_;
  }
}

ExitStatus ChildProcess::Stop(absl::Duration grace) {
  ChildProcess* self = this;
  return StopAll(std::span<ChildProcess* const>(&self, 1), grace)[0];
}

std::vector<ExitStatus> StopAll(std::span<ChildProcess* const> children, absl::Duration grace) {
  for (ChildProcess* child : children) {
    if (!child->Poll() && child->running()) (void)child->Signal(SIGTERM);
  }
  const absl::Time deadline = absl::Now() + grace;
  for (ChildProcess* child : children) {
    if (child->running()) child->Wait(std::max(deadline - absl::Now(), absl::ZeroDuration()));
  }
  std::vector<ExitStatus> out;
  out.reserve(children.size());
  for (ChildProcess* child : children) {
    if (child->running()) {
      (void)child->Signal(SIGKILL);
      child->Wait(absl::InfiniteDuration());
    }
    out.push_back(child->exit_status().value_or(ExitStatus{false, -1}));
  }
  return out;
}

void MaybeRunExecChild(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], kExecChildFlag) != 0) return;
  _exit(RunExecChild(argc, argv));  // no atexit handlers or static destructors
}

}  // namespace mla
