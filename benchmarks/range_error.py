#!/usr/bin/env python
"""Range error: PSNR against the measurement ratio m/n for compressed sensing, flow prior vs a
range-restricted (low-dimensional) prior vs Lasso-DCT, on held-out and out-of-domain crops.

Every image lies in the range of an invertible flow, so with enough measurements the flow prior
can in principle reach any image; a generator of dimension k < n can only produce images in its
k-dimensional range, and its error stops falling once m exceeds k (the range error). This script
measures both on real data.

Operator and noise: ``nfp.operators.GaussianProjection(shape, ratio, seed, block=32)`` (block
compressed sensing, N(0, 1/1024) entries, one matrix per 32x32 block) at m/n in ``--ratios``
(default 0.02 0.05 0.1 0.2 0.3 0.5 0.7 1.0), Gaussian noise ``--noise`` (default 0.01, the
noise level of the project's other benchmarks); projection and noise seeds fixed per image and
ratio, so every method sees the same y.

Images (``--size`` 64): held-out = the centre crops of the model's TEST blocks
(``<data>/<model>/test/*.png``, x = png / 255; crops with std < 0.04 -- near-empty background --
are skipped; at most one crop per source image series first, then the rest; ``--n-in`` of them);
out-of-domain = the centre crops of ``<data>/ood/{camera,moon,brick,retina}.png`` (``--ood``).

Methods:

* ``flow``: ``nfp.reconstruct(y, op, model, noise_sigma=noise)`` with its defaults (MAP,
  300 Adam steps from the Lasso-DCT warm start) unless ``--iterations`` caps the steps;
* ``pca95`` and ``pca10``: a linear generator x = mu + U_k w (the range-restricted prior), fitted
  by PCA on all size x size patches (stride ``--stride``) of the model's TRAIN blocks, with k fixed
  in advance: the number of components explaining 95% of the training-patch variance (``pca95``)
  and k = 0.1 n (``pca10``). It is solved in its latent w: min_w ||A (mu + U_k w) - y||^2, which for
  a linear generator is a linear least-squares problem, so ``scipy.linalg.lstsq`` (gelsy) gives the exact
  latent optimum (the minimum-norm w when m < k, which is also where gradient descent from w = 0
  converges -- the flow's ``latent`` method with gamma = 0 in the linear case). ``proj95`` /
  ``proj10`` record the best any method restricted to that range can do: the orthogonal
  projection of the true image onto mu + span(U_k) (the range error itself, independent of m);
* ``lasso_dct``: ``nfp.baselines.run_baseline("lasso_dct", y, op, noise_sigma=noise)`` (the
  parameters tuned on validation crops for the nearest tuned ratio).

Outputs: a table on stdout, ``benchmarks/results/range_error.json`` (per image and mean PSNR),
``docs/images/range_error.png`` (mean PSNR vs m/n; one row per model, held-out and OOD panels).

    PYTHONPATH=src python benchmarks/range_error.py                 # shipped nuclei and medical models
    PYTHONPATH=src python benchmarks/range_error.py --nuclei-model /work/runs/final/nuclei.safetensors
    PYTHONPATH=src python benchmarks/range_error.py --ratios 0.1,1.0 --n-in 1 --ood camera \\
        --iterations 20 --out-json /tmp/re.json --out-fig /tmp/re.png   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import zlib
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # lean on a shared machine; numpy's BLAS reads this at import

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT / "src") not in sys.path:
    sys.path.append(str(ROOT / "src"))

RATIOS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
OOD = ("camera", "moon", "brick", "retina")
METHODS = ("flow", "pca95", "pca10", "lasso_dct")
LABELS = {"flow": "flow prior (MAP)", "pca95": "PCA generator, k = 95% var.",
          "pca10": "PCA generator, k = 0.1 n", "lasso_dct": "Lasso-DCT (tuned)"}
COLORS = {"flow": "C0", "pca95": "C1", "pca10": "C2", "lasso_dct": "C3"}
MIN_STD = 0.04


def load_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def centre(image: np.ndarray, size: int) -> np.ndarray:
    r0, c0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return np.ascontiguousarray(image[r0:r0 + size, c0:c0 + size])


def series(name: str) -> str:
    """The source series of a block file name: 'mni152_z090.png' -> 'mni152', 'ct_693_r0000_c0256.png' -> 'ct_693'."""
    return re.split(r"_(?:r\d+_c\d+|z\d+)\.png$", name)[0]


def heldout_crops(data: Path, domain: str, n: int, size: int) -> list[tuple[str, np.ndarray]]:
    """Centre crops of the domain's test blocks (std >= MIN_STD), one per series first."""
    files = sorted((data / domain / "test").glob("*.png"))
    if not files:
        raise SystemExit(f"no test blocks in {data / domain / 'test'}")
    crops = []
    for path in files:
        crop = centre(load_png(path), size)
        if crop.std() >= MIN_STD:
            crops.append((f"{domain}/test/{path.name}[centre {size}]", series(path.name), crop))
    firsts, rest, seen = [], [], set()
    for crop in crops:
        (rest if crop[1] in seen else firsts).append(crop)
        seen.add(crop[1])
    return [(name, crop) for name, _, crop in (firsts + rest)[:n]]


def ood_crops(data: Path, names, size: int) -> list[tuple[str, np.ndarray]]:
    return [(f"ood/{name}.png[centre {size}]", centre(load_png(data / "ood" / f"{name}.png"), size))
            for name in names]


def training_patches(data: Path, domain: str, size: int, stride: int):
    """Yields arrays (P, size*size) of all size x size patches (stride) of each TRAIN block."""
    files = sorted((data / domain / "train").glob("*.png"))
    if not files:
        raise SystemExit(f"no train blocks in {data / domain / 'train'}")
    for path in files:
        image = load_png(path).astype(np.float64)
        win = np.lib.stride_tricks.sliding_window_view(image, (size, size))[::stride, ::stride]
        yield win.reshape(-1, size * size)


class PCAGenerator:
    """x = mu + U[:, :k] w: PCA of the training patches (covariance accumulated block by block;
    the leading ``k_max`` eigenpairs, the explained variance relative to the trace)."""

    def __init__(self, data: Path, domain: str, size: int, stride: int, k_max: int):
        import scipy.linalg

        n = size * size
        total, s1, s2 = 0, np.zeros(n), np.zeros((n, n))
        for patches in training_patches(data, domain, size, stride):
            total += len(patches)
            s1 += patches.sum(0)
            s2 += patches.T @ patches
        self.n_patches = total
        self.mu = s1 / total
        cov = s2 / total - np.outer(self.mu, self.mu)
        k_max = min(int(k_max), n)
        evals, evecs = scipy.linalg.eigh(cov, subset_by_index=[n - k_max, n - 1], driver="evr")
        order = np.argsort(evals)[::-1]
        self.evals = np.clip(evals[order], 0, None)
        self.U = evecs[:, order]
        self.explained = np.cumsum(self.evals) / np.trace(cov)
        self.size = size

    def k_for(self, variance: float) -> int:
        if self.explained[-1] < variance:
            raise ValueError(f"the leading {len(self.explained)} components explain only "
                             f"{self.explained[-1]:.3f} of the variance; raise k_max")
        return int(np.searchsorted(self.explained, variance) + 1)

    def project(self, x: np.ndarray, k: int) -> np.ndarray:
        U = self.U[:, :k]
        v = x.ravel().astype(np.float64) - self.mu
        return (self.mu + U @ (U.T @ v)).reshape(x.shape)

    def solve(self, y: np.ndarray, op, k: int) -> np.ndarray:
        """argmin_w ||A (mu + U_k w) - y||^2 (exact: lstsq; minimum-norm w when m < k)."""
        U = self.U[:, :k]
        basis = U.T.reshape(k, self.size, self.size)
        AU = np.asarray(op.forward(basis)).reshape(k, -1).T  # (m, k), float64 in -> float64 out
        Amu = np.asarray(op.forward(self.mu.reshape(self.size, self.size))).ravel()
        import scipy.linalg

        w = scipy.linalg.lstsq(AU, np.asarray(y, np.float64).ravel() - Amu, lapack_driver="gelsy")[0]
        return (self.mu + U @ w).reshape(self.size, self.size)


def image_seed(image_id: str, ratio: float) -> int:
    return zlib.crc32(f"{image_id}|{ratio}".encode()) % 100_000


def run_model(domain: str, model_ref: str, args) -> dict:
    import napari_flow_prior as nfp

    model = nfp.load_model(model_ref)
    size, n = args.size, args.size * args.size
    t0 = time.time()
    pca = PCAGenerator(args.data, domain, size, args.stride, k_max=max(int(round(0.1 * n)), 1) + 200)
    ks = {"pca95": pca.k_for(0.95), "pca10": int(round(0.1 * n))}
    print(f"{domain}: model {model.metadata.get('path', model_ref)}; PCA of {pca.n_patches} training "
          f"patches {size}x{size} in {time.time() - t0:.0f} s: k95 = {ks['pca95']}, "
          f"k = 0.1 n = {ks['pca10']} ({100 * pca.explained[ks['pca10'] - 1]:.1f}% of the variance)",
          flush=True)
    images = ([("in",) + c for c in heldout_crops(args.data, domain, args.n_in, size)]
              + [("ood",) + c for c in ood_crops(args.data, args.ood, size)])
    rows, seconds = [], {m: 0.0 for m in METHODS}
    for set_name, image_id, x in images:
        proj = {f"proj{key[3:]}": float(nfp.psnr(x, pca.project(x, k))) for key, k in ks.items()}
        for ratio in args.ratios:
            seed = image_seed(image_id, ratio)
            op = nfp.operators.GaussianProjection(x.shape, ratio, seed=seed, block=32)
            y = op.measure(x, noise_sigma=args.noise, seed=seed + 1)
            row = {"set": set_name, "image": image_id, "ratio": ratio, "m": op.m, "n": op.n, **proj}
            for method in METHODS:
                t = time.perf_counter()
                if method == "flow":
                    res = nfp.reconstruct(y, op, model, noise_sigma=args.noise,
                                          iterations=args.iterations, device=args.device)
                    estimate = res.image
                    row["flow_iterations"] = res.n_iter
                elif method.startswith("pca"):
                    estimate = pca.solve(y, op, ks[method])
                else:
                    estimate = nfp.baselines.run_baseline("lasso_dct", y, op, noise_sigma=args.noise)
                seconds[method] += time.perf_counter() - t
                row[method] = float(nfp.psnr(x, estimate))
            rows.append(row)
            print(f"  {set_name:<3} {image_id[:46]:<46} m/n {ratio:<4} "
                  + " ".join(f"{m} {row[m]:6.2f}" for m in METHODS)
                  + f" | proj95 {row['proj95']:.2f} proj10 {row['proj10']:.2f}", flush=True)
    means = {}
    for set_name in ("in", "ood"):
        sub = [r for r in rows if r["set"] == set_name]
        if not sub:
            continue
        means[set_name] = {
            str(ratio): {key: float(np.mean([r[key] for r in sub if r["ratio"] == ratio]))
                         for key in (*METHODS, "proj95", "proj10")}
            for ratio in args.ratios}
    return {"domain": domain, "model": str(model.metadata.get("path", model_ref)),
            "model_sha256": model.metadata.get("sha256"), "n": n, "k": ks,
            "k_variance_explained": {key: float(pca.explained[k - 1]) for key, k in ks.items()},
            "pca_training_patches": pca.n_patches,
            "images": {s: [i for ss, i, _ in images if ss == s] for s in ("in", "ood")},
            "seconds": seconds, "means": means, "rows": rows}


def table(result: dict) -> str:
    lines = []
    for set_name, label in (("in", "held-out test crops"), ("ood", "out-of-domain crops")):
        if set_name not in result["means"]:
            continue
        k = result["k"]
        lines += [f"{result['domain']} prior, {label} ({len(result['images'][set_name])} images), "
                  f"mean PSNR dB:", "",
                  f"| m/n | flow | PCA k={k['pca95']} (95%) | PCA k={k['pca10']} (0.1 n) | Lasso-DCT "
                  f"| flow - best other |", "|---|---|---|---|---|---|"]
        for ratio, m in result["means"][set_name].items():
            best = max(m["pca95"], m["pca10"], m["lasso_dct"])
            lines.append(f"| {ratio} | {m['flow']:.2f} | {m['pca95']:.2f} | {m['pca10']:.2f} | "
                         f"{m['lasso_dct']:.2f} | {m['flow'] - best:+.2f} |")
        any_ratio = next(iter(result["means"][set_name].values()))
        lines += ["", f"Range error of the PCA generators (projection of the true image onto the "
                  f"range, any m): k={k['pca95']}: {any_ratio['proj95']:.2f} dB, "
                  f"k={k['pca10']}: {any_ratio['proj10']:.2f} dB.", ""]
    return "\n".join(lines)


def plot(results: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4.2 * len(results)), squeeze=False,
                             sharey="row")
    for row_axes, result in zip(axes, results):
        for ax, set_name, label in zip(row_axes, ("in", "ood"), ("held-out test crops", "out-of-domain crops")):
            means = result["means"].get(set_name)
            if not means:
                ax.set_visible(False)
                continue
            ratios = [float(r) for r in means]
            for method in METHODS:
                name = LABELS[method]
                if method.startswith("pca"):
                    name = f"PCA generator, k = {result['k'][method]}" + (
                        " (95% var.)" if method == "pca95" else " (0.1 n)")
                ax.plot(ratios, [means[r][method] for r in means], "o-", color=COLORS[method],
                        label=name)
            for key, method in (("proj95", "pca95"), ("proj10", "pca10")):
                ax.axhline(next(iter(means.values()))[key], color=COLORS[method], ls=":", lw=1.2,
                           label=f"range ceiling, k = {result['k'][method]} (projection of x)")
            ax.set_xscale("log")
            ax.set_xticks(ratios)
            ax.set_xticklabels([f"{r:g}" for r in ratios])
            ax.set_xlabel("m / n")
            ax.set_ylabel("mean PSNR (dB)")
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{result['domain']} prior: {label} ({len(result['images'][set_name])}, "
                         f"{args.size}x{args.size})", fontsize=10)
        row_axes[0].legend(fontsize=7.5, loc="lower right")
    fig.suptitle(f"Compressed sensing (32x32 Gaussian blocks), noise sigma {args.noise}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--models", default="nuclei,medical", help="comma-separated: nuclei, medical")
    ap.add_argument("--nuclei-model", default="nuclei", help="model name or .safetensors path")
    ap.add_argument("--medical-model", default="medical", help="model name or .safetensors path")
    ap.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-in", type=int, default=3, help="held-out crops per model")
    ap.add_argument("--ood", default="camera,brick", help=f"out-of-domain images among {OOD}")
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--iterations", type=int, default=None, help="flow steps (default 300)")
    ap.add_argument("--stride", type=int, default=8, help="stride of the PCA training patches")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-json", type=Path, default=HERE / "results" / "range_error.json")
    ap.add_argument("--out-fig", type=Path, default=ROOT / "docs" / "images" / "range_error.png")
    ap.add_argument("--merge", type=Path, default=None,
                    help="a previous output JSON: keep its results for the models not run now")
    args = ap.parse_args(argv)
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.ood = [o.strip() for o in args.ood.split(",") if o.strip()]

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    refs = {"nuclei": args.nuclei_model, "medical": args.medical_model}
    results = [run_model(d.strip(), refs[d.strip()], args) for d in args.models.split(",") if d.strip()]
    if args.merge is not None:
        done = {r["domain"] for r in results}
        previous = json.loads(args.merge.read_text())
        results += [r for r in previous["results"] if r["domain"] not in done]
        results.sort(key=lambda r: ("nuclei", "medical").index(r["domain"]))
    for result in results:
        print("\n" + table(result))
        print("seconds: " + ", ".join(f"{m} {s:.0f}" for m, s in result["seconds"].items()))
    payload = {"command": "PYTHONPATH=src python benchmarks/range_error.py "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
               "operator": "GaussianProjection(block=32)", "noise_sigma": args.noise,
               "size": args.size, "ratios": args.ratios,
               "flow_iterations": args.iterations or "reconstruct default (300)",
               "torch_threads": args.threads, "wall_seconds": time.time() - t0, "results": results}
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(payload, indent=1) + "\n")
    plot(results, args.out_fig, args)
    print(f"\nwrote {args.out_json} and {args.out_fig} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
