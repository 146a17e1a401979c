// ChildProcess: spawn, exit descriptions, stop (SIGTERM and SIGKILL paths),
// spawn errors, RAII cleanup, environment, and dying with the parent.
// Every test reaps what it starts; the binary is a child subreaper so even an
// orphaned grandchild comes back to it and is waited for.
#include "launcher/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace mla {
namespace {

constexpr absl::Duration kPatience = absl::Seconds(10);  // generous: CI has 2 shared cores

bool Alive(pid_t pid) { return kill(pid, 0) == 0; }

// True once `pid`'s ignored-signal mask includes `sig` (so a race-free SIGTERM test can start).
bool Ignores(pid_t pid, int sig) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("SigIgn:", 0) != 0) continue;
    uint64_t mask = std::strtoull(line.c_str() + 7, nullptr, 16);
    return (mask >> (sig - 1)) & 1;
  }
  return false;
}

template <typename Pred>
bool WaitUntil(Pred pred, absl::Duration timeout = kPatience) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!pred()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

// A fresh directory, removed when the returned owner goes out of scope.
class ScopedTempDir {
 public:
  ScopedTempDir() : path_(::testing::TempDir() + "child_process_test.XXXXXX") {
    EXPECT_NE(mkdtemp(path_.data()), nullptr);
  }
  ~ScopedTempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(ExitStatusTest, Describes) {
  EXPECT_EQ((ExitStatus{false, 3}).Describe(), "exited with status 3");
  EXPECT_EQ((ExitStatus{true, SIGKILL}).Describe(), "was killed by signal 9 (Killed)");
  EXPECT_EQ((ExitStatus{true, SIGTERM}).Describe(), "was killed by signal 15 (Terminated)");
  EXPECT_TRUE((ExitStatus{false, 0}).clean());
  EXPECT_TRUE((ExitStatus{true, SIGTERM}).clean());
  EXPECT_FALSE((ExitStatus{true, SIGKILL}).clean());
  EXPECT_FALSE((ExitStatus{false, 1}).clean());
  EXPECT_FALSE((ExitStatus{true, SIGTERM}).success());
}

class ChildProcessTest : public ::testing::TestWithParam<bool> {};  // param: die_with_parent

TEST_P(ChildProcessTest, TrueExitsZero) {
  absl::StatusOr<ChildProcess> p = ChildProcess::Spawn("/bin/true", {}, {}, GetParam());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_GT(p->pid(), 0);
  std::optional<ExitStatus> s = p->Wait(kPatience);
  ASSERT_TRUE(s.has_value());
  EXPECT_TRUE(s->success());
  EXPECT_FALSE(p->running());
  EXPECT_EQ(p->Poll()->Describe(), "exited with status 0");  // Poll after reaping keeps the status
}

TEST_P(ChildProcessTest, ExitCodeIsReported) {
  absl::StatusOr<ChildProcess> p = ChildProcess::Spawn("/bin/sh", {"-c", "exit 3"}, {}, GetParam());
  ASSERT_TRUE(p.ok()) << p.status();
  std::optional<ExitStatus> s = p->Wait(kPatience);
  ASSERT_TRUE(s.has_value());
  EXPECT_FALSE(s->signaled);
  EXPECT_EQ(s->code_or_signal, 3);
  EXPECT_EQ(s->Describe(), "exited with status 3");
  EXPECT_FALSE(p->Signal(SIGTERM).ok());  // reaped: the pid is no longer ours to signal
}

TEST_P(ChildProcessTest, StopSendsSigterm) {
  absl::StatusOr<ChildProcess> p = ChildProcess::Spawn("/bin/sleep", {"30"}, {}, GetParam());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->Wait(absl::Milliseconds(50)).has_value());  // still running after a short wait
  EXPECT_TRUE(p->running());
  const absl::Time start = absl::Now();
  ExitStatus s = p->Stop(absl::Seconds(20));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));  // ended by SIGTERM, long before the grace
  EXPECT_TRUE(s.signaled);
  EXPECT_EQ(s.code_or_signal, SIGTERM);
  EXPECT_TRUE(s.clean());
  EXPECT_FALSE(Alive(p->pid()));
}

TEST_P(ChildProcessTest, StopKillsAChildIgnoringSigterm) {
  // exec: the process ignoring SIGTERM is the one we spawned, so SIGKILL leaves no orphan.
  absl::StatusOr<ChildProcess> p =
      ChildProcess::Spawn("/bin/sh", {"-c", "trap '' TERM; exec sleep 30"}, {}, GetParam());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE(WaitUntil([&] { return Ignores(p->pid(), SIGTERM); }));
  const absl::Duration grace = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  ExitStatus s = p->Stop(grace);
  EXPECT_GE(absl::Now() - start, grace);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(s.Describe(), "was killed by signal 9 (Killed)");
  EXPECT_FALSE(s.clean());
}

TEST_P(ChildProcessTest, MissingBinaryIsAnErrorNamingIt) {
  absl::StatusOr<ChildProcess> p = ChildProcess::Spawn("/nonexistent/mla-nope", {}, {}, GetParam());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(p.status().message().find("/nonexistent/mla-nope"), absl::string_view::npos) << p.status();
}

TEST_P(ChildProcessTest, NonExecutableIsAnErrorNamingIt) {
  ScopedTempDir dir;
  std::string path = dir.path() + "/not-executable";
  std::ofstream(path) << "#!/bin/sh\nexit 0\n";
  chmod(path.c_str(), 0644);
  absl::StatusOr<ChildProcess> p = ChildProcess::Spawn(path, {}, {}, GetParam());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(p.status().message().find(path), absl::string_view::npos) << p.status();
}

TEST_P(ChildProcessTest, DestructorKillsARunningChild) {
  pid_t pid = -1;
  {
    absl::StatusOr<ChildProcess> p = ChildProcess::Spawn("/bin/sleep", {"30"}, {}, GetParam());
    ASSERT_TRUE(p.ok()) << p.status();
    pid = p->pid();
    ASSERT_TRUE(Alive(pid));
  }
  // Reaped, not a zombie: the pid is gone.
  EXPECT_EQ(kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST_P(ChildProcessTest, MoveTransfersOwnership) {
  absl::StatusOr<ChildProcess> p = ChildProcess::Spawn("/bin/sleep", {"30"}, {}, GetParam());
  ASSERT_TRUE(p.ok()) << p.status();
  const pid_t pid = p->pid();
  ChildProcess owner = std::move(*p);
  EXPECT_EQ(owner.pid(), pid);
  EXPECT_FALSE(p->running());  // NOLINT(bugprone-use-after-move): moved-from is inert
  EXPECT_FALSE(p->Wait(absl::Milliseconds(1)).has_value());
  EXPECT_TRUE(Alive(pid));
  owner = ChildProcess(std::move(owner));  // self-sized shuffle keeps it alive
  EXPECT_TRUE(Alive(pid));
  EXPECT_EQ(owner.Stop(absl::Seconds(5)).code_or_signal, SIGTERM);
}

TEST_P(ChildProcessTest, PassesAndOverridesEnvironment) {
  setenv("MLA_CHILD_TEST_INHERITED", "parent", 1);
  setenv("MLA_CHILD_TEST_OVERRIDDEN", "old", 1);
  absl::StatusOr<ChildProcess> p = ChildProcess::Spawn(
      "/bin/sh",
      {"-c",
       "test \"$MLA_CHILD_TEST_INHERITED\" = parent && test \"$MLA_CHILD_TEST_OVERRIDDEN\" = new && "
       "test \"$MLA_CHILD_TEST_ADDED\" = 'a=b' && test \"$(env | grep -c '^MLA_CHILD_TEST_OVERRIDDEN=')\" = 1"},
      {"MLA_CHILD_TEST_OVERRIDDEN=new", "MLA_CHILD_TEST_ADDED=a=b"}, GetParam());
  ASSERT_TRUE(p.ok()) << p.status();
  std::optional<ExitStatus> s = p->Wait(kPatience);
  ASSERT_TRUE(s.has_value());
  EXPECT_TRUE(s->success()) << s->Describe();
}

TEST_P(ChildProcessTest, RejectsMalformedEnvironment) {
  absl::StatusOr<ChildProcess> p = ChildProcess::Spawn("/bin/true", {}, {"NO_EQUALS_SIGN"}, GetParam());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().message(), "environment entry 'NO_EQUALS_SIGN' (expected NAME=VALUE)");
}

TEST_P(ChildProcessTest, ChildStartsWithAnEmptySignalMask) {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigprocmask(SIG_BLOCK, &block, &old);
  absl::StatusOr<ChildProcess> p = ChildProcess::Spawn("/bin/sleep", {"30"}, {}, GetParam());
  sigprocmask(SIG_SETMASK, &old, nullptr);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->Stop(absl::Seconds(20)).code_or_signal, SIGTERM);  // not blocked in the child
}

INSTANTIATE_TEST_SUITE_P(DieWithParent, ChildProcessTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Trampoline" : "Direct";
                         });

TEST(StopAllTest, SharesOneGracePeriod) {
  std::vector<ChildProcess> children;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<ChildProcess> p = ChildProcess::Spawn("/bin/sh", {"-c", "trap '' TERM; exec sleep 30"}, {});
    ASSERT_TRUE(p.ok()) << p.status();
    children.push_back(std::move(*p));
  }
  for (ChildProcess& c : children) ASSERT_TRUE(WaitUntil([&] { return Ignores(c.pid(), SIGTERM); }));
  std::vector<ChildProcess*> ptrs;
  for (ChildProcess& c : children) ptrs.push_back(&c);
  const absl::Time start = absl::Now();
  std::vector<ExitStatus> statuses = StopAll(ptrs, absl::Milliseconds(400));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(400) * 2.5);  // not 3 x 400 ms
  for (const ExitStatus& s : statuses) EXPECT_EQ(s.code_or_signal, SIGKILL);
}

// The trampoline's death signal: SIGKILL the parent, and its child dies too.
// This test process is a subreaper, so the orphan is reparented to it and reaped here.
TEST(DieWithParentTest, ChildDiesWhenItsParentIsKilled) {
  ScopedTempDir dir;
  const std::string pid_file = dir.path() + "/grandchild.pid";
  absl::StatusOr<ChildProcess> parent =
      ChildProcess::Spawn("/proc/self/exe", {"--spawn-sleeper", pid_file}, {}, /*die_with_parent=*/true);
  ASSERT_TRUE(parent.ok()) << parent.status();
  pid_t grandchild = 0;
  ASSERT_TRUE(WaitUntil([&] {
    std::ifstream in(pid_file + ".done");
    if (!in) return false;
    std::ifstream pid_in(pid_file);
    return static_cast<bool>(pid_in >> grandchild);
  }));
  ASSERT_TRUE(Alive(grandchild));
  ASSERT_TRUE(parent->Signal(SIGKILL).ok());
  ASSERT_TRUE(parent->Wait(kPatience).has_value());

  int status = 0;
  pid_t reaped = 0;
  ASSERT_TRUE(WaitUntil([&] {
    reaped = waitpid(grandchild, &status, WNOHANG);
    return reaped == grandchild;
  })) << "the grandchild outlived its SIGKILLed parent";
  EXPECT_EQ(ExitStatus::FromWaitStatus(status).Describe(), "was killed by signal 9 (Killed)");
}

// Hidden mode for DieWithParentTest: spawn `sleep 30` with the death signal,
// write its pid, then wait to be killed.
int SpawnSleeper(const std::string& pid_file) {
  absl::StatusOr<ChildProcess> sleeper = ChildProcess::Spawn("/bin/sleep", {"30"}, {}, /*die_with_parent=*/true);
  if (!sleeper.ok()) return 1;
  std::ofstream(pid_file) << sleeper->pid() << "\n";
  std::ofstream(pid_file + ".done") << "ok\n";
  sleeper->Wait(absl::Seconds(60));
  return 0;
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  mla::MaybeRunExecChild(argc, argv);
  if (argc == 3 && std::string(argv[1]) == "--spawn-sleeper") return mla::SpawnSleeper(argv[2]);
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
