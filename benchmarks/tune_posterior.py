"""Settings of the posterior sampler on validation images: mean PSNR of each configuration.

Each configuration is a JSON object of ``reconstruct`` arguments (method, iterations, lr, chains,
temperature, ensemble, ...); the key ``sigma_start`` sets the annealing's first sigma of
``solvers.langevin.langevin`` (an exploration knob, not a ``reconstruct`` argument). Images: the
validation images of ``tune_solver.py`` (``--digits`` MNIST validation digits, else ``--crops``
random crops of the model's validation blocks); noise 0.01; one torch thread.

    PYTHONPATH=src python benchmarks/tune_posterior.py --model digits --row inpaint_random80 \\
        '{"method": "map"}' '{"method": "posterior", "iterations": 600, "lr": 0.25}'
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if str(HERE.parent / "src") not in sys.path:
    sys.path.append(str(HERE.parent / "src"))

from tune_baselines import ROW_LABELS, make_operator  # noqa: E402
from tune_solver import validation_images  # noqa: E402


def main(argv=None) -> int:
    import napari_flow_prior as nfp
    from napari_flow_prior.solvers import posterior

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="+", help="JSON objects of reconstruct arguments")
    ap.add_argument("--model", required=True)
    ap.add_argument("--row", default="inpaint_random80", choices=sorted(ROW_LABELS))
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--digits", type=int, default=8)
    ap.add_argument("--crops", type=int, default=2)
    ap.add_argument("--size", type=int, default=96)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = nfp.load_model(args.model)
    images = validation_images(args.data, args.model, args)
    langevin = posterior.langevin
    print(f"| model | row | n | configuration | mean PSNR dB | per image | seconds |\n|---|---|---|---|---|---|---|")
    for text in args.configs:
        config = json.loads(text)
        extra = {"sigma_start": config.pop("sigma_start")} if "sigma_start" in config else {}
        posterior.langevin = functools.partial(langevin, **extra)
        scores, t0 = [], time.time()
        try:
            for n, (x, _) in enumerate(images):
                op = make_operator(args.row, x.shape, seed=n)
                y = op.measure(x, noise_sigma=0.01, seed=n)
                scores.append(nfp.psnr(x, nfp.reconstruct(y, op, model, noise_sigma=0.01, **config).image))
        finally:
            posterior.langevin = langevin
        print(f"| {args.model} | {ROW_LABELS[args.row]} | {len(scores)} | `{json.dumps({**config, **extra})}` | "
              f"{np.mean(scores):.2f} | {' '.join(f'{s:.2f}' for s in scores)} | {time.time() - t0:.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
