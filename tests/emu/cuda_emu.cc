#include "tests/emu/cuda_emu.h"

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "kernels/cpu/float_convert.h"

// Fiber switch (x86-64 System V): saves the callee-saved registers on the
// current stack, stores the stack pointer in *from_sp, loads to_sp, restores
// that fiber's registers and returns into it. No signal-mask syscall (as
// swapcontext makes): the emulator switches millions of times per test.
extern "C" void mla_emu_switch(void** from_sp, void* to_sp);
asm(R"(
  .pushsection .text
  .globl mla_emu_switch
  .type mla_emu_switch, @function
mla_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size mla_emu_switch, .-mla_emu_switch
  .popsection
)");

// Built with AddressSanitizer (the *_asan tests), every stack switch is
// announced to it, so that it tracks which stack is live (otherwise it takes
// a fiber's frames for a wild stack and reports nonsense).
#if defined(__SANITIZE_ADDRESS__)
#define MLA_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MLA_EMU_ASAN 1
#endif
#endif
#if defined(MLA_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace mla::emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;  // per fiber: kernel frames are a few KiB

// The 128-byte swizzle (wgmma.cuh's comment), as TMA writes it and wgmma
// reads it: chunk c of row r of a 1024-byte atom at chunk c ^ r.
uint32_t Swizzle128(uint32_t offset) { return offset ^ (((offset >> 7) & 7) << 4); }

struct Copy {
  unsigned char* dst;
  const unsigned char* src;
  int src_bytes;
};

// A wgmma operand's descriptor, decoded: byte offsets in the dynamic shared
// memory, and whether it is 128-byte swizzled.
struct WgmmaOperand {
  uint32_t start, lbo, sbo;
  bool sw128;
};

// A queued wgmma of one thread: its accumulators (n / 2 floats, in the
// thread's frame: a kernel that waits before they go out of scope, as it must
// on the hardware, keeps them valid) and what to compute into them.
struct WgmmaOp {
  float* d;
  int n;
  WgmmaOperand a, b;
  bool trans_a, trans_b, accumulate;
};

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  std::unique_ptr<char[]> stack;
  Dim3 tid;
  bool done = false;
  std::vector<Copy> pending;                      // cp.async not yet committed
  std::deque<std::vector<Copy>> groups;           // committed, not yet landed
  std::vector<WgmmaOp> wgmma_open;                // wgmma issued, not yet committed
  std::deque<std::vector<WgmmaOp>> wgmma_groups;  // committed, not yet run
};

struct Barrier {
  int arrived = 0;
  uint64_t phase = 0;
};

struct Warp {
  Barrier barrier;
  uint32_t words[32][8];
};

struct BulkCopy {
  unsigned char* dst;
  const unsigned char* src;
  int bytes;
};

// An mbarrier: arrivals left in the current phase, its transaction count
// (bytes expected less bytes landed), the phase number, and the bulk copies
// queued on it that have not landed.
struct Mbar {
  int count = 0;
  int pending = 0;
  int64_t tx = 0;
  uint64_t phase = 0;
  std::vector<BulkCopy> queued;
};

struct Block {
  std::map<const unsigned char*, Mbar> mbars;  // by address in shared memory
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier block_barrier;
  void* main_sp = nullptr;
  const void* main_stack = nullptr;  // the launching thread's stack (for AddressSanitizer)
  size_t main_stack_bytes = 0;
  int current = 0;
  int live = 0;
  uint64_t progress = 0;  // barrier arrivals and fiber exits
  const std::function<void()>* kernel = nullptr;
  std::vector<unsigned char> shared;
};

// Per host thread: each thread that launches runs its own grids.
thread_local Block* g_block = nullptr;
thread_local Schedule g_schedule = Schedule::kForward;
thread_local bool g_copies_land_at_issue = false;  // SetCopiesLandAtIssue
thread_local std::mt19937_64 g_rng;
thread_local Dim3 g_block_idx, g_block_dim, g_grid_dim;

}  // namespace

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "cuda_emu: %s (block %u,%u thread %u)\n", what, g_block_idx.x, g_block_idx.y,
               g_block ? g_block->fibers[g_block->current].tid.x : 0u);
  std::abort();
}

namespace {

// mla_emu_switch, announced to AddressSanitizer where it is built in: `to_stack`
// is the bottom of the stack switched to (its lowest address), `dying` says the
// current fiber never runs again.
void Switch(void** from_sp, void* to_sp, [[maybe_unused]] const void* to_stack,
            [[maybe_unused]] size_t to_stack_bytes, [[maybe_unused]] bool dying) {
#if defined(MLA_EMU_ASAN)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(dying ? nullptr : &fake_stack, to_stack, to_stack_bytes);
  mla_emu_switch(from_sp, to_sp);
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
  mla_emu_switch(from_sp, to_sp);
#endif
}

// Switches to the first live fiber of candidates pick(0), pick(1), ...,
// pick(count - 1); stays when that is the current one, or when none is live.
template <typename Pick>
void SwitchToFirstLive(int count, const Pick& pick) {
  Block& b = *g_block;
  const int me = b.current;
  for (int k = 0; k < count; ++k) {
    const int next = pick(k);
    if (b.fibers[next].done) continue;
    if (next == me) return;
    b.current = next;
    Switch(&b.fibers[me].sp, b.fibers[next].sp, b.fibers[next].stack.get(), kStackBytes, false);
    return;
  }
}

// Switches to the next live fiber after the current one (round robin); with
// `in_warp` under Schedule::kWarpFirst, to the next live lane of its warp.
void Yield(bool in_warp = false) {
  Block& b = *g_block;
  const int n = static_cast<int>(b.fibers.size()), me = b.current;
  if (in_warp && g_schedule == Schedule::kWarpFirst) {
    const int base = me - me % 32, lanes = std::min(32, n - base);
    SwitchToFirstLive(lanes, [&](int k) { return base + (me - base + k + 1) % lanes; });
    return;
  }
  if (g_schedule == Schedule::kRandom && b.live > 0) {
    // Random: any live fiber, each as likely. (Searching from a random start
    // for the first live one favoured the fiber after a run of finished
    // ones: where a warp still shuffled after the others had exited, its
    // lane 0 got the processor back so often while waiting that its stalls
    // passed WaitFor's limit before the lane it waited for ran.)
    int k = static_cast<int>(g_rng() % static_cast<uint64_t>(b.live));
    int next = 0;
    for (; next < n; ++next) {
      if (!b.fibers[next].done && k-- == 0) break;
    }
    SwitchToFirstLive(1, [&](int) { return next; });
    return;
  }
  const int step = g_schedule == Schedule::kReverse ? n - 1 : 1;
  SwitchToFirstLive(n, [&](int k) { return (me + (k + 1) * step) % n; });
}

// Switches to the lowest-numbered live fiber (kWarpFirst after a block-wide
// barrier); this one resumes in its turn.
void YieldToFirst() {
  SwitchToFirstLive(static_cast<int>(g_block->fibers.size()), [](int k) { return k; });
}

// Yields until done() holds. A waiting fiber that gets the processor back
// twice around the block with no progress (a barrier arrival, an mbarrier
// arrival, a fiber exit) anywhere in between is in a deadlock: every live
// fiber waits. Then `deadlock` is the failure.
template <typename Done>
void WaitFor(const Done& done, const char* deadlock, bool in_warp = false) {
  Block& b = *g_block;
  const long stall_limit = 2 * static_cast<long>(b.fibers.size());
  long stalled = 0;
  uint64_t seen = b.progress;
  while (!done()) {
    Yield(in_warp);
    if (b.progress != seen) {
      seen = b.progress;
      stalled = 0;
    } else if (++stalled > stall_limit) {
      Fail(deadlock);
    }
  }
}

// Waits until `participants` fibers have arrived (`in_warp`: a warp's lanes,
// for Yield's kWarpFirst).
void Arrive(Barrier& bar, int participants, bool in_warp = false) {
  ++g_block->progress;
  const uint64_t phase = bar.phase;
  if (++bar.arrived == participants) {
    bar.arrived = 0;
    ++bar.phase;
    // kWarpFirst: a completed block-wide barrier goes on from the lowest
    // thread (not the last arrival), so warp 0 runs ahead of the others.
    if (!in_warp && g_schedule == Schedule::kWarpFirst) YieldToFirst();
    return;
  }
  WaitFor([&] { return bar.phase != phase; },
          "a barrier can never complete (a thread exited early or diverged at a barrier)", in_warp);
}

void Land(const std::vector<Copy>& group) {
  for (const Copy& c : group) {
    std::memset(c.dst, 0, 16);  // src_bytes < 16 zero-fills the rest
    std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
  }
}

// A thread's asynchronous operations in commit groups (cp.async, wgmma): the
// open ones become a group at a commit; a wait retires (runs `retire` on, in
// commit order) every group but the newest `keep`.
template <typename Op>
void CommitGroup(std::vector<Op>& open, std::deque<std::vector<Op>>& groups) {
  groups.push_back(std::move(open));
  open.clear();
}
template <typename Op, typename Retire>
void RetireGroups(std::deque<std::vector<Op>>& groups, int keep, const Retire& retire) {
  while (static_cast<int>(groups.size()) > keep) {
    retire(groups.front());
    groups.pop_front();
  }
}

void FiberEntry() {
  Block& b = *g_block;
#if defined(MLA_EMU_ASAN)
  // Entered by a switch (from the launching thread for the block's first
  // fiber, whose stack is kept for the way back).
  const void* from_stack = nullptr;
  size_t from_bytes = 0;
  __sanitizer_finish_switch_fiber(nullptr, &from_stack, &from_bytes);
  if (b.main_stack == nullptr) {
    b.main_stack = from_stack;
    b.main_stack_bytes = from_bytes;
  }
#endif
  (*b.kernel)();
  Fiber& me = b.fibers[b.current];
  // The hardware lands a finished thread's copies anyway.
  CpAsyncWaitGroups(0);
  Land(me.pending);
  // But an mma writes registers: after the thread's exit nothing could read
  // them, and a kernel that never waits reads its accumulators before they
  // are written (or leaves the mma reading shared memory the next block owns).
  if (!me.wgmma_open.empty() || !me.wgmma_groups.empty()) {
    Fail("a thread finished with wgmma ops never waited for (committed or not)");
  }
  me.done = true;
  --b.live;
  ++b.progress;
  if (b.live == 0) {
    void* unused;
    Switch(&unused, b.main_sp, b.main_stack, b.main_stack_bytes, true);  // never resumed
  }
  // Never returns here: this fiber is done. (kWarpFirst: on to the lowest
  // live thread, so the rest of this warp finishes before the next warp runs.)
  if (g_schedule == Schedule::kWarpFirst) {
    YieldToFirst();
  } else {
    Yield();
  }
  Fail("a finished fiber was resumed");
}

}  // namespace

void SetSchedule(Schedule s, uint64_t seed) {
  g_schedule = s;
  g_rng.seed(seed);
}

void SetCopiesLandAtIssue(bool at_issue) { g_copies_land_at_issue = at_issue; }

Dim3& ThreadIdx() { return g_block->fibers[g_block->current].tid; }
Dim3& BlockIdx() { return g_block_idx; }
Dim3& BlockDim() { return g_block_dim; }
Dim3& GridDim() { return g_grid_dim; }

void SyncThreads() { Arrive(g_block->block_barrier, static_cast<int>(g_block->fibers.size())); }

void SyncWarp() { Arrive(g_block->warps[ThreadIdx().x / 32].barrier, 32, true); }

const uint32_t (*WarpPublish(const uint32_t* words, int n))[8] {
  Block& b = *g_block;
  const unsigned t = ThreadIdx().x;
  Warp& w = b.warps[t / 32];
  std::memcpy(w.words[t % 32], words, sizeof(uint32_t) * static_cast<size_t>(n));
  Arrive(w.barrier, 32, true);  // everyone has published
  return w.words;
}

void WarpRelease() {
  Arrive(g_block->warps[ThreadIdx().x / 32].barrier, 32, true);  // everyone has read: the words may be reused
}

unsigned char* SharedBase() { return g_block->shared.data(); }
size_t SharedBytes() { return g_block->shared.size() - 16; }

void CpAsyncQueue(unsigned char* dst, const void* src, int src_bytes) {
  if (src_bytes < 0 || src_bytes > 16) Fail("cp.async with a source size outside [0, 16]");
  if (dst < SharedBase() || dst + 16 > SharedBase() + SharedBytes()) {
    Fail("cp.async outside the block's shared memory");
  }
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % 16 != 0)) {
    Fail("cp.async of 16 bytes not 16-byte aligned");
  }
  const Copy copy{dst, static_cast<const unsigned char*>(src), src_bytes};
  if (g_copies_land_at_issue) {
    Land({copy});  // its group is then empty: committing and waiting still count it
  } else {
    g_block->fibers[g_block->current].pending.push_back(copy);
  }
}

namespace {

void CheckMbarAddress(const unsigned char* bar, const char* op) {
  if (bar < SharedBase() || bar + 8 > SharedBase() + SharedBytes() || reinterpret_cast<uintptr_t>(bar) % 8 != 0) {
    std::fprintf(stderr, "cuda_emu: %s\n", op);
    Fail("an mbarrier outside the block's shared memory or not 8-byte aligned");
  }
}

Mbar& FindMbar(unsigned char* bar, const char* op) {
  CheckMbarAddress(bar, op);
  auto it = g_block->mbars.find(bar);
  if (it == g_block->mbars.end()) {
    std::fprintf(stderr, "cuda_emu: %s on an uninitialised mbarrier\n", op);
    Fail("mbarrier not initialised");
  }
  return it->second;
}

// A bulk copy lands: its bytes, and their count off the barrier's expected bytes.
void LandBulk(Mbar& m, const BulkCopy& c) {
  std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
  m.tx -= c.bytes;
}

// The phase completes once every arrival is in and every expected byte landed.
void MaybeCompletePhase(Mbar& m) {
  if (m.pending == 0 && m.tx == 0) {
    ++m.phase;
    m.pending = m.count;
  }
}

}  // namespace

void MbarInit(unsigned char* bar, int count) {
  CheckMbarAddress(bar, "mbarrier.init");
  if (count < 1) Fail("mbarrier.init with a count below 1");
  Mbar& m = g_block->mbars[bar];
  if (!m.queued.empty()) Fail("mbarrier.init while bulk copies are in flight on it");
  m = Mbar{};
  m.count = m.pending = count;
}

void MbarArriveExpectTx(unsigned char* bar, int bytes) {
  Mbar& m = FindMbar(bar, "mbarrier.arrive.expect_tx");
  if (bytes < 0) Fail("mbarrier.arrive.expect_tx with a negative byte count");
  if (m.pending == 0) Fail("mbarrier.arrive.expect_tx beyond the phase's arrival count");
  m.tx += bytes;
  --m.pending;
  ++g_block->progress;  // a waiting thread may now see its phase complete
  MaybeCompletePhase(m);
}

void BulkCopyQueue(unsigned char* dst, const void* src, int bytes, unsigned char* bar) {
  Mbar& m = FindMbar(bar, "cp.async.bulk");
  if (bytes <= 0 || bytes % 16 != 0) Fail("cp.async.bulk of a size that is not a positive multiple of 16");
  if (dst < SharedBase() || dst + bytes > SharedBase() + SharedBytes()) Fail("cp.async.bulk outside shared memory");
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    Fail("cp.async.bulk addresses not 16-byte aligned");
  }
  const BulkCopy copy{dst, static_cast<const unsigned char*>(src), bytes};
  if (g_copies_land_at_issue) {
    LandBulk(m, copy);  // completes before (or after) its expect_tx, as the hardware allows
    ++g_block->progress;
    MaybeCompletePhase(m);
  } else {
    m.queued.push_back(copy);
  }
}

void BulkTensorQueue(unsigned char* dst, const void* map_ptr, int x, int y, unsigned char* bar) {
  TensorMap2d map;
  std::memcpy(&map, map_ptr, sizeof(map));
  if (map.magic != TensorMap2d::kMagic) Fail("cp.async.bulk.tensor with a tensor map cuTensorMapEncodeTiled did not make");
  const uint32_t row_bytes = map.box[0] * map.element_bytes;
  const uintptr_t offset = static_cast<uintptr_t>(dst - SharedBase());
  if (map.swizzle_bytes == 128 && (row_bytes != 128 || offset % 1024 != 0)) {
    Fail("cp.async.bulk.tensor with 128-byte swizzle: box rows of 128 bytes into 1024-byte aligned shared memory");
  }
  if (offset % 128 != 0) Fail("cp.async.bulk.tensor into shared memory not 128-byte aligned");
  alignas(16) static const unsigned char kZeros[16] = {};
  const uint32_t per_chunk = 16 / map.element_bytes;  // elements a 16-byte chunk
  for (uint32_t r = 0; r < map.box[1]; ++r) {
    for (uint32_t c = 0; c < row_bytes / 16; ++c) {
      uint32_t at = r * row_bytes + c * 16;
      if (map.swizzle_bytes == 128) at = Swizzle128(at);
      const int64_t gx = static_cast<int64_t>(x) + c * per_chunk, gy = static_cast<int64_t>(y) + r;
      const bool inside = gx >= 0 && gy >= 0 && static_cast<uint64_t>(gx) + per_chunk <= map.dims[0] &&
                          static_cast<uint64_t>(gy) < map.dims[1];
      const unsigned char* src =
          inside ? map.address + static_cast<uint64_t>(gy) * map.row_stride + static_cast<uint64_t>(gx) * map.element_bytes
                 : kZeros;
      BulkCopyQueue(dst + at, src, 16, bar);
    }
  }
}

void MbarWaitParity(unsigned char* bar, int parity) {
  WaitFor(
      [&] {
        Mbar& m = FindMbar(bar, "mbarrier.try_wait.parity");
        // The copies queued so far land now (a real wait would see them land).
        for (const BulkCopy& c : m.queued) LandBulk(m, c);
        m.queued.clear();
        MaybeCompletePhase(m);
        // Done when the phase of this parity has completed: the current
        // phase number's parity differs. Else an arrival may still come.
        return static_cast<int>(m.phase & 1) != (parity & 1);
      },
      "an mbarrier phase can never complete (no arrival or expected bytes that never land)");
}

void CpAsyncCommitGroup() {
  Fiber& f = g_block->fibers[g_block->current];
  CommitGroup(f.pending, f.groups);
}

void CpAsyncWaitGroups(int keep) {
  Fiber& f = g_block->fibers[g_block->current];
  RetireGroups(f.groups, keep, [](const std::vector<Copy>& group) { Land(group); });
}

namespace {

// The matrix descriptor (PTX ISA, "Matrix Descriptor Format"): bits 0-13
// start >> 4, 16-29 LBO >> 4, 32-45 SBO >> 4, 49-51 base offset, 62-63
// swizzle mode (0 none, 1 128-byte; 64- and 32-byte are not modelled); the
// other bits are reserved. Decoded here on its own, not through wgmma.cuh's
// packer, so a packer bug shows as a wrong result.
WgmmaOperand DecodeWgmmaDesc(uint64_t desc, const char* operand) {
  constexpr uint64_t kField = 0x3FFF;
  constexpr uint64_t kKnown = kField | (kField << 16) | (kField << 32) | (uint64_t{7} << 49) | (uint64_t{3} << 62);
  const uint32_t start = static_cast<uint32_t>(desc & kField) << 4;
  const bool sw128 = (desc >> 62) == 1;
  const char* bad = (desc >> 62) > 1          ? "wgmma descriptor with a 64- or 32-byte swizzle (not modelled)"
                    : ((desc >> 49) & 7) != 0 ? "wgmma descriptor with a non-zero base offset"
                    : (desc & ~kKnown) != 0   ? "wgmma descriptor with reserved bits set"
                    : sw128 && start % 1024 >= 128
                        ? "128-byte swizzled wgmma operand starting past the first row of its 1024-byte atom"
                        : nullptr;
  if (bad != nullptr) {
    std::fprintf(stderr, "cuda_emu: wgmma operand %s, descriptor 0x%016llx\n", operand,
                 static_cast<unsigned long long>(desc));
    Fail(bad);
  }
  return {start, static_cast<uint32_t>((desc >> 16) & kField) << 4, static_cast<uint32_t>((desc >> 32) & kField) << 4,
          sw128};
}

// Byte offsets of the layouts (wgmma.cuh's comment). No swizzle: core
// matrices of 8 rows x 16 bytes, LBO stepping along K and SBO along M or N.
// 128-byte swizzle: rows of 128 bytes, SBO stepping 8 rows (of M or N for
// K-major, of K for MN-major), LBO 64 of M or N (MN-major). K-major: element
// (row of M or N, k); MN-major: element (k, n).
uint32_t KMajorOffset(const WgmmaOperand& o, int row, int k) {
  if (o.sw128) {
    return Swizzle128(o.start + static_cast<uint32_t>(row / 8) * o.sbo + static_cast<uint32_t>((row % 8) * 128 + k * 2));
  }
  return o.start + static_cast<uint32_t>(row / 8) * o.sbo + static_cast<uint32_t>(k / 8) * o.lbo +
         static_cast<uint32_t>((row % 8) * 16 + (k % 8) * 2);
}
uint32_t MnMajorOffset(const WgmmaOperand& o, int k, int n) {
  if (o.sw128) {
    return Swizzle128(o.start + static_cast<uint32_t>(k / 8) * o.sbo + static_cast<uint32_t>(n / 64) * o.lbo +
                      static_cast<uint32_t>((k % 8) * 128 + (n % 64) * 2));
  }
  return o.start + static_cast<uint32_t>(n / 8) * o.sbo + static_cast<uint32_t>(k / 8) * o.lbo +
         static_cast<uint32_t>((k % 8) * 16 + (n % 8) * 2);
}
uint32_t WgmmaAOffset(const WgmmaOp& op, int row, int k) {
  return op.trans_a ? MnMajorOffset(op.a, k, row) : KMajorOffset(op.a, row, k);
}
uint32_t WgmmaBOffset(const WgmmaOp& op, int k, int n) {
  return op.trans_b ? MnMajorOffset(op.b, k, n) : KMajorOffset(op.b, n, k);
}

// Thread i of the warpgroup computes its own fragment (wgmma.cuh's comment):
// w = i / 32, g = (i % 32) / 4, t = i % 4; d[4j + e] is row 16 w + g (+ 8 for
// e >= 2), column 8 j + 2 t + e % 2. Products of BF16 values are exact in
// FP32; they are summed over k in order, then added to D (or to 0: D's old
// value, even NaN, is ignored).
void RunWgmma(const WgmmaOp& op) {
  const unsigned char* shared = SharedBase();
  auto load = [&](uint32_t offset) {
    uint16_t bits;
    std::memcpy(&bits, shared + offset, sizeof(bits));
    return cpu::Bf16ToFloat(bits);
  };
  const int i = static_cast<int>(ThreadIdx().x % 128), w = i / 32, g = (i % 32) / 4, t = i % 4;
  for (int j = 0; j < op.n / 8; ++j) {
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * w + g + (e >= 2 ? 8 : 0), col = 8 * j + 2 * t + e % 2;
      float sum = 0.0f;
      for (int k = 0; k < 16; ++k) sum += load(WgmmaAOffset(op, row, k)) * load(WgmmaBOffset(op, k, col));
      float& d = op.d[4 * j + e];
      d = (op.accumulate ? d : 0.0f) + sum;
    }
  }
}

}  // namespace

void WgmmaQueue(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool trans_a, bool trans_b, bool accumulate) {
  // A warpgroup is 4 consecutive warps from a multiple of 128 threads: a
  // block with a partial one cannot issue wgmma there.
  if (BlockDim().x % 128 != 0) Fail("wgmma needs threads per block in whole warpgroups (a multiple of 128)");
  if (n < 8 || n > 256 || n % 8 != 0) Fail("wgmma m64nNk16 with N not a multiple of 8 in [8, 256]");
  const WgmmaOp op{d, n, DecodeWgmmaDesc(desc_a, "A"), DecodeWgmmaDesc(desc_b, "B"), trans_a, trans_b, accumulate};
  // Checked whole (the warpgroup reads all of A[64 x 16] and B[16 x N]) and
  // once: the offsets only grow with each index, so the last element of each
  // operand is the farthest, and the shared memory's size is fixed for the block.
  // (A swizzled operand's last element may land anywhere in its atom: the atom's end.)
  auto end = [](const WgmmaOperand& o, uint32_t last) { return o.sw128 ? (last | 1023u) + 1 : last + 2; };
  const uint32_t a_end = end(op.a, WgmmaAOffset(op, 63, 15)), b_end = end(op.b, WgmmaBOffset(op, 15, n - 1));
  if (a_end > SharedBytes() || b_end > SharedBytes()) {
    std::fprintf(stderr, "cuda_emu: wgmma A at %u..%u, B at %u..%u, dynamic shared memory %zu bytes\n",
                 op.a.start, a_end, op.b.start, b_end, SharedBytes());
    Fail("wgmma operand outside the dynamic shared memory");
  }
  g_block->fibers[g_block->current].wgmma_open.push_back(op);
}

void WgmmaCommitGroup() {
  Fiber& f = g_block->fibers[g_block->current];
  CommitGroup(f.wgmma_open, f.wgmma_groups);
}

// Uncommitted mmas belong to no group: no wait retires them.
void WgmmaWaitGroups(int keep) {
  Fiber& f = g_block->fibers[g_block->current];
  RetireGroups(f.wgmma_groups, keep, [](const std::vector<WgmmaOp>& group) {
    for (const WgmmaOp& op : group) RunWgmma(op);
  });
}

namespace {

// A fresh fiber's stack, laid out as mla_emu_switch leaves a switched-out one:
// six zero registers, then the return address FiberEntry, then a null fake
// return address for FiberEntry itself (which never returns), so that
// FiberEntry starts with rsp % 16 == 8 as after a call.
void* InitialStack(char* stack) {
#if defined(MLA_EMU_ASAN)
  // A fiber's frames never return: their redzones from the last block it ran
  // are still marked on this memory.
  ASAN_UNPOISON_MEMORY_REGION(stack, kStackBytes);
#endif
  auto top = reinterpret_cast<uintptr_t>(stack + kStackBytes) & ~uintptr_t{15};
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;
  *--sp = reinterpret_cast<void*>(&FiberEntry);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  return sp;
}

// One block: a fiber per thread from the kernel's start, run until all are done.
[[gnu::noinline]] void RunBlock(Block& b, Dim3 idx, size_t shared_bytes) {
  g_block_idx = idx;
#if defined(MLA_EMU_ASAN)
  if (!b.shared.empty()) ASAN_UNPOISON_MEMORY_REGION(b.shared.data(), b.shared.size());
#endif
  b.shared.assign(shared_bytes + 16, 0xff);  // poison: NaN as BF16 and FP32
#if defined(MLA_EMU_ASAN)
  // The 16 bytes past the block's dynamic shared memory are not the kernel's.
  ASAN_POISON_MEMORY_REGION(b.shared.data() + shared_bytes, 16);
#endif
  b.block_barrier = Barrier{};
  b.mbars.clear();
  for (Warp& w : b.warps) w.barrier = Barrier{};
  const int threads = static_cast<int>(b.fibers.size());
  for (int i = 0; i < threads; ++i) {
    Fiber& f = b.fibers[static_cast<size_t>(i)];
    f.tid = Dim3{static_cast<unsigned>(i), 0, 0};
    f.done = false;
    f.pending.clear();
    f.groups.clear();
    f.wgmma_open.clear();
    f.wgmma_groups.clear();
    f.sp = InitialStack(f.stack.get());
  }
  b.live = threads;
  b.current = g_schedule == Schedule::kForward || g_schedule == Schedule::kWarpFirst ? 0 : threads - 1;
  b.main_stack = nullptr;  // learnt by the first fiber
  Fiber& first = b.fibers[static_cast<size_t>(b.current)];
  Switch(&b.main_sp, first.sp, first.stack.get(), kStackBytes, false);  // back when every fiber is done
  // On a GPU a bulk copy would still be writing the finished block's shared
  // memory (possibly the next block's by then).
  for (const auto& [addr, m] : b.mbars) {
    if (!m.queued.empty()) Fail("the block finished with bulk copies in flight (never waited for)");
  }
}

}  // namespace

void LaunchGrid(Dim3 grid, int threads, size_t shared_bytes, const std::function<void()>& kernel) {
  if (threads <= 0 || threads % 32 != 0) Fail("threads per block must be a positive multiple of 32");
  g_grid_dim = grid;
  g_block_dim = Dim3{static_cast<unsigned>(threads), 1, 1};
  Block b;
  b.fibers.resize(static_cast<size_t>(threads));
  b.warps.resize(static_cast<size_t>(threads / 32));
  for (Fiber& f : b.fibers) f.stack.reset(new char[kStackBytes]);
  b.kernel = &kernel;
  g_block = &b;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) RunBlock(b, Dim3{x, y, z}, shared_bytes);
    }
  }
  g_block = nullptr;
}

}  // namespace mla::emu

namespace mla::cuda::detail {
namespace {

uint16_t Half(uint32_t word, int which) { return static_cast<uint16_t>(which == 0 ? word & 0xffff : word >> 16); }

uint16_t LoadBf16(uint32_t addr) {
  if (addr + 2 > ::mla::emu::SharedBytes()) ::mla::emu::Fail("ldmatrix reads past the dynamic shared memory");
  uint16_t v;
  std::memcpy(&v, ::mla::emu::SharedBase() + addr, sizeof(v));
  return v;
}

uint32_t Pack(uint16_t lo, uint16_t hi) { return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16); }

// ldmatrix: matrix i's row r starts at the address lane 8i + r gave. Without
// .trans, lane l gets row l / 4, elements 2 (l % 4) and + 1; with .trans, the
// same of the transposed matrix: column l / 4, rows 2 (l % 4) and + 1.
void LdMatrix(uint32_t* r, int count, bool trans, uint32_t addr) {
  const int lane_id = static_cast<int>(::mla::emu::ThreadIdx().x & 31);
  if (lane_id < 8 * count && addr % 16 != 0) ::mla::emu::Fail("ldmatrix row address not 16-byte aligned");
  const uint32_t mine[1] = {addr};
  const uint32_t(*all)[8] = ::mla::emu::WarpPublish(mine, 1);
  const int lane = static_cast<int>(::mla::emu::ThreadIdx().x & 31);
  for (int i = 0; i < count; ++i) {
    if (!trans) {
      const uint32_t row = all[8 * i + lane / 4][0];
      r[i] = Pack(LoadBf16(row + 4 * (lane % 4)), LoadBf16(row + 4 * (lane % 4) + 2));
    } else {
      const uint32_t row0 = all[8 * i + 2 * (lane % 4)][0], row1 = all[8 * i + 2 * (lane % 4) + 1][0];
      r[i] = Pack(LoadBf16(row0 + 2 * (lane / 4)), LoadBf16(row1 + 2 * (lane / 4)));
    }
  }
  ::mla::emu::WarpRelease();
}

}  // namespace

// mma.m16n8k16 .row.col BF16 -> FP32 (PTX ISA fragment layouts; g = lane / 4,
// t = lane % 4): A(r, k) sits in lane (r % 8) * 4 + (k % 8) / 2, register
// (r >= 8) + 2 (k >= 8), half k % 2; B(k, n) in lane n * 4 + (k % 8) / 2,
// register b0 for k < 8 else b1, half k % 2; lane (g, t) holds D(g, 2t),
// D(g, 2t + 1), D(g + 8, 2t), D(g + 8, 2t + 1). Products are exact in FP32
// (8-bit significands); the sum runs over k in order.
void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  const uint32_t(*all)[8] = ::mla::emu::WarpPublish(mine, 6);
  auto A = [&](int r, int k) {
    return cpu::Bf16ToFloat(Half(all[(r % 8) * 4 + (k % 8) / 2][(r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2));
  };
  auto B = [&](int k, int n) { return cpu::Bf16ToFloat(Half(all[n * 4 + (k % 8) / 2][k >= 8 ? 5 : 4], k % 2)); };
  const int lane = static_cast<int>(::mla::emu::ThreadIdx().x & 31), g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e % 2);
    float sum = d[e];
    for (int k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
    d[e] = sum;
  }
  ::mla::emu::WarpRelease();
}

void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) { LdMatrix(r, 4, false, addr); }
void LdMatrixX2(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  uint32_t r[2];
  LdMatrix(r, 2, false, addr);
  r0 = r[0];
  r1 = r[1];
}
void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t addr) { LdMatrix(r, 4, true, addr); }
void LdMatrixX2Trans(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  uint32_t r[2];
  LdMatrix(r, 2, true, addr);
  r0 = r[0];
  r1 = r[1];
}

}  // namespace mla::cuda::detail
