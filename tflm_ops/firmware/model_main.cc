// The whole-model firmware: runs a converted .tflite through TFLite-Micro (a static library
// the user built for Cortex-M7) with the MAM_SPARSE / MAC_SPARSE glue, on QEMU's mps2-an500.
//
// Reads, through semihosting, model.tflite and model_in.bin (u32 samples, u32 bytes per
// sample, then the samples: the model input tensor's bytes), invokes the model once per
// sample and writes every output tensor's bytes to model_out.bin. Each op's Invoke runs
// between mcu_mark_begin() and mcu_mark_end() (a MicroProfilerInterface), so the counting
// plugin reports its instructions. Prints "arena_used <bytes>" and, for the first sample,
// "op <k> <name>" for each profiled op in order. The operators it registers come from
// mam_model_ops.h/.cc (MAM_MODEL_OPS_DIR in CMakeLists.txt): the registration `mam-tf
// export-tflm` generates, listing every operator export-tflm knows when built by
// mam_tf.device.mcu.
//
// An STM32Cube project does the same with the model embedded by `mam-tf convert --header`
// (see docs/deployment.md); reading it from a file keeps one binary for every model here.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "mam_model_ops.h"
#include "mcu_markers.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/micro/micro_profiler_interface.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace {

constexpr size_t kArenaBytes = 4u << 20;
alignas(16) __attribute__((section(".big"))) uint8_t arena[kArenaBytes];

extern "C" char __big_start, __big_end;
char* pool_top = &__big_start;

void Fail(int status, const char* what) {
  std::printf("mcu model firmware: %s\n", what);
  std::fflush(stdout);
  std::exit(status);
}

void* PoolAlloc(size_t n) {
  uintptr_t p = (reinterpret_cast<uintptr_t>(pool_top) + 15u) & ~static_cast<uintptr_t>(15u);
  if (n > reinterpret_cast<uintptr_t>(&__big_end) - p) Fail(5, "the model does not fit the pool");
  pool_top = reinterpret_cast<char*>(p + n);
  return reinterpret_cast<void*>(p);
}

uint8_t* ReadFile(const char* path, size_t* size) {
  FILE* f = std::fopen(path, "rb");
  if (f == nullptr) Fail(2, "cannot open an input file (model.tflite / model_in.bin)");
  std::fseek(f, 0, SEEK_END);
  const long n = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  auto* buf = static_cast<uint8_t*>(PoolAlloc(static_cast<size_t>(n)));
  if (std::fread(buf, 1, static_cast<size_t>(n), f) != static_cast<size_t>(n)) {
    Fail(2, "cannot read an input file");
  }
  std::fclose(f);
  *size = static_cast<size_t>(n);
  return buf;
}

// Marks every op's Invoke for the counting plugin; remembers the tags of the first sample.
class MarkerProfiler : public tflite::MicroProfilerInterface {
 public:
  uint32_t BeginEvent(const char* tag) override {
    if (recording_ && count_ < kMaxEvents) tags_[count_] = tag;
    ++count_;
    mcu_mark_begin();
    return 0;
  }
  void EndEvent(uint32_t) override { mcu_mark_end(); }
  void Stop() { recording_ = false; }
  int count() const { return count_; }
  const char* tag(int k) const { return k < kMaxEvents ? tags_[k] : "?"; }

 private:
  static constexpr int kMaxEvents = 256;
  const char* tags_[kMaxEvents] = {};
  int count_ = 0;
  bool recording_ = true;
};

void LogToStdout(const char* s) { std::fputs(s, stdout); }

}  // namespace

int main() {
  RegisterDebugLogCallback(LogToStdout);
  size_t model_size = 0, in_size = 0;
  const uint8_t* model_data = ReadFile("model.tflite", &model_size);
  const uint8_t* in_data = ReadFile("model_in.bin", &in_size);
  if (in_size < 8) Fail(3, "model_in.bin has no header");
  uint32_t samples, sample_bytes;
  std::memcpy(&samples, in_data, 4);
  std::memcpy(&sample_bytes, in_data + 4, 4);
  if (in_size != 8 + static_cast<size_t>(samples) * sample_bytes) Fail(3, "model_in.bin size");

  const tflite::Model* model = tflite::GetModel(model_data);
  // Locals, not statics: a static with a destructor would need __cxa_atexit / __dso_handle.
  mam_model::OpResolver resolver;
  if (mam_model::RegisterOps(resolver) != kTfLiteOk) Fail(6, "RegisterOps failed");

  MarkerProfiler profiler;
  tflite::MicroInterpreter interpreter(model, resolver, arena, kArenaBytes, nullptr, &profiler);
  if (interpreter.AllocateTensors() != kTfLiteOk) Fail(6, "AllocateTensors failed");
  TfLiteTensor* input = interpreter.input(0);
  if (input->bytes != sample_bytes) Fail(3, "input bytes per sample differ from the model's");
  FILE* out = std::fopen("model_out.bin", "wb");
  if (out == nullptr) Fail(2, "cannot open model_out.bin");
  for (uint32_t s = 0; s < samples; ++s) {
    std::memcpy(input->data.raw, in_data + 8 + static_cast<size_t>(s) * sample_bytes,
                sample_bytes);
    if (interpreter.Invoke() != kTfLiteOk) Fail(6, "Invoke failed");
    if (s == 0) {
      profiler.Stop();
      for (int k = 0; k < profiler.count(); ++k) std::printf("op %d %s\n", k, profiler.tag(k));
    }
    for (size_t o = 0; o < interpreter.outputs_size(); ++o) {
      const TfLiteTensor* t = interpreter.output(o);
      if (std::fwrite(t->data.raw, 1, t->bytes, out) != t->bytes) Fail(2, "write failed");
    }
  }
  std::fclose(out);
  std::printf("arena_used %u\n", static_cast<unsigned>(interpreter.arena_used_bytes()));
  std::fflush(stdout);
  return 0;
}
