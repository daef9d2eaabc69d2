#!/usr/bin/env python
"""The MAP solver's settings per prior and operator, chosen on VALIDATION images (never test pixels).

For each shipped prior (``--models``) and each headline operator (inpainting 80% missing,
deblurring sigma 2, compressed sensing m/n 0.2; noise 0.01), ``nfp.reconstruct(method="map")``
runs with its defaults except the optimisation space and the prior weight lambda, which take every
``SPACE:WEIGHT`` of ``--configs`` (``SPACE:WEIGHT@N`` also sets the iteration budget to N, ``SPACE:WEIGHT@N~LR`` also Adam's step size (``~LRc`` or ``~c``: a constant step, ``lr_decay=False``),
a final ``*K`` an ensemble of K symmetry frames: ``box:0.3@100*8``). SPACE is
``latent``, ``box`` (image space, iterates kept in [0, 1]: the engine's default) or ``image`` (image
space with free iterates, ``box=False``: how image space ran before the box existed, so the cached
``image`` results stay valid). Images: ``--crops`` random crops of ``--size`` from
``<data>/<model>/val`` (seed fixed), or for ``digits`` ``--digits`` images of the MNIST
validation split. One JSON line per (model weights, image, operator, config) is cached in
``--cache`` (a rerun computes only what is missing; a retrained prior starts afresh) and a table of
mean PSNR is written to ``--out``.

Rule (declared before the runs): per (prior, operator) the config with the best mean validation
PSNR among those run on all of its images (a config clearly losing on the first images may be
left out of the rest to save time: ``--table-only`` tabulates what is cached); a config with a
smaller iteration budget (iterations times ensemble members) is preferred when its mean is within
``--tolerance`` dB (0.1) of the best, and the smallest such budget wins, so a prior does not spend iterations that buy nothing. ``--write`` stores those choices in the shipped model files' ``solver`` metadata, which
``reconstruct`` uses as that model's defaults (``solvers.solver_defaults``).

    PYTHONPATH=src python benchmarks/tune_solver.py --models digits --configs image:0.3,latent:1,latent:10 [--write]
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
if str(HERE.parent / "src") not in sys.path:
    sys.path.append(str(HERE.parent / "src"))

from tune_baselines import HEADLINE_ROWS, ROW_LABELS, ROWS, make_operator, random_crops  # noqa: E402

KIND = {"inpaint_random80": "mask", "blur2_n0.01": "blur", "cs0.2": "cs"}


def validation_images(data: Path, name: str, args) -> list[tuple[np.ndarray, str]]:
    if name == "digits":
        with np.load(data / "digits" / "val.npz") as f:
            images = f["images"]
        idx = np.sort(np.random.default_rng(3).choice(len(images), args.digits, replace=False))
        return [(images[i].astype(np.float32) / 255.0, f"digits/val[{i}]") for i in idx]
    files = sorted((data / name / "val").glob("*.png"))
    if not files:
        raise SystemExit(f"no validation images in {data / name / 'val'}: run scripts/prepare_data.py")
    return random_crops(files, args.crops, args.size, np.random.default_rng(5))


def weights_id(model) -> str:
    """Short hash of a model's weights (not of its file, whose metadata ``--write`` changes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def parse_config(text: str, default_iterations: int) -> dict:
    """``SPACE:WEIGHT``, ``SPACE:WEIGHT@ITERATIONS`` (no budget: ``default_iterations``) or
    ``SPACE:WEIGHT@ITERATIONS~LR`` (Adam step size; default the engine's; a final ``c``: constant), each optionally followed
    by ``*K`` (an ensemble of K frames), as ``reconstruct`` settings: space, weight, iterations,
    box for image space, and lr and ensemble when given."""
    text, _, members = text.partition("*")
    text, _, lr = text.partition("~")
    setting, _, iterations = text.partition("@")
    space, _, weight = setting.partition(":")
    if space not in ("latent", "image", "box"):
        raise SystemExit(f"--configs: unknown space {space!r} in {text!r} (latent, box or image)")
    settings = {"space": "latent" if space == "latent" else "image", "weight": float(weight),
                "iterations": int(iterations) if iterations else default_iterations}
    if space != "latent":
        settings["box"] = space == "box"
    if lr.endswith("c"):  # a constant step (lr_decay=False)
        settings["lr_decay"] = False
        lr = lr[:-1]
    if lr:
        settings["lr"] = float(lr)
    if members:
        settings["ensemble"] = int(members)
    return settings


def choose(means: dict[str, float], default_iterations: int, tolerance: float) -> str:
    """The config with the smallest iteration budget (iterations x ensemble members) among those
    within ``tolerance`` dB of the best mean PSNR (ties: the better mean)."""
    best = max(means.values())
    close = [c for c in means if means[c] >= best - tolerance]

    def budget(config: str) -> int:
        settings = parse_config(config, default_iterations)
        return settings["iterations"] * settings.get("ensemble", 1)

    return min(close, key=lambda c: (budget(c), -means[c]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--models", default="medical,nuclei,digits")
    ap.add_argument("--configs", default="image:1,image:0.3,image:0.1,latent:1,latent:3,latent:10")
    ap.add_argument("--rows", default=",".join(HEADLINE_ROWS), help="headline rows to run (default: all three)")
    ap.add_argument("--crops", type=int, default=2)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--digits", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tolerance", type=float, default=0.1,
                    help="dB below the best mean within which a smaller iteration budget is preferred")
    ap.add_argument("--cache", type=Path, default=HERE / "results" / "tune_solver.jsonl")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "tune_solver.md")
    ap.add_argument("--table-only", action="store_true",
                    help="compute nothing: tabulate (and --write) from the cached rows; missing configs show as -")
    ap.add_argument("--write", action="store_true", help="store the chosen settings in the shipped model files")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import napari_flow_prior as nfp
    from napari_flow_prior.flows.files import save_model
    from napari_flow_prior.solvers import DEFAULTS

    # a config without @N runs the engine's MAP budget, not one a model file may carry
    default_iterations = DEFAULTS[("map", "mask")]["iterations"]

    configs = args.configs.split(",")
    rows = args.rows.split(",")
    if not set(rows) <= set(HEADLINE_ROWS):
        raise SystemExit(f"--rows: expected some of {','.join(HEADLINE_ROWS)}, got {args.rows}")
    cache = {}
    if args.cache.exists():
        for line in args.cache.read_text().splitlines():
            r = json.loads(line)
            cache[(r["weights"], r["model"], r["image"], r["row"], r["config"])] = r["psnr"]
    t0 = time.time()
    psnr: dict[tuple[str, str, str], list[float]] = {}
    for name in args.models.split(","):
        model = nfp.load_model(name)
        weights = weights_id(model)
        for image, desc in validation_images(args.data, name, args):
            for row in rows:
                noise = ROWS[row][2]
                op = make_operator(row, image.shape, seed=1)
                y = op.measure(image, noise_sigma=noise, seed=2)
                for config in configs:
                    key = (weights, name, desc, row, config)
                    if key not in cache and args.table_only:
                        continue
                    if key not in cache:
                        result = nfp.reconstruct(y, op, model, noise_sigma=noise,
                                                 **parse_config(config, default_iterations))
                        cache[key] = round(float(nfp.psnr(image, result.image)), 3)
                        with args.cache.open("a") as f:
                            f.write(json.dumps({"weights": weights, "model": name, "image": desc, "row": row, "config": config,
                                                "psnr": cache[key], "seconds": round(result.seconds, 1)}) + "\n")
                        print(json.dumps({"model": name, "image": desc, "row": row, "config": config,
                                          "psnr": cache[key]}), flush=True)
                    psnr.setdefault((name, row, config), []).append(cache[key])

    lines = ["# MAP solver settings on validation images", "",
             f"Command: `PYTHONPATH=src python benchmarks/tune_solver.py --models {args.models} --configs "
             f"{args.configs} --rows {args.rows} --crops {args.crops} --size {args.size} --digits {args.digits}`; noise 0.01, "
             f"{args.threads} torch thread(s); {time.time() - t0:.0f} s for what was not cached.", "",
             "Mean PSNR dB per optimisation space : prior weight lambda [@ iterations, default "
             f"{default_iterations}] (best in bold; chosen: the smallest budget within {args.tolerance} dB of the best):", "",
             "| prior | operator | n | " + " | ".join(configs) + " | chosen |",
             "|---|---|---|" + "---|" * len(configs) + "---|"]
    chosen: dict[str, dict] = {}
    for name in args.models.split(","):
        for row in rows:
            # a config is compared only where it ran on every image of the row
            n = max(len(psnr.get((name, row, c), [])) for c in configs)
            means = {c: float(np.mean(psnr[(name, row, c)])) for c in configs if len(psnr.get((name, row, c), [])) == n}
            best = max(means, key=means.get)
            pick = choose(means, default_iterations, args.tolerance)
            chosen.setdefault(name, {})[KIND[row]] = parse_config(pick, default_iterations)
            cells = [("-" if c not in means else f"**{means[c]:.2f}**" if c == best else f"{means[c]:.2f}")
                     for c in configs]
            lines.append(f"| {name} | {ROW_LABELS[row]} | {n} | "
                         + " | ".join(cells) + f" | {pick} |")
    lines += ["", "Chosen settings (stored in each model file's `solver` metadata with `--write`):", "",
              "```json", json.dumps(chosen, indent=1, sort_keys=True), "```"]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.write:
        for name, kinds in chosen.items():
            model = nfp.load_model(name)
            own = model.metadata.get("solver") or {}  # other methods' settings stay
            solver = {**own, "map": {**own.get("map", {}), **kinds}}
            if "cs" in kinds:  # a dense Matrix is compressed sensing too
                solver["map"]["matrix"] = kinds["cs"]
            save_model(model, model.metadata["path"], solver=solver)
            print(f"wrote solver settings to {model.metadata['path']}: {json.dumps(solver)}")


if __name__ == "__main__":
    main()
