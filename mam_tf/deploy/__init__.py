"""From a trained Keras model to a checked ``.tflite`` and the integers the device computes.

- :mod:`.offset_csr`  the sparse weight encoding of MAM_SPARSE / MAC_SPARSE;
- :mod:`.reference`   the integer reference of both ops in numpy (the operator contract,
  ``docs/operator-contract.md``);
- :mod:`.options`     the custom options a MAM_SPARSE node carries;
- :mod:`.flatbuffer`  reading and editing ``.tflite`` flatbuffers;
- :mod:`.convert`     ``mam-tf convert``: Keras model -> ``.tflite`` with MAM_SPARSE nodes;
- :mod:`.native`      the ctypes binding of the C core (``tflm_ops/``), built on first use;
- :mod:`.node`        a MAM_SPARSE node prepared as the device's Prepare does it;
- :mod:`.check`       ``mam-tf check``: the model checker;
- :mod:`.runtime`     ``mam-tf run``: the host runtime (TFLite-Micro's interpreter + our op);
- :mod:`.fuzz`        corrupted models against the checker and the runtime.
"""
