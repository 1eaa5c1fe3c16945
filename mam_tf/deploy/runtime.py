"""Runs a .tflite holding MAM_SPARSE / MAC_SPARSE ops on the host, computing what the device computes.

The model is cut at its custom ops. Each run of builtin ops becomes a small model of its own
that TFLite-Micro's interpreter (the ``tflite-micro`` package) runs; each MAM_SPARSE /
MAC_SPARSE op runs in the C core of ``tflm_ops`` through :mod:`mam_tf.deploy.native` (or, if that
library cannot be built here, in the numpy reference :mod:`mam_tf.deploy.reference`, which is
bit-exact with it). Integer tensors flow between the parts unchanged, so the result is the
device's, bit for bit, for every op TFLite-Micro and the core implement.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import warnings
from pathlib import Path

import numpy as np

from mam_tf.common.arrays import load_array
from mam_tf.common.cliargs import add_deprecated, add_out
from mam_tf.deploy import flatbuffer as fb
from mam_tf.deploy import check
from mam_tf.deploy import options
from mam_tf.deploy import reference
from mam_tf.deploy import node

__all__ = ["Interpreter"]

_CUSTOM = (options.MAM_SPARSE, options.MAC_SPARSE)
#: The largest activation tensor the host runtime allocates (a microcontroller model's are
#: kilobytes; a corrupted shape must not make the host allocate gigabytes).
MAX_ACTIVATION_ELEMENTS = 1 << 22


def _kernels(backend):
    """The module computing MAM_SPARSE/MAC_SPARSE: the C core, or the numpy reference."""
    if backend == "reference":
        return reference
    try:
        from mam_tf.deploy import native

        native.load()
        return native
    except Exception as err:  # no compiler, no cmake: say so once, stay correct
        if backend == "core":
            raise
        warnings.warn(f"mam_tf.deploy.runtime: the C core is unavailable ({err}); using the numpy "
                      "reference, which computes the same integers more slowly", stacklevel=3)
        return reference


class _SparseStep:
    """One MAM_SPARSE / MAC_SPARSE op, prepared as the device's Prepare prepares it."""

    def __init__(self, model, sg, op_index):
        self.node = node.prepare(model, sg, op_index)
        self.kind, self.input, self.output = self.node.kind, self.node.input, self.node.output
        self.csr, self.bias = self.node.csr, self.node.bias

    def run(self, tensors, kernels):
        nd = self.node
        fn = kernels.mam_sparse if self.kind == options.MAM_SPARSE else kernels.mac_sparse
        x = tensors[self.input].reshape(-1, self.csr.shape[1])
        y = fn(x, self.csr, self.bias, nd.multiplier, nd.shift,
               input_zero_point=nd.input_zero_point, output_zero_point=nd.output_zero_point,
               act_min=nd.act_min, act_max=nd.act_max)
        tensors[self.output] = np.asarray(y).reshape(nd.output_shape)


class _BuiltinStep:
    """A run of builtin ops, as a model of its own for TFLite-Micro's interpreter."""

    def __init__(self, checked, op_indices, inputs, outputs):
        model = copy.deepcopy(checked)  # the checked model object, not a second parse
        sg = model.subgraphs[0]
        sg.operators = [sg.operators[i] for i in op_indices]
        sg.inputs = np.array(inputs, np.int32)
        sg.outputs = np.array(outputs, np.int32)
        model.signatureDefs = []  # a part of the model: the whole model's signature does not apply
        # Tensor indices change when the model is compacted: follow the tensors by identity.
        ins = [sg.tensors[i] for i in inputs]
        outs = [sg.tensors[i] for i in outputs]
        fb.compact(model)
        self.inputs, self.outputs = list(inputs), list(outputs)
        positions = {id(t): k for k, t in enumerate(sg.tensors)}
        assert [positions[id(t)] for t in ins] == list(sg.inputs)
        assert [positions[id(t)] for t in outs] == list(sg.outputs)
        activations = sum(int(np.prod(t.shape, dtype=np.int64)) * 8
                          for t in sg.tensors if t.shape is not None)
        self.data = fb.pack(model)
        from tflite_micro.python.tflite_micro import runtime as tflm

        with contextlib.redirect_stdout(io.StringIO()):  # it prints a resource-variable count
            self.interp = tflm.Interpreter.from_bytes(
                self.data, arena_size=max(1 << 20, 4 * activations + 65536))

    def run(self, tensors):
        for k, idx in enumerate(self.inputs):
            self.interp.set_input(tensors[idx], k)
        self.interp.invoke()
        for k, idx in enumerate(self.outputs):
            tensors[idx] = np.array(self.interp.get_output(k))


class Interpreter:
    """Runs a .tflite with MAM_SPARSE / MAC_SPARSE ops on the host.

    ``Interpreter(path_or_bytes).run(x)`` takes float inputs [B, ...] and returns float
    outputs: inputs are quantized as the model's input tensor says (round half away from
    zero, clamped) and outputs dequantized; ``run_raw`` takes and returns the integer tensors.
    After a run, ``tensors`` maps every tensor index of the last sample to its integer value.

    Args:
      model: a path to a .tflite file, or its bytes.
      backend: ``"auto"`` (the C core if it can be built, else the numpy reference),
        ``"core"`` or ``"reference"``.
      probe: ``True``: also run each builtin operator through TFLite-Micro in a child process
        before this process does (:mod:`mam_tf.deploy.probe`, a few seconds): a model whose
        kernel would abort is refused, naming the operator. ``"auto"`` (the default): only for
        models holding a builtin operator the static checks do not know (they run always and
        hold every precondition :mod:`mam_tf.deploy.builtins` states). ``False``: never.
    """

    def __init__(self, model, backend="auto", probe="auto"):
        name = "the model"
        if isinstance(model, (str, Path)):
            path = Path(model)
            name = str(path)
            if not path.is_file():
                raise ValueError(f"mam_tf.deploy.runtime: no model file at {name!r}")
            try:
                model = path.read_bytes()
            except OSError as err:
                raise ValueError(f"mam_tf.deploy.runtime: cannot read {name!r} ({err.strerror})") from None
        self._data = bytes(model)
        self._kernels = _kernels(backend)
        self.backend = "reference" if self._kernels is reference else "core"
        # Nothing reaches TFLite-Micro (or the core) before the whole file has been checked.
        tfl, problems = check.check_model(self._data, probe=probe)
        if problems:
            more = f" (and {len(problems) - 1} more problems: `mam-tf check` lists them)" \
                if len(problems) > 1 else ""
            raise ValueError(f"mam_tf.deploy.runtime: {name}: {problems[0]}{more}")
        if len(tfl.subgraphs) != 1:
            raise ValueError(f"mam_tf.deploy.runtime: {name}: {len(tfl.subgraphs)} subgraphs; one is "
                             "supported")
        sg = tfl.subgraphs[0]
        for i, t in enumerate(sg.tensors):
            size = int(np.prod(t.shape, dtype=np.int64)) if t.shape is not None else 1
            if not fb.is_constant(tfl, sg, i) and size > MAX_ACTIVATION_ELEMENTS:
                raise ValueError(
                    f"mam_tf.deploy.runtime: {name}: tensor {i} '{fb.tensor_name(t)}' has shape "
                    f"{[int(d) for d in t.shape]} ({size} elements); the host runtime takes "
                    f"activations of at most {MAX_ACTIVATION_ELEMENTS} elements")
        if len(sg.inputs) != 1 or len(sg.outputs) != 1:
            raise ValueError(f"mam_tf.deploy.runtime: {name}: the model has input tensors "
                             f"{[int(t) for t in sg.inputs]} and output tensors "
                             f"{[int(t) for t in sg.outputs]}; models with one input and one "
                             "output are supported")
        self.input_index = int(sg.inputs[0])
        self.output_index = int(sg.outputs[0])
        self.input_name = fb.tensor_name(sg.tensors[self.input_index])
        try:
            self.input_dtype = fb.numpy_dtype(sg.tensors[self.input_index].type)
            self.output_dtype = fb.numpy_dtype(sg.tensors[self.output_index].type)
        except ValueError as err:
            raise ValueError(f"mam_tf.deploy.runtime: {name}: model input/output: {err}") from None
        self.input_shape = [int(d) for d in sg.tensors[self.input_index].shape]
        if len(self.input_shape) < 2:
            raise ValueError(
                f"mam_tf.deploy.runtime: {name}: model input tensor {self.input_index} "
                f"'{self.input_name}' has shape {self.input_shape}; the host runtime takes "
                "[batch, ...] inputs (rank 2 or more)")
        self.input_quantization = fb.quantization(sg.tensors[self.input_index])
        self.output_quantization = fb.quantization(sg.tensors[self.output_index])
        try:
            self.steps = self._plan(tfl, sg)
        except ValueError as err:
            raise ValueError(f"mam_tf.deploy.runtime: {name}: {err}") from None
        except RuntimeError as err:  # TFLite-Micro refused a part while allocating it
            raise ValueError(f"mam_tf.deploy.runtime: {name}: TFLite-Micro refused the builtin ops "
                             f"({' '.join(str(err).split())})") from None
        self.tensors = {}

    def _plan(self, tfl, sg):
        kinds = [fb.op_name(tfl, op) for op in sg.operators]
        needed_later = [set() for _ in kinds]  # tensors read by ops after position k
        later = {int(t) for t in sg.outputs}
        for k in range(len(kinds) - 1, -1, -1):
            needed_later[k] = set(later)
            later.update(int(t) for t in sg.operators[k].inputs if t >= 0)
        steps, run = [], []

        def flush():
            if not run:
                return
            produced = {int(t) for i in run for t in sg.operators[i].outputs}
            inputs, outputs = [], []
            for i in run:
                for t in sg.operators[i].inputs:
                    t = int(t)
                    if t >= 0 and t not in produced and not fb.is_constant(tfl, sg, t) \
                            and t not in inputs:
                        inputs.append(t)
            for i in run:
                for t in sg.operators[i].outputs:
                    if int(t) in needed_later[run[-1]] and int(t) not in outputs:
                        outputs.append(int(t))
            steps.append(_BuiltinStep(tfl, list(run), inputs, outputs))
            run.clear()

        for k, kind in enumerate(kinds):
            if kind in _CUSTOM:
                flush()
                steps.append(_SparseStep(tfl, sg, k))
            elif tfl.operatorCodes[sg.operators[k].opcodeIndex].customCode:
                raise ValueError(f"mam_tf.deploy.runtime: custom op {kind!r} is not known to the host runtime")
            else:
                run.append(k)
        flush()
        return steps

    def run_raw(self, x):
        """Integer input [B, ...] (the model input's type) -> integer output [B, ...]."""
        x = np.asarray(x)
        if x.dtype != self.input_dtype:
            raise ValueError(f"mam_tf.deploy.runtime: run_raw takes {self.input_dtype} input, got {x.dtype}")
        per_sample = self.input_shape[1:]
        if list(x.shape[1:]) != per_sample:
            raise ValueError(f"mam_tf.deploy.runtime: input samples have shape {list(x.shape[1:])}, the "
                             f"model takes {per_sample}")
        outs = []
        for sample in x:
            tensors = {self.input_index: sample[None]}
            for step in self.steps:
                if isinstance(step, _SparseStep):
                    step.run(tensors, self._kernels)
                else:
                    step.run(tensors)
            outs.append(tensors[self.output_index])
            self.tensors = tensors
        return np.concatenate(outs, axis=0)

    def quantize_input(self, x):
        scales, zps = self.input_quantization
        if scales is None:
            return np.asarray(x, self.input_dtype)
        info = np.iinfo(self.input_dtype)
        # As TFLite's QUANTIZE (AffineQuantize): float32 in, divided by the scale in double,
        # rounded half away from zero.
        q = np.asarray(x, np.float32).astype(np.float64) / np.float64(scales[0])
        q = np.sign(q) * np.floor(np.abs(q) + 0.5) + zps[0]
        return np.clip(q, info.min, info.max).astype(self.input_dtype)

    def dequantize_output(self, y):
        scales, zps = self.output_quantization
        if scales is None:
            return np.asarray(y, np.float32)
        return ((np.asarray(y, np.int64) - zps[0]) * np.float64(scales[0])).astype(np.float32)

    def run(self, x):
        """Float input [B, ...] -> float output [B, ...], computed as the device computes it.

        Refuses NaN and infinite inputs (ValueError naming the model input): quantizing them
        has no meaning."""
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ValueError(f"mam_tf.deploy.runtime: input '{self.input_name}' takes numbers, got "
                             f"dtype {x.dtype}")
        if np.issubdtype(x.dtype, np.inexact):
            bad = ~np.isfinite(x)
            if bad.any():
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(f"mam_tf.deploy.runtime: input '{self.input_name}' holds "
                                 f"{int(bad.sum())} non-finite values (NaN or inf; the first at "
                                 f"index {first}: {x[first]})")
        return self.dequantize_output(self.run_raw(self.quantize_input(x)))


def _cmd_run(args):
    interp = Interpreter(args.model, backend=args.backend, probe=args.probe)
    x = load_array(args.data, args.data_key)
    y = interp.run(x)
    print(f"ran {len(x)} samples through {args.model} (MAM_SPARSE on the {interp.backend})")
    if args.out:
        np.save(args.out, y)
        print(f"wrote {args.out} {y.shape}")
    target = None
    if args.target:
        target = np.asarray(load_array(args.target, key_flag="a .npy"))
        if target.size != y.size:
            raise ValueError(f"--target {args.target} has shape {list(target.shape)}; the "
                             f"outputs have shape {list(y.shape)}")
    elif args.autoencoder:
        target = np.asarray(x)
        if target.size != y.size:
            raise ValueError(f"--autoencoder: the inputs have shape {list(target.shape)}, the "
                             f"outputs {list(y.shape)}")
    if target is not None:
        from ecg_data import arsnr

        print(f"ARSNR: {arsnr(target.reshape(y.shape), y):.2f} dB")


def add_run_command(subparsers):
    p = subparsers.add_parser(
        "run",
        help="run a .tflite with MAM_SPARSE ops on this PC, as the device would",
        description="Runs a .tflite from `mam-tf convert` on the host: builtin ops through "
        "TFLite-Micro's interpreter, MAM_SPARSE/MAC_SPARSE through the tflm_ops C core. Float "
        "in, float out (quantized and dequantized with the model's own parameters).",
    )
    p.add_argument("model", help="the .tflite file")
    p.add_argument("--data", required=True, help="inputs: .npy, or .npz (see --data-key)")
    p.add_argument("--data-key", help="array name inside the .npz (default: its only array)")
    add_out(p, "save the outputs to this .npy")
    add_deprecated(p, "--output", "-o/--out", dest="out")
    p.add_argument("--target", help="expected outputs (.npy/.npz): print the ARSNR against them")
    p.add_argument("--autoencoder", action="store_true",
                   help="the target is the input itself: print the reconstruction ARSNR")
    p.add_argument("--backend", choices=("auto", "core", "reference"), default="auto",
                   help="what computes MAM_SPARSE: the C core, the numpy reference, or auto")
    p.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True,
                   help="first run each builtin operator through TFLite-Micro in a child "
                   "process, so that a kernel that would abort is refused by name (a few "
                   "seconds; default: on)")
    p.set_defaults(func=_cmd_run)
