#!/usr/bin/env python
"""Quality benchmark of the engine: the flow prior against tuned classical baselines on held-out
TEST crops, every benchmark row, PSNR / SSIM and seconds per image.

Images (all from the test split or the out-of-domain set, never train or validation pixels):

* ``nuclei``, ``medical``: 8 in-domain crops of 128x128 from ``<data>/{nuclei,medical}/test``
  (positions drawn with a fixed seed, near-constant crops redrawn), and 4 out-of-domain crops:
  the centre 128x128 of ``<data>/ood/{camera,moon,brick,retina}.png``;
* ``digits``: 8 single test digits of 28x28 (the model's native size; indices drawn with a fixed
  seed from ``<data>/digits/test.npz``) and the 4 out-of-domain ``<data>/ood/*_28.png``.

``<data>`` (``--data``, default ``/work/data``) is made by ``scripts/prepare_data.py --out <data>``
(its own environment, see ``src/napari_flow_prior/data/DATA.md``): uint8 PNG blocks, each
normalised on its own, read as ``x = png / 255``.

Rows (``benchmarks/tune_baselines.py: ROWS``): inpainting 50/80/90% missing at random and block
masks (noise 0.01); deblurring sigma 1, 2, 3 at noise 0.01 and 0.03; compressed sensing
(``GaussianProjection``, 32x32 blocks for every method) m/n 0.05, 0.1, 0.2, 0.4 at noise 0.01.
Masks, projections and noise are drawn with seeds fixed per image, so every method sees the
same y.

Methods: the flow through ``nfp.reconstruct(y, op, model, noise_sigma=...)`` with its defaults
(``map``) on every row, and ``latent`` and ``mle`` on the headline rows (inpainting 80%, deblur
sigma 2 at noise 0.01, CS 0.2); ``mle`` does not exist for blur and is listed as n/a. Every
classical baseline of the operator's kind with parameters tuned on validation crops by
``tune_baselines.py`` (``--baseline-params operator``, the default: the per-operator entry of
``baseline_params.json["_by_operator"]``, e.g. blur sigma 2; ``library``: exactly
``run_baseline(..., noise_sigma=...)``, whose key only knows the kind and noise level), and,
reported separately, every baseline ORACLE-tuned on each image's ground truth
(``baselines.oracle`` over the same grids as the tuning; its seconds are for the whole grid).

Results are cached per (model file, image, row, method, settings, hash of the solver or
baseline source) in
``benchmarks/results/quality_cache.jsonl``, so an interrupted run resumes; the tables are built
from the cache for exactly the requested subset and written to ``benchmarks/results/quality.md``.

Usage::

    PYTHONPATH=src python benchmarks/quality.py                       # everything, shipped models
    PYTHONPATH=src python benchmarks/quality.py --models nuclei --rows inpaint_random80,cs0.2 \\
        --limit-images 2 --iterations 20 --model-file nuclei=/work/runs/nuclei-A.safetensors
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(ROOT / "src") not in sys.path:
    sys.path.append(str(ROOT / "src"))

from tune_baselines import (  # noqa: E402
    HEADLINE_ROWS, ROW_LABELS, ROWS, fine_params, load_png, make_operator, param_grid,
    random_crops)

RESULTS = HERE / "results"
MODELS = ("nuclei", "medical", "digits")
OOD = ("camera", "moon", "brick", "retina")
FLOW_METHODS = ("map", "latent", "mle", "posterior")
TARGETS = {"inpaint_random80": 3.0, "blur2_n0.01": 3.0, "cs0.2": 2.0}  # in-domain map margins


# ---------------------------------------------------------------------------- images
def test_images(model: str, data: Path, n_in: int = 8, size: int = 128):
    """[(set, image id, image)]: the in-domain test crops then the out-of-domain crops."""
    out = []
    if model == "digits":
        with np.load(data / "digits" / "test.npz") as f:
            digits = f["images"]
        idx = np.sort(np.random.default_rng(7).choice(len(digits), n_in, replace=False))
        out += [("in", f"digits/test[{i}]", digits[i].astype(np.float32) / 255.0) for i in idx]
        for name in OOD:
            out.append(("ood", f"ood/{name}_28.png", load_png(data / "ood" / f"{name}_28.png")))
        return out
    files = sorted((data / model / "test").glob("*.png"))
    if not files:
        raise SystemExit(f"no test images in {data / model / 'test'}: run scripts/prepare_data.py")
    rng = np.random.default_rng({"nuclei": 101, "medical": 202}.get(model, 303))
    out += [("in", desc, img) for img, desc in random_crops(files, n_in, size, rng)]
    for name in OOD:
        image = load_png(data / "ood" / f"{name}.png")
        r0, c0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        out.append(("ood", f"ood/{name}.png[{r0}:{r0 + size},{c0}:{c0 + size}]",
                    np.ascontiguousarray(image[r0:r0 + size, c0:c0 + size])))
    return out


# ---------------------------------------------------------------------------- cache
class Cache:
    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by an interrupted write

    def get(self, key):
        return self.entries.get(key)

    def put(self, entry: dict) -> None:
        self.entries[entry["key"]] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def _score(truth, estimate) -> dict:
    import napari_flow_prior as nfp

    estimate = np.asarray(estimate)
    return {"psnr": min(float(nfp.psnr(truth, estimate)), 100.0),
            "ssim": float(nfp.ssim(truth, estimate)),
            "finite": bool(np.isfinite(estimate).all())}


# ---------------------------------------------------------------------------- running
def plan(model_name, images, rows, flow_methods, baselines_on, oracle_on):
    """All (set, image id, image, row, family, method) jobs for one model."""
    from napari_flow_prior.baselines import BASELINES

    jobs = []
    for set_name, image_id, image in images:
        for row in rows:
            kind = ROWS[row][0]
            for method in flow_methods:
                if method == "map" or row in HEADLINE_ROWS:
                    jobs.append((set_name, image_id, image, row, "flow", method))
            if baselines_on:
                jobs += [(set_name, image_id, image, row, "baseline", b) for b in BASELINES[kind]]
            if oracle_on:
                jobs += [(set_name, image_id, image, row, "oracle", b) for b in BASELINES[kind]]
            jobs.append((set_name, image_id, image, row, "floor", "noise_floor"))
    return jobs


def noise_floor_psnr(image, op, noise: float) -> float:
    """An estimate of the PSNR no method can exceed when the ground truth itself carries white
    pixel noise of standard deviation sigma: that noise is independent of everything else, so the
    part of it that the measurements do not carry cannot be predicted. sigma is the root mean
    square of the image's finest diagonal Haar details (for white noise their variance is sigma^2;
    the median estimator of ``estimate_noise_sigma`` is too coarse on images with few grey levels);
    fine texture counts as noise, so this is an estimate, not a bound (on images with pixel-scale
    edges, such as MNIST strokes, methods exceed it). The mean squared error is then at least:

    * mask: missing_fraction * sigma^2 (a missing pixel's noise is in no measurement);
    * compressed sensing: (1 - m/n) * sigma^2 (the noise in the null space of A);
    * blur: sigma^2 * mean_f noise^2 / (|H_f|^2 sigma^2 + noise^2), the error of the best
      (Gaussian, hence linear) estimate of the white noise through the blur's transfer function H
      (periodic approximation).

    Returns 100 for a clean image."""
    from napari_flow_prior.solvers import diagonal_details

    sigma = float(np.sqrt(np.mean(diagonal_details(image) ** 2)))
    if op.kind == "mask":
        mse = float(op.missing_fraction) * sigma ** 2
    elif op.kind == "blur":
        psf = np.zeros(image.shape)
        k = op.psf
        psf[:k.shape[0], :k.shape[1]] = k
        gain = np.abs(np.fft.fft2(psf)) ** 2
        mse = float(np.mean(sigma ** 2 * noise ** 2 / (gain * sigma ** 2 + noise ** 2))) if sigma > 0 else 0.0
    else:
        mse = (1 - op.m / image.size) * sigma ** 2
    return 100.0 if mse <= 0 else min(100.0, float(10 * np.log10(1.0 / mse)))


# the flow solves run baselines too (their warm start, the out-of-domain fallback)
FLOW_SOURCES = ("solvers", "baselines", "operators", "tiling", "devices", "normalization", "likelihood", "domain",
                "flows")
BASELINE_SOURCES = ("baselines", "operators")


def run_job(job, model, model_key, args, cache: Cache) -> dict:
    import napari_flow_prior as nfp
    from napari_flow_prior import baselines as bl

    set_name, image_id, image, row, family, method = job
    kind, _, noise = ROWS[row]
    seed = _image_seed(image_id)
    op = make_operator(row, image.shape, seed=seed)
    params, source = None, None
    if family == "flow":
        settings = f"it={args.iterations or 'default'}|device={args.device}|{source_hash(*FLOW_SOURCES)}"
    elif family == "floor":
        settings = "haar-rms"
    elif family == "baseline":
        if args.baseline_params == "operator":
            params = fine_params(method, op, noise)
            source = "operator" if params is not None else "library"
        else:
            source = "library"
        if params is None:
            params = bl._resolve_params(method, op.kind, noise)
        settings = f"params={json.dumps(params, sort_keys=True)}|{source_hash(*BASELINE_SOURCES)}"
    else:
        settings = f"grid={json.dumps(param_grid(method), sort_keys=True)}|{source_hash(*BASELINE_SOURCES)}"
    key = "|".join([model_key, image_id, row, family, method, settings])
    hit = cache.get(key)
    if hit is not None:
        return hit
    y = op.measure(image, noise_sigma=noise, seed=seed + 1)
    entry = {"key": key, "model": args.current_model, "model_key": model_key, "set": set_name,
             "image": image_id, "row": row, "family": family, "method": method,
             "noise_sigma": noise, "operator": op.describe()}
    t0 = time.perf_counter()
    try:
        if family == "floor":
            entry.update(seconds=0.0, psnr=noise_floor_psnr(image, op, noise), ssim=None, finite=True)
            cache.put(entry)
            return entry
        if family == "flow":
            result = nfp.reconstruct(y, op, model, method=method, noise_sigma=noise,
                                     iterations=args.iterations, device=args.device)
            estimate = result.image
            entry.update(n_iter=result.n_iter, device=result.device)
        elif family == "baseline":
            estimate = bl.run_baseline(method, y, op, params=params)
            entry.update(params=params, params_source=source)
        else:
            best, estimate, _ = bl.oracle(method, image, y, op, grid=param_grid(method))
            entry.update(params=best)
        entry["seconds"] = time.perf_counter() - t0
        entry.update(_score(image, estimate))
    except ValueError as err:  # e.g. mle with a blur: not applicable
        entry.update(seconds=time.perf_counter() - t0, error=str(err), psnr=None, ssim=None)
    cache.put(entry)
    return entry


@functools.lru_cache(maxsize=None)
def source_hash(*modules: str) -> str:
    """Short hash of the library source that makes a result, part of the cache key: a change to
    any of these modules (a package: all of its files), their defaults included, invalidates the
    cached results they made. (Hashing the solvers alone once let results of older flow code
    stand in for the current one.) Read once per process: the code that runs is the code loaded."""
    import hashlib
    import importlib

    digest = hashlib.sha1()
    for module in modules:
        path = Path(importlib.import_module(f"napari_flow_prior.{module}").__file__)
        for source in sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]:
            digest.update(source.read_bytes())
    return f"{'+'.join(modules)}={digest.hexdigest()[:10]}"


def _image_seed(image_id: str) -> int:
    """A seed fixed by the image id (stable across runs and machines, unlike hash())."""
    import zlib

    return zlib.crc32(image_id.encode()) % 100_000


# ---------------------------------------------------------------------------- tables
def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else math.nan


def summarise(entries: list[dict]):
    """{(model, set, row): {(family, method): {psnr, ssim, seconds, n, errors}}}"""
    groups: dict = {}
    for e in entries:
        g = groups.setdefault((e["model"], e["set"], e["row"]), {}).setdefault(
            (e["family"], e["method"]), [])
        g.append(e)
    out = {}
    for k, methods in groups.items():
        out[k] = {m: {"psnr": _mean([e["psnr"] for e in es]), "ssim": _mean([e["ssim"] for e in es]),
                      "seconds": _mean([e["seconds"] for e in es]), "n": len(es),
                      "errors": sorted({e["error"] for e in es if e.get("error")}),
                      "nonfinite": sum(1 for e in es if e.get("finite") is False)}
                  for m, es in methods.items()}
    return out


def _cell(stats) -> str:
    if stats is None:
        return ""
    if stats["errors"] and math.isnan(stats["psnr"]):
        return "n/a"
    return f"{stats['psnr']:.2f} / {stats['ssim']:.3f}"


def tables(entries: list[dict]) -> str:
    summary = summarise(entries)
    lines = []
    post = any(("flow", "posterior") in m for m in summary.values())  # optional columns
    keys = sorted(summary, key=lambda k: (MODELS.index(k[0]) if k[0] in MODELS else 9, k[0],
                                          k[1] != "in", list(ROWS).index(k[2])))
    lines += ["## Summary: mean PSNR dB / SSIM", "",
              "Best tuned = the tuned baseline with the best mean PSNR over the images of the row; "
              "margin = flow map minus that baseline (PSNR dB). Oracle = best per-image "
              "oracle-tuned baseline (tuned on each image's ground truth, for reference only).", "",
              "Noise floor: mean over the images of an estimate of the PSNR no method can exceed "
              "because the ground truth's own white pixel noise is not in the measurements "
              "(`noise_floor_psnr`; 100 = clean image).", "",
              "| model | set | row | n | flow map | flow latent | flow mle | best tuned baseline "
              "| margin | best oracle | map - oracle | noise floor |" + (" flow posterior | posterior margin |" if
                                                                     post else ""),
              "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if post else "")]
    checks = []
    for k in keys:
        m = summary[k]
        fm = m.get(("flow", "map"))
        tuned = {meth: s for (fam, meth), s in m.items() if fam == "baseline"}
        orac = {meth: s for (fam, meth), s in m.items() if fam == "oracle"}
        best = max(tuned, key=lambda b: tuned[b]["psnr"]) if tuned else None
        best_o = max(orac, key=lambda b: orac[b]["psnr"]) if orac else None
        margin = fm["psnr"] - tuned[best]["psnr"] if fm and best else math.nan
        margin_o = fm["psnr"] - orac[best_o]["psnr"] if fm and best_o else math.nan
        n = max(s["n"] for s in m.values())
        floor = m.get(("floor", "noise_floor"))
        floor_cell = f"{floor['psnr']:.2f}" if floor else ""
        lines.append(
            f"| {k[0]} | {k[1]} | {ROW_LABELS[k[2]]} | {n} | {_cell(fm)} | "
            f"{_cell(m.get(('flow', 'latent')))} | {_cell(m.get(('flow', 'mle')))} | "
            f"{(best + ' ' + _cell(tuned[best])) if best else ''} | "
            f"{'' if math.isnan(margin) else f'{margin:+.2f}'} | "
            f"{(best_o + ' ' + _cell(orac[best_o])) if best_o else ''} | "
            f"{'' if math.isnan(margin_o) else f'{margin_o:+.2f}'} | "
            f"{floor_cell} |" + (_posterior_cells(m.get(("flow", "posterior")), tuned, best) if post else ""))
        if not math.isnan(margin) and k[2] in TARGETS:  # ood: above the best tuned baseline
            checks.append((k, margin, TARGETS[k[2]] if k[1] == "in" else 0.0))
    if checks:
        lines += ["", "## Targets (issue 3): flow map minus best tuned baseline, mean PSNR", "",
                  "| model | set | row | margin dB | target | met |", "|---|---|---|---|---|---|"]
        for (model, set_name, row), margin, target in checks:
            op_ = ">=" if set_name == "in" else ">"
            met = margin >= target if set_name == "in" else margin > target
            lines.append(f"| {model} | {set_name} | {ROW_LABELS[row]} | {margin:+.2f} | {op_} "
                         f"{target:g} | {'yes' if met else 'NO'} |")
    lines += ["", "## All methods: mean PSNR dB, SSIM, seconds per image", "",
              "| model | set | row | method | PSNR | SSIM | s / image | n | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    order = {"flow": 0, "baseline": 1, "oracle": 2, "floor": 3}
    for k in keys:
        for (fam, meth), s in sorted(summary[k].items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
            name = {"flow": f"flow {meth}", "baseline": meth, "oracle": f"oracle {meth}", "floor": "noise floor"}[fam]
            note = "; ".join(s["errors"])[:60] if s["errors"] else ""
            if s["nonfinite"]:
                note = (note + f" {s['nonfinite']} non-finite").strip()
            if math.isnan(s["psnr"]):
                lines.append(f"| {k[0]} | {k[1]} | {ROW_LABELS[k[2]]} | {name} | n/a | n/a | | "
                             f"{s['n']} | {note} |")
            else:
                lines.append(f"| {k[0]} | {k[1]} | {ROW_LABELS[k[2]]} | {name} | {s['psnr']:.2f} | "
                             f"{s['ssim']:.3f} | {s['seconds']:.2f} | {s['n']} | {note} |")
    seconds = {}
    for e in entries:
        seconds[e["family"]] = seconds.get(e["family"], 0.0) + (e.get("seconds") or 0.0)
    total = sum(seconds.values())
    lines += ["", f"Compute behind this table (sum of per-image seconds): "
              + ", ".join(f"{f} {s / 60:.1f} min" for f, s in sorted(seconds.items()))
              + f"; total {total / 60:.1f} min."]
    return "\n".join(lines)


def _posterior_cells(fp, tuned, best) -> str:
    """The summary's optional cells: flow posterior, and its margin over the best tuned baseline."""
    if not fp:
        return " | |"
    margin = f"{fp['psnr'] - tuned[best]['psnr']:+.2f}" if best and not math.isnan(fp["psnr"]) else ""
    return f" {_cell(fp)} | {margin} |"


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--model-file", action="append", default=[], metavar="NAME=PATH",
                    help="use this .safetensors file for model NAME instead of the shipped one")
    ap.add_argument("--rows", default="all", help=f"comma-separated, 'all' or 'headline'; known: "
                                                  f"{', '.join(ROWS)}")
    ap.add_argument("--sets", default="in,ood", help="comma-separated: in (test crops), ood (default: in,ood)")
    ap.add_argument("--limit-images", type=int, default=None, help="at most N images per set")
    ap.add_argument("--images", default=None, help="only images whose id contains one of these comma-separated "
                    "strings (e.g. to split one row's images between two processes)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="flow iterations (default: reconstruct's per-operator defaults)")
    ap.add_argument("--flow-methods", default="map,latent,mle",
                    help="map, latent, mle, posterior; all but map run on the headline rows only")
    ap.add_argument("--baseline-params", choices=("operator", "library"), default="operator")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--no-oracle", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=RESULTS / "quality_cache.jsonl")
    ap.add_argument("--out", type=Path, default=RESULTS / "quality.md")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import napari_flow_prior as nfp

    rows = {"all": list(ROWS), "headline": list(HEADLINE_ROWS)}.get(
        args.rows, [r.strip() for r in args.rows.split(",") if r.strip()])
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; known: {', '.join(ROWS)}")
    sets = {s.strip() for s in args.sets.split(",")}
    if sets - {"in", "ood"}:  # an empty --sets gives {""}, caught here too
        raise SystemExit(f"--sets {args.sets!r}: use in, ood or in,ood")
    flow_methods = [m.strip() for m in args.flow_methods.split(",") if m.strip()]
    if set(flow_methods) - set(FLOW_METHODS):
        raise SystemExit(f"unknown flow methods; known: {FLOW_METHODS}")
    overrides = dict(item.split("=", 1) for item in args.model_file)
    cache = Cache(args.cache)
    import skimage.restoration  # noqa: F401  (imported here so the first baseline's seconds exclude it)
    done_entries, own_settings = [], {}
    t_start = time.time()
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            model = nfp.load_model(overrides.get(name, name))
        except (ValueError, FileNotFoundError, KeyError) as err:
            raise SystemExit(f"model {name!r}: {err} (use --model-file {name}=PATH)") from None
        model_key = f"{name}:{model.metadata.get('sha256', '?')[:16]}"
        own_settings[name] = model.metadata.get("solver") or {}
        with torch.no_grad():  # warm-up, so that the first timed reconstruction is not penalised
            model.log_prob(torch.rand(1, model.channels, 32, 32))
        args.current_model = name
        images = [im for im in test_images(name, args.data) if im[0] in sets]
        if args.limit_images:
            images = [im for s in ("in", "ood") for im in [i for i in images if i[0] == s][:args.limit_images]]
        if args.images:
            images = [im for im in images if any(part in im[1] for part in args.images.split(","))]
        if not images:
            raise SystemExit(f"{name}: no images under {args.data} for --sets {args.sets}"
                             + (f" and --images {args.images}" if args.images else ""))
        jobs = plan(name, images, rows, flow_methods, not args.no_baselines, not args.no_oracle)
        print(f"{name}: {model.metadata.get('path')} ({len(images)} images, {len(jobs)} runs)",
              flush=True)
        for i, job in enumerate(jobs, 1):
            entry = run_job(job, model, model_key, args, cache)
            done_entries.append(entry)
            psnr = "n/a" if entry.get("psnr") is None else f"{entry['psnr']:.2f}"
            print(f"  [{i}/{len(jobs)}] {job[0]:<3} {job[1][:44]:<44} {job[3]:<17} "
                  f"{job[4]}:{job[5]:<16} {psnr:>6} dB {entry['seconds']:7.2f} s", flush=True)
    text = tables(done_entries)
    own = "; ".join(f"{name}: {json.dumps(v, sort_keys=True)}" for name, v in own_settings.items() if v)
    header = ["# Quality benchmark", "",
              "Command: `PYTHONPATH=src python benchmarks/quality.py "
              + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
              f"Flow iterations: {args.iterations or 'reconstruct defaults'}; device "
              f"{args.device}; torch threads {args.threads}; baseline parameters: "
              f"{args.baseline_params}; torch {torch.__version__}, napari-flow-prior "
              f"{nfp.__version__}. "
              + (f"The model files' own solver settings (chosen on validation images by tune_solver.py): {own}. " if own else "")
              + f"Wall time of this invocation {time.time() - t_start:.0f} s "
              "(cached results cost nothing).", ""]
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(header) + text + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
