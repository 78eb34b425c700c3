// Native stress test of the store, also run under ThreadSanitizer and AddressSanitizer+UBSan:
// T threads x N pushes of an all-(-1) gradient with lr = 1 add exactly 1 per shard update, so
// the final parameters equal the serial sum (minus counted drops); concurrent pulls must see
// every shard uniform (no torn reads) in locked and leashed modes. The same runs go through the
// transfer pipeline on CPU copy engines ("piped": chunked pushes and pulls on copy threads,
// leashed retries re-fetching their chunks). Exits non-zero on failure.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "fastps/store.h"
#include "fastps/transfer.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what, long long got, long long want) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s (got %lld, expected %lld)\n", what, got, want);
    ++failures;
  }
}

// A learner's pull and push, directly or through a Transfer on two CPU engines (4 KiB chunks).
struct Path {
  Path(fastps::Learner& h, bool piped) : h_(h) {
    if (piped)
      t_ = std::make_unique<fastps::Transfer>(h, fastps::make_cpu_engine(0, false),
                                              fastps::make_cpu_engine(0, false),
                                              fastps::TransferConfig{4096, 2, false});
  }
  void pull(float* out, size_t n) {
    if (t_)
      t_->pull(out, fastps::DType::kF32, n, 0);
    else
      h_.pull(out, n);
  }
  uint32_t push(const float* g, size_t n) {
    return t_ ? t_->push(g, fastps::DType::kF32, n, std::nullopt)
              : h_.push(g, fastps::DType::kF32, n);
  }
  fastps::Learner& h_;
  std::unique_ptr<fastps::Transfer> t_;
};

void run(fastps::Mode mode, uint32_t shards, int32_t persistence, int threads, int pushes,
         bool piped = false) {
  const size_t n = 1 << 14;
  fastps::StoreConfig cfg;
  cfg.size = n;
  cfg.shards = shards;
  cfg.mode = mode;
  cfg.lr = 1.0f;
  cfg.persistence = persistence;
  cfg.max_learners = static_cast<uint32_t>(threads + 1);
  auto store = fastps::Store::create(cfg, nullptr, "");
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (uint32_t s = 0; s < shards; ++s) ranges.push_back(store->shard_range(s));

  std::atomic<bool> done{false};  // written by main after joining pushers, read by the puller
  std::atomic<long long> torn{0};
  std::thread puller([&] {
    auto h = store->learner();
    Path path(*h, piped);
    std::vector<float> buf(n);
    while (!done.load(std::memory_order_acquire)) {  // pairs with the release store below
      path.pull(buf.data(), n);
      for (auto [b, e] : ranges)
        for (uint64_t i = b; i < e; ++i)
          if (buf[i] != buf[b]) {
            torn.fetch_add(1, std::memory_order_relaxed);  // a count only
            break;
          }
    }
  });
  std::vector<std::thread> pushers;
  std::atomic<long long> dropped{0};
  for (int t = 0; t < threads; ++t)
    pushers.emplace_back([&] {
      auto h = store->learner();
      Path path(*h, piped);
      std::vector<float> buf(n), grad(n, -1.0f);
      for (int i = 0; i < pushes; ++i) {
        path.pull(buf.data(), n);
        dropped.fetch_add(path.push(grad.data(), n), std::memory_order_relaxed);
      }
    });
  for (auto& t : pushers) t.join();
  done.store(true, std::memory_order_release);
  puller.join();

  std::vector<float> out(n);
  store->read(out.data(), n);
  const fastps::Stats st = store->stats();
  const long long total = static_cast<long long>(threads) * pushes;
  long long lost = 0;
  for (uint32_t s = 0; s < shards && mode != fastps::Mode::kHogwild; ++s) {
    auto [b, e] = ranges[s];
    for (uint64_t i = b; i < e; ++i)
      expect(out[i] == out[b], "shard uniform at end", out[i], out[b]);
    lost += total - static_cast<long long>(out[b]);
    expect(static_cast<long long>(st.versions[s]) == static_cast<long long>(out[b]),
           "version equals updates applied", st.versions[s], out[b]);
  }
  std::printf(
      "%-8s%s shards=%-2u persistence=%-2d: %lld pushes, %llu CAS failures, %llu dropped, "
      "%lld torn pulls, %u slots touched\n",
      fastps::mode_name(mode), piped ? " piped" : "", shards, persistence, total,
      static_cast<unsigned long long>(st.cas_failures), static_cast<unsigned long long>(st.dropped),
      torn.load(), st.slots_touched);
  if (mode == fastps::Mode::kHogwild) return;  // races intended: reported, not asserted
  expect(torn.load() == 0, "no torn pulls", torn.load(), 0);
  expect(lost == static_cast<long long>(st.dropped), "lost updates equal counted drops", lost,
         static_cast<long long>(st.dropped));
  expect(dropped.load() == lost, "push() return values add up to the drops", dropped.load(), lost);
  if (persistence < 0) expect(lost == 0, "no drops with persistence=-1", lost, 0);
  if (mode == fastps::Mode::kLeashed) {
    expect(st.slots_in_use == shards, "leashed slots in use after the run", st.slots_in_use,
           shards);
    const long long most_touched = 2 * (threads + 1) + 1;
    expect(st.slots_touched <= most_touched, "leashed slots touched <= 2P+1", st.slots_touched,
           most_touched);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int pushes = argc > 1 ? std::atoi(argv[1]) : 2000;
  for (uint32_t shards : {1u, 4u}) {
    run(fastps::Mode::kLocked, shards, -1, 4, pushes);
    run(fastps::Mode::kLeashed, shards, -1, 4, pushes);
    run(fastps::Mode::kLeashed, shards, 0, 4, pushes);
    run(fastps::Mode::kLeashed, shards, 2, 4, pushes);
  }
  for (uint32_t shards : {1u, 4u}) {
    run(fastps::Mode::kLocked, shards, -1, 3, pushes / 4, true);
    run(fastps::Mode::kLeashed, shards, -1, 3, pushes / 4, true);
    run(fastps::Mode::kLeashed, shards, 0, 3, pushes / 4, true);
  }
  if (std::getenv("FASTPS_STRESS_HOGWILD")) run(fastps::Mode::kHogwild, 4, -1, 4, pushes);
  std::printf(failures ? "stress_store: %d failures\n" : "stress_store: ok\n", failures);
  return failures ? 1 : 0;
}
