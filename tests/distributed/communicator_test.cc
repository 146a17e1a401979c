// Communicator tests: ranks are threads of this process sharing one
// InMemoryKeyValueStore and talking Gloo over loopback TCP. Payloads carry their
// rank (value = rank * 1000 + index) so a misrouted shard shows up.
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
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "runtime/communicator.h"
#include "runtime/gloo_communicator.h"
#include "runtime/kv_store.h"

namespace mla {
namespace {

using Comms = std::vector<std::unique_ptr<Communicator>>;

float Tag(int rank, size_t i) { return static_cast<float>(rank * 1000 + static_cast<int>(i)); }

std::vector<float> Tagged(int rank, size_t count) {
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) v[i] = Tag(rank, i);
  return v;
}

// A fresh prefix per group, as a restarted group would use.
GlooOptions Options(absl::Duration timeout) {
  static std::atomic<int> next{0};
  GlooOptions options;
  options.prefix = absl::StrCat("test", next++);
  options.timeout = timeout;
  return options;
}

// Runs fn(rank) on one thread per rank in `ranks` and waits for all.
void OnThreads(const std::vector<int>& ranks, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r : ranks) threads.emplace_back(fn, r);
  for (std::thread& t : threads) t.join();
}

std::vector<int> AllRanks(int size) {
  std::vector<int> ranks(size);
  for (int r = 0; r < size; ++r) ranks[r] = r;
  return ranks;
}

// Joins `ranks` of a group of `size`; a rank left out never arrives.
std::vector<absl::StatusOr<std::unique_ptr<Communicator>>> Join(KeyValueStore& store, int size,
                                                                const std::vector<int>& ranks,
                                                                const GlooOptions& options) {
  std::vector<absl::StatusOr<std::unique_ptr<Communicator>>> result;
  for (int r = 0; r < size; ++r) result.emplace_back(absl::UnknownError("did not join"));
  OnThreads(ranks, [&](int r) { result[r] = CreateGlooCommunicator(store, r, size, options); });
  return result;
}

Comms MakeGroup(int size, absl::Duration timeout = absl::Seconds(20)) {
  InMemoryKeyValueStore store;
  auto joined = Join(store, size, AllRanks(size), Options(timeout));
  Comms comms;
  for (int r = 0; r < size; ++r) {
    EXPECT_TRUE(joined[r].ok()) << "rank " << r << ": " << joined[r].status();
    if (!joined[r].ok()) return {};
    EXPECT_EQ((*joined[r])->rank(), r);
    EXPECT_EQ((*joined[r])->size(), size);
    comms.push_back(std::move(*joined[r]));
  }
  return comms;
}

void OnEveryRank(Comms& comms, const std::function<void(int, Communicator&)>& fn) {
  OnThreads(AllRanks(static_cast<int>(comms.size())), [&](int r) { fn(r, *comms[r]); });
}

// ((x_0 + x_1) + x_2) + ... elementwise, the order AllReduceSum promises.
std::vector<float> RankOrderSum(const std::vector<std::vector<float>>& inputs) {
  std::vector<float> sum = inputs[0];
  for (size_t r = 1; r < inputs.size(); ++r) {
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += inputs[r][i];
  }
  return sum;
}

// Values over six decades, so a different summation order changes the bits.
std::vector<float> Random(int rank, size_t count, uint32_t seed) {
  std::mt19937 rng(seed * 7919u + static_cast<uint32_t>(rank));
  std::uniform_real_distribution<float> mantissa(-1.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-3, 3);
  std::vector<float> v(count);
  for (float& x : v) x = std::ldexp(mantissa(rng), exponent(rng) * 3);
  return v;
}

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class CollectiveTest : public ::testing::TestWithParam<int> {};

TEST_P(CollectiveTest, AllReduceSumAddsEveryRank) {
  const int size = GetParam();
  Comms comms = MakeGroup(size);
  ASSERT_EQ(comms.size(), static_cast<size_t>(size));
  constexpr size_t kCount = 37;  // odd: no even split across ranks
  OnEveryRank(comms, [&](int rank, Communicator& comm) {
    std::vector<float> data = Tagged(rank, kCount);
    ASSERT_TRUE(comm.AllReduceSum(data.data(), kCount).ok());
    for (size_t i = 0; i < kCount; ++i) {
      // sum_r (r * 1000 + i), exact in float.
      const float want = static_cast<float>(1000 * size * (size - 1) / 2 + size * static_cast<int>(i));
      ASSERT_EQ(data[i], want) << "rank " << rank << " index " << i;
    }
  });
}

TEST_P(CollectiveTest, AllReduceSumIsBitwiseIdenticalAcrossRanksRunsAndCounts) {
  const int size = GetParam();
  Comms comms = MakeGroup(size);
  ASSERT_EQ(comms.size(), static_cast<size_t>(size));
  constexpr size_t kCount = 1000;
  constexpr size_t kPrefix = 13;  // the same rows reduced at a smaller "batch"
  std::vector<std::vector<float>> inputs;
  for (int r = 0; r < size; ++r) inputs.push_back(Random(r, kCount, /*seed=*/1));
  const std::vector<float> want = RankOrderSum(inputs);
  std::vector<std::vector<float>> results(size);
  OnEveryRank(comms, [&](int rank, Communicator& comm) {
    for (int run = 0; run < 3; ++run) {
      std::vector<float> data = inputs[rank];
      ASSERT_TRUE(comm.AllReduceSum(data.data(), kCount).ok());
      if (run == 0) results[rank] = data;
      EXPECT_TRUE(BitwiseEqual(data, results[rank])) << "rank " << rank << " run " << run;
    }
    std::vector<float> prefix(inputs[rank].begin(), inputs[rank].begin() + kPrefix);
    ASSERT_TRUE(comm.AllReduceSum(prefix.data(), kPrefix).ok());
    EXPECT_TRUE(BitwiseEqual(prefix, std::vector<float>(want.begin(), want.begin() + kPrefix))) << "rank " << rank;
  });
  for (int r = 0; r < size; ++r) EXPECT_TRUE(BitwiseEqual(results[r], want)) << "rank " << r;
}

TEST_P(CollectiveTest, AllGatherIsInRankOrder) {
  const int size = GetParam();
  Comms comms = MakeGroup(size);
  ASSERT_EQ(comms.size(), static_cast<size_t>(size));
  constexpr size_t kCount = 5;
  OnEveryRank(comms, [&](int rank, Communicator& comm) {
    const std::vector<float> in = Tagged(rank, kCount);
    std::vector<float> out(kCount * size, std::nanf(""));
    ASSERT_TRUE(comm.AllGather(in.data(), kCount, out.data()).ok());
    // In place: this rank's part already sits in its slot.
    std::vector<float> in_place(kCount * size, std::nanf(""));
    std::copy(in.begin(), in.end(), in_place.begin() + rank * kCount);
    ASSERT_TRUE(comm.AllGather(in_place.data() + rank * kCount, kCount, in_place.data()).ok());
    for (int r = 0; r < size; ++r) {
      for (size_t i = 0; i < kCount; ++i) {
        ASSERT_EQ(out[r * kCount + i], Tag(r, i)) << "rank " << rank << " slot " << r;
        ASSERT_EQ(in_place[r * kCount + i], Tag(r, i)) << "in place, rank " << rank << " slot " << r;
      }
    }
  });
}

TEST_P(CollectiveTest, GatherReachesOnlyTheRoot) {
  const int size = GetParam();
  Comms comms = MakeGroup(size);
  ASSERT_EQ(comms.size(), static_cast<size_t>(size));
  constexpr size_t kCount = 3;
  for (int root : {0, std::min(2, size - 1)}) {
    OnEveryRank(comms, [&](int rank, Communicator& comm) {
      const std::vector<float> in = Tagged(rank, kCount);
      std::vector<float> out(kCount * size, std::nanf(""));
      // Non-roots pass null: they have nowhere to put the result.
      float* dst = rank == root ? out.data() : nullptr;
      ASSERT_TRUE(comm.Gather(in.data(), kCount, dst, root).ok()) << "root " << root;
      if (rank != root) return;
      for (int r = 0; r < size; ++r) {
        for (size_t i = 0; i < kCount; ++i) ASSERT_EQ(out[r * kCount + i], Tag(r, i)) << "root " << root;
      }
    });
  }
}

TEST_P(CollectiveTest, GatherInPlaceOnRoot) {
  const int size = GetParam();
  Comms comms = MakeGroup(size);
  ASSERT_EQ(comms.size(), static_cast<size_t>(size));
  constexpr size_t kCount = 4;
  const int root = size - 1;
  OnEveryRank(comms, [&](int rank, Communicator& comm) {
    std::vector<float> out(kCount * size, std::nanf(""));
    std::vector<float> in = Tagged(rank, kCount);
    const float* src = in.data();
    if (rank == root) {
      std::copy(in.begin(), in.end(), out.begin() + root * kCount);
      src = out.data() + root * kCount;
    }
    ASSERT_TRUE(comm.Gather(src, kCount, rank == root ? out.data() : nullptr, root).ok());
    if (rank != root) return;
    for (int r = 0; r < size; ++r) {
      for (size_t i = 0; i < kCount; ++i) ASSERT_EQ(out[r * kCount + i], Tag(r, i));
    }
  });
}

TEST_P(CollectiveTest, BroadcastFromTheLastRank) {
  const int size = GetParam();
  Comms comms = MakeGroup(size);
  ASSERT_EQ(comms.size(), static_cast<size_t>(size));
  const int root = size - 1;  // non-zero whenever there is more than one rank
  constexpr size_t kBytes = 13;
  OnEveryRank(comms, [&](int rank, Communicator& comm) {
    std::vector<uint8_t> data(kBytes);
    for (size_t i = 0; i < kBytes; ++i) data[i] = static_cast<uint8_t>(rank * 16 + i);
    ASSERT_TRUE(comm.Broadcast(data.data(), kBytes, root).ok());
    for (size_t i = 0; i < kBytes; ++i) ASSERT_EQ(data[i], static_cast<uint8_t>(root * 16 + i)) << "rank " << rank;
  });
}

TEST_P(CollectiveTest, BarrierWaitsForEveryRank) {
  const int size = GetParam();
  Comms comms = MakeGroup(size);
  ASSERT_EQ(comms.size(), static_cast<size_t>(size));
  std::atomic<int> arrived{0};
  OnEveryRank(comms, [&](int rank, Communicator& comm) {
    // The last rank is late: nobody may leave the barrier before it arrives.
    if (rank == size - 1) absl::SleepFor(absl::Milliseconds(200));
    arrived++;
    ASSERT_TRUE(comm.Barrier().ok());
    EXPECT_EQ(arrived.load(), size) << "rank " << rank;
  });
}

TEST_P(CollectiveTest, ZeroCountIsANoOpWithNullPointers) {
  const int size = GetParam();
  Comms comms = MakeGroup(size);
  ASSERT_EQ(comms.size(), static_cast<size_t>(size));
  OnEveryRank(comms, [&](int rank, Communicator& comm) {
    EXPECT_TRUE(comm.AllReduceSum(nullptr, 0).ok());
    EXPECT_TRUE(comm.AllGather(nullptr, 0, nullptr).ok());
    EXPECT_TRUE(comm.Gather(nullptr, 0, nullptr, 0).ok());
    EXPECT_TRUE(comm.Broadcast(nullptr, 0, 0).ok());
  });
}

TEST_P(CollectiveTest, BadArgumentsAreRefusedAndTheGroupStaysUsable) {
  const int size = GetParam();
  Comms comms = MakeGroup(size);
  ASSERT_EQ(comms.size(), static_cast<size_t>(size));
  OnEveryRank(comms, [&](int rank, Communicator& comm) {
    std::vector<float> buf(4 * size, 1.0f);
    absl::Status s = comm.Gather(buf.data(), 1, buf.data(), size);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(s.message(), absl::StrCat("Gather: root ", size, " is outside [0, ", size, ")"));
    s = comm.Broadcast(buf.data(), 4, -1);
    EXPECT_EQ(s.message(), absl::StrCat("Broadcast: root -1 is outside [0, ", size, ")"));
    s = comm.AllReduceSum(nullptr, 3);
    EXPECT_EQ(s.message(), "AllReduceSum: data is null with count 3");
    s = comm.Gather(buf.data(), 2, nullptr, rank);
    EXPECT_EQ(s.message(), absl::StrCat("Gather: out is null on root ", rank, " with count 2"));
    s = comm.AllGather(buf.data() + 1, 2, buf.data());  // overlaps, not its slot
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(s.message(), "AllGather: in overlaps out")) << s;
    // Nothing went on the wire: the next collective still lines up.
    float x = static_cast<float>(rank);
    ASSERT_TRUE(comm.AllReduceSum(&x, 1).ok());
    EXPECT_EQ(x, static_cast<float>(size * (size - 1) / 2));
  });
}

INSTANTIATE_TEST_SUITE_P(Sizes, CollectiveTest, ::testing::Values(1, 2, 3, 4),
                         [](const ::testing::TestParamInfo<int>& info) { return absl::StrCat("size", info.param); });

TEST(GlooCommunicatorTest, AllReduceSumLargerThanOneChunk) {
  // More than the 4Mi floats AllReduceSum gathers per round.
  constexpr size_t kCount = (size_t{4} << 20) + 7;
  Comms comms = MakeGroup(2);
  ASSERT_EQ(comms.size(), 2u);
  OnEveryRank(comms, [&](int rank, Communicator& comm) {
    std::vector<float> data(kCount);
    for (size_t i = 0; i < kCount; ++i) data[i] = static_cast<float>((i % 1000) + rank * 1000);
    ASSERT_TRUE(comm.AllReduceSum(data.data(), kCount).ok());
    for (size_t i = 0; i < kCount; ++i) {
      ASSERT_EQ(data[i], static_cast<float>(2 * (i % 1000) + 1000)) << "index " << i;
    }
  });
}

TEST(GlooCommunicatorTest, RendezvousTimesOutWhenARankNeverArrives) {
  InMemoryKeyValueStore store;
  const GlooOptions options = Options(absl::Seconds(2));
  const absl::Time start = absl::Now();
  auto joined = Join(store, 3, {0, 1}, options);  // rank 2 never comes
  const absl::Duration took = absl::Now() - start;
  for (int r : {0, 1}) {
    ASSERT_FALSE(joined[r].ok()) << "rank " << r;
    EXPECT_EQ(joined[r].status().code(), absl::StatusCode::kDeadlineExceeded) << joined[r].status();
    EXPECT_TRUE(absl::StrContains(joined[r].status().message(), absl::StrCat("rank ", r, " of 3")))
        << joined[r].status();
    EXPECT_TRUE(absl::StrContains(joined[r].status().message(),
                                  absl::StrCat("key '", options.prefix, "/2' not in the store within the 2s")))
        << joined[r].status();
  }
  EXPECT_LT(took, absl::Seconds(4));
}

// Rank 1 leaves after the rendezvous: the others get an error within the timeout,
// and the group stays refused afterwards.
TEST(GlooCommunicatorTest, DeadPeerGivesAnErrorNotAHang) {
  Comms comms = MakeGroup(3, absl::Seconds(2));
  ASSERT_EQ(comms.size(), 3u);
  comms[1].reset();
  OnThreads({0, 2}, [&](int rank) {
    std::vector<float> data = Tagged(rank, 64);
    const absl::Time start = absl::Now();
    absl::Status s = comms[rank]->AllReduceSum(data.data(), data.size());
    const absl::Duration took = absl::Now() - start;
    ASSERT_FALSE(s.ok()) << "rank " << rank;
    EXPECT_TRUE(s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), absl::StrCat("Gloo AllReduceSum on rank ", rank, " of 3"))) << s;
    EXPECT_LT(took, absl::Seconds(4)) << s;
    s = comms[rank]->Barrier();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "unusable after an earlier failure")) << s;
  });
}

// Rank 1 stays connected but never calls: the other side times out.
TEST(GlooCommunicatorTest, HungPeerTimesOut) {
  Comms comms = MakeGroup(2, absl::Seconds(1));
  ASSERT_EQ(comms.size(), 2u);
  const absl::Time start = absl::Now();
  absl::Status s = comms[0]->Barrier();
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "Gloo Barrier on rank 0 of 2")) << s;
  EXPECT_GE(took, absl::Milliseconds(900));
  EXPECT_LT(took, absl::Seconds(3));
}

// A rank that rejoins under a dead group's prefix finds that group's addresses:
// it must fail within the timeout (refused, or no peer connecting), not hang.
TEST(GlooCommunicatorTest, StaleAddressesGiveAnErrorWithinTheTimeout) {
  InMemoryKeyValueStore store;
  const GlooOptions options = Options(absl::Seconds(1));
  {
    auto joined = Join(store, 2, {0, 1}, options);
    for (auto& c : joined) ASSERT_TRUE(c.ok()) << c.status();
  }  // the group is gone; its keys stay
  const absl::Time start = absl::Now();
  absl::Status s = CreateGlooCommunicator(store, 0, 2, options).status();
  const absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "Gloo rendezvous of rank 0 of 2")) << s;
  EXPECT_LT(took, absl::Seconds(2)) << s;
}

TEST(GlooCommunicatorTest, FreshPrefixIgnoresAnEarlierGroupsKeys) {
  InMemoryKeyValueStore store;
  GlooOptions options = Options(absl::Seconds(10));
  for (int incarnation = 0; incarnation < 2; ++incarnation) {
    options.prefix = absl::StrCat("restart", incarnation);
    auto joined = Join(store, 2, {0, 1}, options);
    Comms comms;
    for (auto& c : joined) {
      ASSERT_TRUE(c.ok()) << c.status();
      comms.push_back(std::move(*c));
    }
    OnEveryRank(comms, [&](int rank, Communicator& comm) {
      float x = static_cast<float>(rank + 1);
      ASSERT_TRUE(comm.AllReduceSum(&x, 1).ok());
      EXPECT_EQ(x, 3.0f);
    });
  }
}

TEST(GlooCommunicatorTest, RefusesBadArguments) {
  InMemoryKeyValueStore store;
  GlooOptions options;
  EXPECT_EQ(CreateGlooCommunicator(store, 2, 2, options).status().message(),
            "CreateGlooCommunicator: rank 2 is outside [0, 2)");
  EXPECT_EQ(CreateGlooCommunicator(store, 0, 0, options).status().message(), "CreateGlooCommunicator: size 0 < 1");
  options.timeout = absl::ZeroDuration();
  EXPECT_EQ(CreateGlooCommunicator(store, 0, 2, options).status().message(),
            "CreateGlooCommunicator: timeout 0 must be finite and at least 1ms");
  options = GlooOptions();
  options.hostname = "192.0.2.1";  // TEST-NET-1: numeric (no DNS), on no local interface
  absl::Status s = CreateGlooCommunicator(store, 0, 2, options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "cannot listen on hostname '192.0.2.1'")) << s;
}

TEST(GlooCommunicatorTest, SizeOneNeedsNoPeers) {
  InMemoryKeyValueStore store;
  auto comm = CreateGlooCommunicator(store, 0, 1, Options(absl::Seconds(1)));
  ASSERT_TRUE(comm.ok()) << comm.status();
  float x = 5.0f;
  EXPECT_TRUE((*comm)->AllReduceSum(&x, 1).ok());
  EXPECT_EQ(x, 5.0f);
}

TEST(LocalCommunicatorTest, CollectivesAreCopiesOrNoOps) {
  std::unique_ptr<Communicator> comm = MakeLocalCommunicator();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  std::vector<float> in = Tagged(0, 6);
  std::vector<float> data = in;
  ASSERT_TRUE(comm->AllReduceSum(data.data(), data.size()).ok());
  EXPECT_EQ(data, in);
  std::vector<float> out(6, std::nanf(""));
  ASSERT_TRUE(comm->AllGather(in.data(), 6, out.data()).ok());
  EXPECT_EQ(out, in);
  std::fill(out.begin(), out.end(), std::nanf(""));
  ASSERT_TRUE(comm->Gather(in.data(), 6, out.data(), 0).ok());
  EXPECT_EQ(out, in);
  ASSERT_TRUE(comm->Broadcast(data.data(), 24, 0).ok());
  EXPECT_EQ(data, in);
  EXPECT_TRUE(comm->Barrier().ok());
  EXPECT_EQ(comm->Gather(in.data(), 6, out.data(), 1).message(), "Gather: root 1 is outside [0, 1)");
  EXPECT_EQ(comm->Broadcast(data.data(), 24, 1).code(), absl::StatusCode::kInvalidArgument);
}

TEST(KeyValueStoreTest, GetTimesOutNamingTheKey) {
  InMemoryKeyValueStore store;
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> v = store.Get("group/7", absl::Milliseconds(100));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(100));
  ASSERT_EQ(v.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(v.status().message(), "key-value store: key 'group/7' not set within 100ms");
  EXPECT_EQ(store.Get("group/7", absl::ZeroDuration()).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(store.Get("group/7", absl::Seconds(-1)).status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(KeyValueStoreTest, GetWaitsForALaterSet) {
  InMemoryKeyValueStore store;
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_TRUE(store.Set("other", "x").ok());
    ASSERT_TRUE(store.Set("k", std::string("a\0b", 3)).ok());
  });
  absl::StatusOr<std::string> v = store.Get("k", absl::Seconds(10));
  setter.join();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, std::string("a\0b", 3));
  ASSERT_TRUE(store.Set("k", "new").ok());
  EXPECT_EQ(*store.Get("k", absl::ZeroDuration()), "new");
}

}  // namespace
}  // namespace mla
