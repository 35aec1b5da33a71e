// The scheduler of the CUDA emulator (cuda_emu.h has the model): fibers, barriers, shuffles,
// shared memory and the launch checks.
#include "cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include <c10/util/Exception.h>

// cuda_emu_switch(save, next): saves the callee-saved registers, MXCSR and the x87 control word
// on the current stack, stores the stack pointer in *save, and resumes the context whose stack
// pointer is `next`. A new fiber's stack is laid out as if it had called cuda_emu_switch from
// cuda_emu_trampoline, which calls cuda_emu_fiber_main (and never returns).
extern "C" void cuda_emu_switch(void** save, void* next);
extern "C" void cuda_emu_trampoline();
extern "C" void cuda_emu_fiber_main();
asm(R"(
  .text
  .globl cuda_emu_switch
  .type cuda_emu_switch, @function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emu_switch, .-cuda_emu_switch

  .globl cuda_emu_trampoline
  .type cuda_emu_trampoline, @function
cuda_emu_trampoline:
  call cuda_emu_fiber_main
  ud2
  .size cuda_emu_trampoline, .-cuda_emu_trampoline
)");

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer builds (build.py --sanitizer asan) tell ASan about every stack switch.
extern "C" void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
extern "C" void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
extern "C" void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
#define CUDA_EMU_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
// ThreadSanitizer builds (build.py --sanitizer tsan): every thread of a block is a TSan fiber; fibers are
// switched without synchronisation, and the barriers say what happens before what.
extern "C" void* __tsan_get_current_fiber(void);
extern "C" void* __tsan_create_fiber(unsigned flags);
extern "C" void __tsan_switch_to_fiber(void* fiber, unsigned flags);
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#define CUDA_EMU_TSAN 1
// The emulator's own bookkeeping is not the kernels' memory: not instrumented.
#define CUDA_EMU_INTERNAL __attribute__((no_sanitize_thread))
#else
#define CUDA_EMU_INTERNAL
#endif

namespace cuda_emu {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kDefaultDynamicLimit = 48 * 1024;

enum class State : uint8_t { kReady, kAtSyncthreads, kAtWarpBarrier, kDone };

struct Fiber {
  void* sp = nullptr;
  State state = State::kReady;
};

struct Launch {
  KernelBody body = nullptr;
  void* closure = nullptr;
  int threads = 0;
  std::vector<Fiber> fibers;
  void* scheduler_sp = nullptr;
  int current = -1;
  std::vector<int> ready;               // threads to run, the next at the back
  std::vector<int> at_warp;             // per warp: lanes waiting at a warp barrier
  std::vector<uint64_t> slots;          // [2][threads]: the values of a thread's even and odd shuffles
  std::vector<uint32_t> shuffles_done;  // per thread: its shuffles so far in this block
  std::vector<unsigned char> dynamic;
  bool discovery = false;                         // a run that only finds the static __shared__ arrays
  size_t static_bytes = 0;                        // their bytes
  std::vector<std::pair<void*, size_t>> statics;  // their addresses and sizes (filled with 0xff per block)
  std::string error;
  // (ThreadSanitizer) the addresses of the happens-before edges: the block's start, its
  // __syncthreads, each warp's __syncwarp (its end: join_fibers)
  char block_start = 0, syncthreads_sync = 0;
  std::vector<char> warp_sync;
};

thread_local Launch* g_launch = nullptr;
thread_local std::unordered_map<const void*, int> g_dynamic_limit;  // kernel -> bytes
// kernel -> its static __shared__ arrays (found by a discovery run): bytes, (address, size)
thread_local std::unordered_map<const void*, std::pair<size_t, std::vector<std::pair<void*, size_t>>>> g_statics;
thread_local std::vector<char*> g_stacks;  // one per thread slot
thread_local std::mt19937_64 g_rng;
thread_local const void* g_scheduler_stack = nullptr;  // (ASan builds) the OS thread's stack
thread_local size_t g_scheduler_stack_size = 0;
#ifdef CUDA_EMU_TSAN
thread_local std::vector<void*> g_tsan_fibers;  // one TSan fiber per thread slot
thread_local void* g_tsan_scheduler = nullptr;
constexpr unsigned kNoSync = 1;  // __tsan_switch_to_fiber_no_sync
#endif
thread_local bool g_rng_seeded = false;

enum class Order { kForward, kReverse, kRandom };

CUDA_EMU_INTERNAL Order order() {
  const char* s = std::getenv("CUDA_EMU_ORDER");
  const std::string o = s ? s : "forward";
  if (o == "forward") return Order::kForward;
  if (o == "reverse") return Order::kReverse;
  if (o.rfind("random", 0) == 0) {
    if (!g_rng_seeded) {
      const auto colon = o.find(':');
      g_rng.seed(colon == std::string::npos ? 0 : std::stoull(o.substr(colon + 1)));
      g_rng_seeded = true;
    }
    return Order::kRandom;
  }
  TORCH_CHECK(false, "cuda_emu: CUDA_EMU_ORDER must be forward, reverse or random[:SEED], got '", o, "'");
}

CUDA_EMU_INTERNAL int lanes_of_warp(const Launch& L, int w) {
  return std::min(kWarp, L.threads - w * kWarp);
}

// Queue `tids` (ascending) to run in the chosen order.
CUDA_EMU_INTERNAL void enqueue(Launch& L, std::vector<int>& tids, Order o) {
  if (o == Order::kRandom) std::shuffle(tids.begin(), tids.end(), g_rng);
  if (o == Order::kForward) std::reverse(tids.begin(), tids.end());  // the back runs first
  for (int t : tids) {
    L.fibers[t].state = State::kReady;
    L.ready.push_back(t);
  }
}

CUDA_EMU_INTERNAL char* stack_for(int slot) {
  while (int(g_stacks.size()) <= slot) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "cuda_emu: could not map a fiber stack");
    TORCH_CHECK(mprotect(p, page, PROT_NONE) == 0, "cuda_emu: could not protect a fiber stack's guard page");
    g_stacks.push_back(static_cast<char*>(p) + page);
  }
  return g_stacks[slot];
}

// A fresh context that enters cuda_emu_trampoline: the frame cuda_emu_switch pops.
CUDA_EMU_INTERNAL void* fresh_context(int slot) {
#ifdef CUDA_EMU_ASAN
  // A fiber abandoned at an error leaves its frames' poison on this stack: clear it.
  __asan_unpoison_memory_region(stack_for(slot), kStackBytes);
#endif
  char* top = stack_for(slot) + kStackBytes;
  auto* sp = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(top - 64) & ~uintptr_t(15));
  uint32_t csr = 0;
  uint16_t cw = 0;
  asm volatile("stmxcsr %0" : "=m"(csr));
  asm volatile("fnstcw %0" : "=m"(cw));
  sp[0] = csr | (uint64_t(cw) << 32);      // the caller's MXCSR and x87 control word (denormal modes)
  for (int i = 1; i <= 6; ++i) sp[i] = 0;  // r15 r14 r13 r12 rbx rbp
  sp[7] = reinterpret_cast<uint64_t>(&cuda_emu_trampoline);
  return sp;
}

// From the scheduler to thread t's fiber, until it yields.
CUDA_EMU_INTERNAL void enter_fiber(Launch& L, int t) {
#ifdef CUDA_EMU_TSAN
  while (int(g_tsan_fibers.size()) <= t) g_tsan_fibers.push_back(__tsan_create_fiber(0));
  __tsan_switch_to_fiber(g_tsan_fibers[t], kNoSync);
#endif
#ifdef CUDA_EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, stack_for(t), kStackBytes);
#endif
  cuda_emu_switch(&L.scheduler_sp, L.fibers[t].sp);
#ifdef CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

// From the running fiber to the scheduler; `ending`: the fiber is never resumed.
CUDA_EMU_INTERNAL void leave_fiber(Launch& L, bool ending) {
  Fiber& f = L.fibers[L.current];
#ifdef CUDA_EMU_TSAN
  __tsan_switch_to_fiber(g_tsan_scheduler, kNoSync);
#endif
#ifdef CUDA_EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(ending ? nullptr : &fake_stack, g_scheduler_stack, g_scheduler_stack_size);
#endif
  cuda_emu_switch(&f.sp, L.scheduler_sp);
#ifdef CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
  (void)ending;
#endif
}

[[noreturn]] CUDA_EMU_INTERNAL void end_fiber(Launch& L) {
  L.fibers[L.current].state = State::kDone;
  for (;;) leave_fiber(L, true);  // the scheduler never resumes it
}

[[noreturn]] CUDA_EMU_INTERNAL void fail_in_fiber(Launch& L, const std::string& what) {
  if (L.error.empty()) L.error = what;
  end_fiber(L);
}

// How many threads of the block are in state `s`.
CUDA_EMU_INTERNAL int count(const Launch& L, State s) {
  return int(std::count_if(L.fibers.begin(), L.fibers.end(), [s](const Fiber& f) { return f.state == s; }));
}

CUDA_EMU_INTERNAL std::string describe(const Launch& L) {
  std::ostringstream os;
  os << "block " << blockIdx.x << " of " << gridDim.x << ", " << L.threads << " threads: ";
  os << count(L, State::kAtSyncthreads) << " at __syncthreads, " << count(L, State::kDone) << " ended";
  for (int w = 0; w * kWarp < L.threads; ++w) {
    if (L.at_warp[w] > 0)
      os << ", warp " << w << ": " << L.at_warp[w] << " of " << lanes_of_warp(L, w) << " lanes at a warp barrier";
  }
  return os.str();
}

// Waits at a barrier; `orders_memory`: what each thread did before it happens before what every
// thread does after it (__syncthreads, __syncwarp; not the barrier inside a shuffle).
CUDA_EMU_INTERNAL void wait(State s, bool orders_memory = true) {
  Launch& L = *g_launch;
  L.fibers[L.current].state = s;
#ifdef CUDA_EMU_TSAN
  void* sync = s == State::kAtSyncthreads ? static_cast<void*>(&L.syncthreads_sync)
                                          : static_cast<void*>(&L.warp_sync[L.current / kWarp]);
  if (orders_memory) __tsan_release(sync);
  leave_fiber(L, false);
  if (orders_memory) __tsan_acquire(sync);
#else
  (void)orders_memory;
  leave_fiber(L, false);
#endif
}

CUDA_EMU_INTERNAL void check_full_mask(unsigned mask, const char* what) {
  Launch& L = *g_launch;
  const int w = L.current / kWarp;
  const int lanes = lanes_of_warp(L, w);
  const unsigned full = lanes == kWarp ? 0xffffffffu : ((1u << lanes) - 1u);
  if (mask != full) {
    std::ostringstream os;
    os << "cuda_emu: " << what << " with mask 0x" << std::hex << mask << std::dec << " in warp " << w << " of " << lanes
       << " lanes (thread " << L.current << ", " << describe(L)
       << "); the emulator supports the mask of every lane of the warp only";
    if (lanes < kWarp && mask == 0xffffffffu) os << ": this mask names lanes that do not exist (a partial warp)";
    fail_in_fiber(L, os.str());
  }
}

CUDA_EMU_INTERNAL void warp_barrier(bool orders_memory) {
  Launch& L = *g_launch;
  ++L.at_warp[L.current / kWarp];
  wait(State::kAtWarpBarrier, orders_memory);
}

// (ThreadSanitizer) What every thread of the block did happens before what the scheduler does
// next: the block is over, or was abandoned at an error (threads stuck at a barrier included).
CUDA_EMU_INTERNAL void join_fibers(Launch& L) {
#ifdef CUDA_EMU_TSAN
  for (int t = 0; t < L.threads && t < int(g_tsan_fibers.size()); ++t) {
    __tsan_switch_to_fiber(g_tsan_fibers[t], 0);  // synchronising switches, attribution only: no
    __tsan_switch_to_fiber(g_tsan_scheduler, 0);  // stack changes
  }
#else
  (void)L;
#endif
}

// Runs the block blockIdx.x to its end.
CUDA_EMU_INTERNAL void run_block(Launch& L, Order o) {
  // shared memory as a block finds it: not initialised (0xff bytes, NaN)
  if (!L.dynamic.empty()) std::fill(L.dynamic.begin(), L.dynamic.end(), 0xff);
  if (!L.discovery) {
    for (const auto& [p, n] : L.statics) std::memset(p, 0xff, n);
  }
  L.ready.clear();
  std::fill(L.at_warp.begin(), L.at_warp.end(), 0);
  std::fill(L.shuffles_done.begin(), L.shuffles_done.end(), 0u);
  std::vector<int> all(L.threads);
  std::iota(all.begin(), all.end(), 0);
  for (int t = 0; t < L.threads; ++t) L.fibers[t].sp = fresh_context(t);
#ifdef CUDA_EMU_TSAN
  L.warp_sync.assign(L.at_warp.size(), 0);
  __tsan_release(&L.block_start);  // the launch's set-up happens before the block's threads
#endif
  enqueue(L, all, o);
  for (;;) {
    while (!L.ready.empty()) {
      const int t = L.ready.back();
      L.ready.pop_back();
      L.current = t;
      threadIdx = uint3{unsigned(t), 0, 0};
      enter_fiber(L, t);
      if (!L.error.empty()) {
        join_fibers(L);  // (ThreadSanitizer) the message was written by the thread that failed
        TORCH_CHECK(false, L.error);
      }
    }
    const int done = count(L, State::kDone);
    if (done == L.threads) {
      join_fibers(L);
      return;
    }
    bool released = false;
    for (int w = 0; w * kWarp < L.threads; ++w) {
      if (L.at_warp[w] == 0) continue;
      if (L.at_warp[w] == lanes_of_warp(L, w)) {
        std::vector<int> lanes(lanes_of_warp(L, w));
        std::iota(lanes.begin(), lanes.end(), w * kWarp);
        L.at_warp[w] = 0;
        enqueue(L, lanes, o);
        released = true;
      }
    }
    if (released) continue;
    const bool no_warp_waits = std::all_of(L.at_warp.begin(), L.at_warp.end(), [](int n) { return n == 0; });
    if (count(L, State::kAtSyncthreads) > 0 && no_warp_waits && done == 0) {
      std::vector<int> tids(all);
      enqueue(L, tids, o);
      continue;
    }
    TORCH_CHECK(false, "cuda_emu: deadlock, a barrier that not every thread reaches (", describe(L),
                "). __syncthreads must be reached by every thread of the block, and a warp barrier or shuffle "
                "by every lane of the warp, before any of them ends or waits elsewhere");
  }
}

}  // namespace

CUDA_EMU_INTERNAL int lane_id() {
  return g_launch->current % kWarp;
}

CUDA_EMU_INTERNAL void syncthreads() {
  wait(State::kAtSyncthreads);
}

CUDA_EMU_INTERNAL void syncwarp(unsigned mask) {
  check_full_mask(mask, "__syncwarp");
  warp_barrier(true);
}

CUDA_EMU_INTERNAL uint64_t shuffle(unsigned mask, uint64_t bits, int src) {
  check_full_mask(mask, "a warp shuffle");
  Launch& L = *g_launch;
  const int t = L.current, w = t / kWarp;
  // Double-buffered: shuffle n of a lane writes buffer n % 2. A lane can only write buffer n % 2
  // again (shuffle n + 2) after shuffle n + 1's barrier, which every lane reaches only once done
  // reading shuffle n: one barrier per shuffle suffices.
  uint64_t* buffer = L.slots.data() + size_t(L.shuffles_done[t]++ % 2) * size_t(L.threads);
  buffer[t] = bits;
  warp_barrier(false);  // every lane has published
  if (src >= lanes_of_warp(L, w)) fail_in_fiber(L, "cuda_emu: a shuffle reads a lane that does not exist");
  return src < 0 ? bits : buffer[w * kWarp + src];
}

CUDA_EMU_INTERNAL void* dynamic_shared() {
  Launch& L = *g_launch;
  return L.dynamic.empty() ? nullptr : L.dynamic.data();
}

CUDA_EMU_INTERNAL void fresh_shared(void* p, size_t n) {
  Launch& L = *g_launch;
  if (!L.discovery) return;  // run_block fills the arrays the discovery run found
  const auto same = [p](const std::pair<void*, size_t>& a) { return a.first == p; };
  if (std::find_if(L.statics.begin(), L.statics.end(), same) == L.statics.end()) {
    L.statics.emplace_back(p, n);
    L.static_bytes += n;
  }
}

CUDA_EMU_INTERNAL int smem_optin() {
  const char* s = std::getenv("CUDA_EMU_SMEM_OPTIN");
  return s ? std::atoi(s) : 232448;  // H100 / H200: 227 KiB
}

CUDA_EMU_INTERNAL void statics_declared() {
  Launch& L = *g_launch;
  if (!L.discovery) return;
  end_fiber(L);  // the discovery run ends here, before any of the kernel's work
}

namespace {

// Sizes L's per-thread state for blocks of `threads` threads running body(closure).
CUDA_EMU_INTERNAL void prepare(Launch& L, KernelBody body, void* closure, int threads) {
  TORCH_CHECK(g_launch == nullptr, "cuda_emu: a launch from inside a kernel");
  L.body = body;
  L.closure = closure;
  L.threads = threads;
  L.fibers.resize(threads);
  L.at_warp.assign((threads + kWarp - 1) / kWarp, 0);
  L.slots.assign(2 * size_t(threads), 0);
  L.shuffles_done.assign(threads, 0);
}

// Runs the blocks of `grid` one after another with L as the running launch; at an error the
// block's threads are joined (ThreadSanitizer) and the error propagates.
CUDA_EMU_INTERNAL void run_blocks(Launch& L, dim3 grid, dim3 block, Order o) {
  blockDim = block;
  gridDim = grid;
#ifdef CUDA_EMU_TSAN
  g_tsan_scheduler = __tsan_get_current_fiber();
#endif
  g_launch = &L;
  try {
    for (unsigned b = 0; b < grid.x; ++b) {
      blockIdx = uint3{b, 0, 0};
      run_block(L, o);
    }
  } catch (...) {
    join_fibers(L);
    g_launch = nullptr;
    throw;
  }
  g_launch = nullptr;
}

}  // namespace

CUDA_EMU_INTERNAL size_t static_shared_bytes(const void* kernel, KernelBody body, void* closure) {
  const auto it = g_statics.find(kernel);
  if (it != g_statics.end()) return it->second.first;
  Launch L;
  L.discovery = true;
  prepare(L, body, closure, 1);
  run_blocks(L, dim3(1), dim3(1), Order::kForward);
  g_statics[kernel] = {L.static_bytes, L.statics};
  return L.static_bytes;
}

CUDA_EMU_INTERNAL size_t max_dynamic_shared(const void* kernel, size_t static_bytes) {
  const auto it = g_dynamic_limit.find(kernel);
  return it != g_dynamic_limit.end() ? size_t(it->second)
                                     : kDefaultDynamicLimit - std::min(static_bytes, kDefaultDynamicLimit);
}

CUDA_EMU_INTERNAL bool set_max_dynamic_shared(const void* kernel, size_t static_bytes, int bytes) {
  if (bytes < 0 || static_bytes + size_t(bytes) > size_t(smem_optin())) return false;
  g_dynamic_limit[kernel] = bytes;
  return true;
}

CUDA_EMU_INTERNAL void run(const void* kernel, dim3 grid, dim3 block, size_t smem, size_t static_bytes, KernelBody body,
                           void* closure) {
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreads && block.x <= 1024 && block.y <= 1024 && block.z <= 64,
              "cuda_emu: invalid launch configuration: block (", block.x, ", ", block.y, ", ", block.z,
              "): at most 1024 threads");
  TORCH_CHECK(grid.x >= 1 && grid.x <= 2147483647u && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 && grid.z <= 65535,
              "cuda_emu: invalid launch configuration: grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  TORCH_CHECK(block.y == 1 && block.z == 1 && grid.y == 1 && grid.z == 1,
              "cuda_emu: only 1-D grids and blocks are emulated");
  const bool raised = g_dynamic_limit.count(kernel) > 0;
  const size_t limit = max_dynamic_shared(kernel, static_bytes);
  TORCH_CHECK(smem <= limit, "cuda_emu: invalid launch: ", smem, " bytes of dynamic shared memory with ", static_bytes,
              " bytes of static shared memory, above the kernel's limit of ", limit, " bytes of dynamic shared memory",
              raised ? " (set by cudaFuncSetAttribute)"
                     : " (48 KiB in all without cudaFuncSetAttribute(MaxDynamicSharedMemorySize))");
  const auto statics = g_statics.find(kernel);
  TORCH_CHECK(statics != g_statics.end(), "cuda_emu: a launch of a kernel whose shared memory was not measured");
  Launch L;
  prepare(L, body, closure, int(threads));
  L.dynamic.assign(smem, 0xff);
  L.statics = statics->second.second;
  run_blocks(L, grid, block, order());
}

}  // namespace cuda_emu

extern "C" CUDA_EMU_INTERNAL void cuda_emu_fiber_main() {
#ifdef CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &cuda_emu::g_scheduler_stack, &cuda_emu::g_scheduler_stack_size);
#endif
  cuda_emu::Launch& L = *cuda_emu::g_launch;
#ifdef CUDA_EMU_TSAN
  __tsan_acquire(&L.block_start);
#endif
  try {
    L.body(L.closure);
  } catch (const std::exception& e) {
    if (L.error.empty()) L.error = std::string("cuda_emu: an exception in the kernel: ") + e.what();
  } catch (...) {
    if (L.error.empty()) L.error = "cuda_emu: an exception in the kernel";
  }
  cuda_emu::end_fiber(L);
}
