"""Why image-space MAP keeps its iterates in [0, 1]: the digits prior with and without the box.

Deblurs the 6 MNIST validation digits that ``tune_solver.py`` uses (sigma 2, noise 0.01) with
image-space MAP (lambda 1, 300 steps) twice: free iterates (``box=False``) and iterates clamped to
[0, 1] after every step (``box=True``, the default). Prints, per digit, PSNR, the range of the
result and the prior's log p of the result next to that of the true digit: a flow trained on
[0, 1] images says nothing meaningful about pixels outside that range, and an optimiser that is
allowed there finds images the flow scores absurdly (log p of -1e16 to -1e21).

    PYTHONPATH=src python benchmarks/box_diagnosis.py [--data /work/data] [--out FILE.md]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import napari_flow_prior as nfp
from tune_solver import validation_images  # the same 6 validation digits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--model", default="digits")
    ap.add_argument("--out", default="benchmarks/results/box_diagnosis.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = nfp.load_model(args.model)
    digits = validation_images(Path(args.data), "digits", argparse.Namespace(digits=6))
    lines = ["| digit | truth log p | free: PSNR | free: min / max | free: log p | box: PSNR | box: log p |",
             "|---|---|---|---|---|---|---|"]
    free_psnr, box_psnr = [], []
    for x, name in digits:
        op = nfp.operators.Blur(x.shape, sigma=2.0)
        y = op.measure(x, noise_sigma=0.01, seed=0)
        cells = []
        for box in (False, True):
            r = nfp.reconstruct(y, op, model, noise_sigma=0.01, method="map", space="image",
                                weight=1.0, iterations=300, box=box)
            log_p = model.log_prob(torch.as_tensor(r.image, dtype=torch.float32)[None, None]).item()
            p = nfp.metrics.psnr(x, r.image)
            (box_psnr if box else free_psnr).append(p)
            cells += [f"{p:.2f}"] + ([] if box else [f"{r.image.min():.2f} / {r.image.max():.2f}"]) + [f"{log_p:.3g}"]
        truth = model.log_prob(torch.as_tensor(x)[None, None]).item()
        lines.append(f"| {name} | {truth:.4g} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines.append(f"| mean | | {np.mean(free_psnr):.2f} | | | {np.mean(box_psnr):.2f} | |")
    text = ("# Image-space MAP with and without the [0, 1] box\n\n"
            f"Command: `PYTHONPATH=src python benchmarks/box_diagnosis.py --model {args.model}`; "
            f"deblurring sigma 2, noise 0.01, lambda 1, 300 steps, torch {torch.__version__}.\n\n"
            + "\n".join(lines) + "\n")
    Path(args.out).write_text(text)
    print(lines[-1])


if __name__ == "__main__":
    main()
