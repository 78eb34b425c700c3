#include "step_size.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fastps/check.h"
#include "kernels.h"
#include "registry.h"

namespace fastps::detail {

namespace {

// TAIL-tau: builds the mid-CDF F(b) = (2 * sum_{i<b} h_i + h_b) / (2 * total) of the summed
// shard histograms (b = staleness_bins is the overflow bin) and publishes it with cdf_ready.
// The builder holds cdf_building with its pid, so recovery can tell a builder that died.
void build_cdf(const Layout& L) {
  Header& H = *L.hdr;
  uint32_t idle = 0;
  // Pairs with the release stores below and in recover_cdf_build(): a second builder starts
  // after the first has finished (or was found dead).
  if (!H.cdf_building.compare_exchange_strong(idle, static_cast<uint32_t>(getpid()),
                                              std::memory_order_acquire))
    return;
  const uint32_t bins = H.cfg.staleness_bins;
  std::vector<uint64_t> h(bins + 1, 0);
  uint64_t total = 0;
  for (uint32_t s = 0; s < H.cfg.shards; ++s)
    for (uint32_t b = 0; b <= bins; ++b) h[b] += L.shard_hist(s)[b].load(std::memory_order_relaxed);
  for (uint64_t x : h) total += x;
  uint64_t cum = 0;
  for (uint32_t b = 0; b <= bins; ++b) {
    const double F =
        total ? static_cast<double>(2 * cum + h[b]) / static_cast<double>(2 * total) : 0.5;
    L.cdf[b].store(F, std::memory_order_relaxed);          // published by cdf_ready below
    L.cdf_hist[b].store(h[b], std::memory_order_relaxed);  // likewise
    cum += h[b];
  }
  H.cdf_builds.fetch_add(1, std::memory_order_relaxed);  // statistics only
  H.cdf_ready.store(1, std::memory_order_release);       // pairs with acquire in eta()
  H.cdf_building.store(0, std::memory_order_release);    // pairs with the CAS above
}

}  // namespace

bool recover_cdf_build(const Layout& L) {
  if (L.hdr->cfg.step.kind != StepKind::kTailTau) return false;
  Header& H = *L.hdr;
  // Pairs with the builder's acquire CAS: whoever it is, its pid is the whole of its claim.
  uint32_t holder = H.cdf_building.load(std::memory_order_acquire);
  if (holder == 0 || process_alive(static_cast<int32_t>(holder), 0)) return false;
  // Release pairs with the next builder's acquire CAS. Lost CAS: another recoverer took it over.
  if (!H.cdf_building.compare_exchange_strong(holder, 0, std::memory_order_release,
                                              std::memory_order_relaxed))
    return false;
  build_cdf(L);  // the build the dead process was elected for (its table may be half written)
  return true;
}

bool hold_cdf_build(const Layout& L) {
  uint32_t idle = 0;
  // Pairs with the release stores in build_cdf() and recover_cdf_build(), as build_cdf's CAS.
  return L.hdr->cdf_building.compare_exchange_strong(idle, static_cast<uint32_t>(getpid()),
                                                     std::memory_order_acquire);
}

float eta(const Layout& L, const StepHook& hook, const StepInputs& in) {
  const StoreConfig& cfg = L.hdr->cfg;
  const StepConfig& sc = cfg.step;
  const uint64_t tau = in.ctx.tau;
  const double lr = cfg.lr;
  double e = lr;
  switch (sc.kind) {
    case StepKind::kConstant: return cfg.lr;
    case StepKind::kInverse: e = lr / static_cast<double>(tau + 1); break;
    case StepKind::kExponential: e = lr * std::exp(-sc.beta * static_cast<double>(tau)); break;
    case StepKind::kTailTau: {
      if (L.hdr->cdf_ready.load(std::memory_order_acquire)) {  // pairs with build_cdf()
        const uint64_t bin = std::min<uint64_t>(tau, cfg.staleness_bins);
        const double F = L.cdf[bin].load(std::memory_order_relaxed);  // published by cdf_ready
        e = lr * (1.0 + sc.a * (1.0 - 2.0 * F));
      }
      break;
    }
    case StepKind::kDistance: {
      const double d2 = cfg.mode == Mode::kHogwild ? hogwild_dist2(in.w_now, in.w_read, in.len)
                                                   : dist2(in.w_now, in.w_read, in.len);
      e = d2 == 0.0 ? sc.eta_max : std::min(sc.c / d2, sc.eta_max);
      break;
    }
    case StepKind::kHook: {
      e = hook(in.ctx);
      FASTPS_CHECK_ARG(std::isfinite(e) && e >= 0.0,
                       "push: the step_size hook returned %g for tau=%llu at shard %u (expected a "
                       "finite number >= 0); that shard was left unchanged",
                       e, static_cast<unsigned long long>(tau), in.ctx.shard);
      break;
    }
  }
  return static_cast<float>(e);
}

void record(const Layout& L, uint32_t s, uint64_t tau, uint64_t bytes) {
  const uint32_t bins = L.hdr->cfg.staleness_bins;
  L.shard_hist(s)[std::min<uint64_t>(tau, bins)].fetch_add(1, std::memory_order_relaxed);
  L.shards[s].updates.fetch_add(1, std::memory_order_relaxed);            // statistics only
  L.shards[s].bytes_applied.fetch_add(bytes, std::memory_order_relaxed);  // statistics only
  const StepConfig& sc = L.hdr->cfg.step;
  if (sc.kind != StepKind::kTailTau) return;
  // The update that completes the warmup, and every refresh-th after it, builds the CDF. Relaxed:
  // the counter only elects; the table is published by cdf_ready.
  const uint64_t k = L.hdr->step_updates.fetch_add(1, std::memory_order_relaxed) + 1;
  if (k == sc.warmup || (sc.refresh && k > sc.warmup && (k - sc.warmup) % sc.refresh == 0))
    build_cdf(L);
}

}  // namespace fastps::detail
