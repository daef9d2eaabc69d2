#!/usr/bin/env python
"""Out-of-distribution: each shipped prior on images of the other domain and on natural images,
compressed sensing and inpainting, against the tuned classical baselines.

Image sets (``--size`` 96, ``--n`` 4 per set; test split and the out-of-domain set only):

* ``nuclei``, ``medical``: random crops of the TEST blocks (``<data>/<domain>/test``, x = png/255;
  positions drawn with fixed seeds, near-constant crops redrawn: ``tune_baselines.random_crops``);
* ``natural``: the centre crops of ``<data>/ood/{camera,moon,brick,retina}.png``.

Priors on sets: nuclei prior on medical and natural crops, medical prior on nuclei crops (the
out-of-distribution rows), and -- as the reference on the very same images -- the matched prior:
medical prior on the medical crops, nuclei prior on the nuclei crops (``--no-reference`` drops
these).

Tasks (noise sigma 0.01): compressed sensing ``GaussianProjection(ratio=0.2, block=32)`` and
inpainting ``Mask.random(missing_fraction=0.8)``; operator and noise seeds fixed per image, so
the priors and the baselines see the same y. Flow: ``nfp.reconstruct(y, op, model,
noise_sigma=0.01)`` with its defaults (MAP, 300 Adam steps, classical warm start) unless
``--iterations`` caps the steps. Baselines: every baseline of the operator's kind
(``baselines.BASELINES``: lasso_dct, lasso_wavelet, tv_cs, pseudo_inverse for CS; biharmonic,
tv_inpaint for inpainting) with the parameters tuned on validation crops for that operator
setting (``run_baseline(name, y, op, noise_sigma=0.01)``); "best" is the baseline with the best
mean PSNR over the set, chosen after the fact (which favours the baselines).

Writes ``benchmarks/results/ood.md``. ``--cache FILE`` (JSON lines) keeps every result keyed by
model hash, image, task and settings, so a rerun only computes what changed; ``--priors medical``
runs only the rows of that prior (e.g. while the other model is still training) and writes no
table.

    PYTHONPATH=src python benchmarks/ood.py
    PYTHONPATH=src python benchmarks/ood.py --nuclei-model /work/runs/final/nuclei.safetensors \\
        --medical-model /work/runs/final/medical.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # lean on a shared machine; numpy's BLAS reads this at import

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(ROOT / "src") not in sys.path:
    sys.path.append(str(ROOT / "src"))

from quality import BASELINE_SOURCES, FLOW_SOURCES, source_hash  # noqa: E402
from tune_baselines import load_png, random_crops  # noqa: E402

NATURAL = ("camera", "moon", "brick", "retina")
PRIORS = ("nuclei", "medical")
TASKS = {"cs0.2": "CS m/n 0.2", "inpaint80": "inpainting 80% missing"}
NOISE = 0.01
# (prior, image set, is the prior out of its domain)
PAIRS = [("medical", "medical", False), ("nuclei", "medical", True),
         ("nuclei", "nuclei", False), ("medical", "nuclei", True),
         ("nuclei", "natural", True)]


def image_sets(data: Path, n: int, size: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    sets = {}
    for domain, seed in (("nuclei", 404), ("medical", 505)):
        files = sorted((data / domain / "test").glob("*.png"))
        if not files:
            raise SystemExit(f"no test blocks in {data / domain / 'test'}")
        sets[domain] = [(desc, img) for img, desc in random_crops(files, n, size, np.random.default_rng(seed))]
    natural = []
    for name in NATURAL[:max(n, 1)]:
        image = load_png(data / "ood" / f"{name}.png")
        r0, c0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        natural.append((f"ood/{name}.png[{r0}:{r0 + size},{c0}:{c0 + size}]",
                        np.ascontiguousarray(image[r0:r0 + size, c0:c0 + size])))
    sets["natural"] = natural
    return sets


def make_operator(task: str, shape, seed: int):
    import napari_flow_prior as nfp

    if task == "cs0.2":
        return nfp.operators.GaussianProjection(shape, 0.2, seed=seed, block=32)
    return nfp.operators.Mask.random(shape, missing_fraction=0.8, seed=seed)


def score(truth, estimate) -> tuple[float, float]:
    import napari_flow_prior as nfp

    return float(nfp.psnr(truth, estimate)), float(nfp.ssim(truth, estimate))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--nuclei-model", default="nuclei", help="model name or .safetensors path")
    ap.add_argument("--medical-model", default="medical", help="model name or .safetensors path")
    ap.add_argument("--n", type=int, default=4, help="crops per image set")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--iterations", type=int, default=None, help="flow steps (default 300)")
    ap.add_argument("--no-reference", action="store_true", help="skip the matched-prior rows")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ood.md")
    ap.add_argument("--cache", type=Path, default=None, help="JSON-lines result cache")
    ap.add_argument("--priors", default="nuclei,medical", help="run only the rows of these priors")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import napari_flow_prior as nfp
    from napari_flow_prior.baselines import BASELINES, run_baseline

    t_start = time.time()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    priors = [p.strip() for p in args.priors.split(",") if p.strip()]
    refs = {"nuclei": args.nuclei_model, "medical": args.medical_model}
    models = {p: nfp.load_model(refs[p]) for p in priors}
    sets = image_sets(args.data, args.n, args.size)
    pairs = [p for p in PAIRS if (p[2] or not args.no_reference) and p[0] in priors]
    cache = {}
    if args.cache is not None and args.cache.is_file():
        for line in args.cache.read_text().splitlines():
            try:
                entry = json.loads(line)
                cache[entry["key"]] = entry["value"]
            except (json.JSONDecodeError, KeyError):
                continue

    def cached(key, compute):
        if key not in cache:
            cache[key] = list(compute())
            if args.cache is not None:
                args.cache.parent.mkdir(parents=True, exist_ok=True)
                with open(args.cache, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "value": cache[key]}) + "\n")
        return tuple(cache[key])

    base_src = source_hash(*BASELINE_SOURCES)
    flow_src = source_hash(*FLOW_SOURCES)
    needed = {s for _, s, _ in pairs}
    # baselines: once per (set, image, task), shared by the priors
    base: dict = {}
    flow: dict = {}
    seconds = {"flow": 0.0, "baselines": 0.0}
    for set_name in [s for s in ("medical", "natural", "nuclei") if s in needed]:
        for image_id, x in sets[set_name]:
            for task in tasks:
                seed = zlib.crc32(f"{image_id}|{task}".encode()) % 100_000
                op = make_operator(task, x.shape, seed)
                y = op.measure(x, noise_sigma=NOISE, seed=seed + 1)
                t = time.perf_counter()
                for name in BASELINES[op.kind]:
                    base[(set_name, image_id, task, name)] = cached(
                        f"{image_id}|{task}|{name}|{base_src}",
                        lambda: score(x, run_baseline(name, y, op, noise_sigma=NOISE)))
                seconds["baselines"] += time.perf_counter() - t
                for prior, s, _ in pairs:
                    if s != set_name:
                        continue
                    t = time.perf_counter()
                    model = models[prior]
                    flow[(prior, set_name, image_id, task)] = cached(
                        f"{model.metadata.get('sha256')}|{image_id}|{task}|flow|"
                        f"it={args.iterations}|{flow_src}",
                        lambda: score(x, nfp.reconstruct(y, op, model, noise_sigma=NOISE,
                                                         iterations=args.iterations,
                                                         device=args.device).image))
                    seconds["flow"] += time.perf_counter() - t
                best = max(BASELINES[op.kind], key=lambda b: base[(set_name, image_id, task, b)][0])
                print(f"{set_name:<8} {image_id[:48]:<48} {task:<9} "
                      + " ".join(f"{p}-prior {flow[(p, set_name, image_id, task)][0]:6.2f}"
                                 for p, s, _ in pairs if s == set_name)
                      + f" | best baseline {best} {base[(set_name, image_id, task, best)][0]:6.2f}",
                      flush=True)

    if set(priors) != set(PRIORS):
        print(f"only the rows of {priors} were run: no table written")
        return 0

    def mean(values):
        values = list(values)
        return (float(np.mean([v[0] for v in values])), float(np.mean([v[1] for v in values])))

    lines = ["# Out-of-distribution: priors on other domains", "",
             "Command: `PYTHONPATH=src python benchmarks/ood.py "
             + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
             f"Models: nuclei = `{models['nuclei'].metadata.get('path', args.nuclei_model)}`, medical = "
             f"`{models['medical'].metadata.get('path', args.medical_model)}`. {args.n} crops of "
             f"{args.size}x{args.size} per image set (nuclei / medical: random crops of TEST blocks; "
             f"natural: centre crops of {', '.join(NATURAL[:args.n])}); noise sigma {NOISE}; flow: "
             f"`nfp.reconstruct` MAP, {args.iterations or 300} steps; baselines with the parameters "
             "tuned on validation crops for the operator setting; best = the baseline with the best "
             "mean PSNR on the set (picked after the fact). Mean PSNR dB / SSIM; margin = flow - "
             "best baseline, PSNR dB.", "",
             "| task | images | prior | in domain? | flow | best tuned baseline | margin |",
             "|---|---|---|---|---|---|---|"]
    for task in tasks:
        for prior, set_name, is_ood in pairs:
            ids = [i for i, _ in sets[set_name]]
            kind = make_operator(task, (8, 8), 0).kind
            f = mean(flow[(prior, set_name, i, task)] for i in ids)
            b_means = {b: mean(base[(set_name, i, task, b)] for i in ids) for b in BASELINES[kind]}
            best = max(b_means, key=lambda b: b_means[b][0])
            lines.append(f"| {TASKS[task]} | {set_name} ({len(ids)}) | {prior} | "
                         f"{'no (OOD)' if is_ood else 'yes (reference)'} | {f[0]:.2f} / {f[1]:.3f} | "
                         f"{best} {b_means[best][0]:.2f} / {b_means[best][1]:.3f} | "
                         f"{f[0] - b_means[best][0]:+.2f} |")
    lines += ["", "All baselines (mean PSNR dB / SSIM):", "",
              "| task | images | " + " | ".join(["baseline", "PSNR / SSIM"]) + " |", "|---|---|---|---|"]
    for task in tasks:
        kind = make_operator(task, (8, 8), 0).kind
        for set_name in [s for s in ("medical", "natural", "nuclei") if s in needed]:
            ids = [i for i, _ in sets[set_name]]
            for b in BASELINES[kind]:
                v = mean(base[(set_name, i, task, b)] for i in ids)
                lines.append(f"| {TASKS[task]} | {set_name} | {b} | {v[0]:.2f} / {v[1]:.3f} |")
    lines += ["", "Images: " + "; ".join(f"{s}: " + ", ".join(i for i, _ in sets[s]) for s in sorted(needed)),
              "", f"Compute: flow {seconds['flow'] / 60:.1f} min, baselines "
              f"{seconds['baselines'] / 60:.1f} min (torch threads {args.threads}); wall "
              f"{(time.time() - t_start) / 60:.1f} min (this invocation; cached results cost nothing)."]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
