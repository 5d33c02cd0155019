// The emulator's threads: a block's threads are fibers on the calling host
// thread, each running until it waits (at __syncthreads or a warp shuffle)
// or ends. A warp's shuffle goes on once all its live lanes have reached it
// and every lane it names is among them; the block's barrier once every
// live thread waits there. Anything else is a kernel a GPU would hang or
// misrun: the launch fails, saying what the threads were doing.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "tests/cuda_emulator/emulator.h"

// Switches stacks: pushes the callee-saved registers and the FP control
// words, stores the stack pointer in *save, and pops the same from `to`.
// (ucontext's swapcontext does this too, plus a system call for the signal
// mask, which made the emulator spend half its time in the kernel.)
extern "C" void kiln_emulator_switch(void** save, void* to);
asm(R"(
  .text
  .globl kiln_emulator_switch
  .hidden kiln_emulator_switch
  .type kiln_emulator_switch, @function
  .p2align 4
kiln_emulator_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size kiln_emulator_switch, .-kiln_emulator_switch
)");

namespace kiln_cuda_emulator {

const ThreadIds* current = nullptr;

namespace {

constexpr size_t kStackBytes = 128 * 1024;  // printf needs some
constexpr size_t kGuardBytes = 4096;         // a PROT_NONE page below each stack
constexpr unsigned kWarpSize = 32;

enum class State { Runnable, AtBarrier, AtShuffle, Done };

struct Fiber {
  void* stack_pointer;  // while switched out
  ThreadIds ids;
  State state;
  // The values this lane offers to its shuffles, alternately in each slot: a
  // lane writes the next one only after every lane has reached it, that is
  // after they have all read this one.
  uint64_t shuffled[2];
  unsigned shuffles;
  unsigned shuffle_mask;  // the lanes its waiting shuffle names
};

// The block running now; one at a time (the driver serializes launches).
struct Block {
  std::vector<Fiber> fibers;
  char* stacks = nullptr;
  size_t stack_capacity = 0;  // fibers the stacks fit
  void* scheduler = nullptr;  // its stack pointer while a thread runs
  size_t running = 0;
  const Kernel* kernel = nullptr;
  void** params = nullptr;
  std::string failure;
} block;

std::string describe(const ThreadIds& t) {
  char text[160];
  std::snprintf(text, sizeof text, "block (%u,%u,%u) thread (%u,%u,%u)", t.block_idx.x, t.block_idx.y, t.block_idx.z,
                t.thread_idx.x, t.thread_idx.y, t.thread_idx.z);
  return text;
}

void reserve_stacks(size_t threads) {
  if (threads <= block.stack_capacity) return;
  if (block.stacks) munmap(block.stacks, block.stack_capacity * (kStackBytes + kGuardBytes));
  const size_t bytes = threads * (kStackBytes + kGuardBytes);
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("kiln CUDA emulator: mmap of thread stacks");
    std::abort();
  }
  block.stacks = static_cast<char*>(p);
  block.stack_capacity = threads;
  for (size_t t = 0; t < threads; ++t) mprotect(block.stacks + t * (kStackBytes + kGuardBytes), kGuardBytes, PROT_NONE);
}

void wait(State state) {
  Fiber& f = block.fibers[block.running];
  f.state = state;
  kiln_emulator_switch(&f.stack_pointer, block.scheduler);
}

// Where a thread starts, "returned to" by its first switch; it never returns.
[[noreturn]] void thread_main() {
  block.kernel->entry(block.params);
  wait(State::Done);
  std::abort();  // a finished thread is never resumed
}

// A new thread's stack, as if it had switched out just before thread_main.
void* start_stack(char* top) {
  auto* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;  // so that thread_main's stack is aligned as after a call
  *--sp = reinterpret_cast<uint64_t>(&thread_main);
  for (int i = 0; i < 6; ++i) *--sp = 0;  // rbp, rbx, r12-r15
  sp -= 2;
  uint32_t mxcsr;
  uint16_t x87_control;
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(x87_control));
  std::memcpy(sp, &x87_control, sizeof x87_control);
  std::memcpy(sp + 1, &mxcsr, sizeof mxcsr);
  return sp;
}

// A kernel's access outside its memory faults (driver.cpp puts a PROT_NONE
// page after each allocation): say which kernel and thread before the
// previous handler (or the default, a core dump) takes over. Only
// async-signal-safe calls here.
struct sigaction previous_segv;
char fault_stack[64 * 1024];  // thread stacks can overflow into their guard page

void write_text(const char* text) {
  size_t n = 0;
  while (text[n]) ++n;
  if (write(STDERR_FILENO, text, n) < 0) return;
}
void write_number(uint64_t v, unsigned base) {
  char digits[24];
  int n = 0;
  do digits[n++] = "0123456789abcdef"[v % base]; while ((v /= base) && n < 23);
  char text[24];
  for (int i = 0; i < n; ++i) text[i] = digits[n - 1 - i];
  text[n] = 0;
  write_text(text);
}

void on_fault(int, siginfo_t* info, void*) {
  if (current) {
    write_text("kiln CUDA emulator: kernel ");
    write_text(block.kernel->name);
    write_text(": block ");
    write_number(current->block_idx.x, 10);
    write_text(" thread ");
    write_number(current->thread_idx.x, 10);
    write_text(" touched memory outside every allocation, at 0x");
    write_number(reinterpret_cast<uintptr_t>(info->si_addr), 16);
    write_text("\n");
  }
  sigaction(SIGSEGV, &previous_segv, nullptr);  // the access runs again, now under it
}

void catch_faults() {
  static bool installed = false;
  if (installed) return;
  installed = true;
  stack_t alternate{};
  alternate.ss_sp = fault_stack;
  alternate.ss_size = sizeof fault_stack;
  sigaltstack(&alternate, nullptr);
  struct sigaction action{};
  action.sa_sigaction = on_fault;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  sigaction(SIGSEGV, &action, &previous_segv);
}

// Runs a warp until each of its lanes has exited or waits at the block's
// barrier, releasing its shuffles as its lanes all reach them; false (with
// block.failure set) if they cannot get there.
bool run_warp(size_t warp) {
  const size_t end = std::min(block.fibers.size(), warp + kWarpSize);
  for (;;) {
    bool ran = false;
    for (size_t t = warp; t < end; ++t) {
      if (block.fibers[t].state != State::Runnable) continue;
      block.running = t;
      current = &block.fibers[t].ids;
      kiln_emulator_switch(&block.scheduler, block.fibers[t].stack_pointer);
      current = nullptr;
      if (!block.failure.empty()) return false;
      ran = true;
    }
    if (ran) continue;
    size_t live = 0, shuffling = 0;
    for (size_t t = warp; t < end; ++t) {
      live += block.fibers[t].state != State::Done;
      shuffling += block.fibers[t].state == State::AtShuffle;
    }
    if (shuffling == 0) return true;
    if (shuffling != live) {
      block.failure = describe(block.fibers[warp].ids) + "'s warp: " + std::to_string(shuffling) +
                      " lanes wait at a shuffle, " + std::to_string(live - shuffling) +
                      " at __syncthreads: a GPU would hang or misrun";
      return false;
    }
    for (size_t t = warp; t < end; ++t) {
      const Fiber& f = block.fibers[t];
      for (unsigned lane = 0; lane < kWarpSize; ++lane)
        if (f.state == State::AtShuffle && f.shuffle_mask >> lane & 1 &&
            (warp + lane >= end || block.fibers[warp + lane].state != State::AtShuffle)) {
          block.failure = describe(f.ids) + ": __shfl_xor_sync names lane " + std::to_string(lane) + ", which " +
                          (warp + lane >= end ? "the block does not have" : "has exited");
          return false;
        }
    }
    for (size_t t = warp; t < end; ++t)
      if (block.fibers[t].state == State::AtShuffle) block.fibers[t].state = State::Runnable;
  }
}

// Runs one block to the end, a warp at a time between barriers: the
// warps' work between two barriers is as far apart as it can be, so a
// missing barrier shows as wrong results. Successive launches take the
// warps in opposite orders, to catch warps running ahead either way.
bool run_block(bool reverse) {
  const size_t n = block.fibers.size(), warps = (n + kWarpSize - 1) / kWarpSize;
  for (;;) {
    for (size_t i = 0; i < warps; ++i)
      if (!run_warp((reverse ? warps - 1 - i : i) * kWarpSize)) return false;
    bool live = false;
    for (Fiber& f : block.fibers)
      if (f.state == State::AtBarrier) f.state = State::Runnable, live = true;
    if (!live) return true;
  }
}

}  // namespace

void sync_block() { wait(State::AtBarrier); }

uint64_t shuffle_xor(uint64_t bits, unsigned mask, int lane_mask) {
  const size_t me = block.running;
  const unsigned slot = block.fibers[me].shuffles++ % 2;
  block.fibers[me].shuffled[slot] = bits;
  block.fibers[me].shuffle_mask = mask;
  wait(State::AtShuffle);  // run_warp() checks that every lane in the mask is here
  const size_t warp = me / kWarpSize * kWarpSize, lane = me % kWarpSize;
  const size_t partner = warp + ((lane ^ static_cast<unsigned>(lane_mask)) % kWarpSize);
  return block.fibers[partner].shuffled[slot];
}

void trap(const char* why) {
  block.failure = describe(*current) + ": " + why;
  wait(State::Done);
  std::abort();  // a trapped thread is never resumed
}

namespace {
std::unordered_map<std::string, Kernel>& kernels() {
  static auto* all = new std::unordered_map<std::string, Kernel>;
  return *all;
}
}  // namespace

bool add_kernel(const Kernel& kernel) {
  if (!kernels().emplace(kernel.name, kernel).second) {
    std::fprintf(stderr, "kiln CUDA emulator: kernel %s is defined twice\n", kernel.name);
    std::abort();
  }
  return true;
}

const Kernel* find_kernel(const char* name) {
  auto it = kernels().find(name);
  return it == kernels().end() ? nullptr : &it->second;
}

std::string run(const Kernel& kernel, Dim3 grid, Dim3 threads, void** params) {
  static uint64_t launches = 0;
  ++launches;
  const size_t n = size_t{threads.x} * threads.y * threads.z;
  catch_faults();
  reserve_stacks(n);
  block.kernel = &kernel;
  block.params = params;
  block.failure.clear();
  block.fibers.resize(n);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        for (size_t t = 0; t < n; ++t) {
          Fiber& f = block.fibers[t];
          f.ids = {{static_cast<unsigned>(t % threads.x), static_cast<unsigned>(t / threads.x % threads.y),
                    static_cast<unsigned>(t / (size_t{threads.x} * threads.y))},
                   {bx, by, bz},
                   threads,
                   grid};
          f.state = State::Runnable;
          f.shuffles = 0;
          f.stack_pointer = start_stack(block.stacks + (t + 1) * (kStackBytes + kGuardBytes));
        }
        if (!run_block(launches % 2)) return std::string("kernel ") + kernel.name + ": " + block.failure;
      }
  current = nullptr;
  return {};
}

}  // namespace kiln_cuda_emulator
