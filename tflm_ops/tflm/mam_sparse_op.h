/* TFLite-Micro kernels MAM_SPARSE and MAC_SPARSE (docs/operator-contract.md): the glue between
 * TFLM's kernel API and the portable C core (include/mam_sparse/core.h), which holds the
 * algorithm.
 *
 * Register both with a MicroMutableOpResolver (the name strings must outlive it):
 *
 *   resolver.AddCustom("MAM_SPARSE", tflite::Register_MAM_SPARSE());
 *   resolver.AddCustom("MAC_SPARSE", tflite::Register_MAC_SPARSE());
 *
 * Build with the TFLM sources of your project (-DTF_LITE_STATIC_MEMORY as TFLM itself) plus
 * every C file under src/ (sources.cmake lists them) and -I include. Init reads the custom
 * options, Prepare validates the node once (docs/operator-contract.md section 4) and precomputes the
 * requantization, Eval only computes.
 */
#ifndef MAM_SPARSE_TFLM_MAM_SPARSE_OP_H_
#define MAM_SPARSE_TFLM_MAM_SPARSE_OP_H_

#include <cstdint>

#include "mam_sparse/core.h"
#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_common.h"

namespace tflite {

// Per node, in the arena: 40-odd bytes here, plus the multipliers and shifts (8 bytes per
// output row with per-row weight scales, 8 bytes with one scale).
struct OpDataMamSparse {
  // Custom options, as Init read them. options_error is a static string naming what was
  // wrong (nullptr when they were fine): Init cannot fail, so Prepare reports it.
  int32_t in_features;
  int32_t activation;
  int32_t version;
  const char* options_error;
  const char* options_error_key;

  // What Prepare derived.
  mam_requant requant;  // multiplier/shift point to persistent arrays
  int32_t rows;         // M
  int32_t batches;      // B: the input's flat size / N
  bool has_bias;
  bool is_int16;
};

// Custom ops at this TFLM version hand out a pointer to a static registration, as
// Register_DETECTION_POSTPROCESS does; AddCustom copies it.
TFLMRegistration* Register_MAM_SPARSE();
TFLMRegistration* Register_MAC_SPARSE();

}  // namespace tflite

#endif  // MAM_SPARSE_TFLM_MAM_SPARSE_OP_H_
