// The CUDA runtime calls that kernel launchers and the GPU tests make, for
// binaries built on the emulator (tests/emu/cuda_emu.h) instead of cudart:
// devices whose memory is host memory (one, or MLA_EMU_DEVICE_COUNT). Kernels,
// copies and GEMMs run inside the call; only emulated NCCL operations run in
// the background (nccl_emu.cc), and they keep their stream busy until done:
// cudaStreamQuery says cudaErrorNotReady meanwhile, and whatever comes after
// on that stream (or synchronises with it) waits, as in stream order. Errors a
// real device would report for bad arguments (null pointers, unknown device)
// are reported the same way. Streams can be captured into graphs (work issued
// to a capturing stream is recorded, and runs at cudaGraphLaunch).
#include "tests/emu/cuda_emu.h"  // first: it must precede the CUDA headers

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

// A stream is a handle of its own, on the device current at its creation; its
// work count lives in g_stream_work below.
struct CUstream_st {
  int device = 0;
  unsigned flags = 0;
};

// A captured graph and its executable form: the work in issue order.
struct CUgraph_st {
  std::vector<std::function<void()>> work;
  bool invalidated = false;  // a synchronising call ran during the capture
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> work;
};

namespace {

thread_local cudaError_t g_last_error = cudaSuccess;  // per host thread, as in CUDA
thread_local int g_device = 0;

// MLA_EMU_DEVICE_COUNT (1 to 16, default 1): as many emulated devices, e.g. one
// per worker process of an emulated tensor-parallel group.
int DeviceCount() {
  const char* env = std::getenv("MLA_EMU_DEVICE_COUNT");
  const int n = env != nullptr ? std::atoi(env) : 1;
  return n >= 1 && n <= 16 ? n : 1;
}

// Dynamic shared memory per block: what any kernel may use, and the most a
// kernel may opt into (an H100's figures).
constexpr size_t kDefaultShared = 48 * 1024;
constexpr int kMaxSharedOptIn = 227 * 1024;
// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) per (device, kernel): the
// attribute is per device, as on the hardware.
std::mutex g_shared_limits_mutex;
std::map<std::pair<int, const void*>, size_t> g_shared_limits;

cudaError_t Record(cudaError_t e) {
  if (e != cudaSuccess) g_last_error = e;
  return e;
}

// Streams: background work outstanding on each (emulated NCCL operations),
// per device, the device's legacy default stream (nullptr) among them. Legacy
// synchronising calls (cudaMemcpy, cudaMemset, cudaDeviceSynchronize) wait for
// every stream of the current device, as on the hardware (not for other
// devices': ranks of one process, a device each, must not wait for each other).
std::mutex g_streams_mutex;
std::condition_variable g_streams_idle;
std::map<std::pair<int, cudaStream_t>, int> g_stream_work;  // (device, stream) -> operations in flight

// The key of a stream: its device, or for the legacy stream the caller's.
std::pair<int, cudaStream_t> KeyOf(cudaStream_t stream) {
  return {stream != nullptr ? stream->device : g_device, stream};
}

void WaitForAllStreams(int device) {
  std::unique_lock<std::mutex> lock(g_streams_mutex);
  g_streams_idle.wait(lock, [&] {
    for (const auto& [key, work] : g_stream_work) {
      if (key.first == device && work > 0) return false;
    }
    return true;
  });
}

void WaitForAllStreams() { WaitForAllStreams(g_device); }

// Stream capture: the graph each capturing stream is recording into. A
// synchronising call on the device meanwhile invalidates its captures, as in
// CUDA's global capture mode (the capture then ends in an error).
std::mutex g_capture_mutex;
std::map<cudaStream_t, CUgraph_st*> g_captures;

// Whether a stream of `device` captures; invalidates those captures when `invalidate`.
bool DeviceCaptures(int device, bool invalidate);

bool StreamBusy(cudaStream_t stream) {
  const std::lock_guard<std::mutex> lock(g_streams_mutex);
  const auto it = g_stream_work.find(KeyOf(stream));
  return it != g_stream_work.end() && it->second > 0;
}

}  // namespace

namespace mla::emu {
void SetLastError(cudaError_t e) { Record(e); }

StreamWork StreamBeginWork(cudaStream_t stream) {
  const StreamWork work{KeyOf(stream).first, stream};
  const std::lock_guard<std::mutex> lock(g_streams_mutex);
  ++g_stream_work[{work.device, work.stream}];
  return work;
}

void StreamEndWork(const StreamWork& work) {
  {
    const std::lock_guard<std::mutex> lock(g_streams_mutex);
    --g_stream_work[{work.device, work.stream}];
  }
  g_streams_idle.notify_all();
}

void StreamWait(cudaStream_t stream) {
  if (stream == nullptr) {  // the legacy default stream waits for the device's others
    WaitForAllStreams();
    return;
  }
  const std::pair<int, cudaStream_t> key = KeyOf(stream), legacy{key.first, nullptr};
  std::unique_lock<std::mutex> lock(g_streams_mutex);
  g_streams_idle.wait(lock, [&] { return g_stream_work[key] == 0 && g_stream_work[legacy] == 0; });
}

bool StreamCapturing(cudaStream_t stream) {
  if (stream == nullptr) return false;
  const std::lock_guard<std::mutex> lock(g_capture_mutex);
  return g_captures.count(stream) > 0;
}

void StreamRun(cudaStream_t stream, std::function<void()> work) {
  if (stream != nullptr) {
    const std::lock_guard<std::mutex> lock(g_capture_mutex);
    const auto it = g_captures.find(stream);
    if (it != g_captures.end()) {
      it->second->work.push_back(std::move(work));
      return;
    }
  }
  StreamWait(stream);
  work();
}

size_t DynamicSharedLimit(const void* kernel) {
  const std::lock_guard<std::mutex> lock(g_shared_limits_mutex);
  const auto it = g_shared_limits.find({g_device, kernel});
  return it != g_shared_limits.end() ? it->second : kDefaultShared;
}
}  // namespace mla::emu

namespace {
bool DeviceCaptures(int device, bool invalidate) {
  const std::lock_guard<std::mutex> lock(g_capture_mutex);
  bool any = false;
  for (auto& [stream, graph] : g_captures) {
    if (stream->device != device) continue;
    any = true;
    if (invalidate) graph->invalidated = true;
  }
  return any;
}
}  // namespace

extern "C" {

cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (ptr == nullptr) return Record(cudaErrorInvalidValue);
  // 256-byte aligned like cudaMalloc; filled with a pattern, not zeros (device
  // memory starts undefined). Exactly `size` bytes, so that an AddressSanitizer
  // build (the *_asan tests) reports a kernel reading or writing past the end.
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  if (posix_memalign(ptr, 256, size) != 0) {
    *ptr = nullptr;
    return Record(cudaErrorMemoryAllocation);
  }
  std::memset(*ptr, 0xa5, size);
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) { return cudaMalloc(ptr, size); }

cudaError_t cudaFreeHost(void* ptr) { return cudaFree(ptr); }

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind) {
  if (count > 0 && (dst == nullptr || src == nullptr)) return Record(cudaErrorInvalidValue);
  if (DeviceCaptures(g_device, true)) return Record(cudaErrorStreamCaptureImplicit);
  WaitForAllStreams();
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind, cudaStream_t stream) {
  if (count > 0 && (dst == nullptr || src == nullptr)) return Record(cudaErrorInvalidValue);
  mla::emu::StreamRun(stream, [=] {
    if (count > 0) std::memmove(dst, src, count);
  });
  return cudaSuccess;
}

cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              enum cudaMemcpyKind, cudaStream_t stream) {
  if (width > dpitch || width > spitch) return Record(cudaErrorInvalidPitchValue);
  mla::emu::StreamRun(stream, [=] {
    for (size_t r = 0; r < height; ++r) {
      std::memmove(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
    }
  });
  return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  if (count > 0 && ptr == nullptr) return Record(cudaErrorInvalidValue);
  if (DeviceCaptures(g_device, true)) return Record(cudaErrorStreamCaptureImplicit);
  WaitForAllStreams();
  if (count > 0) std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  if (count > 0 && ptr == nullptr) return Record(cudaErrorInvalidValue);
  mla::emu::StreamRun(stream, [=] {
    if (count > 0) std::memset(ptr, value, count);
  });
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  if (DeviceCaptures(g_device, true)) return Record(cudaErrorStreamCaptureUnsupported);
  WaitForAllStreams();
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (mla::emu::StreamCapturing(stream)) {
    DeviceCaptures(stream->device, true);
    return Record(cudaErrorStreamCaptureUnsupported);
  }
  mla::emu::StreamWait(stream);
  return cudaSuccess;
}

// Not an error: cudaErrorNotReady is not recorded for cudaGetLastError.
cudaError_t cudaStreamQuery(cudaStream_t stream) { return StreamBusy(stream) ? cudaErrorNotReady : cudaSuccess; }

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return g_last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidPitchValue: return "cudaErrorInvalidPitchValue";
    default: return "cudaError (emulated)";
  }
}

const char* cudaGetErrorString(cudaError_t error) { return cudaGetErrorName(error); }

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return Record(cudaErrorInvalidValue);
  *count = DeviceCount();
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return Record(cudaErrorInvalidValue);
  *device = g_device;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= DeviceCount()) return Record(cudaErrorInvalidDevice);
  g_device = device;
  return cudaSuccess;
}

// An H100 SXM's figures where a caller asks (the SM count sizes decode plans).
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (value == nullptr) return Record(cudaErrorInvalidValue);
  if (device < 0 || device >= DeviceCount()) return Record(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 227 * 1024; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    default: return Record(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (func == nullptr) return Record(cudaErrorInvalidDeviceFunction);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    // An H100's opt-in limit per block (static shared memory would come off it).
    if (value < 0 || value > kMaxSharedOptIn) return Record(cudaErrorInvalidValue);
    const std::lock_guard<std::mutex> lock(g_shared_limits_mutex);
    g_shared_limits[{g_device, func}] = static_cast<size_t>(value);
  }
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  if (stream == nullptr) return Record(cudaErrorInvalidValue);
  *stream = new CUstream_st{g_device, flags};
  return cudaSuccess;
}

// As on a device, work still queued finishes first (here: before the call returns).
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr) return Record(cudaErrorInvalidResourceHandle);
  mla::emu::StreamWait(stream);
  {
    const std::lock_guard<std::mutex> lock(g_streams_mutex);
    g_stream_work.erase(KeyOf(stream));
  }
  delete stream;
  return cudaSuccess;
}

// Events hold the host time of their record: everything before it has run.
struct CUevent_st {
  std::chrono::steady_clock::time_point at;
};

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  if (event == nullptr) return Record(cudaErrorInvalidValue);
  *event = new CUevent_st;
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (event == nullptr) return Record(cudaErrorInvalidResourceHandle);
  mla::emu::StreamWait(stream);
  event->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  return event == nullptr ? Record(cudaErrorInvalidResourceHandle) : cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (ms == nullptr || start == nullptr || end == nullptr) return Record(cudaErrorInvalidValue);
  *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int device) {
  if (prop == nullptr) return Record(cudaErrorInvalidValue);
  if (device < 0 || device >= DeviceCount()) return Record(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof(prop->name), "mla-serve CUDA emulator (CPU)");
  prop->multiProcessorCount = 132;
  prop->major = 9;
  prop->minor = 0;
  return cudaSuccess;
}

}  // extern "C"

namespace {

// cuTensorMapEncodeTiled for the maps the kernels make (mla::emu::TensorMap2d):
// 2-D, elements of 1, 2 or 4 bytes, unit element strides, no interleave, no
// swizzle or the 128-byte one (box rows of at most 128 bytes); the driver's
// argument checks that apply (alignment, box sizes). The L2 promotion and
// the out-of-bounds fill (zeros here) are accepted as given.
CUresult EmuTensorMapEncodeTiled(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank, void* address,
                                 const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box,
                                 const cuuint32_t* element_strides, CUtensorMapInterleave interleave,
                                 CUtensorMapSwizzle swizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill) {
  const uint32_t bytes = type == CU_TENSOR_MAP_DATA_TYPE_UINT8                                           ? 1
                         : type == CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 || type == CU_TENSOR_MAP_DATA_TYPE_FLOAT16 ? 2
                         : type == CU_TENSOR_MAP_DATA_TYPE_FLOAT32                                       ? 4
                                                                                                         : 0;
  if (map == nullptr || rank != 2 || bytes == 0 || address == nullptr || dims == nullptr || strides == nullptr ||
      box == nullptr || element_strides == nullptr || reinterpret_cast<uintptr_t>(address) % 16 != 0 ||
      strides[0] % 16 != 0 || dims[0] == 0 || dims[1] == 0 || dims[0] > (uint64_t{1} << 32) ||
      dims[1] > (uint64_t{1} << 32) || box[0] == 0 || box[1] == 0 || box[0] > 256 || box[1] > 256 ||
      (box[0] * bytes) % 16 != 0 || element_strides[0] != 1 || element_strides[1] != 1 ||
      interleave != CU_TENSOR_MAP_INTERLEAVE_NONE ||
      (swizzle != CU_TENSOR_MAP_SWIZZLE_NONE && swizzle != CU_TENSOR_MAP_SWIZZLE_128B) ||
      (swizzle == CU_TENSOR_MAP_SWIZZLE_128B && box[0] * bytes > 128)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  mla::emu::TensorMap2d m{};
  m.magic = mla::emu::TensorMap2d::kMagic;
  m.address = static_cast<const unsigned char*>(address);
  m.dims[0] = dims[0];
  m.dims[1] = dims[1];
  m.row_stride = strides[0];
  m.box[0] = box[0];
  m.box[1] = box[1];
  m.element_bytes = bytes;
  m.swizzle_bytes = swizzle == CU_TENSOR_MAP_SWIZZLE_128B ? 128 : 0;
  static_assert(sizeof(m) <= sizeof(CUtensorMap), "the emulated map fits a CUtensorMap");
  *map = CUtensorMap{};
  std::memcpy(map, &m, sizeof(m));
  return CUDA_SUCCESS;
}

}  // namespace

extern "C" {

// The driver entry points the kernels ask for: cuTensorMapEncodeTiled only.
cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** function, unsigned int, unsigned long long,
                                             enum cudaDriverEntryPointQueryResult* status) {
  if (symbol == nullptr || function == nullptr) return Record(cudaErrorInvalidValue);
  const bool found = std::strcmp(symbol, "cuTensorMapEncodeTiled") == 0;
  *function = found ? reinterpret_cast<void*>(&EmuTensorMapEncodeTiled) : nullptr;
  if (status != nullptr) *status = found ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
  return cudaSuccess;
}

// Stream capture and graphs (see mla::emu::StreamRun): one capture at a
// time per stream, never on the legacy stream; a graph runs its work in the
// order it was issued, after the launch stream's earlier work.
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode) {
  if (stream == nullptr) return Record(cudaErrorStreamCaptureUnsupported);
  const std::lock_guard<std::mutex> lock(g_capture_mutex);
  if (g_captures.count(stream) > 0) return Record(cudaErrorIllegalState);
  g_captures[stream] = new CUgraph_st;
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (graph == nullptr) return Record(cudaErrorInvalidValue);
  CUgraph_st* captured = nullptr;
  {
    const std::lock_guard<std::mutex> lock(g_capture_mutex);
    const auto it = g_captures.find(stream);
    if (it == g_captures.end()) return Record(cudaErrorIllegalState);
    captured = it->second;
    g_captures.erase(it);
  }
  if (captured->invalidated) {
    delete captured;
    *graph = nullptr;
    return Record(cudaErrorStreamCaptureInvalidated);
  }
  *graph = captured;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus* status) {
  if (status == nullptr) return Record(cudaErrorInvalidValue);
  *status = mla::emu::StreamCapturing(stream) ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (exec == nullptr || graph == nullptr) return Record(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{graph->work};
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (exec == nullptr) return Record(cudaErrorInvalidResourceHandle);
  mla::emu::StreamRun(stream, [exec] {
    for (const auto& work : exec->work) work();
  });
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}

}  // extern "C"
