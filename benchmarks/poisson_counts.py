#!/usr/bin/env python
"""Measured photon counts through the command line: ``--gain/--offset`` against the percentile path.

The first ``--crops`` nuclei test crops (``quality.test_images``) are blurred (sigma 2), counted at
``--photons`` photons at their white level (Poisson, seed = crop index) and written as camera
images, raw = offset + gain * counts (uint16 TIFF). Each file is reconstructed by
``cli.reconstruct_file`` twice: as photon counts (``gain``/``offset``: ``normalize_counts`` and the
Poisson likelihood, no read noise) and as ordinary measured data (percentile normalisation,
``--noise auto``). PSNR on the truth's [0, 1] scale ((recon - offset) / gain / photons, clipped).

    PYTHONPATH=src python benchmarks/poisson_counts.py [--crops 4 --photons 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if str(HERE.parent / "src") not in sys.path:
    sys.path.append(str(HERE.parent / "src"))

from quality import test_images  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--crops", type=int, default=4)
    ap.add_argument("--photons", type=float, default=20.0)
    ap.add_argument("--gain", type=float, default=2.0)
    ap.add_argument("--offset", type=float, default=100.0)
    args = ap.parse_args()

    import tifffile

    import napari_flow_prior as nfp
    from napari_flow_prior.cli import reconstruct_file

    crops = [(d, im) for s, d, im in test_images("nuclei", args.data, n_in=8) if s == "in"][:args.crops]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, (desc, x) in enumerate(crops):
            op = nfp.operators.Blur(x.shape, sigma=2.0)
            counts = np.random.default_rng(i).poisson(args.photons * op.forward(x))
            tifffile.imwrite(tmp / "camera.tif", (args.offset + args.gain * counts).astype(np.uint16))

            def score(out):
                rec = tifffile.imread(out / "reconstruction.tif")
                return nfp.psnr(x, np.clip((rec - args.offset) / args.gain / args.photons, 0, 1))

            counted = reconstruct_file(tmp / "camera.tif", model="nuclei", operator="blur:2.0", noise="0",
                                       out=tmp / "counts", gain=args.gain, offset=args.offset)
            reconstruct_file(tmp / "camera.tif", model="nuclei", operator="blur:2.0", noise="auto",
                             out=tmp / "percentile")
            rows.append((desc, counted["params"]["photons"], score(tmp / "counts"), score(tmp / "percentile")))
    print(f"| crop | photons from the counts | --gain/--offset, Poisson | percentile, --noise auto |\n|---|---|---|---|")
    for desc, photons, a, b in rows:
        print(f"| {desc} | {photons:g} | {a:.2f} | {b:.2f} |")
    print(f"| **mean** | | **{np.mean([r[2] for r in rows]):.2f}** | {np.mean([r[3] for r in rows]):.2f} |")


if __name__ == "__main__":
    main()
