#!/usr/bin/env python
"""Lossless codec baselines (bits/dim) on the test splits made by scripts/prepare_data.py.

For every nuclei / medical TEST block (one uint8 PNG per block) and every MNIST test image
(each 28x28 image as its own file) the image is re-encoded in memory with

* PNG : Pillow, compress_level=9, optimize=True
* WebP: Pillow, lossless=True, method=6, quality=100

and bits/dim = 8 * file_size / (H * W).  Per data set we report the pixel-weighted mean
(total bits / total pixels; for MNIST all images have the same size, so this equals the
plain mean over images).  Needs only numpy + Pillow (with WebP support).

    python scripts/codec_bpd.py --data /work/data [--json benchmarks/results/codec_bpd.json]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, features

REPO = Path(__file__).resolve().parents[1]

CODECS = {
    "png": dict(format="PNG", compress_level=9, optimize=True),
    "webp": dict(format="WEBP", lossless=True, method=6, quality=100),
}


def nbytes(a: np.ndarray, codec: str) -> int:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8), mode="L").save(buf, **CODECS[codec])
    return buf.tell()


def check_roundtrip(a: np.ndarray, codec: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(a, mode="L").save(buf, **CODECS[codec])
    b = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    if not np.array_equal(a, b):
        raise RuntimeError(f"{codec} round trip is not lossless")


def blocks_bpd(files: list[Path]) -> dict:
    per, tot_bits, tot_px = [], {c: 0 for c in CODECS}, 0
    for f in files:
        a = np.asarray(Image.open(f))
        assert a.dtype == np.uint8 and a.ndim == 2, f
        px = a.size
        row = {"file": f"{f.parent.name}/{f.name}", "shape": list(a.shape)}
        for c in CODECS:
            bits = 8 * nbytes(a, c)
            tot_bits[c] += bits
            row[f"{c}_bpd"] = round(bits / px, 4)
        tot_px += px
        per.append(row)
    out = {"n_images": len(files), "pixels": tot_px}
    for c in CODECS:
        out[f"{c}_bpd"] = tot_bits[c] / tot_px
    out["per_image"] = per
    return out


def digits_bpd(npz: Path) -> dict:
    imgs = np.load(npz)["images"]
    assert imgs.dtype == np.uint8 and imgs.shape[1:] == (28, 28)
    out = {"n_images": int(imgs.shape[0]), "pixels": int(imgs.size)}
    for c in CODECS:
        bpd = np.array([8 * nbytes(a, c) / a.size for a in imgs])
        out[f"{c}_bpd"] = float(bpd.mean())
        out[f"{c}_bpd_std"] = float(bpd.std())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "codec_bpd.json"))
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    data = Path(args.data)

    if not features.check("webp"):
        raise SystemExit("this Pillow has no WebP support")
    probe = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 2654435761 % 251).astype(np.uint8)
    for c in CODECS:
        check_roundtrip(probe, c)

    res = {
        "split": args.split,
        "definition": "bits/dim = 8 * encoded_bytes / (H * W) on uint8 grayscale; data-set value = "
                      "total bits / total pixels over the split (MNIST: mean over 28x28 images)",
        "codecs": {c: {k: v for k, v in kw.items()} for c, kw in CODECS.items()},
        "pillow": PIL.__version__, "libwebp": features.version("webp"),
        "python": platform.python_version(),
        "datasets": {},
    }
    for name in ("nuclei", "medical"):
        files = sorted((data / name / args.split).glob("*.png"))
        if not files:
            raise SystemExit(f"no files in {data / name / args.split}; run scripts/prepare_data.py first")
        r = blocks_bpd(files)
        # per-source breakdown (file name prefix before _r / _z)
        by = {}
        for row in r["per_image"]:
            src = row["file"].split("/")[1].rsplit("_r", 1)[0].rsplit("_z", 1)[0]
            d = by.setdefault(src, {"n_images": 0, "pixels": 0, "png_bits": 0.0, "webp_bits": 0.0})
            px = row["shape"][0] * row["shape"][1]
            d["n_images"] += 1
            d["pixels"] += px
            d["png_bits"] += row["png_bpd"] * px
            d["webp_bits"] += row["webp_bpd"] * px
        r["per_source"] = {k: {"n_images": v["n_images"], "png_bpd": v["png_bits"] / v["pixels"],
                               "webp_bpd": v["webp_bits"] / v["pixels"]} for k, v in by.items()}
        res["datasets"][name] = r
    res["datasets"]["digits"] = digits_bpd(data / "digits" / f"{args.split}.npz")

    print(f"lossless codecs on the {args.split} split (bits/dim, lower is better)")
    print(f"{'data set':10s} {'images':>7s} {'PNG':>7s} {'WebP':>7s}")
    for name, r in res["datasets"].items():
        print(f"{name:10s} {r['n_images']:7d} {r['png_bpd']:7.3f} {r['webp_bpd']:7.3f}")
        for src, v in r.get("per_source", {}).items():
            print(f"  {src:18s} {v['n_images']:3d} {v['png_bpd']:7.3f} {v['webp_bpd']:7.3f}")

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
