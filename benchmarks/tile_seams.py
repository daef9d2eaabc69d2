#!/usr/bin/env python
"""Are tile borders worse than tile interiors? PSNR in the blending bands vs the rest.

A real test image is reconstructed twice with the same measurements and defaults: as one whole
image (``tile=0``) and in overlapping tiles (``tile=--tile``, ``overlap=--overlap``; the solver's
tiled path, raised-cosine blending). Pixels are split into the *seam bands* (covered by two or
more tiles: where tiles are blended and where each tile's border lies) and the *interior*
(covered by one tile only). For each result the PSNR over each pixel set is reported; tiling
leaves no seam when the tiled result loses no more against the whole-image result in the bands
than in the interior (``band excess`` = (whole - tiled) in the bands minus the same in the
interior, in dB; around 0 is seamless, clearly positive means visible seams).

Images: the shipped samples (test split; ``demo.sample_image``, 256x256) with their own prior.
Operators: inpainting (80% missing), deblurring (sigma 2), and inpainting of 50% random pixels
plus a square hole of half the image's side whose window is one whole tile (that tile observes
nothing and is filled from its solved neighbours), noise 0.01.

    PYTHONPATH=src python benchmarks/tile_seams.py [--models nuclei,medical] [--tile 128]
        [--overlap 32] [--threads 1] [--out benchmarks/results/tile_seams.md]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPERATORS = {"inpainting 80%": "mask:0.8", "deblur sigma 2": "blur:2.0", "inpainting 50% + hole": "hole"}


def hole_mask(size: int):
    """50% random pixels missing (seed 0) and the square [3/8, 7/8) of the side: with 256 pixels
    and 128-pixel tiles (overlap 32) that is exactly the tile at (96, 96)."""
    from napari_flow_prior import operators as ops

    missing = ~ops.Mask.random((size, size), 0.5, seed=0).observed_full
    missing[3 * size // 8:7 * size // 8, 3 * size // 8:7 * size // 8] = True
    return ops.Mask.from_missing(missing)


def band_mask(shape, tile: int, overlap: int, align: int) -> np.ndarray:
    """True where two or more of the solver's tiles cover a pixel."""
    from napari_flow_prior import tiling

    count = np.zeros(shape, int)
    for t in tiling.plan_tiles(*shape, tile, overlap, align):
        count[t.slices] += 1
    return count >= 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="nuclei,medical")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=None, help="solver iterations (default: its own)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tile_seams.md"))
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / "results" / "tile_seams.jsonl"),
                    help="finished rows (JSON lines); a rerun with the same settings reuses them")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import napari_flow_prior as nfp
    from napari_flow_prior import tiling
    from napari_flow_prior.cli import parse_operator
    from napari_flow_prior.demo import sample_image

    cache_path = Path(args.cache)
    cache = {}
    if cache_path.is_file():
        for line in cache_path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                cache[entry["key"]] = entry
    rows = []
    for name in args.models.split(","):
        model = nfp.load_model(name)
        truth = sample_image(name, args.size)
        for label, spec in OPERATORS.items():
            key = (f"v2|{name}:{model.metadata.get('sha256', '?')[:16]}|{spec}|size={args.size}|tile={args.tile}"
                   f"|overlap={args.overlap}|it={args.iterations}")
            if key in cache:
                rows.append(cache[key])
                print(json.dumps(cache[key]), flush=True)
                continue
            op = hole_mask(args.size) if spec == "hole" else parse_operator(spec, truth.shape, seed=0, block=32)
            y = op.measure(truth, noise_sigma=0.01, seed=0)
            bands = band_mask(truth.shape, args.tile, args.overlap, tiling.alignment(op, model))
            row = {"key": key, "model": name, "operator": label, "band_pixels": int(bands.sum()),
                   "interior_pixels": int((~bands).sum())}
            for how, tile in (("whole", 0), ("tiled", args.tile)):
                t0 = time.perf_counter()
                r = nfp.reconstruct(y, op, model, noise_sigma=0.01, tile=tile, overlap=args.overlap,
                                    iterations=args.iterations, ensemble=1)  # seams of one solve
                row[how] = {"band": nfp.psnr(truth[bands], r.image[bands]),
                            "interior": nfp.psnr(truth[~bands], r.image[~bands]),
                            "all": float(nfp.psnr(truth, r.image)), "tiles": r.params.get("tiles", 1),
                            "blind_tiles": r.params.get("tiles_inside_holes", 0),
                            "seconds": time.perf_counter() - t0}
            row["band_excess_db"] = ((row["whole"]["band"] - row["tiled"]["band"])
                                     - (row["whole"]["interior"] - row["tiled"]["interior"]))
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(cache_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    lines = ["# Tile seams: PSNR in the blending bands vs the interior", "",
             f"Command: `PYTHONPATH=src python benchmarks/tile_seams.py --models {args.models} --tile {args.tile} "
             f"--overlap {args.overlap} --threads {args.threads}`; {args.size}x{args.size} shipped samples (test split), "
             "noise 0.01, solver defaults; torch " + torch.__version__ + ".", "",
             "Bands: pixels covered by two or more tiles; interior: by one. Band excess = (whole - tiled) "
             "PSNR in the bands minus the same in the interior (dB; ~0 = no seam).", "",
             "| prior / image | operator | tiles | PSNR whole: band / interior | PSNR tiled: band / interior "
             "| band excess dB | PSNR whole / tiled | seconds whole / tiled |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        blind = f" ({r['tiled']['blind_tiles']} inside the hole)" if r["tiled"].get("blind_tiles") else ""
        lines.append(f"| {r['model']} | {r['operator']} | {r['tiled']['tiles']}{blind} | {r['whole']['band']:.2f} / "
                     f"{r['whole']['interior']:.2f} | {r['tiled']['band']:.2f} / {r['tiled']['interior']:.2f} | "
                     f"{r['band_excess_db']:+.2f} | {r['whole']['all']:.2f} / {r['tiled']['all']:.2f} | {r['whole']['seconds']:.0f} / {r['tiled']['seconds']:.0f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
