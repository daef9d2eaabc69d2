#!/usr/bin/env python
"""Per-pixel log-density maps of in-domain and out-of-domain images under the nuclei and the
medical priors: what a flow's likelihood does and does not say.

Images (``--size`` 128, x in [0, 1]): 2 random crops of nuclei TEST blocks, 2 of medical TEST
blocks (fixed seeds, near-constant crops redrawn), the centre crops of the natural out-of-domain
images camera, moon, brick, retina, and two controls made from them: the camera crop blurred with
a Gaussian of sigma 3 (smooth, out of every domain) and uniform noise in [0, 1] (maximally rough).

For each image and prior: ``nfp.log_density(x, model)``, the per-pixel log-density map in nats
(each log-det and latent term of the flow attributed to the pixels it comes from; the map sums to
log p(x)); its mean (nats/pixel); the bits per dimension of the 8-bit quantised image
(``model.bits_per_dim``, uniform dequantization; lower = more likely); and the Spearman rank
correlation, over the pixels, between the map and the local gradient magnitude (Gaussian
derivative, sigma 1): negative = the prior rates smooth pixels as likely.

Writes ``docs/images/density_maps.png`` (a grid, two images per row, each as image | density under
the nuclei prior | density under the medical prior; one shared colour scale in nats/pixel) and prints a markdown table.

    PYTHONPATH=src python benchmarks/density_maps.py
    PYTHONPATH=src python benchmarks/density_maps.py --nuclei-model /work/runs/final/nuclei.safetensors \\
        --medical-model /work/runs/final/medical.safetensors
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(ROOT / "src") not in sys.path:
    sys.path.append(str(ROOT / "src"))

from tune_baselines import load_png, random_crops  # noqa: E402

NATURAL = ("camera", "moon", "brick", "retina")
PRIORS = ("nuclei", "medical")


def images(data: Path, size: int) -> list[tuple[str, str, np.ndarray]]:
    """[(label, group, image)]; group: the domain, 'natural' or 'control'."""
    from scipy.ndimage import gaussian_filter

    out = []
    for domain, seed in (("nuclei", 11), ("medical", 22)):
        files = sorted((data / domain / "test").glob("*.png"))
        for img, desc in random_crops(files, 2, size, np.random.default_rng(seed)):
            out.append((desc.split("/", 2)[-1], domain, img))
    natural = {}
    for name in NATURAL:
        image = load_png(data / "ood" / f"{name}.png")
        r0, c0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        natural[name] = np.ascontiguousarray(image[r0:r0 + size, c0:c0 + size])
        out.append((f"{name} (centre)", "natural", natural[name]))
    out.append(("camera blurred (sigma 3)", "control",
                gaussian_filter(natural["camera"].astype(np.float64), 3.0, mode="reflect").astype(np.float32)))
    out.append(("uniform noise", "control",
                np.random.default_rng(0).random((size, size)).astype(np.float32)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--nuclei-model", default="nuclei", help="model name or .safetensors path")
    ap.add_argument("--medical-model", default="medical", help="model name or .safetensors path")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-fig", type=Path, default=ROOT / "docs" / "images" / "density_maps.png")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.ndimage import gaussian_gradient_magnitude
    from scipy.stats import spearmanr

    import napari_flow_prior as nfp

    t0 = time.time()
    models = {"nuclei": nfp.load_model(args.nuclei_model), "medical": nfp.load_model(args.medical_model)}
    items = images(args.data, args.size)
    maps, stats = {}, []
    for label, group, x in items:
        grad = gaussian_gradient_magnitude(x.astype(np.float64), 1.0)
        row = {"image": label, "group": group}
        for prior, model in models.items():
            d = nfp.log_density(x, model, device="cpu")
            maps[(label, prior)] = d
            with torch.no_grad():
                bpd = float(model.bits_per_dim(torch.as_tensor(x[None, None], dtype=model.dtype))[0])
            row[prior] = {"mean": float(d.mean()), "bpd": bpd,
                          "rho_grad": float(spearmanr(d.ravel(), grad.ravel())[0])}
        stats.append(row)

    # figure: two images per row, each as image | nuclei map | medical map; one colour scale
    values = np.concatenate([m.ravel() for m in maps.values()])
    vmin, vmax = np.percentile(values, [1, 99])
    n_rows = -(-len(items) // 2)
    fig, axes = plt.subplots(n_rows, 6, figsize=(13.5, 2.55 * n_rows + 0.5), squeeze=False)
    im = None
    for i, ((label, group, x), row) in enumerate(zip(items, stats)):
        ax_row = axes[i // 2, 3 * (i % 2):3 * (i % 2) + 3]
        ax_row[0].imshow(x, cmap="gray", vmin=0, vmax=1)
        ax_row[0].set_title(f"[{group}] {label.split('[')[0].removesuffix('.png')}", fontsize=7.5)
        for ax, prior in zip(ax_row[1:], PRIORS):
            im = ax.imshow(maps[(label, prior)], cmap="magma", vmin=vmin, vmax=vmax)
            s = row[prior]
            ax.set_title(f"{prior} prior: {s['mean']:+.2f} nats/px\n"
                         f"{s['bpd']:.2f} bpd, rho(grad) {s['rho_grad']:+.2f}", fontsize=7.5)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.set_visible(False)
    fig.suptitle(f"Per-pixel log-density log p(x) of {args.size}x{args.size} crops under the nuclei "
                 "and medical priors (colour clipped to the 1-99th percentile of all maps)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.93, 0.97))
    cax = fig.add_axes([0.94, 0.2, 0.012, 0.6])
    fig.colorbar(im, cax=cax).set_label("log-density (nats / pixel)")
    args.out_fig.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out_fig, dpi=90)
    plt.close(fig)

    lines = [f"Models: nuclei = `{models['nuclei'].metadata.get('path', args.nuclei_model)}`, medical = "
             f"`{models['medical'].metadata.get('path', args.medical_model)}`; {args.size}x{args.size} crops.", "",
             "| image | set | nuclei prior: nats/px | bpd | rho(grad) | medical prior: nats/px | bpd | rho(grad) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in stats:
        a, b = row["nuclei"], row["medical"]
        lines.append(f"| {row['image']} | {row['group']} | {a['mean']:+.2f} | {a['bpd']:.2f} | "
                     f"{a['rho_grad']:+.2f} | {b['mean']:+.2f} | {b['bpd']:.2f} | {b['rho_grad']:+.2f} |")
    rank = {p: [r["image"] for r in sorted(stats, key=lambda r: -r[p]["mean"])] for p in PRIORS}
    lines += ["", *(f"Ranking under the {p} prior (most likely first): " + ", ".join(rank[p]) for p in PRIORS)]
    print("\n".join(lines))
    print(f"\nwrote {args.out_fig} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
