"""Corruption fuzzer of the host runtime: a corrupted model is an error, never a crash.

Each case takes one of the base models (converted int8 and int16x8 models holding
FULLY_CONNECTED, MAM_SPARSE and MAC_SPARSE ops), corrupts its bytes (bit flips, byte
overwrites, truncation, a splice of two models, a chunk inserted or deleted), writes it to a
file and loads and runs it with :class:`mam_tf.deploy.runtime.Interpreter` (which checks it with
:mod:`mam_tf.deploy.check` first). Cases run in worker processes, many per worker; a worker that dies
(a signal: SIGSEGV, SIGABRT, ...) records a death for the case it was running and a new
worker goes on with the next case. The tally counts: accepted (ran), refused (ValueError),
other exceptions, deaths, and refusals whose message does not name the file, a tensor or an
operator.

``mam-tf fuzz 100000`` runs it from the command line.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["base_models", "corrupt", "run", "format_tally", "clean", "MUTATIONS",
           "add_fuzz_command"]

MUTATIONS = ("bitflip", "overwrite", "truncate", "splice", "insert", "delete")


def base_models() -> dict:
    """{name: tflite bytes}: converted int8 and int16x8, a Dense -> MAMDense -> pruned Dense
    model (FULLY_CONNECTED, MAM_SPARSE, MAC_SPARSE), a MAMDense-only model, and a Conv1D ->
    MaxPooling1D -> MAMDense -> Dense model with float input and output (CONV_2D,
    MAX_POOL_2D, RESHAPE, QUANTIZE, DEQUANTIZE)."""
    from mam_tf.train.layers import MAMDense
    from mam_tf.train.compat import keras
    from mam_tf.deploy.convert import convert

    out = {}
    for mode in ("int8", "int16x8"):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        inp = keras.Input((20,))
        h = keras.layers.Dense(16, activation="relu", name="pre")(inp)
        h = MAMDense(8, activation="relu", name="enc", bias_initializer="random_normal")(h)
        model = keras.Model(inp, keras.layers.Dense(20, name="dec")(h))
        rng = np.random.default_rng(0)
        for name in ("enc", "dec"):
            layer = model.get_layer(name)
            w = layer.kernel.numpy()
            w[rng.random(w.shape) < 0.7] = 0.0
            layer.kernel.assign(w)
        data = rng.standard_normal((64, 20)).astype(np.float32)
        out[f"{mode}-fc-mam-mac"] = convert(model, data, mode=mode, mac_sparse_below=0.5)
        keras.backend.clear_session()
        keras.utils.set_random_seed(1)
        inp = keras.Input((12,))
        model = keras.Model(inp, MAMDense(6, use_bias=False, name="only")(inp))
        out[f"{mode}-mam"] = convert(model, data[:, :12], mode=mode)
        keras.backend.clear_session()
        keras.utils.set_random_seed(2)
        inp = keras.Input((16, 1))
        h = keras.layers.Conv1D(3, 3, padding="same", activation="relu", name="conv")(inp)
        h = keras.layers.MaxPooling1D(2, name="pool")(h)
        h = MAMDense(5, activation="relu", name="mam")(keras.layers.Flatten()(h))
        model = keras.Model(inp, keras.layers.Dense(4, name="fc")(h))
        out[f"{mode}-conv-pool"] = convert(model, rng.standard_normal((32, 16, 1), np.float32),
                                           mode=mode, float_io=True)
    return out


def corrupt(rng: np.random.Generator, models: list) -> tuple:
    """(mutation name, base index, corrupted bytes) of one case."""
    k = int(rng.integers(len(models)))
    data = bytearray(models[k])
    kind = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
    n = len(data)
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 5))):
            bit = int(rng.integers(n * 8))
            data[bit // 8] ^= 1 << (bit % 8)
    elif kind == "overwrite":
        for _ in range(int(rng.integers(1, 4))):
            at, length = int(rng.integers(n)), int(rng.integers(1, 9))
            fill = rng.choice([0x00, 0xFF, -1])
            for i in range(at, min(n, at + length)):
                data[i] = int(rng.integers(256)) if fill < 0 else int(fill)
    elif kind == "truncate":
        data = data[:int(rng.integers(n))]
    elif kind == "splice":
        other = models[int(rng.integers(len(models)))]
        data = data[:int(rng.integers(n))] + other[int(rng.integers(len(other))):]
    elif kind == "insert":
        at = int(rng.integers(n))
        data = data[:at] + bytes(rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8)) \
            + data[at:]
    else:  # delete
        at = int(rng.integers(n))
        data = data[:at] + data[at + int(rng.integers(1, 17)):]
    return kind, k, bytes(data)


def _case(seed: int, index: int, models: list):
    return corrupt(np.random.default_rng([seed, index]), models)


#: What a refusal must name beyond the file's path: a tensor, an operator, an operator code, a
#: buffer, a metadata entry, the subgraph, a model input or output, the schema version, the
#: file identifier, or the byte or offset where the flatbuffer stops verifying.
NAMED = re.compile(
    r"tensor (?:index )?\d+|operator \d+|operator code \d+|buffer \d+|metadata '|subgraph"
    r"|model (?:input|output)|schema version|\.tflite identifier|byte \d+|offset \d+"
    r"|nested too deeply|\d+ bytes: too short|more than \d+ tables")


def _names_something(message: str, path: str) -> bool:
    """The refusal names the thing refused, not only the file (every runtime error starts
    with the file's path, which names nothing inside it)."""
    return NAMED.search(message.replace(path, "")) is not None


def worker_main(folder: str, seed: int, start: int, stop: int):
    """Runs cases start..stop-1; prints BEGIN/RESULT lines (the parent's protocol)."""
    import warnings

    warnings.simplefilter("ignore")
    from mam_tf.deploy.runtime import Interpreter

    folder = Path(folder)
    models = [p.read_bytes() for p in sorted(folder.glob("base-*.tflite"))]
    path = str(folder / f"case-{os.getpid()}.tflite")
    for i in range(start, stop):
        kind, base, data = _case(seed, i, models)
        Path(path).write_bytes(data)
        print(f"BEGIN {i}", flush=True)
        if os.environ.get("MAM_TF_FUZZ_KILL_AT") == str(i):  # the harness's own test
            os.kill(os.getpid(), signal.SIGSEGV)
        r = {"i": i, "kind": kind, "base": base}
        try:
            interp = Interpreter(path, backend="core")
            x = np.random.default_rng(i).standard_normal([2] + interp.input_shape[1:])
            interp.run(x.astype(np.float32))
            r["outcome"] = "accepted"
        except ValueError as err:
            r["outcome"] = "refused"
            r["named"] = _names_something(str(err), path)
            r["specific"] = "tensor" in str(err) or "operator" in str(err)
            r["message"] = str(err)[:300]
        except BaseException as err:  # noqa: BLE001 - what the fuzzer is looking for
            r["outcome"] = "exception"
            r["message"] = f"{type(err).__name__}: {err}"[:300]
        print("RESULT " + json.dumps(r), flush=True)


def _spawn(folder, seed, start, stop, log):
    code = ("import sys; from mam_tf.deploy.fuzz import worker_main; "
            "worker_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2])]
                                         + ([os.environ["PYTHONPATH"]]
                                            if os.environ.get("PYTHONPATH") else []))}
    return subprocess.Popen([sys.executable, "-c", code, str(folder), str(seed), str(start),
                             str(stop)], stdout=subprocess.PIPE, stderr=log, text=True, env=env)


def run(cases: int, seed: int = 0, workers: int = 2, models: dict = None,
        progress: bool = False) -> dict:
    """Runs ``cases`` corruption cases; returns the tally (see :func:`format_tally`)."""
    import selectors

    models = base_models() if models is None else models
    tally = {"cases": 0, "accepted": 0, "refused": 0, "exceptions": 0, "deaths": 0,
             "unnamed": 0, "specific": 0, "by_mutation": {}, "examples": {}}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cases, desc="corrupted models", unit="case")
    with tempfile.TemporaryDirectory(prefix="mam-fuzz-") as folder:
        for k, name in enumerate(sorted(models)):
            (Path(folder) / f"base-{k}-{name}.tflite").write_bytes(models[name])
        chunks = np.array_split(np.arange(cases), max(1, workers))
        todo = [(int(c[0]), int(c[-1]) + 1) for c in chunks if len(c)]
        sel = selectors.DefaultSelector()
        log = tempfile.TemporaryFile()
        procs = {}

        def start(lo, hi):
            if lo >= hi:
                return
            p = _spawn(folder, seed, lo, hi, log)
            procs[p] = {"lo": lo, "hi": hi, "current": None}
            sel.register(p.stdout, selectors.EVENT_READ, p)

        for lo, hi in todo:
            start(lo, hi)
        while procs:
            for key, _ in sel.select():
                p = key.data
                st = procs[p]
                line = p.stdout.readline()
                if line.startswith("BEGIN "):
                    st["current"] = int(line[6:])
                elif line.startswith("RESULT "):
                    r = json.loads(line[7:])
                    _count(tally, r)
                    st["current"] = None
                    st["lo"] = r["i"] + 1
                    if bar:
                        bar.update(1)
                elif line == "":
                    sel.unregister(p.stdout)
                    rc = p.wait()
                    del procs[p]
                    if st["current"] is not None:  # died while running a case
                        i = st["current"]
                        kind, base, _ = _case(seed, i, [models[n] for n in sorted(models)])
                        _count(tally, {"i": i, "kind": kind, "base": base, "outcome": "death",
                                       "message": f"exit status {rc}"})
                        if bar:
                            bar.update(1)
                        start(i + 1, st["hi"])
                    elif rc != 0 or st["lo"] < st["hi"]:
                        log.seek(0)
                        raise RuntimeError(f"fuzz worker exited {rc} between cases:\n"
                                           f"{log.read().decode('utf-8', 'replace')[-3000:]}")
        log.close()
    if bar:
        bar.close()
    return tally


def _count(tally, r):
    tally["cases"] += 1
    outcome = {"accepted": "accepted", "refused": "refused", "exception": "exceptions",
               "death": "deaths"}[r["outcome"]]
    tally[outcome] += 1
    per = tally["by_mutation"].setdefault(r["kind"], {})
    per[outcome] = per.get(outcome, 0) + 1
    if r["outcome"] == "refused":
        tally["specific"] += bool(r.get("specific"))
        if not r.get("named"):
            tally["unnamed"] += 1
            tally["examples"].setdefault("unnamed", []).append(r)
    if r["outcome"] in ("exception", "death"):
        tally["examples"].setdefault(outcome, []).append(r)
    for key in tally["examples"]:
        del tally["examples"][key][5:]


def clean(tally) -> bool:
    """No death, no exception other than ValueError, every refusal names what it refuses."""
    return tally["deaths"] == 0 and tally["exceptions"] == 0 and tally["unnamed"] == 0


def format_tally(tally) -> str:
    lines = [f"cases={tally['cases']} accepted={tally['accepted']} refused={tally['refused']} "
             f"exceptions={tally['exceptions']} deaths={tally['deaths']} "
             f"unnamed_messages={tally['unnamed']} naming_a_tensor_or_operator={tally['specific']}"]
    for kind, per in sorted(tally["by_mutation"].items()):
        lines.append(f"  {kind}: " + " ".join(f"{k}={v}" for k, v in sorted(per.items())))
    for what, rs in tally["examples"].items():
        for r in rs:
            lines.append(f"  {what} case {r['i']} ({r['kind']} of base {r['base']}): "
                         f"{r.get('message', '')}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Command line: mam-tf fuzz
# ------------------------------------------------------------------------------------------
def _cmd_fuzz(args):
    if args.cases < 1:
        raise ValueError(f"CASES must be >= 1, got {args.cases}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    tally = run(args.cases, seed=args.seed, workers=args.workers, progress=True)
    print(format_tally(tally))
    if args.out:
        Path(args.out).write_text(json.dumps(tally, indent=1))
        print(f"wrote {args.out}")
    return 0 if clean(tally) else 1


def add_fuzz_command(subparsers):
    """Adds ``fuzz`` (the corruption fuzzer of the host runtime) to argparse subparsers."""
    from mam_tf.common.cliargs import add_out

    p = subparsers.add_parser(
        "fuzz", help="corrupt converted models N times: every one must be refused, never crash",
        description="Corrupts converted models CASES times (bit flips, byte overwrites, "
        "truncations, splices, inserted or deleted chunks) and runs each through the model "
        "checker and the host runtime in crash-isolated worker processes, then prints the "
        "tally. Exit status 0 when no case crashed, raised anything but ValueError, or was "
        "refused with a message that names nothing; 1 otherwise.")
    p.add_argument("cases", type=int, metavar="CASES", help="number of corrupted models to try")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the corruptions: the same seed gives the same cases (default 0)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    add_out(p, "also write the tally as JSON to this file")
    p.set_defaults(func=_cmd_fuzz)
    return p
