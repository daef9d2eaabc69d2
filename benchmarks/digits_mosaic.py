"""Does a solver setting chosen on single 28x28 digits hold on a larger image of digits?

Compressed sensing (m/n 0.2, 32x32 blocks, noise 0.01) of 8 MNIST validation digits, solved one
by one and as one 56x112 mosaic (2 x 4 digits, the layout of the shipped 224x224 digits sample),
with latent-space MAP (lambda 10, 1,000 steps, lr 0.03) and image-space MAP in the [0, 1] box
(lambda 1, 1,000 steps), and with tuned TV as the classical reference. Prints, per setting, the
mean PSNR over the 8 digit tiles, the data misfit ||A x - y||^2 / (m sigma^2) (about 1 when the
solve fits the measurements to the noise level) and seconds. Validation digits only.

    PYTHONPATH=src python benchmarks/digits_mosaic.py [--data /work/data] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import napari_flow_prior as nfp
from napari_flow_prior.baselines import run_baseline
from tune_solver import validation_images

SETTINGS = {
    "latent, lambda 10, lr 0.03": dict(space="latent", weight=10.0, iterations=1000, lr=0.03),
    "image in [0, 1], lambda 1": dict(space="image", box=True, weight=1.0, iterations=1000),
}
NOISE = 0.01


def solve(x: np.ndarray, model, setting: str | None) -> tuple[np.ndarray, float, float]:
    """(estimate, misfit per measurement / sigma^2, seconds) for one image."""
    op = nfp.operators.GaussianProjection(x.shape, ratio=0.2, seed=0)
    y = op.measure(x, noise_sigma=NOISE, seed=1)
    t0 = time.perf_counter()
    if setting is None:
        estimate = run_baseline("tv_cs", y, op, noise_sigma=NOISE)
    else:
        estimate = nfp.reconstruct(y, op, model, noise_sigma=NOISE, method="map", **SETTINGS[setting]).image
    seconds = time.perf_counter() - t0
    return estimate, float(np.mean((op.forward(estimate) - y) ** 2) / NOISE ** 2), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--out", default="benchmarks/results/digits_mosaic.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = nfp.load_model("digits")
    digits = [x for x, _ in validation_images(Path(args.data), "digits", argparse.Namespace(digits=8))]
    mosaic = np.block([[digits[4 * r + c] for c in range(4)] for r in range(2)])
    tiles = [(slice(28 * r, 28 * r + 28), slice(28 * c, 28 * c + 28)) for r in range(2) for c in range(4)]
    lines = ["| method | single digits: PSNR | misfit | s | mosaic: PSNR | misfit | s |", "|---|---|---|---|---|---|---|"]
    for setting in [None, *SETTINGS]:
        single = [solve(x, model, setting) for x in digits]
        estimate, misfit, seconds = solve(mosaic, model, setting)
        mosaic_psnr = np.mean([nfp.psnr(mosaic[t], estimate[t]) for t in tiles])
        lines.append(f"| {setting or 'TV (tuned)'} | {np.mean([nfp.psnr(x, e) for x, (e, _, _) in zip(digits, single)]):.2f} "
                     f"| {np.mean([m for _, m, _ in single]):.2f} | {sum(s for _, _, s in single):.0f} "
                     f"| {mosaic_psnr:.2f} | {misfit:.2f} | {seconds:.0f} |")
        print(lines[-1], flush=True)
    header = (f"# Digits: single 28x28 digits vs one 56x112 mosaic of the same 8\n\n"
              f"Command: `PYTHONPATH=src python benchmarks/digits_mosaic.py`; compressed sensing m/n 0.2, "
              f"32x32 blocks, noise {NOISE}; 8 MNIST validation digits; mean PSNR dB over the digits "
              f"(mosaic: over its 8 tiles); misfit = ||A x - y||^2 / (m sigma^2); seconds for all 8 "
              f"digits, 1 torch thread.\n\n")
    Path(args.out).write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
