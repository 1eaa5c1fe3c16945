"""`mam-tf bench mcu`: the kernels on an emulated Cortex-M7, counted instruction by instruction.

``mam-tf bench mcu`` and the tests run MAM_SPARSE / MAC_SPARSE (portable C and the ARMv7E-M
kernels), the dense MAC and, when given, CMSIS-NN's fully connected kernels in one bare-metal
firmware (``tflm_ops/firmware``) on QEMU's ``mps2-an500`` (a Cortex-M7). A small TCG plugin of
the project counts the instructions executed between two marker functions around each kernel
call. The firmware reads its cases from a file through semihosting, so one binary serves every
case.

Counts are instructions, exactly and repeatably; QEMU models no caches, no wait states, no
dual issue, no load-use or multiply latencies, so any time or energy derived from them is an
estimate under a stated cycles-per-instruction (CPI) assumption.

The machinery (build, run, count) is :mod:`mam_tf.device.mcu` and the measuring functions
(``bench_layer``, ``bench_model``, ``fit_rows``, ...) are :mod:`mam_tf.device.measure`; both are
re-exported here. This module holds the benchmark's tables, plot and command line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from mam_tf.common import machine

from mam_tf.device.mcu import (  # noqa: F401  (re-exported: the public API of the benchmark)
    GCC, KERNEL_IDS, QEMU, KernelCall, McuBuild, McuError, build, count_by_trace, count_loop,
    run_calls, run_kernel, run_model, toolchain_available,
)
from mam_tf.device.measure import (  # noqa: F401  (re-exported: the measuring functions)
    CLOCK_HZ, CPI, CPI_RANGE, DEFAULT_REMAINING, POWER_W, SRAM_BYTES, bench_layer, bench_model,
    fit_rows, host_output, random_layer,
)

__all__ = [
    "toolchain_available", "build", "run_kernel", "run_calls", "run_model", "KernelCall",
    "McuBuild", "McuError", "count_loop", "count_by_trace", "host_output", "random_layer",
    "bench_layer", "bench_model", "fit_rows", "format_table", "format_summary", "plot",
    "add_bench_command",
]


# ----------------------------------------------------------------------------------------
# Output: table, JSON, plot
# ----------------------------------------------------------------------------------------
def _label(r):
    return {"mam_sparse": "MAM_SPARSE", "mac_sparse": "MAC_SPARSE", "mac_dense": "dense MAC",
            "mam_dense": "dense MAM", "cmsis_fc": "CMSIS-NN FC"}[r["kernel"]] + (
        "" if r["variant"] == "cmsis" else f" {r['variant']}")


def format_table(records, out=print):
    """Prints the records as a table (markdown), then the per-entry / per-row fit."""
    out(f"| act | kernel | kept | entries | instructions | per entry | all per row | est. ms "
        f"(CPI {CPI:g}) | est. uJ | bytes | code B | fits 512 kB |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        out(f"| int{r['act_bits']} | {_label(r)} | {r['remaining']:.0%} | {r['entries']} | "
            f"{r['instructions']} | {r['instr_per_entry']:.2f} | {r['instr_per_row']:.0f} | "
            f"{r['time_us'] / 1e3:.3f} | {r['energy_uj']:.1f} | {r['bytes']} | "
            f"{r['code_bytes'] or '-'} | {'yes' if r['fits_sram'] else 'no'} |")
    fits = fit_rows(records)
    if fits:
        out("\nfit over the kept fractions, instructions = a * entries + b * rows:")
        empty = {(r["kernel"], r["variant"], r["act_bits"]): r["empty_row"] for r in records
                 if "empty_row" in r}
        for (k, v, bits), (a, per_row) in sorted(fits.items()):
            e = empty.get((k, v, bits))
            out(f"  int{bits} {k} {v}: a = {a:.2f} per entry, b = {per_row:.0f} per row"
                + (f" (an empty row, measured: {e:.0f})" if e is not None else ""))


def format_summary(records, out=print):
    """Instructions per stored entry (per weight for dense kernels) by kept fraction, one table
    per activation width, with the per-entry / per-row fit of each sparse kernel."""
    fits = fit_rows(records)
    for bits in sorted({r["act_bits"] for r in records}, reverse=True):
        rs = [r for r in records if r["act_bits"] == bits]
        kept = sorted({r["remaining"] for r in rs if r["kernel"].endswith("_sparse")}, reverse=True)
        out(f"int{bits} activations, {rs[0]['inputs']} -> {rs[0]['units']}: instructions per stored "
            "entry (dense: per weight)")
        out("")
        out("| kernel | " + " | ".join(f"{k:.0%}" for k in kept)
            + " | fit: per entry | fit: per row | empty row |")
        out("|---" * (len(kept) + 4) + "|")
        seen = []
        for r in rs:
            if (r["kernel"], r["variant"]) not in seen:
                seen.append((r["kernel"], r["variant"]))
        for k, v in seen:
            cells = {r["remaining"]: r["instr_per_entry"] for r in rs
                     if r["kernel"] == k and r["variant"] == v}
            empty = next((r["empty_row"] for r in rs if r["kernel"] == k and r["variant"] == v
                          and "empty_row" in r), None)
            fit = fits.get((k, v, bits))
            if k.endswith("_sparse"):
                row = [f"{cells[x]:.2f}" if x in cells else "" for x in kept]
            else:
                row = [f"{next(iter(cells.values())):.2f} (all weights)"] + [""] * (len(kept) - 1)
            out(f"| {_label({'kernel': k, 'variant': v})} | " + " | ".join(row) + " | "
                + (f"{fit[0]:.2f} | {fit[1]:.0f}" if fit else " | ") + " | "
                + (f"{empty:.0f}" if empty is not None else "") + " |")
        out("")


def plot(records, path):
    """Instructions and estimated time vs weights kept, MAM vs MAC (after seed 004 Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits_all = sorted({r["act_bits"] for r in records}, reverse=True)
    fig, axes = plt.subplots(len(bits_all), 2, figsize=(11, 4 * len(bits_all)), squeeze=False)
    style = {("mam_sparse", "portable"): ("tab:red", "--", "o"),
             ("mam_sparse", "optimized"): ("tab:red", "-", "o"),
             ("mac_sparse", "portable"): ("tab:blue", "--", "s"),
             ("mac_sparse", "optimized"): ("tab:blue", "-", "s"),
             ("mac_dense", "portable"): ("tab:gray", ":", None),
             ("cmsis_fc", "cmsis"): ("black", ":", None)}
    for row, bits in enumerate(bits_all):
        rs = [r for r in records if r["act_bits"] == bits]
        xs = sorted({r["remaining"] for r in rs if r["kernel"].endswith("_sparse")})
        for col, (key, scale, ylabel) in enumerate(
                (("instructions", 1.0, "instructions per layer"),
                 ("time_us", 1e-3, f"estimated time, ms (CPI {CPI:g}, {CLOCK_HZ / 1e6:.0f} MHz)"))):
            ax = axes[row][col]
            for (k, v), (color, ls, marker) in style.items():
                pts = sorted((r["remaining"], r[key] * scale) for r in rs
                             if r["kernel"] == k and r["variant"] == v)
                if not pts:
                    continue
                lab = _label({"kernel": k, "variant": v})
                if k.endswith("_sparse"):
                    ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], ls=ls,
                            marker=marker, color=color, label=lab)
                else:
                    ax.axhline(pts[0][1], ls=ls, color=color, label=f"{lab} (all weights)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks([x * 100 for x in xs])
            ax.set_xticklabels([f"{x * 100:g}" for x in xs])
            ax.set_xlabel("weights kept, %")
            ax.set_ylabel(ylabel)
            ax.set_title(f"int{bits} activations, {rs[0]['inputs']} -> {rs[0]['units']}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Cortex-M7 (QEMU mps2-an500): instructions counted; time is an estimate")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _machine_lines(b: McuBuild):
    qv = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    gv = subprocess.run([GCC, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return [
        machine.line(label="host") + " (counts do not depend on it)",
        f"target: Cortex-M7 on {qv} -M mps2-an500; {gv} -O2 "
        "-mcpu=cortex-m7 -mthumb -mfpu=fpv5-d16 -mfloat-abi=hard",
        f"optimized kernels: {'built' if b.optimized else 'not in this tree'}; CMSIS-NN: "
        + ("given" if b.cmsis_nn else "not given")
        + f"; bench firmware (arm-none-eabi-size): text {b.size[0]} B, data {b.size[1]} B, "
        f"bss {b.size[2]} B",
        f"estimates: {CLOCK_HZ / 1e6:.0f} MHz, {POWER_W * 1e3:.1f} mW, CPI {CPI:g} assumed "
        f"(range {CPI_RANGE[0]:g}-{CPI_RANGE[1]:g}: dual-issue peak to stalls); QEMU models no "
        "caches, wait states, dual issue or latencies",
    ]


def _whole_model(path, b: McuBuild, seed=0) -> dict:
    """Runs the whole model through TFLite-Micro on the emulated M7 (one random sample),
    checks its output against mam_tf.deploy.runtime and prints each op's instructions."""
    from mam_tf.deploy.runtime import Interpreter

    host = Interpreter(path)
    rng = np.random.default_rng(seed)
    x = host.quantize_input(rng.standard_normal([1] + host.input_shape[1:]))
    got = run_model(path, x, b)
    equal = bool(np.array_equal(got["output"], host.run_raw(x)))
    print(f"\nwhole model through TFLite-Micro on the Cortex-M7: output "
          f"{'equals' if equal else 'DIFFERS FROM'} mam_tf.deploy.runtime's; arena used "
          f"{got['arena_used']} B")
    print("| op | name | instructions | est. ms (CPI 1) |\n|---|---|---|---|")
    for k, (name, count) in enumerate(got["ops"]):
        print(f"| {k} | {name} | {count} | {count * CPI / CLOCK_HZ * 1e3:.3f} |")
    total = sum(c for _, c in got["ops"])
    print(f"| | all ops | {total} | {total * CPI / CLOCK_HZ * 1e3:.3f} |")
    if not equal:
        raise McuError(f"mcu: the whole model's output on the Cortex-M7 differs from "
                       f"mam_tf.deploy.runtime's ({path})")
    return dict(ops=[dict(name=n, instructions=c) for n, c in got["ops"]],
                arena_used=got["arena_used"], equals_host_runtime=equal)


def _cmd_mcu(args):
    try:
        b = build(args.cmsis_nn_lib, args.cmsis_nn_include, args.tflm_lib, args.tflm_root,
                  args.flatbuffers_include)
    except McuError as err:
        print(f"mam-tf bench mcu: {err}")
        return 1
    for line in _machine_lines(b):
        print(line)
    whole = None
    if args.model:
        records = bench_model(args.model, b, check=not args.no_check)
        if b.model_elf is not None:
            whole = _whole_model(args.model, b, args.seed)
        else:
            print("whole model through TFLite-Micro: no TFLite-Micro library given "
                  "(--tflm-lib / $MAM_TF_TFLM_LIB)")
    else:
        rows, cols = (16, 1024) if args.quick else (args.units, args.inputs)
        remaining = args.remaining or DEFAULT_REMAINING
        print(f"layer: {cols} -> {rows} (random pruning, seed {args.seed}), kept "
              f"{', '.join(f'{r:.0%}' for r in remaining)}, int{' and int'.join(map(str, args.act_bits))} "
              "activations, batch 1")
        records = bench_layer(rows, cols, remaining, tuple(args.act_bits), args.seed, b,
                              check=not args.no_check)
    if not args.no_check:
        print("outputs: every kernel's output equals the host core's (mam_tf.deploy.native), byte for "
              "byte (CMSIS-NN's: the host core's dense MAC)")
    print()
    if not args.model:
        format_summary(records)
    format_table(records)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "mcu.json").write_text(json.dumps(records, indent=1))
        if whole is not None:
            (out / "mcu_model.json").write_text(json.dumps(whole, indent=1))
        plot(records, out / "mcu.png")
        print(f"\nwrote {out / 'mcu.json'} and {out / 'mcu.png'}")
    return 0


def add_bench_command(subparsers):
    """Adds ``mcu`` to a ``bench`` sub-command's subparsers."""
    from mam_tf.common.cliargs import add_deprecated, add_out

    p = subparsers.add_parser(
        "mcu", help="kernels on an emulated Cortex-M7 (QEMU): exact instruction counts",
        description=__doc__.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[2],
        epilog=f"Estimates: {CLOCK_HZ / 1e6:.0f} MHz and {POWER_W * 1e3:.1f} mW (seed 004's "
        f"operating point), CPI {CPI:g} (range {CPI_RANGE[0]:g}-{CPI_RANGE[1]:g}); 'fits' "
        f"compares CSR + bias + op data + activations with the STM32F767ZI's 512 kB SRAM. "
        "Without arm-none-eabi-gcc, newlib and qemu-system-arm it says which is missing.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", type=int, default=128,
                   help="the layer's units, its output rows M (default 128)")
    add_deprecated(p, "--rows", "--units", dest="units", type=int)
    p.add_argument("--inputs", type=int, default=16384,
                   help="the layer's inputs, its input columns N (default 16384)")
    add_deprecated(p, "--cols", "--inputs", dest="inputs", type=int)
    p.add_argument("--remaining", type=float, nargs="+", default=None,
                   help="fractions of weights kept (default 1 .5 .2 .1 .05 .02 .01)")
    p.add_argument("--act-bits", type=int, nargs="+", choices=(8, 16), default=[16, 8],
                   help="activation widths (default 16 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random layer")
    p.add_argument("--quick", action="store_true", help="a small 1024 -> 16 layer (tests)")
    p.add_argument("--model", help="a converted .tflite: every MAM_SPARSE / MAC_SPARSE op")
    add_out(p, "folder for mcu.json and mcu.png", metavar="DIR")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing outputs with the host core")
    p.add_argument("--cmsis-nn-lib", help="CMSIS-NN static library built for Cortex-M7 "
                   "(default $MAM_TF_CMSIS_NN_LIB)")
    p.add_argument("--cmsis-nn-include", help="CMSIS-NN Include/ folder "
                   "(default $MAM_TF_CMSIS_NN_INCLUDE)")
    p.add_argument("--tflm-lib", help="with --model: a TFLite-Micro static library built for "
                   "Cortex-M7 (default $MAM_TF_TFLM_LIB) to run the whole model")
    p.add_argument("--tflm-root", help="the tflite-micro tree it was built from "
                   "(default $MAM_TF_TFLM_ROOT)")
    p.add_argument("--flatbuffers-include", help="flatbuffers 25.9.23 include/ "
                   "(default $MAM_TF_FLATBUFFERS_INCLUDE)")
    p.set_defaults(func=_cmd_mcu)
    return p
