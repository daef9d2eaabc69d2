#!/usr/bin/env python
"""Photon-limited data: the Poisson data term against the Gaussian one, on a prior's test crops.

Each crop (``quality.test_images``, in-domain only) is measured with Poisson noise,
y = Poisson(photons * A x) / photons (``Operator.measure(noise="poisson")``, no read noise), for
deblurring (sigma 2) and inpainting (80% missing), and reconstructed with the model's default
``map`` settings twice: with ``photons=`` (the Poisson likelihood of ``likelihood.py``) and with
Gaussian noise of the effective sigma (the rms of the measurements' standard deviations, what a
user without the Poisson term would pass). The classical methods, Richardson-Lucy (the Poisson
maximum-likelihood deconvolution) and TV for deblurring, biharmonic and TV for inpainting, run with
their validation-tuned parameters for the nearest tuned noise level to the effective sigma
(``run_baseline(..., noise_sigma=)``) and tuned per image on the ground truth (oracle: an upper
bound for them). Prints and writes a table of mean PSNR dB.

    PYTHONPATH=src python benchmarks/poisson.py --model nuclei --photons 20,100 [--part 1/2]
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

from quality import test_images  # noqa: E402
from tune_baselines import param_grid  # noqa: E402

ROWS = {"blur": ("deblurring, sigma 2", ("richardson_lucy", "tv_deblur")),
        "mask": ("inpainting, 80% missing", ("biharmonic", "tv_inpaint"))}


def run_case(model, image, desc, row, photons, seed) -> dict:
    import napari_flow_prior as nfp
    from napari_flow_prior import baselines as bl
    from napari_flow_prior.likelihood import effective_sigma

    op = (nfp.operators.Blur(image.shape, sigma=2.0) if row == "blur"
          else nfp.operators.Mask.random(image.shape, missing_fraction=0.8, seed=seed))
    y = op.measure(image, noise_sigma=0.0, seed=seed + 1, noise="poisson", photons=photons)
    sigma = effective_sigma(y, 0.0, photons, op)
    out = {"image": desc, "row": row, "photons": photons, "effective_sigma": round(sigma, 4)}
    for name, kwargs in (("flow poisson", {"noise_sigma": 0.0, "photons": photons}),
                         ("flow gaussian", {"noise_sigma": sigma})):
        t0 = time.perf_counter()
        result = nfp.reconstruct(y, op, model, **kwargs)
        out[name] = round(float(nfp.psnr(image, result.image)), 3)
        out[name + " s"] = round(time.perf_counter() - t0, 1)
    for name in ROWS[row][1]:
        tuned = bl.run_baseline(name, y, op, noise_sigma=sigma)
        out[name + " (tuned)"] = round(float(nfp.psnr(image, tuned)), 3)
        out[name + " (oracle)"] = round(bl.oracle(name, image, y, op, grid=param_grid(name))[2], 3)
    return out


def table(entries: list[dict]) -> str:
    lines = ["| problem | photons | n | effective sigma | flow, Poisson term | flow, Gaussian term | "
             "best tuned classical | best oracle-tuned classical | Poisson - Gaussian | Poisson - tuned | "
             "Poisson - oracle |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, (label, names) in ROWS.items():
        for photons in sorted({e["photons"] for e in entries if e["row"] == row}):
            sel = [e for e in entries if e["row"] == row and e["photons"] == photons]
            mean = {k: float(np.mean([e[k] for e in sel])) for k in
                    ["effective_sigma", "flow poisson", "flow gaussian"]
                    + [n + kind for n in names for kind in (" (tuned)", " (oracle)")]}
            tuned = max(names, key=lambda n: mean[n + " (tuned)"])
            best = max(names, key=lambda n: mean[n + " (oracle)"])
            lines.append(f"| {label} | {photons:g} | {len(sel)} | {mean['effective_sigma']:.3f} | "
                         f"{mean['flow poisson']:.2f} | {mean['flow gaussian']:.2f} | "
                         f"{tuned} {mean[tuned + ' (tuned)']:.2f} | {best} {mean[best + ' (oracle)']:.2f} | "
                         f"{mean['flow poisson'] - mean['flow gaussian']:+.2f} | "
                         f"{mean['flow poisson'] - mean[tuned + ' (tuned)']:+.2f} | "
                         f"{mean['flow poisson'] - mean[best + ' (oracle)']:+.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--photons", default="20,100", help="expected counts at intensity 1, comma-separated")
    ap.add_argument("--rows", default="blur,mask")
    ap.add_argument("--crops", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--part", default="1/1", help="K/N: run every N-th crop from the K-th (parallel runs)")
    ap.add_argument("--cache", type=Path, default=HERE / "results" / "poisson_cache.jsonl")
    ap.add_argument("--out", type=Path, default=None, help="default results/poisson_MODEL.md")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import napari_flow_prior as nfp

    model = nfp.load_model(args.model)
    done = {}
    if args.cache.is_file():
        for line in args.cache.read_text().splitlines():
            e = json.loads(line)
            done[(e["model"], e["sha256"], e["image"], e["row"], e["photons"])] = e
    k, n = (int(v) for v in args.part.split("/"))
    crops = [(desc, image) for s, desc, image in test_images(args.model, args.data, n_in=args.crops) if s == "in"]
    entries = []
    for index, (desc, image) in enumerate(crops):
        for row in args.rows.split(","):
            for photons in (float(p) for p in args.photons.split(",")):
                key = (args.model, model.metadata["sha256"], desc, row, photons)
                if key not in done and index % n == k - 1:
                    entry = {"model": args.model, "sha256": model.metadata["sha256"],
                             **run_case(model, image, desc, row, photons, seed=index)}
                    with args.cache.open("a") as f:
                        f.write(json.dumps(entry) + "\n")
                    print(json.dumps(entry), flush=True)
                    done[key] = entry
                if key in done:
                    entries.append(done[key])
    if n == 1 or len(entries) == len(crops) * len(args.rows.split(",")) * len(args.photons.split(",")):
        text = (f"# Photon-limited data: Poisson against Gaussian data term ({args.model} prior)\n\n"
                f"Command: `PYTHONPATH=src python benchmarks/poisson.py --model {args.model} --photons "
                f"{args.photons} --rows {args.rows} --crops {args.crops}`; {len(crops)} in-domain test crops, "
                f"no read noise, model defaults otherwise, {args.threads} torch thread(s). Mean PSNR dB:\n\n"
                + table(entries) + "\n")
        out = args.out or HERE / "results" / f"poisson_{args.model}.md"
        out.write_text(text)
        print(text)


if __name__ == "__main__":
    main()
