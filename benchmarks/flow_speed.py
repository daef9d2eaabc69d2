#!/usr/bin/env python
"""Forward+backward speed and peak memory of the default Glow on this CPU.

Model: ``nfp.build_model("glow", levels=3, steps=8, hidden=64, seed=0)`` (one channel), float32.
One step = ``loss = -model.log_prob(x).mean(); loss.backward()`` on a batch of uniform random
images in [0, 1] (the cost does not depend on the pixel values). Cases: 64x64 and 256x256
inputs, batch 1 and 8, 1 and 2 torch threads. Each case runs in its own subprocess (so peak
memory is that case's alone): one untimed warm-up step, then timed steps until at least
``--min-seconds`` have passed (at least ``--min-repeats`` steps); the time per image is the
median step time divided by the batch size.

Memory: torch's CPU allocator is invisible to tracemalloc, so the child reports its peak
resident set size, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (Linux: KiB), after the run,
and the increase of that peak over the RSS measured after importing torch and building the
model (``psutil`` if installed, else ``/proc/self/statm``): the second number is what the
forward+backward of that input costs.

No data is read. Usage::

    PYTHONPATH=src python benchmarks/flow_speed.py [--sizes 64,256] [--batches 1,8]
        [--threads 1,2] [--min-seconds 3] [--out benchmarks/results/flow_speed.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH = dict(kind="glow", levels=3, steps=8, hidden=64)


def rss_bytes() -> int:
    """Resident memory of this process (psutil, else /proc/self/statm)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(size: int, batch: int, threads: int, min_seconds: float, min_repeats: int) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    import napari_flow_prior as nfp

    model = nfp.build_model(**ARCH, seed=0).train()
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch, 1, size, size), generator=gen)
    base_rss = rss_bytes()

    def step():
        model.zero_grad(set_to_none=True)
        loss = -model.log_prob(x).mean()
        loss.backward()
        return float(loss)

    t0 = time.perf_counter()
    step()  # warm-up (and data-dependent initialisation, if any)
    warmup = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"size": size, "batch": batch, "threads": threads, "repeats": len(times),
            "warmup_s": warmup, "step_s": median, "s_per_image": median / batch,
            "min_step_s": times[0], "peak_rss_mb": peak / 2**20,
            "base_rss_mb": base_rss / 2**20, "delta_rss_mb": (peak - base_rss) / 2**20,
            "params": n_params, "torch": torch.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--min-repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "flow_speed.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        size, batch, threads = (int(v) for v in args.child.split(","))
        print(json.dumps(child(size, batch, threads, args.min_seconds, args.min_repeats)))
        return 0

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    load_before = os.getloadavg()
    rows = []
    header = ("| input | batch | threads | s / image (median) | s / image (fastest) | s / step | "
              "steps timed | peak RSS MB | RSS over model MB |")
    print(header + "\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for size in (int(v) for v in args.sizes.split(",")):
        for batch in (int(v) for v in args.batches.split(",")):
            for threads in (int(v) for v in args.threads.split(",")):
                cmd = [sys.executable, __file__, "--child", f"{size},{batch},{threads}",
                       "--min-seconds", str(args.min_seconds), "--min-repeats", str(args.min_repeats)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    print(f"| {size}x{size} | {batch} | {threads} | failed: "
                          f"{proc.stderr.strip().splitlines()[-1:]} |")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(r)
                print(f"| {size}x{size} | {batch} | {threads} | {r['s_per_image']:.3f} | "
                      f"{r['min_step_s'] / batch:.3f} | {r['step_s']:.3f} | {r['repeats']} | {r['peak_rss_mb']:.0f} | "
                      f"{r['delta_rss_mb']:.0f} |", flush=True)
    load_after = os.getloadavg()
    cpu = _cpu_name()
    notes = (f"Model: build_model(\"glow\", levels=3, steps=8, hidden=64), "
             f"{rows[0]['params'] if rows else '?'} parameters, float32, torch "
             f"{rows[0]['torch'] if rows else '?'}. CPU: {cpu}, {os.cpu_count()} logical cores. "
             f"Load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after "
             f"(other jobs on the machine slow the 2-thread cases most). "
             "Step = -log_prob(x).mean() and backward; s / image = median (and fastest) step / batch; "
             "the fastest step is the better estimate when other processes share the cores. "
             "Memory: peak RSS of a fresh subprocess per case (resource.getrusage ru_maxrss), and "
             "that peak minus the RSS after importing torch and building the model.")
    print("\n" + notes)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        lines = ["# Flow speed (forward + backward, CPU)", "", header,
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['size']}x{r['size']} | {r['batch']} | {r['threads']} | "
                         f"{r['s_per_image']:.3f} | {r['min_step_s'] / r['batch']:.3f} | {r['step_s']:.3f} | {r['repeats']} | "
                         f"{r['peak_rss_mb']:.0f} | {r['delta_rss_mb']:.0f} |")
        lines += ["", notes, "", "Command: `PYTHONPATH=src python benchmarks/flow_speed.py`", ""]
        args.out.write_text("\n".join(lines))
        print(f"wrote {args.out}")
    return 0


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
