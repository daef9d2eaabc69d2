#!/usr/bin/env python
"""Grid-search the classical baselines on VALIDATION crops, for every (operator, noise level)
row of the quality benchmark, and commit the chosen parameters.

Data: 6 crops of 128x128 (3 from ``<data>/nuclei/val``, 3 from ``<data>/medical/val``, positions
drawn with a fixed seed, near-constant crops rejected). ``<data>`` (default ``/work/data``) is
made by ``scripts/prepare_data.py --out <data>`` (run in its own environment, see
``src/napari_flow_prior/data/DATA.md``): 256x256 uint8 blocks, each normalised on its own to
[0, 1] as ``x = png / 255``. No test pixel is ever read here.

Rows (shared with ``benchmarks/quality.py``): inpainting with 50/80/90% of pixels missing at
random and with block masks (noise 0.01); deblurring, Gaussian PSF sigma 1, 2, 3, noise 0.01 and
0.03; compressed sensing, ``GaussianProjection`` m/n 0.05, 0.1, 0.2, 0.4, block 32, noise 0.01.

Grids: ``baselines.PARAM_GRIDS`` plus the values of ``GRID_EXTENSIONS`` below (the library's
grids put several optima on their edge); both are printed and stored.

Outputs:

* ``src/napari_flow_prior/data/baseline_params.json``: the library's table
  (``baselines.params_key(name, kind, noise_sigma)``). That key cannot tell blur sigma 1 from 3
  or CS ratio 0.05 from 0.4, so the value stored there is the grid point with the best mean PSNR
  over all rows sharing the key (what ``baselines.tune`` gives with the rows pooled). The
  per-row choices are stored too, under the metadata entry ``"_by_operator"``
  (``"{name}/{kind}/{noise}/{param}={value}"``, e.g. ``"wiener/blur/0.01/sigma=2.0"``), which
  ``run_baseline`` ignores today and ``benchmarks/quality.py`` uses (nearest tuned value).
* ``benchmarks/results/baseline_grid.json``: every grid point's mean PSNR/SSIM per row.

Usage::

    PYTHONPATH=src python benchmarks/tune_baselines.py [--data /work/data] [--crops 6]
        [--no-write] [--rows blur2_n0.01,cs0.2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# ---------------------------------------------------------------------------- benchmark rows
# name -> (kind, operator parameters, noise sigma). Shared with benchmarks/quality.py.
ROWS: dict[str, tuple[str, dict, float]] = {
    "inpaint_random50": ("mask", {"missing": 0.5}, 0.01),
    "inpaint_random80": ("mask", {"missing": 0.8}, 0.01),
    "inpaint_random90": ("mask", {"missing": 0.9}, 0.01),
    "inpaint_blocks": ("mask", {"blocks": True}, 0.01),
    "blur1_n0.01": ("blur", {"sigma": 1.0}, 0.01),
    "blur2_n0.01": ("blur", {"sigma": 2.0}, 0.01),
    "blur3_n0.01": ("blur", {"sigma": 3.0}, 0.01),
    "blur1_n0.03": ("blur", {"sigma": 1.0}, 0.03),
    "blur2_n0.03": ("blur", {"sigma": 2.0}, 0.03),
    "blur3_n0.03": ("blur", {"sigma": 3.0}, 0.03),
    "cs0.05": ("cs", {"ratio": 0.05}, 0.01),
    "cs0.1": ("cs", {"ratio": 0.1}, 0.01),
    "cs0.2": ("cs", {"ratio": 0.2}, 0.01),
    "cs0.4": ("cs", {"ratio": 0.4}, 0.01),
}
HEADLINE_ROWS = ("inpaint_random80", "blur2_n0.01", "cs0.2")
ROW_LABELS = {
    "inpaint_random50": "inpainting, 50% missing", "inpaint_random80": "inpainting, 80% missing",
    "inpaint_random90": "inpainting, 90% missing", "inpaint_blocks": "inpainting, blocks",
    "blur1_n0.01": "deblur s=1, noise 0.01", "blur2_n0.01": "deblur s=2, noise 0.01",
    "blur3_n0.01": "deblur s=3, noise 0.01", "blur1_n0.03": "deblur s=1, noise 0.03",
    "blur2_n0.03": "deblur s=2, noise 0.03", "blur3_n0.03": "deblur s=3, noise 0.03",
    "cs0.05": "CS m/n 0.05", "cs0.1": "CS m/n 0.1", "cs0.2": "CS m/n 0.2", "cs0.4": "CS m/n 0.4",
}
CS_BLOCK = 32

# Values added to the library's PARAM_GRIDS: its grids put the validation optimum on their edge
# for these (RL at sigma 1, Wiener and RL at noise 0.03, TV at sigma 3 and at CS 0.4).
GRID_EXTENSIONS = {
    "wiener": {"balance": [1.0, 3.0]},
    "richardson_lucy": {"num_iter": [1, 2, 3]},
    "tv_deblur": {"weight": [2e-4]},
    "tv_cs": {"weight": [1e-3]},
}


def param_grid(name: str) -> dict:
    """The grid searched for baseline ``name``: ``PARAM_GRIDS[name]`` plus ``GRID_EXTENSIONS``."""
    from napari_flow_prior.baselines import PARAM_GRIDS

    grid = {k: list(v) for k, v in PARAM_GRIDS[name].items()}
    for k, extra in GRID_EXTENSIONS.get(name, {}).items():
        grid[k] = sorted(set(grid.get(k, [])) | set(extra))
    return grid


def block_mask_params(shape) -> dict:
    """Block masks: 10 missing squares of side H/8 (16 px on a 128x128 crop, about 14% missing)."""
    return {"n_blocks": 10, "size": max(2, int(shape[-2]) // 8)}


def make_operator(row: str, shape, seed: int):
    """The row's operator for an image of ``shape``; ``seed`` draws masks / projections."""
    from napari_flow_prior import operators as ops

    kind, p, _ = ROWS[row]
    if kind == "mask":
        if p.get("blocks"):
            return ops.Mask.blocks(shape, seed=seed, **block_mask_params(shape))
        return ops.Mask.random(shape, missing_fraction=p["missing"], seed=seed)
    if kind == "blur":
        return ops.Blur(shape, sigma=p["sigma"])
    return ops.GaussianProjection(shape, ratio=p["ratio"], seed=seed, block=CS_BLOCK)


def operator_value(op) -> tuple[str, float]:
    """The number that tells operators of one kind apart: missing fraction, blur sigma, ratio."""
    if op.kind == "mask":
        return "missing", round(float(op.missing_fraction), 4)
    if op.kind == "blur":
        return "sigma", float(op.sigma) if op.sigma is not None else float("nan")
    return "ratio", float(getattr(op, "ratio", float("nan")))


def fine_key(name: str, kind: str, noise_sigma: float, param: str, value: float) -> str:
    return f"{name}/{kind}/{float(noise_sigma)}/{param}={value}"


def fine_params(name: str, op, noise_sigma: float, table: dict | None = None):
    """Per-operator tuned parameters of ``baseline_params.json["_by_operator"]``: the entry of
    this baseline, kind and noise level whose operator value (missing fraction, blur sigma, CS
    ratio) is nearest to ``op``'s; None if there is none."""
    if table is None:
        from napari_flow_prior.baselines import PARAMS_FILE

        if not Path(PARAMS_FILE).is_file():
            return None
        table = json.loads(Path(PARAMS_FILE).read_text()).get("_by_operator", {})
    param, value = operator_value(op)
    prefix = f"{name}/{op.kind}/{float(noise_sigma)}/{param}="
    best = None
    for key, entry in table.items():
        if key.startswith(prefix):
            try:
                distance = abs(float(key[len(prefix):]) - value)
            except ValueError:
                continue
            if best is None or distance < best[0]:
                best = (distance, entry)
    return None if best is None else dict(best[1])


# ---------------------------------------------------------------------------- data
def load_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def random_crops(files, n: int, size: int, rng, min_std: float = 0.04, tries: int = 200):
    """``n`` crops of ``size`` from ``files`` (cycled in a shuffled order), positions drawn by
    ``rng``; crops with a standard deviation below ``min_std`` are redrawn. Returns a list of
    (image, description)."""
    files = [files[i] for i in rng.permutation(len(files))]
    out, seen = [], set()
    for k in range(n):
        path = files[k % len(files)]
        image = load_png(path)
        h, w = image.shape
        for attempt in range(tries):
            r, c = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            crop = image[r:r + size, c:c + size]
            if (path, r, c) not in seen and (crop.std() >= min_std or attempt == tries - 1):
                break
        seen.add((path, r, c))
        out.append((np.ascontiguousarray(crop), f"{Path(path).parent.parent.name}/"
                    f"{Path(path).parent.name}/{Path(path).name}[{r}:{r + size},{c}:{c + size}]"))
    return out


def validation_crops(data: Path, n: int = 6, size: int = 128, seed: int = 12345):
    rng = np.random.default_rng(seed)
    crops = []
    n_nuclei = n // 2
    for dataset, count in (("nuclei", n_nuclei), ("medical", n - n_nuclei)):
        files = sorted((data / dataset / "val").glob("*.png"))
        if not files:
            raise SystemExit(f"no validation images in {data / dataset / 'val'}: run "
                             "scripts/prepare_data.py --out {data} first")
        crops += random_crops(files, count, size, rng)
    return crops


# ---------------------------------------------------------------------------- tuning
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--crops", type=int, default=6)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (default all)")
    ap.add_argument("--no-write", action="store_true", help="print only; write no file")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_flow_prior import baselines as bl
    from napari_flow_prior.metrics import psnr, ssim

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; known: {list(ROWS)}")
    crops = validation_crops(args.data, args.crops, args.size)
    print(f"validation crops ({args.size}x{args.size}):")
    for _, desc in crops:
        print(f"  {desc}")

    t_start = time.time()
    grid_results: dict[str, dict] = {}
    by_operator: dict[str, dict] = {}
    pooled: dict[str, dict[str, list]] = {}  # coarse key -> {param json: [psnr per case]}
    for row in rows:
        kind, _, noise = ROWS[row]
        cases = []
        for i, (x, _) in enumerate(crops):
            op = make_operator(row, x.shape, seed=1000 + i)
            cases.append((x, op.measure(x, noise_sigma=noise, seed=2000 + i), op))
        pname, pvalue = operator_value(cases[0][2])
        if kind == "mask" and ROWS[row][1].get("blocks"):
            pvalue = round(float(np.mean([operator_value(c[2])[1] for c in cases])), 4)
        grid_results[row] = {"kind": kind, "noise_sigma": noise, "operator": {pname: pvalue},
                             "baselines": {}}
        for name in bl.BASELINES[kind]:
            t0 = time.time()
            points = []
            for point in bl._grid_points(param_grid(name)):
                p_list, s_list = [], []
                for x, y, op in cases:
                    est = bl.run_baseline(name, y, op, params=point)
                    p_list.append(min(psnr(x, est), 100.0))
                    s_list.append(ssim(x, est))
                points.append({"params": point, "psnr": float(np.mean(p_list)),
                               "ssim": float(np.mean(s_list)), "psnr_per_crop": p_list})
                pooled.setdefault(bl.params_key(name, kind, noise), {}).setdefault(
                    json.dumps(point, sort_keys=True), []).extend(p_list)
            best = max(points, key=lambda q: q["psnr"])
            grid_results[row]["baselines"][name] = {
                "grid": param_grid(name), "points": points, "best": best["params"],
                "best_psnr": best["psnr"], "best_ssim": best["ssim"],
                "seconds": time.time() - t0}
            by_operator[fine_key(name, kind, noise, pname, pvalue)] = best["params"]
            grid = "  ".join(f"{_fmt(q['params'])}:{q['psnr']:.2f}" for q in points)
            print(f"{row:<17} {name:<16} best {_fmt(best['params']):<18} {best['psnr']:6.2f} dB "
                  f"({time.time() - t0:5.1f} s)  grid {grid}", flush=True)

    coarse = {}
    for key, table in pooled.items():
        best = max(table.items(), key=lambda kv: np.mean(kv[1]))
        coarse[key] = json.loads(best[0])

    # ---- tables
    print("\n## Grids (validation)\n")
    print("| baseline | parameter grid | added to PARAM_GRIDS |\n|---|---|---|")
    used = sorted({n for r in rows for n in bl.BASELINES[ROWS[r][0]]})
    for name in used:
        ext = _fmt(GRID_EXTENSIONS.get(name, {}))
        print(f"| {name} | {_fmt(param_grid(name)) or '(none)'} | {ext} |")
    print("\n## Chosen per row (mean PSNR dB on the validation crops)\n")
    print("| row | baseline | chosen | PSNR | SSIM | pooled key choice |\n|---|---|---|---|---|---|")
    for row in rows:
        kind, _, noise = ROWS[row]
        for name, res in grid_results[row]["baselines"].items():
            edge = " (grid edge)" if _at_edge(res["best"], param_grid(name)) else ""
            print(f"| {row} | {name} | {(_fmt(res['best']) or '-') + edge} | {res['best_psnr']:.2f} | "
                  f"{res['best_ssim']:.3f} | {_fmt(coarse[bl.params_key(name, kind, noise)]) or '-'} |")
    print(f"\ntotal {time.time() - t_start:.0f} s")

    if not args.no_write:
        meta = {
            "generator": "benchmarks/tune_baselines.py",
            "data": "6 validation crops 128x128 (3 nuclei/val, 3 medical/val), seed 12345",
            "crops": [d for _, d in crops],
            "criterion": "mean PSNR (data range 1, capped at 100 dB)",
            "keying": "'{name}/{kind}/{noise}' holds the best point over all rows sharing the key; "
                      "'_by_operator' holds the best point per row, keyed "
                      "'{name}/{kind}/{noise}/{param}={value}' (missing fraction, blur sigma, CS ratio)",
            "grids": {n: param_grid(n) for n in sorted(bl.PARAM_GRIDS)},
            "grid_extensions": "values added to baselines.PARAM_GRIDS: " + json.dumps(GRID_EXTENSIONS),
        }
        # merge with what is there so that a --rows subset does not drop other rows
        old_fine = {}
        if Path(bl.PARAMS_FILE).is_file():
            old_fine = json.loads(Path(bl.PARAMS_FILE).read_text()).get("_by_operator", {})
        path = bl.save_tuned_params({**coarse, "_meta": meta,
                                     "_by_operator": dict(sorted({**old_fine, **by_operator}.items()))})
        print(f"wrote {path}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        grid_path = RESULTS / "baseline_grid.json"
        old = json.loads(grid_path.read_text()).get("rows", {}) if grid_path.is_file() else {}
        grid_path.write_text(json.dumps({"meta": meta, "rows": {**old, **grid_results}}, indent=1) + "\n")
        print(f"wrote {grid_path}")
    return 0


def _at_edge(point, grid) -> bool:
    """True if a tuned value is the smallest or largest of its grid (the grid may be too narrow)."""
    return any(len(grid[k]) > 2 and v in (min(grid[k]), max(grid[k])) for k, v in point.items())


def _fmt(params) -> str:
    if not params:
        return ""
    return ", ".join(f"{k}={v}" for k, v in params.items())


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
