// The CUDA copy engine: cudaMemcpyAsync on the engine's own non-blocking stream, one CUDA event
// per copy as its ticket, pinned staging from cudaHostAlloc. Streams, events and device scopes
// are RAII objects; destructors ignore errors (they never throw).
#include <cuda_runtime.h>

#include <deque>
#include <utility>
#include <vector>

#include "cuda_check.h"
#include "fastps/transfer.h"

namespace fastps {
namespace {

// Makes `device` current for the scope and restores the previous device after it.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    FASTPS_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) FASTPS_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceScope() { cudaSetDevice(prev_); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int prev_ = 0;
};

class Stream {
 public:
  Stream() { FASTPS_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

class Event {
 public:
  Event() { FASTPS_CUDA_CHECK(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming)); }
  ~Event() {
    if (e_) cudaEventDestroy(e_);
  }
  Event(Event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  Event& operator=(Event&&) = delete;
  Event(const Event&) = delete;
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

void free_pinned(char* p) { cudaFreeHost(p); }

class CudaEngine final : public CopyEngine {
 public:
  explicit CudaEngine(int device) : device_(device) {}  // created with `device` current

  uint64_t copy(void* dst, const void* src, size_t bytes) override {
    DeviceScope scope(device_);
    FASTPS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_.get()));
    Event ev = take_event();
    FASTPS_CUDA_CHECK(cudaEventRecord(ev.get(), stream_.get()));
    pending_.emplace_back(++issued_, std::move(ev));
    return issued_;
  }
  void wait(uint64_t ticket) override {
    FASTPS_CHECK(ticket <= issued_, "copy engine: wait for ticket %llu, only %llu issued",
                 static_cast<unsigned long long>(ticket), static_cast<unsigned long long>(issued_));
    DeviceScope scope(device_);
    while (!pending_.empty() && pending_.front().first <= ticket) {
      if (pending_.front().first == ticket)
        FASTPS_CUDA_CHECK(cudaEventSynchronize(pending_.front().second.get()));
      pool_.push_back(std::move(pending_.front().second));  // earlier events fired before it
      pending_.pop_front();
    }
  }
  void after(uintptr_t stream) override {
    DeviceScope scope(device_);
    FASTPS_CUDA_CHECK(cudaEventRecord(caller_.get(), reinterpret_cast<cudaStream_t>(stream)));
    FASTPS_CUDA_CHECK(cudaStreamWaitEvent(stream_.get(), caller_.get(), 0));
  }
  void before(uintptr_t stream) override {
    DeviceScope scope(device_);
    FASTPS_CUDA_CHECK(cudaEventRecord(mine_.get(), stream_.get()));
    FASTPS_CUDA_CHECK(cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(stream), mine_.get(), 0));
  }
  HostBuffer alloc_host(size_t bytes) override {
    DeviceScope scope(device_);
    void* p = nullptr;
    FASTPS_CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocPortable));
    return HostBuffer(static_cast<char*>(p), &free_pinned);
  }
  bool host_addressable() const override { return false; }
  const char* name() const override { return "cuda"; }

 private:
  Event take_event() {
    if (pool_.empty()) return Event();
    Event ev = std::move(pool_.back());
    pool_.pop_back();
    return ev;
  }

  int device_;
  Stream stream_;
  Event caller_, mine_;
  std::deque<std::pair<uint64_t, Event>> pending_;  // copies not yet waited for, by ticket
  std::vector<Event> pool_;
  uint64_t issued_ = 0;
};

}  // namespace

std::unique_ptr<CopyEngine> make_cuda_engine(int device) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) cudaGetLastError();
  FASTPS_CHECK(err == cudaSuccess, "transfer: no CUDA device answers (%s)",
               cudaGetErrorString(err));
  FASTPS_CHECK_ARG(device >= 0 && device < n, "transfer: CUDA device %d does not exist (%d found)",
                   device, n);
  DeviceScope scope(device);  // the engine's stream and events belong to `device`
  return std::make_unique<CudaEngine>(device);
}

}  // namespace fastps
