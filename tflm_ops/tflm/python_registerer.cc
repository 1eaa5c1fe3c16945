/* Registers MAM_SPARSE and MAC_SPARSE with the tflite-micro Python interpreter.
 *
 * Host only (tests and local checks), never firmware: load the shared library first with
 * ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL), then
 *   runtime.Interpreter.from_bytes(model, custom_op_registerers=["mam_tf_register_ops"])
 * The interpreter finds this function with dlsym and calls it with its PythonOpsResolver.
 */
#include "mam_sparse_op.h"
#include "python/tflite_micro/python_ops_resolver.h"

extern "C" bool mam_tf_register_ops(tflite::PythonOpsResolver* resolver) {
  return resolver != nullptr &&
         resolver->AddCustom("MAM_SPARSE", tflite::Register_MAM_SPARSE()) == kTfLiteOk &&
         resolver->AddCustom("MAC_SPARSE", tflite::Register_MAC_SPARSE()) == kTfLiteOk;
}
