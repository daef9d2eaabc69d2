#!/usr/bin/env python
"""Peak memory of one solve step, with and without memory-saving gradients.

One solve step = one evaluation of the MAP objective of ``nfp.reconstruct`` (data term plus the
flow's full log-density of the image) and its gradient with respect to the image, with the model's
parameters frozen as the solver freezes them. Each case runs in its own subprocess; it reports the
increase of the process's peak resident set size (``ru_maxrss``) over the RSS after building the
model and the image, i.e. what the step itself costs (float32, CPU).

Cases (defaults, the issue's table): a 1024x1024 image with a Glow of 3 levels, hidden 64 and
K = 4, 8, 16 steps per level, memory saving off and on; and a 2048x2048 image with the
levels=3, steps=8, hidden=64 Glow with memory saving on (the solver's default at that size),
whose total peak RSS must stay under 4 GB. On a loaded machine use smaller settings::

    PYTHONPATH=src python benchmarks/memory.py [--size 1024] [--steps 4,8,16] [--hidden 64]
        [--big 2048] [--threads 1] [--out benchmarks/results/memory.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_speed import rss_bytes  # noqa: E402  (one way to read memory for both benchmarks)

ROOT = Path(__file__).resolve().parents[1]


def child(size: int, steps: int, hidden: int, levels: int, saving: bool, threads: int) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    import napari_flow_prior as nfp

    model = nfp.build_model("glow", levels=levels, steps=steps, hidden=hidden, seed=0).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.memory_saving = saving
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, 1, size, size), generator=gen).requires_grad_(True)
    y = torch.rand((1, 1, size, size), generator=gen)
    base = rss_bytes()
    t0 = time.perf_counter()
    with model.cached_constants():
        loss = ((x - y).pow(2).sum() / 2e-4 - model.log_prob(x).sum()) / x.numel()
        loss.backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "steps": steps, "hidden": hidden, "levels": levels, "memory_saving": saving,
            "peak_rss_mb": peak / 2**20, "step_mb": max(peak - base, 0) / 2**20, "seconds": seconds,
            "estimate_mb": estimate(size, steps, hidden, levels, saving) / 2**20}


def estimate(size, steps, hidden, levels, saving) -> float:
    import napari_flow_prior as nfp
    from napari_flow_prior.tiling import estimate_solve_bytes

    model = nfp.build_model("glow", levels=levels, steps=steps, hidden=hidden, seed=0)
    return estimate_solve_bytes(model, (size, size), memory_saving=saving)


def run_case(**kw) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, __file__, "--child", json.dumps(kw)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", default="4,8,16")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--big", type=int, default=2048, help="size of the whole-image case (0: skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the table (Markdown) here")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return
    rows = []
    for k in [int(s) for s in args.steps.split(",")]:
        for saving in (False, True):
            rows.append(run_case(size=args.size, steps=k, hidden=args.hidden, levels=args.levels,
                                 saving=saving, threads=args.threads))
            print(json.dumps(rows[-1]), flush=True)
    if args.big:
        rows.append(run_case(size=args.big, steps=8, hidden=64, levels=3, saving=True, threads=args.threads))
        print(json.dumps(rows[-1]), flush=True)
    lines = ["| image | levels | K | hidden | memory saving | step MB | peak RSS MB | estimate MB | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']}x{r['size']} | {r['levels']} | {r['steps']} | {r['hidden']} | "
                     f"{'on' if r['memory_saving'] else 'off'} | {r['step_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['estimate_mb']:.0f} | {r['seconds']:.1f} |")
    on = {r["steps"]: r["step_mb"] for r in rows[:-1 if args.big else None] if r["memory_saving"]}
    if len(on) > 1:
        ks = sorted(on)
        lines.append("")
        lines.append(f"memory saving: step memory K={ks[-1]} / K={ks[0]} = {on[ks[-1]] / on[ks[0]]:.2f}")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
