#!/usr/bin/env python
"""Unseen-source benchmark: the flow priors on images from sources that no training, tuning or
design step has seen, against the best classical method tuned on each image's ground truth.

Sources (each source whole: none of its pixels trained a prior, tuned a default or a baseline, or
was looked at while the per-image selection was designed):

* from ``benchmarks/unseen_sources.py`` (``load_unseen``; made by ``scripts/prepare_sources.py``,
  licences in ``benchmarks/sources.json``) where that data is prepared: fluorescence and MRI/CT
  images from packages other than the training sources;
* scikit-image's bundled images (BSD-3-Clause; read from the installed package, no download):
  ``cell`` (phase-contrast microscopy), ``gravel`` and ``grass`` (textures),
  ``hubble_deep_field`` (astronomy, grey). ``camera``, ``moon`` and ``coins`` are left out: they
  were used while the selection (``solvers/select.py``) was designed.

Crops: ``--crops`` (default 8) crops of 128x128 per source at fixed positions on a regular grid
over the image (no selection by content beyond skipping near-constant crops), each normalised to
[0, 1] by its own 1st/99.8th percentiles.

Problems: inpainting 80% missing at random, deblurring Gaussian sigma 2, compressed sensing m/n
0.2 (block 32), all at noise 0.01 (``tune_baselines.ROWS``; masks, projections and noise seeded
per crop, so every method sees the same y).

Methods: ``flow`` = ``nfp.reconstruct(y, op, prior, noise_sigma=0.01)`` with today's defaults
(``select="auto"``); ``flow off`` = the same with ``select="off"`` (the fixed per-model defaults);
``oracle`` = every classical baseline of the operator's kind over its grid
(``tune_baselines.param_grid``), the best by PSNR against the ground truth, per crop (a bound no
user can reach; the flow never sees the truth). CS keeps its defaults under ``select="auto"``
(selection splits masks and blurs), so ``flow`` and ``flow off`` are one run there.

Results are cached per (prior file, source, crop, problem, method) in
``benchmarks/results/unseen_cache.jsonl`` (an interrupted run resumes) and the table is written to
``benchmarks/results/unseen.md``.

    PYTHONPATH=src python benchmarks/unseen.py [--priors nuclei,medical] [--problems inpaint_random80,blur2_n0.01,cs0.2]
        [--sources cell,gravel] [--crops 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tune_baselines import ROWS, make_operator, param_grid  # noqa: E402

RESULTS = HERE / "results"
CACHE = RESULTS / "unseen_cache.jsonl"
PROBLEMS = ("inpaint_random80", "blur2_n0.01", "cs0.2")
SKIMAGE_SOURCES = {"cell": "phase-contrast microscopy", "gravel": "texture", "grass": "texture",
                   "hubble_deep_field": "astronomy"}
SIZE = 128


def normalise(a: np.ndarray) -> np.ndarray:
    """Grey (RGB by luminance), scaled like the prepared sources (``unseen_sources.scale01``)."""
    from unseen_sources import scale01

    a = np.asarray(a, np.float64)
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.2125, 0.7154, 0.0721])
    return scale01(a)


def grid_crops(image: np.ndarray, n: int, size: int = SIZE, min_std: float = 0.04) -> list[tuple[str, np.ndarray]]:
    """``n`` crops of ``size`` at fixed positions on a regular grid (row-major), near-constant
    ones skipped; each crop normalised on its own."""
    h, w = image.shape
    k = 1
    while True:  # the smallest grid with at least n usable cells
        rows = np.linspace(0, h - size, k).round().astype(int)
        cols = np.linspace(0, w - size, k).round().astype(int)
        crops = [(f"r{r}_c{c}", image[r:r + size, c:c + size]) for r in rows for c in cols]
        crops = [(name, normalise(c)) for name, c in crops if c.std() >= min_std * max(np.ptp(image), 1e-12)]
        if len(crops) >= n or k > 8:
            break
        k += 1
    picks = np.linspace(0, len(crops) - 1, min(n, len(crops))).round().astype(int)
    return [crops[i] for i in picks]


def skimage_source(name: str, n: int) -> list[tuple[str, np.ndarray]]:
    from skimage import data

    image = normalise(getattr(data, name)())
    return grid_crops(image, n)


def sources_for(prior: str, names: list[str] | None, n: int) -> dict[str, tuple[str, list]]:
    """{source: (description, [(crop name, image)])} for a prior."""
    out = {}
    try:
        from unseen_sources import load_unseen  # prepared data (scripts/prepare_sources.py)

        for source, crop, image in load_unseen(prior, size=SIZE, n_crops=n):
            if names is None or source in names:
                out.setdefault(source, (f"prepared {prior} source", []))[1].append((crop, image))
    except (ImportError, FileNotFoundError, SystemExit) as err:
        print(f"no prepared unseen {prior} sources ({err}); scikit-image sources only", file=sys.stderr)
    for name, what in SKIMAGE_SOURCES.items():
        if names is None or name in names:
            out[name] = (f"scikit-image {name} ({what})", skimage_source(name, n))
    return out


def code_hash(method: str) -> str:
    """A hash of the code a method's result depends on (the library's solvers and baselines)."""
    import napari_flow_prior

    root = Path(napari_flow_prior.__file__).parent
    files = ["baselines.py", "operators.py"] + ([] if method == "oracle" else
                                                sorted(str(p.relative_to(root)) for p in (root / "solvers").glob("*.py")
                                                       if not (method == "flow off" and p.name == "select.py")))
    return hashlib.sha256(b"".join((root / f).read_bytes() for f in files)).hexdigest()[:10]


class Cache:
    def __init__(self, path: Path):
        self.path, self.entries = path, {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    e = json.loads(line)
                    self.entries[e["key"]] = e

    def get(self, key):
        return self.entries.get(key)

    def put(self, entry):
        self.entries[entry["key"]] = entry
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")


def score(truth, estimate) -> dict:
    from napari_flow_prior.metrics import psnr, ssim

    estimate = np.asarray(estimate, np.float32)
    return {"psnr": float(psnr(truth, estimate)), "ssim": float(ssim(truth, estimate)),
            "finite": bool(np.isfinite(estimate).all())}


def run(prior_name: str, model, model_hash: str, source: str, crop: str, image, problem: str, method: str,
        cache: Cache) -> dict:
    import napari_flow_prior as nfp
    from napari_flow_prior import baselines as bl

    image_hash = hashlib.sha256(image.tobytes()).hexdigest()[:12]
    key = "|".join([model_hash, source, crop, image_hash, problem, method, code_hash(method)])
    hit = cache.get(key)
    if hit is not None:
        return hit
    kind, _, noise = ROWS[problem]
    seed = int(image_hash[:6], 16)
    op = make_operator(problem, image.shape, seed=seed)
    y = op.measure(image, noise_sigma=noise, seed=seed + 1)
    entry = {"key": key, "prior": prior_name, "source": source, "crop": crop, "problem": problem, "method": method}
    t0 = time.perf_counter()
    if method == "oracle":
        best = None
        for name in bl.BASELINES[kind]:
            params, estimate, value = bl.oracle(name, image, y, op, grid=param_grid(name))
            if best is None or value > best[2]:
                best = (name, params, value, estimate)
        entry.update(baseline=best[0], params=best[1], **score(image, best[3]))
    else:
        result = nfp.reconstruct(y, op, model, noise_sigma=noise, select="off" if method == "flow off" else "auto")
        entry.update(n_iter=result.n_iter, selection=result.params.get("selection"),
                     fallback=bool(result.params.get("fallback")), **score(image, result.image))
    entry["seconds"] = time.perf_counter() - t0
    cache.put(entry)
    return entry


def table(entries: list[dict]) -> str:
    groups: dict = {}
    for e in entries:
        groups.setdefault((e["prior"], e["source"], e["problem"]), {}).setdefault(e["method"], []).append(e)
    lines = ["| prior | source | problem | crops | flow (default) | flow, select off | best oracle classical | "
             "flow - oracle | seconds flow / off |", "|---|---|---|---|---|---|---|---|---|"]
    for (prior, source, problem), by in sorted(groups.items()):
        crops = set.intersection(*({r["crop"] for r in rows} for rows in by.values()))  # crops every method ran
        by = {m: [r for r in rows if r["crop"] in crops] for m, rows in by.items()}
        def cell(method):
            rows = by.get(method) or (by.get("flow off") if method == "flow" and problem.startswith("cs") else None)
            if not rows:
                return "-", None, None
            p, s = np.mean([r["psnr"] for r in rows]), np.mean([r["ssim"] for r in rows])
            return f"{p:.2f} / {s:.3f}", p, np.mean([r["seconds"] for r in rows])
        flow, p_flow, t_flow = cell("flow")
        off, _, t_off = cell("flow off")
        orc, p_orc, _ = cell("oracle")
        n = len(by.get("oracle", by.get("flow off", [])))
        margin = f"{p_flow - p_orc:+.2f}" if p_flow is not None and p_orc is not None else "-"
        cost = f"{t_flow:.0f} / {t_off:.0f}" if t_flow is not None and t_off is not None else "-"
        lines.append(f"| {prior} | {source} | {problem} | {n} | {flow} | {off} | {orc} | {margin} | {cost} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--priors", default="nuclei,medical")
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--sources", default=None, help="comma-separated source names (default all)")
    ap.add_argument("--crops", type=int, default=8)
    ap.add_argument("--methods", default="oracle,flow off,flow")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table-only", action="store_true",
                    help="write the table from the cached results of the current code, run nothing")
    args = ap.parse_args(argv)
    import torch

    import napari_flow_prior as nfp

    torch.set_num_threads(args.threads)
    cache = Cache(CACHE)
    names = args.sources.split(",") if args.sources else None
    done = []
    if args.table_only:
        current = {m: code_hash(m) for m in ("oracle", "flow off", "flow")}
        done = [e for e in cache.entries.values() if e["key"].endswith(current[e["method"]])
                and e["prior"] in args.priors.split(",") and (names is None or e["source"] in names)]
    for prior_name in [] if args.table_only else args.priors.split(","):
        model = nfp.load_model(prior_name)
        model_hash = model.metadata.get("sha256", prior_name)[:12]
        for source, (what, crops) in sources_for(prior_name, names, args.crops).items():
            for problem in args.problems.split(","):
                for method in args.methods.split(","):
                    if method == "flow" and problem.startswith("cs"):
                        continue  # select keeps CS's defaults: the same run as "flow off"
                    for crop, image in crops:
                        e = run(prior_name, model, model_hash, source, crop, image, problem, method, cache)
                        done.append(e)
                        print(f"{prior_name} {source} {crop} {problem} {method}: {e['psnr']:.2f} dB "
                              f"({e['seconds']:.1f} s)", flush=True)
    text = ("# Unseen sources: flow priors vs the best oracle-tuned classical method\n\n"
            "Mean PSNR (dB) / SSIM over the crops; written by `benchmarks/unseen.py` (see its docstring for the "
            "sources, crops and methods).\n\n" + table(done) + "\n")
    (RESULTS / "unseen.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
