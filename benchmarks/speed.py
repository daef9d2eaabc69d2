#!/usr/bin/env python
"""Solver speed: time to a reference quality, and iterations per second.

Task: the shipped ``nuclei`` sample cropped to 256x256 (``demo.sample_image``), inpainting with
80% of the pixels missing (``Mask.random``, seed 0), noise sigma 0.01, the shipped ``nuclei``
prior, ``method="map"`` with the solver's defaults (Adam, warm start from the matching baseline).

1. Reference: the PSNR after ``--reference`` (3000) Adam iterations with ``tol=0``.
2. Time to within 0.1 dB of it: solves with increasing iteration budgets (``--budgets``; the
   cosine step schedule depends on the budget, so each budget is its own solve, as a user would
   run it); the wall time of the first budget that reaches reference - 0.1 dB is reported.
3. Iterations per second of the MAP solve at 256x256 and 1024x1024 (``--rate-iterations`` timed
   iterations after one warm-up iteration, from the solver's progress callbacks; memory saving
   off and on).
4. Whole default solves (``--solve-sizes``; 300 iterations, warm start included; the nuclei
   sample tiled to the size): wall seconds and PSNR, and on CUDA with and without CUDA graphs
   (largest difference between the two results).
5. ``--compile``: seconds per gradient of the image-space objective's prior term (log p(x) forward
   and backward, 256x256) eager and under ``torch.compile``: first-call (compile) time, steady
   seconds per iteration, the iterations a solve needs before compiling pays back, and the
   largest gradient difference; on CUDA also with TF32 convolutions and matmuls off and on.

Usage (the full reference takes minutes on 2 CPU cores)::

    PYTHONPATH=src python benchmarks/speed.py [--threads 2] [--reference 3000]
        [--budgets 50,100,200,300,500,1000] [--rate-iterations 5] [--device auto] [--out FILE]
    PYTHONPATH=src python benchmarks/speed.py --optimizer lbfgs --reference-psnr 34.965 --budgets 5,10,25 \
        --rate-sizes ""          # L-BFGS budgets against an earlier Adam reference
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference", type=int, default=3000)
    ap.add_argument("--budgets", default="50,100,200,300,500,1000")
    ap.add_argument("--rate-iterations", type=int, default=5)
    ap.add_argument("--rate-sizes", default="256,1024")
    ap.add_argument("--skip-reference", action="store_true", help="only measure iterations/s")
    ap.add_argument("--reference-psnr", type=float, default=None,
                    help="PSNR of an earlier reference run (its JSON's reference.psnr): skips the reference solve")
    ap.add_argument("--optimizer", default=None, help="optimizer of the budget solves: adam (default) or lbfgs")
    ap.add_argument("--solve-sizes", default="", help="whole default solves at these sizes, e.g. 256,1024")
    ap.add_argument("--model", default="nuclei", help="model name or file (iterations/s fall back to an "
                    "untrained levels=3, steps=8, hidden=64 Glow when it is not available)")
    ap.add_argument("--compile", action="store_true", help="measure torch.compile (and TF32 on CUDA)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import napari_flow_prior as nfp
    from napari_flow_prior.demo import sample_image

    try:
        model = nfp.load_model(args.model)
    except FileNotFoundError as err:
        if not args.skip_reference:
            raise
        print(f"{err}: timing an untrained levels=3, steps=8, hidden=64 Glow", flush=True)
        model = nfp.build_model("glow", levels=3, steps=8, hidden=64, seed=0)
    figures: dict = {"threads": args.threads, "torch": torch.__version__, "model": model.metadata.get("name")}

    def solve(y, op, iterations, **kw):
        """One solve (ensemble=1: a model file's ensemble would multiply every time by its size)."""
        t0 = time.perf_counter()
        kw.setdefault("ensemble", 1)
        r = nfp.reconstruct(y, op, model, noise_sigma=0.01, iterations=iterations, tol=0, device=args.device, **kw)
        if r.device.startswith("cuda"):
            torch.cuda.synchronize()
        return r, time.perf_counter() - t0

    if not args.skip_reference:
        truth = sample_image("nuclei", size=256)
        op = nfp.operators.Mask.random(truth.shape, missing_fraction=0.8, seed=0)
        y = op.measure(truth, noise_sigma=0.01, seed=0)
        if args.reference_psnr is None:
            ref, ref_s = solve(y, op, args.reference)
            figures["reference"] = {"iterations": args.reference, "psnr": nfp.psnr(truth, ref.image), "seconds": ref_s}
        else:
            figures["reference"] = {"iterations": args.reference, "psnr": args.reference_psnr, "seconds": None,
                                    "from": "--reference-psnr"}
        target = figures["reference"]["psnr"] - 0.1
        figures["optimizer"] = args.optimizer or "adam"
        baseline = nfp.baselines.run_baseline(nfp.baselines.matching_baseline(op), y, op, noise_sigma=0.01)
        figures["baseline_psnr"] = nfp.psnr(truth, baseline)
        figures["budgets"] = []
        for budget in [int(b) for b in args.budgets.split(",")]:
            r, s = solve(y, op, budget, optimizer=args.optimizer)
            figures["budgets"].append({"iterations": budget, "psnr": nfp.psnr(truth, r.image), "seconds": s})
            print(json.dumps(figures["budgets"][-1]), flush=True)
            if nfp.psnr(truth, r.image) >= target:
                figures["seconds_to_reference_minus_0.1dB"] = s
                break
        print(json.dumps({k: v for k, v in figures.items() if k != "budgets"}), flush=True)

    figures["iterations_per_second"] = []
    for size in [int(s) for s in args.rate_sizes.split(",") if s]:
        img = np.random.default_rng(0).random((size, size)).astype(np.float32)
        op = nfp.operators.Mask.random(img.shape, missing_fraction=0.8, seed=0)
        y = op.measure(img, noise_sigma=0.01, seed=0)
        for saving in (False, True):
            stamps = []

            def stamp(_progress):
                if args.device != "cpu" and torch.cuda.is_available():
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())

            solve(y, op, 1 + args.rate_iterations, init="pinv", memory_saving=saving, tile=0, callback=stamp)
            rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])  # after the first (warm-up) iteration
            figures["iterations_per_second"].append({"size": size, "memory_saving": saving, "it_per_s": rate})
            print(json.dumps(figures["iterations_per_second"][-1]), flush=True)
    figures["solves"] = []
    for size in [int(s) for s in args.solve_sizes.split(",") if s]:
        tile = sample_image("nuclei", size=256)
        truth = np.tile(tile, (-(-size // tile.shape[0]), -(-size // tile.shape[1])))[:size, :size]
        op = nfp.operators.Mask.random(truth.shape, missing_fraction=0.8, seed=0)
        y = op.measure(truth, noise_sigma=0.01, seed=0)
        graph_options = (True, False) if "cuda" in str(nfp.devices.resolve_device(args.device)) else (False,)
        images = {}
        for graph in graph_options:
            solve(y, op, 3, cuda_graph=graph)  # warm-up: cuDNN plans, allocator
            r, s = solve(y, op, None, cuda_graph=graph)
            images[graph] = r.image
            row = {"size": size, "cuda_graph": graph, "seconds": s, "iterations": r.n_iter,
                   "psnr": nfp.psnr(truth, r.image), "memory_saving": r.params["memory_saving"],
                   "tiles": r.params.get("tiles", 1)}
            figures["solves"].append(row)
            print(json.dumps(row), flush=True)
        if len(images) == 2:
            figures["solves"][-1]["max_abs_difference_to_graph"] = float(np.abs(images[True] - images[False]).max())
            print(json.dumps(figures["solves"][-1]), flush=True)
    if args.compile:
        figures["compile"] = compile_figures(model, nfp.devices.resolve_device(args.device))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1))


def compile_figures(model, device, size: int = 256, repeats: int = 5) -> list[dict]:
    """Eager vs torch.compile (and TF32 off/on on CUDA) for log p(x) forward + backward."""
    import torch

    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model = model.to(device=device, memory_format=layout)
    for p in model.parameters():
        p.requires_grad_(False)
    x0 = torch.rand(1, model.channels, size, size, generator=torch.Generator().manual_seed(0))
    x0 = x0.to(device).contiguous(memory_format=layout)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def gradient(fn):
        x = x0.clone().requires_grad_(True)
        (-fn(x).sum()).backward()
        sync()
        return x.grad

    def measure(fn):
        t = time.perf_counter()
        grad = gradient(fn)
        first = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(repeats):
            gradient(fn)
        return first, (time.perf_counter() - t) / repeats, grad

    variants = [("eager", False, model.log_prob), ("compiled", False, torch.compile(model.log_prob, dynamic=False))]
    if device.type == "cuda":
        variants += [("eager", True, model.log_prob)]
    rows, reference = [], None
    for name, tf32, fn in variants:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        first, steady, grad = measure(fn)
        reference = grad if reference is None else reference
        rows.append({"variant": name, "tf32": tf32, "size": size, "first_call_s": first, "s_per_it": steady,
                     "max_grad_rel_difference": float((grad - reference).abs().max() / reference.abs().max())})
        print(json.dumps(rows[-1]), flush=True)
    eager, compiled = rows[0], rows[1]
    gain = eager["s_per_it"] - compiled["s_per_it"]
    compiled["pays_back_after_iterations"] = (compiled["first_call_s"] - eager["first_call_s"]) / gain if gain > 0 else None
    print(json.dumps(compiled), flush=True)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
    return rows


if __name__ == "__main__":
    main()
