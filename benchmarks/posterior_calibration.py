#!/usr/bin/env python
"""Is the posterior spread honest? Coverage of ``method="posterior"``'s per-pixel intervals.

``reconstruct(..., method="posterior")`` returns the mean of posterior samples and their per-pixel
standard deviation ``std``. If the sampler and the prior were exact, the truth would fall within
mean +- 1 std at about 68% of the pixels and within +- 2 std at about 95% (for a Gaussian-like
posterior), and pixels with a larger spread would have larger errors. This script measures that on
the test images of ``quality.py`` (the same crops / digits, the model file's posterior settings,
noise 0.01), on the missing pixels (where only the prior speaks) and on the observed ones:

- coverage of mean +- 1 std and +- 2 std (the fractions of pixels whose truth lies inside);
- the ratio RMS error / RMS std (1 = the spread has the size of the errors; < 1: too wide;
  > 1: over-confident);
- the Spearman rank correlation of std with |error| over the pixels (does the map point to the
  wrong pixels?).

The priors model *dequantized* pixels: grey level k of an image whose levels are s apart is
spread uniformly over [k, k + s) / 256 during training (``training.dequantize``). A posterior
sample is therefore an 8-bit truth plus that noise, and the predictive distribution of the 8-bit
truth has mean ``mean - s / 512`` and spread ``sqrt(std**2 + (s / 256)**2 / 12)``; that is what is
scored (``s``: the median spacing of the test image's grey levels, 1 for MNIST). Without it the
exactly-0 MNIST background, half a grey level below the prior's, would count as uncovered.

    PYTHONPATH=src python benchmarks/posterior_calibration.py --model digits [--sets in,ood]
        [--limit-images N] [--out benchmarks/results/posterior_calibration_digits.md]
        [--figure docs/images/posterior_digits.png --figure-rows 4]

``--figure`` writes one row per image (the first ``--figure-rows`` of the run): truth,
measurements, posterior mean, per-pixel spread (std) and |error|, the last two on one common
scale (the largest spread of the row), so where the map is bright the error should be too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if str(HERE.parent / "src") not in sys.path:
    sys.path.append(str(HERE.parent / "src"))

from quality import _image_seed, test_images  # noqa: E402
from tune_baselines import ROW_LABELS, make_operator  # noqa: E402


def grey_step(truth: np.ndarray) -> float:
    """Median spacing of the grey levels an 8-bit image (scaled to [0, 1]) uses, in levels."""
    spacing = np.diff(np.unique(np.round(truth * 255)))
    return float(np.median(spacing)) if spacing.size else 1.0


def calibration(truth: np.ndarray, mean: np.ndarray, std: np.ndarray, where: np.ndarray) -> dict:
    """Coverage, RMS error / RMS std and the rank correlation of std with |error| over ``where``."""
    from scipy.stats import spearmanr

    err = (truth - mean)[where]
    s = np.maximum(std[where], 1e-12)
    rho = spearmanr(s, np.abs(err)).statistic if err.size > 2 and np.ptp(s) > 0 else float("nan")
    return {"n": int(err.size), "cover1": float(np.mean(np.abs(err) <= s)),
            "cover2": float(np.mean(np.abs(err) <= 2 * s)), "err2": float(np.sum(err ** 2)),
            "std2": float(np.sum(s ** 2)), "ratio": float(np.sqrt(np.sum(err ** 2) / np.sum(s ** 2))),
            "rho": float(rho)}


def write_figure(rows, path: Path, zoom: int = 4) -> None:
    """A PNG grid: one row per image, one column per panel, each panel upscaled ``zoom`` times
    (nearest) for small images and separated by a 2-pixel gap."""
    from PIL import Image

    h, w = rows[0][0].shape
    zoom = zoom if max(h, w) <= 64 else 1
    gap = 2
    grid = np.ones((len(rows) * (h * zoom + gap) - gap, 5 * (w * zoom + gap) - gap), np.float32)
    for i, panels in enumerate(rows):
        for j, panel in enumerate(panels):
            big = np.kron(np.clip(panel, 0, 1), np.ones((zoom, zoom)))
            r0, c0 = i * (h * zoom + gap), j * (w * zoom + gap)
            grid[r0:r0 + h * zoom, c0:c0 + w * zoom] = big
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(path)


def main(argv=None) -> int:
    import napari_flow_prior as nfp

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--row", default="inpaint_random80", choices=sorted(ROW_LABELS))
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--sets", default="in", help="in (test crops), ood, or both")
    ap.add_argument("--limit-images", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--figure", type=Path, default=None, help="PNG of truth / measured / mean / std / |error|")
    ap.add_argument("--figure-rows", type=int, default=4)
    args = ap.parse_args(argv)
    rows = []
    torch.set_num_threads(args.threads)
    model = nfp.load_model(args.model)
    sets = args.sets.split(",")
    per_set: dict[str, list] = {}
    t0 = time.time()
    for set_name, image_id, truth in test_images(args.model, args.data):
        if set_name not in sets or len(per_set.get(set_name, [])) == (args.limit_images or 10 ** 9):
            continue
        seed = _image_seed(image_id)
        op = make_operator(args.row, truth.shape, seed=seed)
        y = op.measure(truth, noise_sigma=0.01, seed=seed + 1)  # as quality.py measures it
        result = nfp.reconstruct(y, op, model, method="posterior", noise_sigma=0.01)
        step = grey_step(truth)
        mean = result.image - step / 512  # the predictive of the 8-bit truth (module doc)
        spread = np.sqrt(result.std.astype(np.float64) ** 2 + (step / 256) ** 2 / 12)
        observed = np.broadcast_to(op.observed_full, truth.shape) if op.kind == "mask" else np.ones(truth.shape, bool)
        entry = {"id": image_id, "psnr": nfp.psnr(truth, result.image), "seconds": result.seconds, "step": step,
                 "missing": calibration(truth, mean, spread, ~observed) if (~observed).any() else None,
                 "observed": calibration(truth, mean, spread, observed)}
        per_set.setdefault(set_name, []).append(entry)
        if len(rows) < args.figure_rows:
            scale = max(float(result.std.max()), 1e-6)
            rows.append([truth, y, np.clip(result.image, 0, 1), result.std / scale,
                         np.clip(np.abs(truth - result.image) / scale, 0, 1)])
        brief = {part: {k: round(v, 3) for k, v in entry[part].items() if k in ("cover1", "cover2", "ratio", "rho")}
                 for part in ("missing", "observed") if entry[part]}
        print(f"{set_name} {image_id}: PSNR {entry['psnr']:.2f} {brief}", flush=True)

    lines = ["# Posterior calibration: are the per-pixel spreads honest?", "",
             f"Command: `PYTHONPATH=src python benchmarks/posterior_calibration.py --model {args.model} --row {args.row} "
             f"--sets {args.sets}" + (f" --limit-images {args.limit_images}" if args.limit_images else "") + "`; "
             f"noise 0.01; the model file's posterior settings; torch {torch.__version__}, {args.threads} thread(s); "
             f"{time.time() - t0:.0f} s.", "",
             "Pooled over the pixels of all images of a set. Ideal for an exact Gaussian posterior: "
             "coverage 68% (1 std) and 95% (2 std), RMS error / RMS std 1; the rank correlation of std "
             "with |error| is > 0 when the spread points to the pixels that are wrong.", "",
             "| model | set | row | images | pixels | mean PSNR dB | coverage 1 std | coverage 2 std "
             "| RMS error / RMS std | rank corr. std vs abs error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for set_name, entries in per_set.items():
        for part in ("missing", "observed"):
            stats = [e[part] for e in entries if e[part] is not None]
            if not stats:
                continue
            n = sum(s["n"] for s in stats)
            pooled = {k: sum(s[k] * s["n"] for s in stats) / n for k in ("cover1", "cover2")}
            ratio = np.sqrt(sum(s["err2"] for s in stats) / sum(s["std2"] for s in stats))
            rho = np.nanmean([s["rho"] for s in stats])
            lines.append(f"| {args.model} | {set_name} | {ROW_LABELS[args.row]}, {part} pixels | {len(entries)} | {n} | "
                         f"{np.mean([e['psnr'] for e in entries]):.2f} | {pooled['cover1']:.1%} | "
                         f"{pooled['cover2']:.1%} | {ratio:.2f} | {rho:+.2f} |")
    if args.figure and rows:
        write_figure(rows, args.figure)
        lines += ["", f"Figure: `{args.figure}` (columns: truth, measurements, posterior mean, spread, |error|; "
                  "the last two scaled by the row's largest spread)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
