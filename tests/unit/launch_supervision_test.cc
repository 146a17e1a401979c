// The whole mla-launch binary over fake children: shell scripts named
// mla-coordinator and mla-worker in a --bin-dir, which record their argv,
// thread environment and pid, then sleep or fail as each test scripts them.
// This process is a child subreaper, so anything the launcher leaves behind is
// reparented here: after each launch, NoLeftovers() must find nothing.
// The fakes use shell builtins only before `exec sleep`, so stopping one never
// orphans a grandchild of its own.
#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "launcher/child_process.h"

namespace mla {
namespace {

constexpr absl::Duration kPatience = absl::Seconds(15);  // CI: 2 shared cores

template <typename Pred>
bool WaitUntil(Pred pred, absl::Duration timeout = kPatience) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!pred()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<pid_t> ReadPids(const std::string& path) {
  std::vector<pid_t> pids;
  for (absl::string_view line : absl::StrSplit(ReadFile(path), '\n', absl::SkipEmpty())) {
    pid_t pid;
    if (absl::SimpleAtoi(line, &pid)) pids.push_back(pid);
  }
  return pids;
}

bool Ignores(pid_t pid, int sig) {
  std::string status = ReadFile(absl::StrCat("/proc/", pid, "/status"));
  size_t at = status.find("SigIgn:");
  if (at == std::string::npos) return false;
  uint64_t mask = std::strtoull(status.c_str() + at + 7, nullptr, 16);
  return (mask >> (sig - 1)) & 1;
}

// Children of this process other than those it spawned itself: orphans the
// launcher left behind. Kills and reaps them; returns a description of each.
std::vector<std::string> NoLeftovers() {
  std::vector<std::string> leftovers;
  for (int round = 0; round < 100; ++round) {
    int status;
    pid_t p = waitpid(-1, &status, WNOHANG);
    if (p < 0) return leftovers;  // ECHILD: nothing left
    if (p > 0) {
      leftovers.push_back(absl::StrCat("pid ", p, " ", ExitStatus::FromWaitStatus(status).Describe()));
      continue;
    }
    DIR* proc = opendir("/proc");
    for (dirent* e; proc && (e = readdir(proc));) {
      pid_t pid;
      if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
      std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
      size_t paren = stat.rfind(')');
      if (paren == std::string::npos) continue;
      std::vector<std::string> fields = absl::StrSplit(stat.substr(paren + 2), ' ');
      pid_t ppid;
      if (fields.size() > 1 && absl::SimpleAtoi(fields[1], &ppid) && ppid == getpid()) {
        leftovers.push_back(absl::StrCat("pid ", pid, " ", stat.substr(0, paren + 1), " still running"));
        kill(pid, SIGKILL);
      }
    }
    if (proc) closedir(proc);
    absl::SleepFor(absl::Milliseconds(20));
  }
  return leftovers;
}

class LaunchSupervisionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "launch_supervision_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    for (const char* sub : {"/bin", "/model", "/log"}) ASSERT_EQ(mkdir((root_ + sub).c_str(), 0755), 0);
  }

  void TearDown() override {
    if (launcher_) launcher_->Stop(absl::Seconds(5));
    launcher_.reset();
    EXPECT_EQ(absl::StrJoin(NoLeftovers(), "; "), "");
    std::error_code ignored;
    std::filesystem::remove_all(root_, ignored);
  }

  std::string bin() const { return root_ + "/bin"; }
  std::string model() const { return root_ + "/model"; }
  std::string log(const std::string& name) const { return root_ + "/log/" + name; }

  // A fake child. $rank is "coordinator" or the --local-rank value.
  void WriteFake(const std::string& name, const std::string& body) {
    std::string path = bin() + "/" + name;
    std::ofstream out(path);
    out << "#!/bin/sh\n"
        << "LOG='" << root_ << "/log'\n"
        << "rank=coordinator; prev=\n"
        << "for a in \"$@\"; do [ \"$prev\" = --local-rank ] && rank=$a; prev=$a; done\n"
        << "printf '%s\\n' \"$@\" > \"$LOG/" << name << ".$rank.args\"\n"
        << "echo \"OPENBLAS_NUM_THREADS=$OPENBLAS_NUM_THREADS OMP_NUM_THREADS=$OMP_NUM_THREADS\" > \"$LOG/" << name
        << ".$rank.env\"\n"
        << "echo $$ >> \"$LOG/" << name << ".$rank.pids\"\n"
        << body << "\n";
    out.close();
    ASSERT_EQ(chmod(path.c_str(), 0755), 0);
  }

  void WriteFakes(const std::string& coordinator_body, const std::string& worker_body) {
    WriteFake("mla-coordinator", coordinator_body);
    WriteFake("mla-worker", worker_body);
  }

  // Starts mla-launch with stdout/stderr to files; `own_group`: in a new session and
  // process group (util-linux setsid), as a shell gives a foreground job.
  void Launch(const std::vector<std::string>& flags, bool with_defaults = true, bool own_group = false) {
    std::vector<std::string> args = {"-c",
                                     absl::StrCat("exec ", own_group ? "setsid " : "", "\"$0\" \"$@\" >'",
                                                  log("stdout"), "' 2>'", log("stderr"), "'"),
                                     MLA_LAUNCH_BINARY};
    if (with_defaults) args.insert(args.end(), {"--model", model(), "--bin-dir", bin(), "--grace-ms", "2000"});
    args.insert(args.end(), flags.begin(), flags.end());
    absl::StatusOr<ChildProcess> p = ChildProcess::Spawn("/bin/sh", args, {});
    ASSERT_TRUE(p.ok()) << p.status();
    launcher_ = std::move(*p);
    started_ = absl::Now();
  }

  // The launcher's exit code (-1 when it was killed or timed out).
  int WaitForExit(absl::Duration timeout = kPatience) {
    std::optional<ExitStatus> s = launcher_->Wait(timeout);
    if (!s) {
      ADD_FAILURE() << "mla-launch still running after " << timeout << "; stderr: " << ReadFile(log("stderr"));
      return -1;
    }
    EXPECT_FALSE(s->signaled) << s->Describe();
    return s->signaled ? -1 : s->code_or_signal;
  }

  // Waits for the serving line and for every fake to have recorded its pid.
  void WaitForGroup(const std::vector<std::string>& pid_files, size_t generation = 1) {
    ASSERT_TRUE(WaitUntil([&] {
      for (const std::string& f : pid_files) {
        if (ReadPids(log(f)).size() < generation) return false;
      }
      return absl::StrContains(ReadFile(log("stdout")), "serving");
    })) << "stdout: " << ReadFile(log("stdout")) << "stderr: " << ReadFile(log("stderr"));
  }

  pid_t LastPid(const std::string& pid_file) {
    std::vector<pid_t> pids = ReadPids(log(pid_file));
    return pids.empty() ? -1 : pids.back();
  }

  std::string root_;
  std::optional<ChildProcess> launcher_;
  absl::Time started_;
};

constexpr char kSleep[] = "exec sleep 30";

TEST_F(LaunchSupervisionTest, SpawnsTheGroupAndStopsCleanlyOnSigterm) {
  WriteFakes(kSleep, kSleep);
  Launch({"--tp", "2", "--port", "6123", "--threads", "3", "--num-blocks", "64", "--kv-cache-dtype", "bf16"});
  WaitForGroup({"mla-coordinator.coordinator.pids", "mla-worker.0.pids", "mla-worker.1.pids"});

  EXPECT_EQ(ReadFile(log("mla-coordinator.coordinator.args")),
            absl::StrCat(absl::StrJoin({"--model", model().c_str(), "--tp", "2", "--host", "127.0.0.1", "--port",
                                        "6123", "--backend", "cpu", "--step-timeout-ms", "5000"},
                                       "\n"),
                         "\n"));
  EXPECT_EQ(ReadFile(log("mla-worker.1.args")),
            absl::StrCat(absl::StrJoin({"--model", model().c_str(), "--coordinator", "127.0.0.1:6123", "--node-rank",
                                        "0", "--local-rank", "1", "--local-world-size", "2", "--host", "127.0.0.1",
                                        "--backend", "cpu", "--threads", "3", "--num-blocks", "64",
                                        "--kv-cache-dtype", "bf16"},
                                       "\n"),
                         "\n"));
  EXPECT_EQ(ReadFile(log("mla-worker.0.env")), "OPENBLAS_NUM_THREADS=3 OMP_NUM_THREADS=3\n");
  // The coordinator gets the launcher's environment unchanged (ctest sets OPENBLAS_NUM_THREADS=1).
  auto inherited = [](const char* name) { return std::string(getenv(name) ? getenv(name) : ""); };
  EXPECT_EQ(ReadFile(log("mla-coordinator.coordinator.env")),
            absl::StrCat("OPENBLAS_NUM_THREADS=", inherited("OPENBLAS_NUM_THREADS"),
                         " OMP_NUM_THREADS=", inherited("OMP_NUM_THREADS"), "\n"));

  ASSERT_TRUE(launcher_->Signal(SIGTERM).ok());
  EXPECT_EQ(WaitForExit(), 0);
  EXPECT_EQ(ReadFile(log("stdout")), absl::StrCat("mla-launch: node 0/1 serving ", model(),
                                                   " at 127.0.0.1:6123 (tp 2, 2 local workers, backend cpu)\n"));
  EXPECT_EQ(ReadFile(log("stderr")), "");
}

TEST_F(LaunchSupervisionTest, WorkerFailureStopsTheGroupAndNamesTheRank) {
  WriteFakes(kSleep, "if [ \"$rank\" = 1 ]; then sleep 1; exit 3; fi\nexec sleep 30");
  Launch({"--tp", "3"});
  EXPECT_EQ(WaitForExit(), 1);
  // The worker ends ~1 s in; the coordinator then gets up to 1 s before it is stopped.
  EXPECT_GE(absl::Now() - started_, absl::Milliseconds(1900));
  EXPECT_EQ(ReadFile(log("stderr")),
            absl::StrCat("mla-launch: worker rank 1 (pid ", LastPid("mla-worker.1.pids"), ") exited with status 3\n"));
}

TEST_F(LaunchSupervisionTest, KilledWorkerIsNamedWithItsSignal) {
  WriteFakes(kSleep, kSleep);
  Launch({"--tp", "2"});
  WaitForGroup({"mla-coordinator.coordinator.pids", "mla-worker.0.pids", "mla-worker.1.pids"});
  const pid_t victim = LastPid("mla-worker.0.pids");
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  EXPECT_EQ(WaitForExit(), 1);
  EXPECT_EQ(ReadFile(log("stderr")),
            absl::StrCat("mla-launch: worker rank 0 (pid ", victim, ") was killed by signal 9 (Killed)\n"));
}

TEST_F(LaunchSupervisionTest, CoordinatorFailureIsNamed) {
  WriteFakes("sleep 0.3; exit 4", kSleep);
  Launch({"--tp", "1"});
  EXPECT_EQ(WaitForExit(), 1);
  EXPECT_EQ(ReadFile(log("stderr")),
            absl::StrCat("mla-launch: coordinator (pid ", LastPid("mla-coordinator.coordinator.pids"),
                         ") exited with status 4\n"));
}

TEST_F(LaunchSupervisionTest, RestartsTheWholeGroupWithinTheBudget) {
  WriteFakes(kSleep, "if [ \"$rank\" = 0 ]; then sleep 0.3; exit 3; fi\nexec sleep 30");
  Launch({"--tp", "2", "--restart", "1"});
  EXPECT_EQ(WaitForExit(), 1);
  for (const char* f : {"mla-coordinator.coordinator.pids", "mla-worker.0.pids", "mla-worker.1.pids"}) {
    EXPECT_EQ(ReadPids(log(f)).size(), 2u) << f;  // spawned twice, with the same flags
  }
  std::vector<pid_t> failed = ReadPids(log("mla-worker.0.pids"));
  ASSERT_EQ(failed.size(), 2u);
  EXPECT_EQ(ReadFile(log("stderr")),
            absl::StrCat("mla-launch: worker rank 0 (pid ", failed[0], ") exited with status 3\n",
                         "mla-launch: restarting the group (restart 1 of 1)\n", "mla-launch: worker rank 0 (pid ",
                         failed[1], ") exited with status 3\n"));
  std::string out = ReadFile(log("stdout"));
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 2) << out;  // one serving line per spawn
}

TEST_F(LaunchSupervisionTest, ChildExitingWithZeroEndsTheGroupCleanly) {
  WriteFakes("sleep 0.3; exit 0", kSleep);
  Launch({"--tp", "2", "--restart", "3"});
  EXPECT_EQ(WaitForExit(), 0);
  EXPECT_EQ(ReadPids(log("mla-coordinator.coordinator.pids")).size(), 1u);  // a clean end is not restarted
  EXPECT_EQ(ReadFile(log("stderr")),
            absl::StrCat("mla-launch: coordinator (pid ", LastPid("mla-coordinator.coordinator.pids"),
                         ") exited with status 0\n"));
}

TEST_F(LaunchSupervisionTest, ChildIgnoringSigtermIsKilledAfterTheGrace) {
  WriteFakes(kSleep, "trap '' TERM\nexec sleep 30");
  Launch({"--tp", "1", "--grace-ms", "300"});
  WaitForGroup({"mla-coordinator.coordinator.pids", "mla-worker.0.pids"});
  const pid_t stubborn = LastPid("mla-worker.0.pids");
  ASSERT_TRUE(WaitUntil([&] { return Ignores(stubborn, SIGTERM); }));
  const absl::Time stop = absl::Now();
  ASSERT_TRUE(launcher_->Signal(SIGTERM).ok());
  EXPECT_EQ(WaitForExit(), 1);  // not every child ended cleanly
  EXPECT_GE(absl::Now() - stop, absl::Milliseconds(300));
  EXPECT_EQ(ReadFile(log("stderr")),
            absl::StrCat("mla-launch: worker rank 0 (pid ", stubborn,
                         ") was killed by signal 9 (Killed) while the group was stopping\n"));
}

// A terminal's ^C signals the whole process group: the children may die of it
// before the launcher reads its own SIGINT. That is still a clean, requested stop.
TEST_F(LaunchSupervisionTest, InterruptReachingTheWholeGroupIsACleanStop) {
  WriteFakes(kSleep, kSleep);
  Launch({"--tp", "2", "--restart", "2"}, /*with_defaults=*/true, /*own_group=*/true);
  WaitForGroup({"mla-coordinator.coordinator.pids", "mla-worker.0.pids", "mla-worker.1.pids"});
  ASSERT_EQ(getpgid(LastPid("mla-worker.1.pids")), launcher_->pid());  // children share its group
  ASSERT_EQ(kill(-launcher_->pid(), SIGINT), 0);
  EXPECT_EQ(WaitForExit(), 0);
  EXPECT_EQ(ReadFile(log("stderr")), "");
  EXPECT_EQ(ReadPids(log("mla-worker.0.pids")).size(), 1u);  // not restarted
}

TEST_F(LaunchSupervisionTest, SigkilledLauncherTakesItsChildrenWithIt) {
  WriteFakes(kSleep, kSleep);
  Launch({"--tp", "2"});
  const std::vector<std::string> files = {"mla-coordinator.coordinator.pids", "mla-worker.0.pids",
                                          "mla-worker.1.pids"};
  WaitForGroup(files);
  ASSERT_TRUE(launcher_->Signal(SIGKILL).ok());
  ASSERT_TRUE(launcher_->Wait(kPatience).has_value());
  // Reparented to this subreaper; each must die of the death signal, not live on.
  for (const std::string& f : files) {
    const pid_t child = LastPid(f);
    int status = 0;
    ASSERT_TRUE(WaitUntil([&] { return waitpid(child, &status, WNOHANG) == child; })) << f << " outlived mla-launch";
    EXPECT_EQ(ExitStatus::FromWaitStatus(status).Describe(), "was killed by signal 9 (Killed)") << f;
  }
}

TEST_F(LaunchSupervisionTest, SecondNodeRunsOnlyItsWorkers) {
  WriteFakes(kSleep, kSleep);
  Launch({"--tp", "4", "--nnodes", "2", "--node-rank", "1", "--coordinator", "10.1.2.3:7000", "--threads", "1"});
  WaitForGroup({"mla-worker.0.pids", "mla-worker.1.pids"});
  EXPECT_EQ(ReadFile(log("mla-coordinator.coordinator.pids")), "");
  EXPECT_TRUE(absl::StrContains(
      ReadFile(log("mla-worker.1.args")),
      "--coordinator\n10.1.2.3:7000\n--node-rank\n1\n--local-rank\n1\n--local-world-size\n2\n"));
  ASSERT_TRUE(launcher_->Signal(SIGINT).ok());
  EXPECT_EQ(WaitForExit(), 0);
  EXPECT_EQ(ReadFile(log("stdout")), absl::StrCat("mla-launch: node 1/2 serving ", model(),
                                                   " at 10.1.2.3:7000 (tp 4, 2 local workers, backend cpu)\n"));
}

TEST_F(LaunchSupervisionTest, BadFlagIsOneLineAndExitTwo) {
  WriteFakes(kSleep, kSleep);
  Launch({"--backend", "tpu"});
  EXPECT_EQ(WaitForExit(), 2);
  EXPECT_EQ(ReadFile(log("stderr")), "mla-launch: error: --backend 'tpu' (expected cpu or cuda)\n");
  EXPECT_EQ(ReadFile(log("stdout")), "");
  EXPECT_EQ(ReadFile(log("mla-worker.0.pids")), "");  // nothing was spawned
}

TEST_F(LaunchSupervisionTest, MissingModelDirIsExitTwo) {
  WriteFakes(kSleep, kSleep);
  Launch({"--model", root_ + "/no-such-model", "--bin-dir", bin()}, /*with_defaults=*/false);
  EXPECT_EQ(WaitForExit(), 2);
  EXPECT_EQ(ReadFile(log("stderr")),
            absl::StrCat("mla-launch: error: --model '", root_, "/no-such-model' is not a directory\n"));
}

TEST_F(LaunchSupervisionTest, MissingChildBinaryIsExitTwo) {
  WriteFake("mla-coordinator", kSleep);  // no mla-worker
  Launch({});
  EXPECT_EQ(WaitForExit(), 2);
  EXPECT_EQ(ReadFile(log("stderr")),
            absl::StrCat("mla-launch: error: ", bin(),
                         "/mla-worker is not an executable file (mla-launch runs mla-coordinator and mla-worker from "
                         "its own directory)\n"));
  EXPECT_EQ(ReadFile(log("mla-coordinator.coordinator.pids")), "");
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  mla::MaybeRunExecChild(argc, argv);
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
