#!/usr/bin/env python
"""The MAP solver's prior weight, chosen on VALIDATION crops (never test pixels).

For each shipped prior (``--models``), ``--crops`` random crops of ``--size`` from
``<data>/<model>/val`` (seed fixed), and each headline operator (inpainting 80% missing,
deblurring sigma 2, compressed sensing m/n 0.2; noise 0.01), ``nfp.reconstruct`` runs with its
defaults except the prior weight lambda, which takes every value of ``--weights``. Prints one
JSON line per (crop, operator) and a table of mean PSNR per weight; ``reconstruct``'s default
(``solvers.DEFAULTS``) is the weight with the best mean over all rows.

    PYTHONPATH=src python benchmarks/tune_solver.py [--models medical,nuclei] [--weights 1,0.3,0.1,0.03]
        [--crops 2] [--size 96] [--threads 1] [--out benchmarks/results/tune_solver.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if str(HERE.parent / "src") not in sys.path:
    sys.path.append(str(HERE.parent / "src"))

from tune_baselines import HEADLINE_ROWS, ROW_LABELS, ROWS, make_operator, random_crops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--models", default="medical,nuclei")
    ap.add_argument("--weights", default="1,0.3,0.1,0.03")
    ap.add_argument("--crops", type=int, default=2)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "tune_solver.md")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import napari_flow_prior as nfp

    weights = [float(w) for w in args.weights.split(",")]
    rows, t0 = [], time.time()
    for name in args.models.split(","):
        model = nfp.load_model(name)
        files = sorted((args.data / name / "val").glob("*.png"))
        if not files:
            raise SystemExit(f"no validation images in {args.data / name / 'val'}: run scripts/prepare_data.py")
        for image, desc in random_crops(files, args.crops, args.size, np.random.default_rng(5)):
            for row in HEADLINE_ROWS:
                noise = ROWS[row][2]
                op = make_operator(row, image.shape, seed=1)
                y = op.measure(image, noise_sigma=noise, seed=2)
                psnr = {w: float(nfp.psnr(image, nfp.reconstruct(y, op, model, noise_sigma=noise, weight=w).image))
                        for w in weights}
                rows.append({"model": name, "crop": desc, "row": row, "psnr": psnr})
                print(json.dumps({"model": name, "crop": desc, "row": row,
                                  **{str(w): round(p, 2) for w, p in psnr.items()}}), flush=True)

    def mean(sel, w):
        return float(np.mean([r["psnr"][w] for r in sel]))

    best = max(weights, key=lambda w: mean(rows, w))
    lines = ["# MAP prior weight on validation crops", "",
             f"Command: `PYTHONPATH=src python benchmarks/tune_solver.py --models {args.models} --weights "
             f"{args.weights} --crops {args.crops} --size {args.size}`; {len(rows)} (crop, operator) pairs, "
             f"noise 0.01, solver defaults otherwise; {time.time() - t0:.0f} s, {args.threads} torch thread(s).", "",
             "Mean PSNR dB per prior weight lambda:", "",
             "| prior | operator | n | " + " | ".join(f"lambda {w:g}" for w in weights) + " |",
             "|---|---|---|" + "---|" * len(weights)]
    for name in args.models.split(","):
        for row in HEADLINE_ROWS:
            sel = [r for r in rows if r["model"] == name and r["row"] == row]
            lines.append(f"| {name} | {ROW_LABELS[row]} | {len(sel)} | "
                         + " | ".join(f"{mean(sel, w):.2f}" for w in weights) + " |")
    lines.append("| all | all | " + str(len(rows)) + " | " + " | ".join(f"{mean(rows, w):.2f}" for w in weights) + " |")
    lines += ["", f"Best mean over all rows: lambda = {best:g}."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
