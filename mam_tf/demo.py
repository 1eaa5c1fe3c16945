"""`mam-tf demo`: the end-to-end job at small scale, on built-in synthetic ECG.

Trains two small ECG autoencoders on synthetic windows (ECGSYN model, generated here, no
download): a MAC baseline (Dense encoder) and a MAM one (MAMDense encoder trained with the
MAC -> MAM vanishing-contributions schedule). Prunes both encoders to a small fraction of their
weights (one-shot magnitude pruning, then a short fine-tune with the masks held), converts the
pruned MAM model to an int16x8 .tflite with a MAM_SPARSE op and runs it on the host runtime
(TFLite-Micro's interpreter + the tflm_ops C core). Prints the reconstruction ARSNR of each
stage on held-out windows and writes results.json, demo.png and the .tflite.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

__all__ = ["run_demo", "autoencoder", "add_demo_command"]


def autoencoder(kind, length=256, latent=32, seed=0):
    """A small dense autoencoder: length -> latent (MAC or MAM, ReLU) -> length (sigmoid)."""
    from mam_tf import MAMDense
    from mam_tf._compat import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((length,), name="window")
    if kind == "mam":
        code = MAMDense(latent, activation="relu", beta=1.0, name="encoder")(inp)
    elif kind == "mac":
        code = keras.layers.Dense(latent, activation="relu", name="encoder")(inp)
    else:
        raise ValueError(f"autoencoder: kind must be 'mac' or 'mam', got {kind!r}")
    out = keras.layers.Dense(length, activation="sigmoid", name="decoder")(code)
    return keras.Model(inp, out, name=f"{kind}_autoencoder")


def run_demo(windows=3000, epochs=30, latent=32, remaining=0.05, fine_tune_epochs=5, seed=0,
             out_dir="runs/demo", verbose=1):
    """Runs the demo and returns its results (also written to ``out_dir/results.json``)."""
    from ecg_data import arsnr, synthetic_windows
    from mam_tf import VanishingContributions
    from mam_tf._compat import keras
    from mam_tf.convert import convert
    from mam_tf.pruning import fine_tune, prune_magnitude, strip_pruning
    from mam_tf.runtime import Interpreter

    if not 0.0 < remaining <= 1.0:
        raise ValueError(f"demo: remaining must be in (0, 1], got {remaining}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    t0 = time.perf_counter()
    data = synthetic_windows(windows, length=256, fs=256, snr_db=35, seed=seed)
    n_test = max(1, windows // 10)
    train, test = data[:-n_test], data[-n_test:]
    results = {"windows": windows, "epochs": epochs, "latent": latent, "remaining": remaining,
               "seed": seed, "data_seconds": round(time.perf_counter() - t0, 2)}
    recons = {}
    pruned_models = {}
    for kind in ("mac", "mam"):
        model = autoencoder(kind, latent=latent, seed=seed)
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        callbacks = []
        if kind == "mam":
            # Blend from MAC to MAM over the first 60% of training, then pure MAM.
            callbacks.append(VanishingContributions(length=max(1, int(0.6 * epochs))))
        say(f"training the {kind.upper()} autoencoder ({model.count_params()} parameters)")
        t1 = time.perf_counter()
        model.fit(train, train, epochs=epochs, batch_size=64, validation_split=0.1,
                  callbacks=callbacks, verbose=2 if verbose else 0)
        dense_db = float(arsnr(test, model.predict(test, verbose=0)))
        # One-shot magnitude pruning of the encoder, then a short fine-tune with masks held.
        pruned = prune_magnitude(model, 1.0 - remaining, layers=["encoder"])
        oneshot_db = float(arsnr(test, pruned.predict(test, verbose=0)))
        say(f"pruning the {kind.upper()} encoder to {remaining:.0%} of its weights, fine-tuning")
        fine_tune(pruned, train, train, optimizer=keras.optimizers.Adam(1e-3), loss="mse",
                  epochs=fine_tune_epochs, batch_size=64, verbose=0)
        pruned = strip_pruning(pruned)
        recons[f"{kind.upper()} pruned (Keras)"] = recon = pruned.predict(test, verbose=0)
        results[kind] = {
            "dense_arsnr_db": dense_db,
            "pruned_oneshot_arsnr_db": oneshot_db,
            "pruned_arsnr_db": float(arsnr(test, recon)),
            "train_seconds": round(time.perf_counter() - t1, 2),
        }
        pruned_models[kind] = pruned

    # Deploy the pruned MAM model: int16x8 .tflite with a MAM_SPARSE op, run as the device would.
    conv = convert(pruned_models["mam"], train[:200], mode="int16x8", return_report=True)
    (out / "mam_autoencoder.tflite").write_bytes(conv.tflite)
    device = Interpreter(conv.tflite).run(test)
    recons["MAM int16x8 .tflite (host runtime)"] = device
    enc = conv.layers[0]
    results["mam_int16x8"] = {
        "arsnr_db": float(arsnr(test, device)),
        "tflite_bytes": len(conv.tflite),
        "encoder_nonzeros": enc.nonzeros,
        "encoder_offset_csr_bytes": enc.sparse_bytes,
        "encoder_dense_int8_bytes": enc.dense_int8_bytes,
    }
    with open(out / "results.json", "w") as fh:
        json.dump(results, fh, indent=2)
    _plot(test, recons, results, out / "demo.png")
    say("\n" + conv.report())
    say(f"\nARSNR on {len(test)} held-out synthetic ECG windows (dB):")
    say(f"{'':<34}{'MAC':>8}{'MAM':>8}")
    for key, label in (("dense_arsnr_db", "trained, all weights"),
                       ("pruned_oneshot_arsnr_db", f"pruned to {remaining:.0%}, one-shot"),
                       ("pruned_arsnr_db", f"pruned to {remaining:.0%}, fine-tuned")):
        say(f"{label:<34}{results['mac'][key]:>8.2f}{results['mam'][key]:>8.2f}")
    say(f"{'MAM int16x8 .tflite, host runtime':<34}{'':>8}{results['mam_int16x8']['arsnr_db']:>8.2f}")
    say(f"encoder weights: {enc.sparse_bytes} B offset-CSR vs {enc.dense_int8_bytes} B dense int8")
    say(f"wrote {out / 'results.json'}, {out / 'demo.png'} and {out / 'mam_autoencoder.tflite'}")
    return results


def _plot(test, recons, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bars) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [2, 1]})
    ax.plot(test[0], color="black", lw=1.6, label="input")
    for label, recon in recons.items():
        ax.plot(recon[0], lw=1, label=label)
    ax.set_xlabel("sample")
    ax.set_ylabel("amplitude (scaled)")
    ax.set_title(f"A held-out window, encoders at {results['remaining']:.0%} of their weights")
    ax.legend(loc="upper right", fontsize=8)
    keys = ("dense_arsnr_db", "pruned_oneshot_arsnr_db", "pruned_arsnr_db")
    labels = ("all weights", "pruned", "pruned +\nfine-tune")
    xs = np.arange(len(keys))
    for k, kind in enumerate(("mac", "mam")):
        bars.bar(xs + (k - 0.5) * 0.38, [results[kind][key] for key in keys], 0.38,
                 label=kind.upper())
    bars.set_xticks(xs, labels, fontsize=8)
    bars.set_ylabel("ARSNR (dB)")
    bars.set_title("Reconstruction quality")
    bars.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cmd(args):
    run_demo(windows=args.windows, epochs=args.epochs, latent=args.latent,
             remaining=args.remaining, fine_tune_epochs=args.fine_tune_epochs, seed=args.seed,
             out_dir=args.out)


def add_demo_command(subparsers):
    p = subparsers.add_parser(
        "demo",
        help="train a MAC and a MAM ECG autoencoder on synthetic data and compare them",
        description=__doc__,
    )
    p.add_argument("--windows", type=int, default=3000, help="synthetic ECG windows (256 samples)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs per model")
    p.add_argument("--latent", type=int, default=32, help="units of the encoder layer")
    p.add_argument("--remaining", type=float, default=0.05,
                   help="fraction of encoder weights kept by pruning (default 0.05)")
    p.add_argument("--fine-tune-epochs", type=int, default=5, help="epochs after pruning")
    p.add_argument("--seed", type=int, default=0, help="seed for data and initialisation")
    p.add_argument("--out", default="runs/demo", help="folder for results.json and the plot")
    p.set_defaults(func=_cmd)
