/* TFLite-Micro glue of MAM_SPARSE / MAC_SPARSE: see mam_sparse_op.h and docs/operator-contract.md.
 *
 * Everything a model can get wrong is checked here or in the core's mam_validate /
 * mam_validate_requant, once, in Prepare; Eval calls a core kernel and checks nothing.
 */
#include "mam_sparse_op.h"

#include <cstddef>
#include <cstdint>

#include "flatbuffers/flexbuffers.h"
#include "mam_sparse/core.h"
#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/micro_context.h"
#include "tensorflow/lite/micro/micro_log.h"

namespace tflite {
namespace {

// The custom options keys: exactly those of mam_tf/deploy/options.py (a test parses these three
// lines and compares them with options.KEYS, so Python and C cannot drift).
constexpr char kKeyInFeatures[] = "in_features";
constexpr char kKeyActivation[] = "fused_activation_function";
constexpr char kKeyVersion[] = "version";

constexpr int kInput = 0;
constexpr int kValues = 1;
constexpr int kOffsets = 2;
constexpr int kRowCounts = 3;
constexpr int kBias = 4;  // optional: absent, or index -1
constexpr int kOutput = 0;

enum class Kind { kMam, kMac };

// Reads one integer option; on failure sets the error and returns false.
bool ReadIntOption(const flexbuffers::Map& map, const char* key, int32_t* value,
                   OpDataMamSparse* data) {
  const flexbuffers::Reference ref = map[key];
  if (ref.IsNull()) {
    data->options_error = "is missing";
    data->options_error_key = key;
    return false;
  }
  if (!ref.IsIntOrUint()) {
    data->options_error = "is not an integer";
    data->options_error_key = key;
    return false;
  }
  // AsInt64 of a uint above INT64_MAX wraps negative: caught by the range check too.
  const int64_t v = ref.IsUInt() && ref.AsUInt64() > static_cast<uint64_t>(INT32_MAX)
                        ? static_cast<int64_t>(INT32_MAX) + 1
                        : ref.AsInt64();
  if (v < INT32_MIN || v > INT32_MAX) {
    data->options_error = "is outside the int32 range";
    data->options_error_key = key;
    return false;
  }
  *value = static_cast<int32_t>(v);
  return true;
}

void ParseOptions(const char* buffer, size_t length, OpDataMamSparse* data) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(buffer);
  if (buffer == nullptr || length == 0) {
    data->options_error = "are missing (the op needs a flexbuffer map)";
    return;
  }
  // A corrupted model must not make the reader walk out of the buffer: verify first.
  if (!flexbuffers::VerifyBuffer(bytes, length)) {
    data->options_error = "are not a valid flexbuffer";
    return;
  }
  const flexbuffers::Reference root = flexbuffers::GetRoot(bytes, length);
  if (!root.IsMap()) {
    data->options_error = "are not a flexbuffer map";
    return;
  }
  const flexbuffers::Map map = root.AsMap();
  if (!ReadIntOption(map, kKeyInFeatures, &data->in_features, data) ||
      !ReadIntOption(map, kKeyActivation, &data->activation, data) ||
      !ReadIntOption(map, kKeyVersion, &data->version, data)) {
    return;
  }
  // Values (version 1, in_features >= 1, a known activation) are mam_validate's to judge.
}

void* Init(TfLiteContext* context, const char* buffer, size_t length) {
  TFLITE_DCHECK(context->AllocatePersistentBuffer != nullptr);
  void* raw = context->AllocatePersistentBuffer(context, sizeof(OpDataMamSparse));
  if (raw == nullptr) return nullptr;  // Prepare reports it
  auto* data = static_cast<OpDataMamSparse*>(raw);
  *data = OpDataMamSparse{};
  ParseOptions(buffer, length, data);
  return data;
}

// The temporary tensors Prepare reads, given back on every path out of Prepare.
class TempTensors {
 public:
  TempTensors(TfLiteContext* context, TfLiteNode* node)
      : micro_context_(GetMicroContext(context)), node_(node) {}
  ~TempTensors() {
    for (TfLiteTensor* t : tensors_) {
      if (t != nullptr) micro_context_->DeallocateTempTfLiteTensor(t);
    }
  }
  TempTensors(const TempTensors&) = delete;
  TempTensors& operator=(const TempTensors&) = delete;

  TfLiteTensor* Input(int index) {
    return Keep(micro_context_->AllocateTempInputTensor(node_, index));
  }
  TfLiteTensor* Output(int index) {
    return Keep(micro_context_->AllocateTempOutputTensor(node_, index));
  }

 private:
  TfLiteTensor* Keep(TfLiteTensor* t) {
    if (t != nullptr && count_ < kMax) tensors_[count_++] = t;
    return t;
  }
  static constexpr int kMax = 6;
  MicroContext* micro_context_;
  TfLiteNode* node_;
  TfLiteTensor* tensors_[kMax] = {};
  int count_ = 0;
};

// The flat size, or -1 for a shape no tensor can have (a negative or overflowing one).
int64_t ElementCount(const TfLiteTensor* t) {
  int64_t n = 1;
  for (int i = 0; i < t->dims->size; ++i) {
    const int64_t d = t->dims->data[i];
    if (d < 0 || (d > 0 && n > INT64_MAX / d)) return -1;
    n *= d;
  }
  return n;
}

int32_t LastDim(const TfLiteTensor* t) {
  return t->dims->size > 0 ? t->dims->data[t->dims->size - 1] : 1;
}

int32_t ClampToInt32(int64_t v) {
  return v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : static_cast<int32_t>(v));
}

const TfLiteAffineQuantization* Affine(const TfLiteTensor* t) {
  if (t->quantization.type != kTfLiteAffineQuantization) return nullptr;
  const auto* q = static_cast<const TfLiteAffineQuantization*>(t->quantization.params);
  return (q != nullptr && q->scale != nullptr && q->scale->size > 0) ? q : nullptr;
}

TfLiteStatus Fail(const char* msg) {
  MicroPrintf("%s", msg);
  return kTfLiteError;
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  auto* data = static_cast<OpDataMamSparse*>(node->user_data);
  if (data == nullptr) {
    return Fail("MAM_SPARSE: no op data (the arena is too small for its persistent part)");
  }
  if (data->options_error != nullptr) {
    if (data->options_error_key != nullptr) {
      MicroPrintf("MAM_SPARSE: custom option '%s' %s", data->options_error_key,
                  data->options_error);
    } else {
      MicroPrintf("MAM_SPARSE: custom options %s", data->options_error);
    }
    return kTfLiteError;
  }

  char msg[192];
  mam_layer_desc desc = {};
  desc.num_inputs = node->inputs->size;
  desc.num_outputs = node->outputs->size;
  desc.in_features = data->in_features;
  desc.activation = data->activation;
  desc.version = data->version;
  if ((desc.num_inputs != 4 && desc.num_inputs != 5) || desc.num_outputs != 1) {
    mam_validate(&desc, msg, sizeof(msg));  // the counts are checked first: it says which
    return Fail(msg);
  }

  TempTensors temps(context, node);
  TfLiteTensor* input = temps.Input(kInput);
  TfLiteTensor* values = temps.Input(kValues);
  TfLiteTensor* offsets = temps.Input(kOffsets);
  TfLiteTensor* row_counts = temps.Input(kRowCounts);
  TfLiteTensor* bias = desc.num_inputs == 5 ? temps.Input(kBias) : nullptr;
  TfLiteTensor* output = temps.Output(kOutput);
  if (input == nullptr || values == nullptr || offsets == nullptr || row_counts == nullptr ||
      output == nullptr) {
    return Fail("MAM_SPARSE: input, values, offsets, row_counts and output are required");
  }

  // The weights are read here and in Eval from the model itself: they must be constants
  // (an empty values/offsets pair, a layer with every weight pruned, has no buffer at all).
  struct Named {
    const TfLiteTensor* t;
    const char* name;
  };
  const Named constants[] = {{values, "values"}, {offsets, "offsets"},
                             {row_counts, "row_counts"}, {bias, "bias"}};
  for (const Named& c : constants) {
    if (c.t == nullptr) continue;
    const bool empty = ElementCount(c.t) == 0;
    if (!empty && (c.t->allocation_type != kTfLiteMmapRo || c.t->data.raw == nullptr)) {
      MicroPrintf("MAM_SPARSE: %s must be a constant tensor of the model", c.name);
      return kTfLiteError;
    }
  }

  const TfLiteAffineQuantization* wq = Affine(values);
  desc.input_type = input->type;
  desc.values_type = values->type;
  desc.offsets_type = offsets->type;
  desc.row_counts_type = row_counts->type;
  desc.bias_type = bias != nullptr ? bias->type : kTfLiteNoType;
  desc.output_type = output->type;
  desc.input_elements = ElementCount(input);
  desc.output_elements = ElementCount(output);
  desc.input_last_dim = LastDim(input);
  desc.output_last_dim = LastDim(output);
  desc.values_len = ClampToInt32(ElementCount(values));
  desc.offsets_len = ClampToInt32(ElementCount(offsets));
  desc.row_counts_len = ClampToInt32(ElementCount(row_counts));
  desc.bias_len = bias != nullptr ? ClampToInt32(ElementCount(bias)) : 0;
  // Pointers only: mam_validate reads them after it has checked their types and lengths.
  desc.offsets = static_cast<const uint8_t*>(offsets->data.data);
  desc.row_counts = static_cast<const int16_t*>(row_counts->data.data);
  desc.weight_scale_count = wq != nullptr ? wq->scale->size : 0;
  desc.weight_zero_point = 0;
  if (wq != nullptr && wq->zero_point != nullptr) {
    for (int i = 0; i < wq->zero_point->size; ++i) {
      if (wq->zero_point->data[i] != 0) {
        desc.weight_zero_point = wq->zero_point->data[i];
        break;
      }
    }
  }
  desc.input_zero_point = input->params.zero_point;
  desc.output_zero_point = output->params.zero_point;
  // TFLM computes bytes from the shape (it never sees a buffer's length: the model checker,
  // `mam-tf check`, compares those before flashing); the core still refuses a mismatch
  // before it reads a byte.
  desc.values_bytes = static_cast<int64_t>(values->bytes);
  desc.offsets_bytes = static_cast<int64_t>(offsets->bytes);
  desc.row_counts_bytes = static_cast<int64_t>(row_counts->bytes);
  desc.bias_bytes = bias != nullptr ? static_cast<int64_t>(bias->bytes) : 0;
  desc.input_quantized = Affine(input) != nullptr ? 1 : 0;
  desc.output_quantized = Affine(output) != nullptr ? 1 : 0;
  desc.input_scale = input->params.scale;
  desc.output_scale = output->params.scale;
  desc.weight_scales = wq != nullptr ? wq->scale->data : nullptr;
  if (mam_validate(&desc, msg, sizeof(msg)) != MAM_OK) return Fail(msg);

  // Requantization, as TFLM's FULLY_CONNECTED Prepare forms it (the core computes and checks
  // it: the host runtime calls the same function).
  const int32_t m = desc.row_counts_len;
  const int32_t count = desc.weight_scale_count > 1 ? m : 1;
  auto* multiplier = static_cast<int32_t*>(
      context->AllocatePersistentBuffer(context, sizeof(int32_t) * static_cast<size_t>(count)));
  auto* shift = static_cast<int32_t*>(
      context->AllocatePersistentBuffer(context, sizeof(int32_t) * static_cast<size_t>(count)));
  if (multiplier == nullptr || shift == nullptr) {
    return Fail("MAM_SPARSE: the arena has no room for the per-row multipliers");
  }
  if (mam_prepare_requant(&desc, multiplier, shift, &data->requant, msg, sizeof(msg)) !=
      MAM_OK) {
    return Fail(msg);
  }

  data->rows = m;
  data->batches = static_cast<int32_t>(desc.input_elements / data->in_features);
  data->has_bias = bias != nullptr;
  data->is_int16 = input->type == kTfLiteInt16;
  return kTfLiteOk;
}

template <Kind kind>
TfLiteStatus Eval(TfLiteContext* context, TfLiteNode* node) {
  TFLITE_DCHECK(node->user_data != nullptr);
  const auto& data = *static_cast<const OpDataMamSparse*>(node->user_data);
  const TfLiteEvalTensor* input = micro::GetEvalInput(context, node, kInput);
  const TfLiteEvalTensor* values = micro::GetEvalInput(context, node, kValues);
  const TfLiteEvalTensor* offsets = micro::GetEvalInput(context, node, kOffsets);
  const TfLiteEvalTensor* row_counts = micro::GetEvalInput(context, node, kRowCounts);
  const TfLiteEvalTensor* bias =
      data.has_bias ? micro::GetEvalInput(context, node, kBias) : nullptr;
  TfLiteEvalTensor* output = micro::GetEvalOutput(context, node, kOutput);

  mam_csr w;
  w.n = data.in_features;
  w.m = data.rows;
  w.values = static_cast<const int8_t*>(values->data.data);
  w.offsets = static_cast<const uint8_t*>(offsets->data.data);
  w.row_counts = static_cast<const int16_t*>(row_counts->data.data);
  if (data.is_int16) {
    const auto* b = bias != nullptr ? static_cast<const int64_t*>(bias->data.data) : nullptr;
    (kind == Kind::kMam ? mam_sparse_s16 : mac_sparse_s16)(
        &w, &data.requant, b, static_cast<const int16_t*>(input->data.data), data.batches,
        static_cast<int16_t*>(output->data.data));
  } else {
    const auto* b = bias != nullptr ? static_cast<const int32_t*>(bias->data.data) : nullptr;
    (kind == Kind::kMam ? mam_sparse_s8 : mac_sparse_s8)(
        &w, &data.requant, b, static_cast<const int8_t*>(input->data.data), data.batches,
        static_cast<int8_t*>(output->data.data));
  }
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration* Register_MAM_SPARSE() {
  static TFLMRegistration r = micro::RegisterOp(Init, Prepare, Eval<Kind::kMam>);
  return &r;
}

TFLMRegistration* Register_MAC_SPARSE() {
  static TFLMRegistration r = micro::RegisterOp(Init, Prepare, Eval<Kind::kMac>);
  return &r;
}

}  // namespace tflite
