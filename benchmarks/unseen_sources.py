"""Deterministic crops of the unseen sources made by ``scripts/prepare_sources.py``.

    from unseen_sources import load_unseen
    for source, crop, image in load_unseen("nuclei", size=128, n_crops=8):
        ...  # image: float32 (size, size) in [0, 1]

Sources and licences: ``benchmarks/sources.json`` (only entries with ``used_for == "unseen"`` are
returned). Data: ``<root>/sources/<prior>/<source>/*.png`` with root ``$NFP_DATA`` or ``/work/data``.

Crop rule (fixed, not tuned on any result): in every image of a source (files in name order) the
candidate crops are the ``size`` x ``size`` windows on a grid of stride ``size // 2`` from (0, 0),
plus the windows flush with the bottom / right edge; a candidate is kept when at least 10% of its
pixels are foreground (above the Otsu threshold of its whole image) and its standard deviation is
at least 2% of the image's range (no flat background, no padding). ``n_crops`` of the kept
candidates are taken at evenly spaced positions of that list (``seed=0``), so the picks spread over
the images and over each image; another seed takes a seeded random subset instead. Every crop is
scaled on its own to [0, 1] by its 1st / 99.8th percentiles (clipped), as ``normalize()`` does for
an image at inference and as scripts/prepare_data.py scales each training block.

A missing data folder raises ``FileNotFoundError`` with the commands that make it (the benchmark
``benchmarks/unseen.py`` catches it and goes on with scikit-image's sources only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "sources.json"
HOW = ("run scripts/prepare_sources.py (see its docstring, or docs/training.md 'Unseen sources'): "
       "/work/dataenv/bin/python scripts/prepare_sources.py --out /work/data")
P_LO, P_HI = 1.0, 99.8


def data_root() -> Path:
    return Path(os.environ.get("NFP_DATA", "/work/data")) / "sources"


def unseen_names(prior: str) -> list[str]:
    """Names of the unseen sources of ``prior`` in the manifest (in manifest order)."""
    m = json.loads(MANIFEST.read_text())
    if prior not in m["priors"]:
        raise KeyError(f"no prior {prior!r} in {MANIFEST}; have {sorted(m['priors'])}")
    return [k for k, v in m["priors"][prior].items() if v.get("used_for") == "unseen"]


def read_png(path: Path) -> np.ndarray:
    """A stored image as float64 in [0, 1] (8- or 16-bit PNG)."""
    from PIL import Image

    a = np.asarray(Image.open(path))
    return a.astype(np.float64) / (65535.0 if a.dtype == np.uint16 else 255.0)


def scale01(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, [P_LO, P_HI])
    return np.clip((a - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)


def otsu(a: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(a, bins=bins, range=(float(a.min()), float(a.max()) + 1e-12))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    return float(centers[np.argmax(w0 * w1 * (mu0 - mu1) ** 2)])


def positions(n: int, size: int) -> list[int]:
    if n < size:
        return []
    p = list(range(0, n - size + 1, max(size // 2, 1)))
    if p[-1] != n - size:
        p.append(n - size)
    return p


def candidates(image: np.ndarray, size: int, min_fg: float = 0.10, min_std: float = 0.02):
    """[(row, col)] of the kept windows of one image, row-major."""
    thr = otsu(image)
    rng = max(float(np.ptp(image)), 1e-12)
    out = []
    for r in positions(image.shape[0], size):
        for c in positions(image.shape[1], size):
            w = image[r:r + size, c:c + size]
            if (w > thr).mean() >= min_fg and w.std() >= min_std * rng:
                out.append((r, c))
    return out


def load_unseen(prior: str, size: int = 128, n_crops: int = 4, seed: int = 0,
                sources: list[str] | None = None) -> list[tuple[str, str, np.ndarray]]:
    """[(source, crop name, float32 (size, size) image in [0, 1])] for every unseen source of
    ``prior`` ("nuclei", "medical" or "natural"), ``n_crops`` per source (fewer where a source
    has fewer usable windows). Crop names are ``<image>_r<row>_c<col>``."""
    names = unseen_names(prior)
    if sources is not None:
        names = [n for n in names if n in sources]
    root = data_root() / prior
    if not root.is_dir():
        raise FileNotFoundError(f"unseen {prior} sources are not prepared ({root} missing): {HOW}")
    out = []
    for source in names:
        files = sorted((root / source).glob("*.png"))
        if not files:
            raise FileNotFoundError(f"no images in {root / source}: {HOW}")
        images = {f.stem: read_png(f) for f in files}
        cands = [(stem, r, c) for stem, im in images.items() for r, c in candidates(im, size)]
        if not cands:
            continue
        k = min(n_crops, len(cands))
        if seed == 0:
            picks = np.linspace(0, len(cands) - 1, k).round().astype(int)
        else:
            picks = np.sort(np.random.default_rng(seed).choice(len(cands), k, replace=False))
        for i in picks:
            stem, r, c = cands[int(i)]
            out.append((source, f"{stem}_r{r}_c{c}", scale01(images[stem][r:r + size, c:c + size])))
    return out


if __name__ == "__main__":  # a quick listing
    import sys

    for prior in sys.argv[1:] or ["nuclei", "medical", "natural"]:
        try:
            crops = load_unseen(prior, n_crops=8)
        except FileNotFoundError as err:
            print(err)
            continue
        by = {}
        for s, c, im in crops:
            by.setdefault(s, []).append(c)
        for s, cs in by.items():
            print(f"{prior:8s} {s:28s} {len(cs)}: {', '.join(cs)}")
