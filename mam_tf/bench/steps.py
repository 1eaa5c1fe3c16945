"""Measuring a training step: time, CPU time and peak memory, each variant in its own process.

:class:`StepRunner` builds one variant (a Dense or MAMDense layer, or the seed's ECG autoencoder
with a MAC or MAM FC1) and times its training step. :class:`Worker` keeps one StepRunner alive in
a separate Python process, so that a benchmark can drive several variants round by round (their
steps interleaved in time, so that a change in the machine's load reaches all of them alike)
while each process's peak resident memory stays its own. :func:`measure_step` is the one-shot
form (the memory test uses it). ``mam-tf bench train`` (:mod:`mam_tf.bench.train`) builds its
tables on these.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

__all__ = ["StepRunner", "Worker", "measure_step", "VARIANTS", "LAYER_VARIANTS",
           "MODEL_VARIANTS", "OP_VARIANTS", "KERAS3_VARIANTS", "keras3_env", "merged_env",
           "parse_shape"]

LAYER_VARIANTS = ("dense", "mam", "mam-reference")
#: Whole models (mam_tf.models), MAC or pure MAM (beta = 0): the seed-004 ECG autoencoder (FC1 a
#: Dense or a MAMDense) and the seed-000 compressed-sensing oracle with the sizes of `mam-tf
#: reproduce biocas` (m = 32 measurements of n = 128 samples: hidden layers 32 -> 256 -> 256,
#: Dense or MAMDense, then a Dense 256 -> 128).
MODEL_VARIANTS = ("ecg-mac", "ecg-mam", "cs-mac", "cs-mam")
#: The kernels alone, called eagerly: the fused forward op, the fused backward op (on the
#: forward's indices) and the three GEMMs of a Dense training step (y, dX, dW).
OP_VARIANTS = ("op-mam-forward", "op-mam-backward", "op-gemms")
#: Keras 3 layers on the backend of the process (``KERAS_BACKEND``; see :func:`keras3_env`):
#: ``keras.layers.Dense`` and :class:`mam_tf.keras3.MAMDense`. These processes never import
#: tf_keras.
KERAS3_VARIANTS = ("k3-dense", "k3-mam")
VARIANTS = LAYER_VARIANTS + MODEL_VARIANTS + OP_VARIANTS + KERAS3_VARIANTS


def keras3_env(backend):
    """The environment changes of a process running a Keras 3 variant on ``backend``: the
    backend set, ``TF_USE_LEGACY_KERAS`` removed (None: :class:`Worker` drops the variable)."""
    return {"KERAS_BACKEND": backend, "TF_USE_LEGACY_KERAS": None}


class StepRunner:
    """One variant's training step, built once and timed on demand.

    Layer variants (``dense``, ``mam``: MAMDense as shipped, ``mam-reference``: the pure-
    TensorFlow path) time forward + backward w.r.t. input and kernel of one layer on a fixed
    [batch, n_in] input, loss = sum(y^2). Model variants time one optimizer step (Adam) of a
    whole model on a fixed batch; n_in and units are ignored there (the model fixes its layers):
    ``ecg-mac`` / ``ecg-mam``, the seed's autoencoder (mean squared reconstruction error on a
    [batch, 256] batch, FC1 16384 -> 128), and ``cs-mac`` / ``cs-mam``, the compressed-sensing
    oracle (binary cross-entropy of [batch, 128] support labels from [batch, 32] measurements).
    The ``-mam`` models run pure MAM (beta = 0, the state after the vanishing-contributions
    schedule; with beta > 0 a step also computes the MAC product). Op variants time the kernels
    alone, one eager call a step: ``op-mam-forward`` (the fused forward of [batch, n_in] by
    [n_in, units]), ``op-mam-backward`` (the fused backward on that forward's indices) and
    ``op-gemms`` (x @ w, g @ w^T and x^T @ g: the GEMMs of a Dense training step).
    """

    def __init__(self, variant, batch, n_in, units, jit=False, seed=0):
        import numpy as np

        if variant in KERAS3_VARIANTS:
            self.variant, self.batch, self.jit = variant, batch, jit
            self.n_in, self.units = n_in, units
            self._fetch = False  # the Keras 3 step waits for its own results
            self._step, self._x, self._keep, self.intra_op_threads = _keras3_layer_step(
                variant == "k3-mam", batch, n_in, units, seed)
            self._base_kib = _current_rss_kib()
            self._exact_peak = _reset_peak_rss()
            return
        from mam_tf.train.layers import MAMDense
        from mam_tf.train import mam_op
        from mam_tf.train.compat import keras, tf

        if variant not in VARIANTS:
            raise ValueError(f"bench: unknown variant {variant!r}; choose from {VARIANTS}")
        self.variant, self.batch, self.jit = variant, batch, jit
        rng = np.random.default_rng(seed)
        self._fetch = variant not in OP_VARIANTS  # eager ops on the CPU have run on return
        if variant in OP_VARIANTS:
            from mam_tf.train import fused

            if variant != "op-gemms" and not fused.available():
                raise RuntimeError(f"bench: {variant} needs the fused kernel, which is "
                                   f"unavailable ({fused.unavailable_reason()})")
            self.n_in, self.units = n_in, units
            x = tf.constant(rng.standard_normal((batch, n_in)).astype(np.float32))
            w = tf.constant((rng.standard_normal((n_in, units)) / np.sqrt(n_in))
                            .astype(np.float32))
            g = tf.constant(rng.standard_normal((batch, units)).astype(np.float32))
            if variant == "op-mam-forward":
                def step(x):
                    return fused.forward(x, w)
            elif variant == "op-mam-backward":
                _, amax, amin = fused.forward(x, w)

                def step(x):
                    return fused.backward(g, x, w, amax, amin)
            else:
                def step(x):
                    return (tf.matmul(x, w), tf.matmul(g, w, transpose_b=True),
                            tf.matmul(x, g, transpose_a=True))
            self._keep = (w, g)
        elif variant in MODEL_VARIANTS:
            from mam_tf.models import cs_oracle, ecg_autoencoder

            name, kind = variant.split("-")
            if name == "ecg":
                model = ecg_autoencoder(kind, beta=0.0, seed=seed)
                self.n_in, self.units = 16384, 128
                x = tf.constant(rng.standard_normal((batch, model.input_shape[-1]))
                                .astype(np.float32))
                target, loss_fn = x, lambda t, y: tf.reduce_mean(tf.square(y - t))
            else:  # the sizes of `mam-tf reproduce biocas`
                from mam_tf.experiments.biocas import SETUP

                m, n = SETUP["m"], SETUP["n"]
                model = cs_oracle(m, n, kind, beta=0.0, seed=seed)
                self.n_in, self.units = m, 2 * n
                x = tf.constant(rng.standard_normal((batch, m)).astype(np.float32))
                target = tf.constant((rng.random((batch, n)) < 0.2).astype(np.float32))
                loss_fn = keras.losses.BinaryCrossentropy()
            optimizer = keras.optimizers.Adam(1e-3)
            optimizer.build(model.trainable_variables)

            @tf.function(jit_compile=jit)
            def step(x):
                with tf.GradientTape() as tape:
                    loss = loss_fn(target, model(x, training=True))
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables))
                return [loss]

            self._keep = (model, optimizer)
        else:
            self.n_in, self.units = n_in, units
            x = tf.constant(rng.standard_normal((batch, n_in)).astype(np.float32))
            layer = keras.layers.Dense(units) if variant == "dense" else MAMDense(units)
            layer.build((None, n_in))

            def reference_reduce(x, w):
                @tf.custom_gradient
                def f(x, w):
                    y, amax, amin = mam_op.mam_forward_reference(x, w)
                    return y, lambda g: mam_op.mam_backward_reference(g, x, w, amax, amin)

                return f(x, tf.convert_to_tensor(w))

            @tf.function(jit_compile=jit)
            def step(x):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    if variant == "mam-reference":
                        y = reference_reduce(x, layer.kernel) + layer.bias
                    else:
                        y = layer(x)
                    loss = tf.reduce_sum(y * y)
                return tape.gradient(loss, [x, layer.kernel])

            self._keep = layer
        self._step, self._x = step, x
        # Baseline: resident memory now (model, data, TensorFlow), before tracing and stepping;
        # the peak mark is reset to it, so the growth is what tracing and stepping needed.
        self._base_kib = _current_rss_kib()
        self._exact_peak = _reset_peak_rss()
        self.intra_op_threads = tf.config.threading.get_intra_op_parallelism_threads()

    def run(self, steps):
        """Runs `steps` steps; returns [(wall seconds, process CPU seconds)] per step (the CPU
        time of every thread of the process: with T threads it can reach T x wall)."""
        out = []
        for _ in range(steps):
            c0, t0 = _cpu_s(), time.perf_counter()
            result = self._step(self._x)
            if self._fetch:
                [t.numpy() for t in result]
            out.append((time.perf_counter() - t0, _cpu_s() - c0))
        return out

    def memory(self):
        """Peak RSS of the process and its growth over the baseline taken at construction, MiB."""
        import resource

        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        grown = (_peak_rss_kib() if self._exact_peak else peak_kib) - self._base_kib
        return {"peak_rss_mib": peak_kib / 1024.0, "step_rss_growth_mib": grown / 1024.0}


def _keras3_layer_step(mam, batch, n_in, units, seed):
    """(step, x, objects to keep alive, threads) for a Keras 3 Dense or MAMDense layer on the
    backend of this process: forward + backward w.r.t. input and kernel, loss sum(y^2), compiled
    where the backend compiles (tf.function on TensorFlow, jax.jit on JAX; PyTorch runs eagerly,
    as Keras' own torch trainer does). The step returns once its gradients are computed."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal((batch, n_in)).astype(np.float32)
    keras.utils.set_random_seed(seed)
    if mam:
        from mam_tf.keras3 import MAMDense

        layer = MAMDense(units)
    else:
        layer = keras.layers.Dense(units)
    layer.build((None, n_in))
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        kernel = layer.kernel.value
        x = tf.constant(x_np)

        @tf.function
        def graph_step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, [x, kernel])

        def step(x):
            return [t.numpy() for t in graph_step(x)]

        threads = tf.config.threading.get_intra_op_parallelism_threads()
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        x = jnp.asarray(x_np)
        trainable = [v.value for v in layer.trainable_variables]
        fixed = [v.value for v in layer.non_trainable_variables]

        def loss(x, trainable):
            y, _ = layer.stateless_call(trainable, fixed, x)
            return jnp.sum(y * y)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))

        def step(x):
            return jax.block_until_ready(grad(x, trainable))

        threads = None  # XLA's CPU client sizes its own pool
    elif backend == "torch":
        import torch

        x = torch.tensor(x_np, requires_grad=True)
        kernel = layer.kernel.value

        def step(x):
            x.grad = kernel.grad = None
            y = layer(x)
            (y * y).sum().backward()
            return x.grad, kernel.grad

        threads = torch.get_num_threads()
    else:
        raise ValueError(f"bench: the Keras backend {backend!r} is not supported; use "
                         "tensorflow, jax or torch")
    return step, x, layer, threads


def measure_step(variant, batch, n_in, units, steps=5, warmup=1, jit=False, seed=0):
    """Times `steps` training steps of one variant in this process, after `warmup` steps.

    Returns a dict with the median/min step time in seconds and the peak RSS growth in MiB
    (peak of the process minus its resident memory before the first step).
    """
    import statistics

    runner = StepRunner(variant, batch, n_in, units, jit=jit, seed=seed)
    runner.run(warmup)
    times = [t for t, _ in runner.run(steps)]
    return {
        "variant": variant, "batch": batch, "inputs": runner.n_in, "units": runner.units,
        "jit": jit, "median_s": statistics.median(times), "min_s": min(times), "steps": steps,
        **runner.memory(), "intra_op_threads": runner.intra_op_threads,
    }


class Worker:
    """A StepRunner in its own Python process, driven by commands over a pipe.

    ``Worker(variant, batch, n_in, units, jit)`` starts the process and builds the variant;
    ``run(steps)`` returns [(wall, cpu)] per step; ``memory()`` the process's peak RSS;
    ``close()`` ends it (also as a context manager).
    """

    def __init__(self, variant, batch, n_in, units, jit=False, env=None):
        self.label = f"{variant} at ({batch}, {n_in}, {units})" + (" under XLA" if jit else "")
        self._stderr = tempfile.TemporaryFile("w+")  # a pipe nobody reads could fill and block
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "mam_tf.bench.steps", "--worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1,
            env=merged_env(env))
        self._call({"cmd": "init", "variant": variant, "batch": batch, "n_in": n_in,
                    "units": units, "jit": jit})

    def _call(self, message):
        if self._proc.poll() is None:
            self._proc.stdin.write(json.dumps(message) + "\n")
            self._proc.stdin.flush()
            for line in self._proc.stdout:
                if line.startswith("RESULT "):
                    reply = json.loads(line[7:])
                    if "error" in reply:
                        break
                    return reply
        self.close()
        self._stderr.seek(0)
        raise RuntimeError(f"bench: worker for {self.label} failed:\n{self._stderr.read()[-3000:]}")

    def run(self, steps):
        return [tuple(s) for s in self._call({"cmd": "run", "steps": int(steps)})["steps"]]

    def memory(self):
        return self._call({"cmd": "memory"})

    def close(self):
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self._proc.stdin.flush()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def merged_env(changes):
    """os.environ with ``changes`` applied; a value None removes the variable."""
    env = {**os.environ, **(changes or {})}
    return {k: v for k, v in env.items() if v is not None}


def _serve():
    """The worker side of :class:`Worker`: one JSON command per stdin line, one RESULT line."""
    runner = None
    for line in sys.stdin:
        message = json.loads(line)
        try:
            if message["cmd"] == "init":
                runner = StepRunner(message["variant"], message["batch"], message["n_in"],
                                    message["units"], jit=message["jit"])
                reply = {"intra_op_threads": runner.intra_op_threads}
            elif message["cmd"] == "run":
                reply = {"steps": runner.run(message["steps"])}
            elif message["cmd"] == "memory":
                reply = runner.memory()
            else:
                return
        except Exception as e:  # noqa: BLE001  reported to the driver, which raises
            import traceback

            traceback.print_exc()
            reply = {"error": f"{type(e).__name__}: {e}"}
        print("RESULT " + json.dumps(reply), flush=True)


def _cpu_s():
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _reset_peak_rss():
    """Resets the kernel's peak-RSS mark (VmHWM) to the current RSS; False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _current_rss_kib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def parse_shape(text):
    """argparse type for BATCHxINPUTSxUNITS."""
    try:
        b, n, m = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be BATCHxINPUTSxUNITS, got {text!r}") from None
    return b, n, m


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _serve()
    else:
        sys.exit("python -m mam_tf.bench.steps --worker: the process behind mam_tf.bench.steps.Worker "
                 "(see `mam-tf bench train --help` for the benchmark)")
