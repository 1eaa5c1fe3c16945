"""Runs a model's builtin operators through TFLite-Micro in a child process, where an abort
becomes a refusal naming the operator.

:mod:`mam_tf.deploy.builtins` states the kernel preconditions it knows; a precondition it does
not know (an operator outside its list, an assertion deep in a reference kernel) would still
abort the process that runs the model. :func:`probe_model` cuts the model into one small model
per builtin operator (as the host runtime cuts it into runs of builtins), and a child process
builds TFLite-Micro's interpreter for each in turn (Init, Prepare, the arena plan) and invokes it
once on zero inputs, saying which operator it is about to try. If the child dies, the last
operator it named is the one that killed it. MAM_SPARSE / MAC_SPARSE operators are not sent:
their Prepare is the C core's, which validates rather than asserts.

``mam-tf check`` and ``mam-tf run`` probe every model (``--no-probe`` skips it); in Python,
``check_model(data, probe=True)`` or ``Interpreter(model, probe=True)``.
"""
from __future__ import annotations

import base64
import copy
import json
import signal
import subprocess
import sys

import numpy as np

from mam_tf.deploy import flatbuffer as fb
from mam_tf.deploy import options

__all__ = ["probe_model", "single_operator_model", "set_zero_inputs", "TIMEOUT_S"]

#: How long the child may take for the whole model before it counts as hung.
TIMEOUT_S = 300.0


def single_operator_model(checked, op_index: int) -> bytes:
    """The model holding operator ``op_index`` of subgraph 0 alone: its non-constant inputs are
    the model's inputs, its outputs the model's outputs (a model that passed the checker)."""
    model = copy.deepcopy(checked)
    sg = model.subgraphs[0]
    op = sg.operators[op_index]
    ins = [int(t) for t in op.inputs if int(t) >= 0 and not fb.is_constant(model, sg, int(t))]
    outs = [int(t) for t in op.outputs]
    sg.operators = [op]
    sg.inputs = np.array(list(dict.fromkeys(ins)), np.int32)
    sg.outputs = np.array(outs, np.int32)
    model.subgraphs = [sg]
    model.signatureDefs = []
    fb.compact(model)
    return fb.pack(model)


def _arena_bytes(model_bytes: bytes) -> int:
    sg = fb.load(model_bytes).subgraphs[0]
    activations = sum(int(np.prod(t.shape, dtype=np.int64)) * 8
                      for t in sg.tensors if t.shape is not None)
    return max(1 << 20, 4 * activations + 65536)


def probe_model(checked, timeout: float = TIMEOUT_S) -> list:
    """[one line per builtin operator TFLite-Micro refuses or dies on]; ``checked`` is the
    model object :func:`mam_tf.deploy.check.check_model` returned without problems."""
    jobs = []
    for k, sg in enumerate(checked.subgraphs or []):
        if k:
            break  # the host runtime and the device run subgraph 0
        for j, op in enumerate(sg.operators or []):
            kind = fb.op_name(checked, op)
            if kind in (options.MAM_SPARSE, options.MAC_SPARSE):
                continue
            data = single_operator_model(checked, j)
            jobs.append({"op": j, "kind": kind, "arena": _arena_bytes(data),
                         "model": base64.b64encode(data).decode()})
    if not jobs:
        return []
    proc = subprocess.run([sys.executable, "-m", "mam_tf.deploy.probe"],
                          input=json.dumps(jobs), capture_output=True, text=True,
                          timeout=timeout)
    kinds = {job["op"]: job["kind"] for job in jobs}
    problems, started = [], None
    for line in proc.stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # TFLite-Micro's own prints
        if record.get("start") is not None:
            started = record["start"]
        elif record.get("error") is not None:
            j = record["op"]
            problems.append(f"operator {j} {kinds[j]}: TFLite-Micro refuses it: {record['error']}")
            started = None
        elif record.get("done") is not None:
            started = None
    if proc.returncode != 0:
        how = (f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        if started is None:
            tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
            problems.append(f"TFLite-Micro's probe process ended with {how} before trying an "
                            f"operator: {tail[0]}")
        else:
            problems.append(f"operator {started} {kinds[started]}: TFLite-Micro's kernel ended "
                            f"the process ({how}) while preparing or running it")
    return problems


def set_zero_inputs(interp) -> None:
    """Sets every input of a tflite-micro interpreter to zeros of its shape and type."""
    k = 0
    while True:
        try:
            details = interp.get_input_details(k)
        except Exception:  # the wheel says "no input k" with a bare exception
            break
        interp.set_input(np.zeros(details["shape"], details["dtype"]), k)
        k += 1


def _child() -> int:
    """Reads the jobs from stdin; for each prints {"start": j}, then {"done": j} or
    {"op": j, "error": ...}; dies where TFLite-Micro dies."""
    import contextlib
    import io
    import os

    from tflite_micro.python.tflite_micro import runtime as tflm

    jobs = json.loads(sys.stdin.read())
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the records, apart from what TFLM prints
    for job in jobs:
        j = job["op"]
        out.write(json.dumps({"start": j}) + "\n")
        out.flush()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                interp = tflm.Interpreter.from_bytes(base64.b64decode(job["model"]),
                                                     arena_size=job["arena"])
            set_zero_inputs(interp)
            interp.invoke()
        except Exception as err:  # an error status: the interpreter said no, and lives
            out.write(json.dumps({"op": j, "error": " ".join(str(err).split())}) + "\n")
            continue
        out.write(json.dumps({"done": j}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child())
