"""`mam-tf demo`: the end-to-end job at small scale, on built-in synthetic ECG.

Trains two small ECG autoencoders on synthetic windows (ECGSYN model, generated here, no
download): a MAC baseline (Dense encoder) and a MAM one (MAMDense encoder trained with the
MAC -> MAM vanishing-contributions schedule); converts the MAM one to an int16x8 .tflite with a
MAM_SPARSE op and runs it on the host runtime (TFLite-Micro's interpreter + the C core), then
reports the reconstruction ARSNR of each on held-out windows, a JSON file of the numbers, the
.tflite and a PNG of an example reconstruction.
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


def run_demo(windows=3000, epochs=30, latent=32, seed=0, out_dir="runs/demo", verbose=1):
    """Runs the demo and returns its results (also written to ``out_dir/results.json``)."""
    from ecg_data import arsnr, synthetic_windows
    from mam_tf import VanishingContributions
    from mam_tf._compat import keras

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = synthetic_windows(windows, length=256, fs=256, snr_db=35, seed=seed)
    n_test = max(1, windows // 10)
    train, test = data[:-n_test], data[-n_test:]
    results = {"windows": windows, "epochs": epochs, "latent": latent, "seed": seed,
               "data_seconds": round(time.perf_counter() - t0, 2)}
    models = {}
    for kind in ("mac", "mam"):
        model = autoencoder(kind, latent=latent, seed=seed)
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        callbacks = []
        if kind == "mam":
            # Blend from MAC to MAM over the first 60% of training, then pure MAM.
            callbacks.append(VanishingContributions(length=max(1, int(0.6 * epochs))))
        if verbose:
            print(f"training the {kind.upper()} autoencoder ({model.count_params()} parameters)")
        t1 = time.perf_counter()
        hist = model.fit(train, train, epochs=epochs, batch_size=64, validation_split=0.1,
                         callbacks=callbacks, verbose=2 if verbose else 0)
        recon = model.predict(test, verbose=0)
        results[kind] = {
            "test_arsnr_db": float(arsnr(test, recon)),
            "final_val_loss": float(hist.history["val_loss"][-1]),
            "train_seconds": round(time.perf_counter() - t1, 2),
        }
        models[kind] = (model, recon)
    # Deploy the MAM model: int16x8 .tflite with a MAM_SPARSE op, run as the device would.
    from mam_tf.convert import convert
    from mam_tf.runtime import Interpreter

    conv = convert(models["mam"][0], train[:200], mode="int16x8", return_report=True)
    (out / "mam_autoencoder.tflite").write_bytes(conv.tflite)
    device = Interpreter(conv.tflite).run(test)
    results["mam_int16x8"] = {
        "test_arsnr_db": float(arsnr(test, device)),
        "tflite_bytes": len(conv.tflite),
        "encoder_offset_csr_bytes": conv.layers[0].sparse_bytes,
        "encoder_dense_int8_bytes": conv.layers[0].dense_int8_bytes,
    }
    if verbose:
        print(conv.report())
    with open(out / "results.json", "w") as fh:
        json.dump(results, fh, indent=2)
    _plot(test, {k: r for k, (_, r) in models.items()}, results, out / "reconstruction.png")
    if verbose:
        print(f"\nARSNR on {len(test)} held-out synthetic ECG windows:")
        for kind in ("mac", "mam"):
            print(f"  {kind.upper()} encoder, float Keras: {results[kind]['test_arsnr_db']:.2f} dB")
        print(f"  MAM encoder, int16x8 .tflite on the host runtime: "
              f"{results['mam_int16x8']['test_arsnr_db']:.2f} dB")
        print(f"wrote {out / 'results.json'}, {out / 'reconstruction.png'} and "
              f"{out / 'mam_autoencoder.tflite'}")
    return results


def _plot(test, recons, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(test[0], color="black", lw=1.5, label="input")
    for kind, recon in recons.items():
        ax.plot(recon[0], lw=1, label=f"{kind.upper()} ({results[kind]['test_arsnr_db']:.1f} dB ARSNR)")
    ax.set_xlabel("sample")
    ax.set_ylabel("amplitude (scaled)")
    ax.set_title("Synthetic ECG window and its reconstructions")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cmd(args):
    run_demo(windows=args.windows, epochs=args.epochs, latent=args.latent, seed=args.seed,
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
    p.add_argument("--seed", type=int, default=0, help="seed for data and initialisation")
    p.add_argument("--out", default="runs/demo", help="folder for results.json and the plot")
    p.set_defaults(func=_cmd)
