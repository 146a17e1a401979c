// The NCCL transport on device buffers. Ranks are threads of this process, rank
// r on GPU r (NCCL refuses two ranks of a group on one GPU), bootstrapped
// through one InMemoryKeyValueStore; each rank's thread creates, uses and
// destroys its own communicator (destruction finalises with the node's other
// ranks, so they must not be destroyed one after another). A case that needs
// more GPUs than the machine has skips itself. Payloads carry their rank
// (value = rank * 1000 + index) so a misrouted shard shows up, and every output
// buffer is poisoned with NaN first.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "runtime/communicator.h"
#include "runtime/kv_store.h"
#include "runtime/nccl_communicator.h"
#include "tests/gpu/gpu_test_util.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;

int GpuCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

// No GPU: skip (or fail under MLA_GPU_REQUIRED=1). Some, but fewer than n: skip.
#define MLA_SKIP_WITH_FEWER_GPUS(n)                                                        \
  do {                                                                                     \
    MLA_SKIP_WITHOUT_GPU();                                                                \
    if (GpuCount() < (n)) GTEST_SKIP() << "needs " << (n) << " GPUs, found " << GpuCount(); \
  } while (0)

float Tag(int rank, size_t i) { return static_cast<float>(rank * 1000 + static_cast<int>(i)); }

std::vector<float> Tagged(int rank, size_t count) {
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) v[i] = Tag(rank, i);
  return v;
}

// A fresh prefix per group, as a restarted group would use.
NcclOptions Options(absl::Duration timeout, int device = 0) {
  static std::atomic<int> next{0};
  NcclOptions options;
  options.prefix = absl::StrCat("nccl_test", next++);
  options.timeout = timeout;
  options.device = device;
  return options;
}

void OnThreads(int size, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) threads.emplace_back(fn, r);
  for (std::thread& t : threads) t.join();
}

// Rank r joins on GPU r, runs body, and destroys its communicator, all on its own thread.
void RunGroup(int size, const std::function<void(int, NcclCommunicator&)>& body,
              absl::Duration timeout = absl::Seconds(60)) {
  InMemoryKeyValueStore store;
  const NcclOptions base = Options(timeout);
  OnThreads(size, [&](int rank) {
    NcclOptions options = base;
    options.device = rank;
    absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm = NcclCommunicator::Create(store, rank, size, options);
    ASSERT_TRUE(comm.ok()) << "rank " << rank << ": " << comm.status();
    EXPECT_EQ((*comm)->rank(), rank);
    EXPECT_EQ((*comm)->size(), size);
    EXPECT_EQ((*comm)->device(), rank);
    body(rank, **comm);
  });
}

std::vector<float> Download(const DeviceBuffer<float>& buffer) {
  std::vector<float> host;
  const cudaError_t err = buffer.Download(host);
  EXPECT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
  return host;
}

// A device buffer of n floats, all NaN.
std::unique_ptr<DeviceBuffer<float>> Poisoned(size_t n) {
  auto buffer = std::make_unique<DeviceBuffer<float>>(n);
  EXPECT_EQ(buffer->Poison(), cudaSuccess);
  return buffer;
}

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class NcclCollectiveTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override { MLA_SKIP_WITH_FEWER_GPUS(GetParam()); }
};

TEST_P(NcclCollectiveTest, AllReduceSumAddsEveryRank) {
  const int size = GetParam();
  constexpr size_t kCount = 37;  // odd: no even split across ranks
  RunGroup(size, [&](int rank, NcclCommunicator& comm) {
    DeviceBuffer<float> data(Tagged(rank, kCount));
    ASSERT_TRUE(comm.AllReduceSum(data.get(), kCount).ok());
    const std::vector<float> got = Download(data);
    for (size_t i = 0; i < kCount; ++i) {
      // sum_r (r * 1000 + i): small integers, exact in float whatever the order.
      const float want = static_cast<float>(1000 * size * (size - 1) / 2 + size * static_cast<int>(i));
      ASSERT_EQ(got[i], want) << "rank " << rank << " index " << i;
    }
  });
}

// NCCL's order is its own (see nccl_communicator.h): every rank gets the same
// bits and a rerun of the same count the same bits; against the exact sum the
// tolerance is (size - 1) roundings: (size - 1) * 2^-24 * sum |x_r|.
TEST_P(NcclCollectiveTest, AllReduceSumIsTheSameOnEveryRankAndRun) {
  const int size = GetParam();
  constexpr size_t kCount = 1000;
  std::vector<std::vector<float>> inputs(size), results(size);
  for (int r = 0; r < size; ++r) {
    std::mt19937 rng(1234 + r);
    std::uniform_real_distribution<float> mantissa(-1.0f, 1.0f);
    std::uniform_int_distribution<int> exponent(-3, 3);
    inputs[r].resize(kCount);
    for (float& x : inputs[r]) x = std::ldexp(mantissa(rng), exponent(rng) * 3);  // six decades
  }
  RunGroup(size, [&](int rank, NcclCommunicator& comm) {
    for (int run = 0; run < 3; ++run) {
      DeviceBuffer<float> data(inputs[rank]);
      ASSERT_TRUE(comm.AllReduceSum(data.get(), kCount).ok());
      const std::vector<float> got = Download(data);
      if (run == 0) results[rank] = got;
      EXPECT_TRUE(BitwiseEqual(got, results[rank])) << "rank " << rank << " run " << run;
    }
  });
  for (int r = 1; r < size; ++r) EXPECT_TRUE(BitwiseEqual(results[r], results[0])) << "rank " << r << " vs rank 0";
  for (size_t i = 0; i < kCount; ++i) {
    double exact = 0, magnitude = 0;
    for (int r = 0; r < size; ++r) {
      exact += inputs[r][i];
      magnitude += std::fabs(inputs[r][i]);
    }
    const double tolerance = std::max(size - 1, 1) * std::ldexp(1.0, -24) * magnitude;
    ASSERT_NEAR(results[0][i], exact, tolerance) << "index " << i;
  }
}

TEST_P(NcclCollectiveTest, AllReduceSumOfManyFloats) {
  const int size = GetParam();
  constexpr size_t kCount = (size_t{4} << 20) + 7;  // 16 MiB + 28 bytes: several NCCL chunks, a ragged tail
  RunGroup(size, [&](int rank, NcclCommunicator& comm) {
    std::vector<float> host(kCount);
    for (size_t i = 0; i < kCount; ++i) host[i] = static_cast<float>((i % 1000) + rank * 1000);
    DeviceBuffer<float> data(host);
    ASSERT_TRUE(comm.AllReduceSum(data.get(), kCount).ok());
    const std::vector<float> got = Download(data);
    const int rank_sum = 1000 * size * (size - 1) / 2;
    for (size_t i = 0; i < kCount; ++i) {
      ASSERT_EQ(got[i], static_cast<float>(size * static_cast<int>(i % 1000) + rank_sum)) << "index " << i;
    }
  });
}

TEST_P(NcclCollectiveTest, AllGatherIsInRankOrder) {
  const int size = GetParam();
  constexpr size_t kCount = 5;
  RunGroup(size, [&](int rank, NcclCommunicator& comm) {
    DeviceBuffer<float> in(Tagged(rank, kCount));
    auto out = Poisoned(kCount * size);
    ASSERT_TRUE(comm.AllGather(in.get(), kCount, out->get()).ok());
    // In place: this rank's part already sits in its slot, the rest is NaN.
    auto in_place = Poisoned(kCount * size);
    ASSERT_EQ(cudaMemcpy(in_place->get() + rank * kCount, in.get(), kCount * sizeof(float), cudaMemcpyDeviceToDevice),
              cudaSuccess);
    ASSERT_TRUE(comm.AllGather(in_place->get() + rank * kCount, kCount, in_place->get()).ok());
    const std::vector<float> got = Download(*out), got_in_place = Download(*in_place);
    for (int r = 0; r < size; ++r) {
      for (size_t i = 0; i < kCount; ++i) {
        ASSERT_EQ(got[r * kCount + i], Tag(r, i)) << "rank " << rank << " slot " << r;
        ASSERT_EQ(got_in_place[r * kCount + i], Tag(r, i)) << "in place, rank " << rank << " slot " << r;
      }
    }
  });
}

TEST_P(NcclCollectiveTest, GatherReachesOnlyTheRoot) {
  const int size = GetParam();
  constexpr size_t kCount = 3;
  RunGroup(size, [&](int rank, NcclCommunicator& comm) {
    for (int root : {0, size - 1}) {
      DeviceBuffer<float> in(Tagged(rank, kCount));
      auto out = Poisoned(kCount * size);
      // Non-roots pass null: they have nowhere to put the result.
      ASSERT_TRUE(comm.Gather(in.get(), kCount, rank == root ? out->get() : nullptr, root).ok()) << "root " << root;
      const std::vector<float> got = Download(*out);
      for (int r = 0; r < size; ++r) {
        for (size_t i = 0; i < kCount; ++i) {
          if (rank == root) {
            ASSERT_EQ(got[r * kCount + i], Tag(r, i)) << "root " << root << " slot " << r;
          } else {
            ASSERT_TRUE(std::isnan(got[r * kCount + i])) << "rank " << rank << " (not root " << root << ") was written";
          }
        }
      }
    }
  });
}

TEST_P(NcclCollectiveTest, GatherInPlaceOnRoot) {
  const int size = GetParam();
  constexpr size_t kCount = 4;
  const int root = size - 1;
  RunGroup(size, [&](int rank, NcclCommunicator& comm) {
    DeviceBuffer<float> in(Tagged(rank, kCount));
    auto out = Poisoned(kCount * size);
    const float* src = in.get();
    if (rank == root) {
      ASSERT_EQ(cudaMemcpy(out->get() + root * kCount, in.get(), kCount * sizeof(float), cudaMemcpyDeviceToDevice),
                cudaSuccess);
      src = out->get() + root * kCount;
    }
    ASSERT_TRUE(comm.Gather(src, kCount, rank == root ? out->get() : nullptr, root).ok());
    if (rank != root) return;
    const std::vector<float> got = Download(*out);
    for (int r = 0; r < size; ++r) {
      for (size_t i = 0; i < kCount; ++i) ASSERT_EQ(got[r * kCount + i], Tag(r, i)) << "slot " << r;
    }
  });
}

TEST_P(NcclCollectiveTest, BroadcastFromTheLastRank) {
  const int size = GetParam();
  const int root = size - 1;  // non-zero whenever there is more than one rank
  constexpr size_t kBytes = 13;  // odd: not a whole number of floats
  RunGroup(size, [&](int rank, NcclCommunicator& comm) {
    std::vector<uint8_t> host(kBytes);
    for (size_t i = 0; i < kBytes; ++i) host[i] = static_cast<uint8_t>(rank * 16 + i);
    DeviceBuffer<uint8_t> data(host);
    ASSERT_TRUE(comm.Broadcast(data.get(), kBytes, root).ok());
    std::vector<uint8_t> got;
    ASSERT_EQ(data.Download(got), cudaSuccess);
    for (size_t i = 0; i < kBytes; ++i) ASSERT_EQ(got[i], static_cast<uint8_t>(root * 16 + i)) << "rank " << rank;
  });
}

TEST_P(NcclCollectiveTest, BarrierWaitsForEveryRank) {
  const int size = GetParam();
  std::atomic<int> arrived{0};
  RunGroup(size, [&](int rank, NcclCommunicator& comm) {
    // The last rank is late: nobody may leave the barrier before it arrives.
    if (rank == size - 1) absl::SleepFor(absl::Milliseconds(200));
    arrived++;
    ASSERT_TRUE(comm.Barrier().ok());
    EXPECT_EQ(arrived.load(), size) << "rank " << rank;
    ASSERT_TRUE(comm.Barrier().ok());  // and again: the scratch value is reusable
  });
}

TEST_P(NcclCollectiveTest, ZeroCountIsANoOpWithNullPointers) {
  const int size = GetParam();
  RunGroup(size, [&](int rank, NcclCommunicator& comm) {
    EXPECT_TRUE(comm.AllReduceSum(nullptr, 0).ok());
    EXPECT_TRUE(comm.AllGather(nullptr, 0, nullptr).ok());
    EXPECT_TRUE(comm.Gather(nullptr, 0, nullptr, 0).ok());
    EXPECT_TRUE(comm.Broadcast(nullptr, 0, 0).ok());
  });
}

TEST_P(NcclCollectiveTest, BadArgumentsAreRefusedAndTheGroupStaysUsable) {
  const int size = GetParam();
  RunGroup(size, [&](int rank, NcclCommunicator& comm) {
    DeviceBuffer<float> buf(std::vector<float>(4 * size, 1.0f));
    absl::Status s = comm.Gather(buf.get(), 1, buf.get(), size);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(s.message(), absl::StrCat("Gather: root ", size, " is outside [0, ", size, ")"));
    s = comm.Broadcast(buf.get(), 4, -1);
    EXPECT_EQ(s.message(), absl::StrCat("Broadcast: root -1 is outside [0, ", size, ")"));
    s = comm.AllReduceSum(nullptr, 3);
    EXPECT_EQ(s.message(), "AllReduceSum: data is null with count 3");
    s = comm.Gather(buf.get(), 2, nullptr, rank);
    EXPECT_EQ(s.message(), absl::StrCat("Gather: out is null on root ", rank, " with count 2"));
    s = comm.AllGather(buf.get() + 1, 2, buf.get());  // overlaps, not its slot
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(s.message(), "AllGather: in overlaps out")) << s;
    // Nothing went on the wire: the next collective still lines up.
    DeviceBuffer<float> x(std::vector<float>{static_cast<float>(rank)});
    ASSERT_TRUE(comm.AllReduceSum(x.get(), 1).ok());
    EXPECT_EQ(Download(x)[0], static_cast<float>(size * (size - 1) / 2));
  });
}

// All-reduces enqueued without a wait (the CUDA model's, on its stream) run in
// stream order: three in a row on one buffer, then a Gather that waits, then
// Wait; only the communicator's own stream takes them.
TEST_P(NcclCollectiveTest, EnqueuedAllReducesRunInStreamOrder) {
  const int size = GetParam();
  RunGroup(size, [&](int rank, NcclCommunicator& comm) {
    EXPECT_TRUE(comm.CanEnqueueOn(comm.stream()));
    cudaStream_t other = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking), cudaSuccess);
    EXPECT_FALSE(comm.CanEnqueueOn(other));
    constexpr size_t kCount = 4096;
    auto data = Poisoned(kCount);
    // Each rank's 1 + rank over the NaN poison, queued on the stream just before.
    std::vector<float> ones(kCount, static_cast<float>(1 + rank));
    ASSERT_EQ(cudaMemcpyAsync(data->get(), ones.data(), kCount * sizeof(float), cudaMemcpyHostToDevice, comm.stream()),
              cudaSuccess);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(comm.EnqueueAllReduceSum(data->get(), kCount).ok()) << "all-reduce " << i;
    auto gathered = Poisoned(kCount * size);
    ASSERT_TRUE(comm.Gather(data->get(), kCount, rank == 0 ? gathered->get() : nullptr, 0).ok());
    ASSERT_TRUE(comm.Wait().ok());
    // sum of 1..size, then times size twice.
    const float want = static_cast<float>(size * (size + 1) / 2 * size * size);
    const std::vector<float> got = Download(*data);
    for (size_t i = 0; i < kCount; ++i) ASSERT_EQ(got[i], want) << "index " << i;
    if (rank == 0) {
      const std::vector<float> all = Download(*gathered);
      for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], want) << "gathered index " << i;
    }
    EXPECT_EQ(cudaStreamDestroy(other), cudaSuccess);
  });
}

INSTANTIATE_TEST_SUITE_P(Sizes, NcclCollectiveTest, ::testing::Values(1, 2, 4),
                         [](const ::testing::TestParamInfo<int>& info) { return absl::StrCat("size", info.param); });

// The model's stream: the collective is ordered after work queued there before it.
TEST(NcclCommunicatorTest, CollectivesRunOnTheStreamSetByTheCaller) {
  MLA_SKIP_WITHOUT_GPU();
  RunGroup(1, [&](int, NcclCommunicator& comm) {
    cudaStream_t own = comm.stream();
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    comm.SetStream(stream);
    EXPECT_EQ(comm.stream(), stream);
    constexpr size_t kCount = 1 << 20;
    auto data = Poisoned(kCount);
    // Zeroes over the NaN poison, queued on the caller's stream just before the all-reduce.
    ASSERT_EQ(cudaMemsetAsync(data->get(), 0, kCount * sizeof(float), stream), cudaSuccess);
    ASSERT_TRUE(comm.AllReduceSum(data->get(), kCount).ok());
    const std::vector<float> got = Download(*data);
    for (size_t i = 0; i < kCount; ++i) ASSERT_EQ(got[i], 0.0f) << "index " << i;
    comm.SetStream(nullptr);
    EXPECT_EQ(comm.stream(), own);
    ASSERT_TRUE(comm.Barrier().ok());
    EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
  });
}

TEST(NcclCommunicatorTest, AbortMakesLaterCallsUnavailable) {
  MLA_SKIP_WITHOUT_GPU();
  RunGroup(1, [&](int, NcclCommunicator& comm) {
    comm.Abort("the coordinator reports rank 3 dead");
    EXPECT_EQ(comm.health().code(), absl::StatusCode::kUnavailable);
    DeviceBuffer<float> x(std::vector<float>{1.0f});
    const absl::Status s = comm.AllReduceSum(x.get(), 1);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
    EXPECT_TRUE(absl::StrContains(s.message(), "unusable")) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "rank 3 dead")) << s;
    EXPECT_EQ(comm.Barrier().code(), absl::StatusCode::kUnavailable);
  });  // the destructor of an aborted communicator must not finalise (or hang)
}

// One GPU is enough: rank 1 never starts, so rank 0's NCCL init cannot finish.
TEST(NcclCommunicatorTest, ARankThatNeverArrivesTimesOutTheInit) {
  MLA_SKIP_WITHOUT_GPU();
  InMemoryKeyValueStore store;
  const absl::Duration timeout = absl::Seconds(3);
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm = NcclCommunicator::Create(store, 0, 2, Options(timeout));
  const absl::Duration took = absl::Now() - start;
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
  EXPECT_TRUE(absl::StrContains(comm.status().message(), "rank 0 of 2")) << comm.status();
  EXPECT_TRUE(absl::StrContains(comm.status().message(), "ncclCommInitRankConfig")) << comm.status();
  EXPECT_LT(took, timeout + absl::Seconds(10));
}

TEST(NcclCommunicatorTest, WithoutRankZeroTheUniqueIdNeverArrives) {
  MLA_SKIP_WITHOUT_GPU();
  InMemoryKeyValueStore store;
  NcclOptions options = Options(absl::Milliseconds(300));
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm = NcclCommunicator::Create(store, 1, 2, options);
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
  EXPECT_TRUE(absl::StrContains(comm.status().message(), absl::StrCat("'", options.prefix, "/unique_id'")))
      << comm.status();
  EXPECT_TRUE(absl::StrContains(comm.status().message(), "has rank 0 started?")) << comm.status();
}

// NCCL refuses a second rank of a group on the same GPU: an error on both
// ranks within the timeout, never a hang. One GPU is enough.
TEST(NcclCommunicatorTest, TwoRanksOnOneGpuFailWithoutHanging) {
  MLA_SKIP_WITHOUT_GPU();
  InMemoryKeyValueStore store;
  const absl::Duration timeout = absl::Seconds(5);
  const NcclOptions options = Options(timeout, /*device=*/0);
  std::vector<absl::Status> results(2);
  const absl::Time start = absl::Now();
  OnThreads(2, [&](int rank) { results[rank] = NcclCommunicator::Create(store, rank, 2, options).status(); });
  EXPECT_LT(absl::Now() - start, timeout + absl::Seconds(15));
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_FALSE(results[rank].ok()) << "rank " << rank;
    EXPECT_TRUE(absl::StrContains(results[rank].message(), absl::StrCat("rank ", rank, " of 2"))) << results[rank];
  }
}

// Rank 1 joins but never calls the collective (a peer that hangs or died after
// joining): rank 0 gets an error within its timeout instead of hanging, later
// calls say the group is unusable, and both ranks' teardown is bounded.
TEST(NcclCommunicatorTest, APeerThatNeverCallsGivesAnErrorNotAHang) {
  MLA_SKIP_WITH_FEWER_GPUS(2);
  const absl::Duration timeout = absl::Seconds(3);
  absl::Notification rank0_done;
  absl::Status first, second;
  absl::Duration took;
  const absl::Time start = absl::Now();
  RunGroup(
      2,
      [&](int rank, NcclCommunicator& comm) {
        if (rank == 1) {
          rank0_done.WaitForNotificationWithTimeout(absl::Seconds(60));
          return;  // destroyed without ever calling AllReduceSum
        }
        DeviceBuffer<float> x(std::vector<float>(1024, 1.0f));
        const absl::Time t0 = absl::Now();
        first = comm.AllReduceSum(x.get(), 1024);
        took = absl::Now() - t0;
        second = comm.AllReduceSum(x.get(), 1024);
        rank0_done.Notify();
      },
      timeout);
  const absl::Duration total = absl::Now() - start;
  ASSERT_FALSE(first.ok());
  EXPECT_TRUE(first.code() == absl::StatusCode::kDeadlineExceeded || first.code() == absl::StatusCode::kUnavailable)
      << first;
  EXPECT_TRUE(absl::StrContains(first.message(), "AllReduceSum on rank 0 of 2")) << first;
  EXPECT_TRUE(absl::StrContains(first.message(), "ncclAllReduce")) << first;
  EXPECT_LT(took, timeout + absl::Seconds(10));
  EXPECT_EQ(second.code(), absl::StatusCode::kUnavailable) << second;
  EXPECT_TRUE(absl::StrContains(second.message(), "unusable")) << second;
  // Rank 1's teardown: its finalise waits for rank 0 (aborted) up to the
  // timeout, then it aborts too; plus the init and at most 5 s of stream drain.
  EXPECT_LT(total, 3 * timeout + absl::Seconds(30));
}

// The same peer, with the all-reduce enqueued (no wait of its own): the
// enqueue returns, the Wait after it gets the error within the timeout, and
// later calls, enqueued or not, say the group is unusable.
TEST(NcclCommunicatorTest, APeerThatNeverJoinsAnEnqueuedAllReduceFailsTheWait) {
  MLA_SKIP_WITH_FEWER_GPUS(2);
  const absl::Duration timeout = absl::Seconds(3);
  absl::Notification rank0_done;
  absl::Status enqueued, waited, later;
  absl::Duration took;
  RunGroup(
      2,
      [&](int rank, NcclCommunicator& comm) {
        if (rank == 1) {
          rank0_done.WaitForNotificationWithTimeout(absl::Seconds(60));
          return;
        }
        DeviceBuffer<float> x(std::vector<float>(1024, 1.0f));
        enqueued = comm.EnqueueAllReduceSum(x.get(), 1024);
        const absl::Time t0 = absl::Now();
        waited = comm.Wait();
        took = absl::Now() - t0;
        later = comm.EnqueueAllReduceSum(x.get(), 1024);
        EXPECT_FALSE(comm.CanEnqueueOn(comm.stream()));
        rank0_done.Notify();
      },
      timeout);
  EXPECT_TRUE(enqueued.ok()) << enqueued;
  ASSERT_FALSE(waited.ok());
  EXPECT_TRUE(waited.code() == absl::StatusCode::kDeadlineExceeded || waited.code() == absl::StatusCode::kUnavailable)
      << waited;
  EXPECT_TRUE(absl::StrContains(waited.message(), "Wait on rank 0 of 2")) << waited;
  EXPECT_LT(took, timeout + absl::Seconds(10));
  EXPECT_EQ(later.code(), absl::StatusCode::kUnavailable) << later;
  EXPECT_TRUE(absl::StrContains(later.message(), "unusable")) << later;
}

// Argument checks come before any CUDA call: these run without a GPU.
TEST(NcclCommunicatorTest, BadOptionsAreRefused) {
  InMemoryKeyValueStore store;
  EXPECT_EQ(NcclCommunicator::Create(store, 0, 0, Options(absl::Seconds(1))).status().message(),
            "CreateNcclCommunicator: size 0 < 1");
  EXPECT_EQ(NcclCommunicator::Create(store, 2, 2, Options(absl::Seconds(1))).status().message(),
            "CreateNcclCommunicator: rank 2 is outside [0, 2)");
  absl::Status s = CreateNcclCommunicator(store, 0, 1, Options(absl::ZeroDuration())).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "CreateNcclCommunicator: timeout 0 must be finite and at least 1ms");
}

TEST(NcclCommunicatorTest, ADeviceOutOfRangeIsRefused) {
  MLA_SKIP_WITHOUT_GPU();
  InMemoryKeyValueStore store;
  const int devices = GpuCount();
  const absl::Status s = NcclCommunicator::Create(store, 0, 1, Options(absl::Seconds(1), devices)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), absl::StrCat("CreateNcclCommunicator: device ", devices, " is outside [0, ", devices, ")"));
}

}  // namespace
}  // namespace mla
