"""Train one shipped prior (or one candidate architecture) from the prepared data.

    python scripts/prepare_data.py --out /work/data          # once, in the data environment
    python scripts/train_shipped.py --model nuclei --config A --minutes 8 --out runs/

Writes runs/<model>-<config>.safetensors (+ .log.json/.log.csv) with val and test bits/dim in its
metadata. The candidate configurations are compared on validation bits/dim only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_flow_prior.flows import save_model  # noqa: E402
from napari_flow_prior.imageio import as_planes, image_files, read_image  # noqa: E402
from napari_flow_prior.training import TrainConfig, train, validation_bpd  # noqa: E402

PATCH_CONFIGS = {
    "A": dict(levels=3, steps_per_level=8, hidden=64, patch=32, batch=128),
    "B": dict(levels=3, steps_per_level=8, hidden=128, patch=64, batch=64),
    "C": dict(levels=4, steps_per_level=12, hidden=96, patch=64, batch=64),
    # CPU-sized candidates
    "S": dict(levels=3, steps_per_level=4, hidden=48, patch=32, batch=32),
    "D": dict(levels=2, steps_per_level=8, hidden=64, patch=32, batch=32),
    "E": dict(levels=3, steps_per_level=8, hidden=64, patch=64, batch=32),
}
DIGIT_CONFIGS = {
    "A": dict(levels=3, steps_per_level=8, hidden=64, patch=28, batch=128, augment=False),
    "B": dict(levels=3, steps_per_level=16, hidden=128, patch=28, batch=128, augment=False),
    "C": dict(levels=2, steps_per_level=16, hidden=128, patch=28, batch=128, augment=False),
    "S": dict(levels=3, steps_per_level=8, hidden=64, patch=28, batch=64, augment=False),
}
CONFIGS = {"nuclei": PATCH_CONFIGS, "medical": PATCH_CONFIGS, "digits": DIGIT_CONFIGS}
DOMAIN = {
    "nuclei": "fluorescence microscopy of cell nuclei (DAPI/Hoechst-like), grayscale",
    "medical": "MR and CT slices and radiographs (brain, shoulder, head, chest, tibia), grayscale",
    "digits": "handwritten digits (MNIST), 28x28 grayscale, white on black",
}


def split_files(data: Path, model: str, split: str):
    folder = data / model
    return [folder / f"{split}.npz"] if model == "digits" else [folder / split]


def planes_of(paths):
    return [p[0:1].astype(np.float32) / 255 for f in image_files(paths) for p in as_planes(read_image(f))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(CONFIGS))
    ap.add_argument("--config", default="A")
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--out", default="runs")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--init", default=None, help="fine-tune this model file instead of starting fresh")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=None, help="override the configuration's batch size")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: TrainConfig's)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--name", default=None, help="output name (default MODEL-CONFIG)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/NAME.ckpt")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if args.threads:
        torch.set_num_threads(args.threads)
    arch = dict(CONFIGS[args.model][args.config])
    if args.batch:
        arch["batch"] = args.batch
    if args.lr:
        arch["lr"] = args.lr
    cfg = TrainConfig(**arch, steps=args.steps, minutes=args.minutes,
                      normalize=False, device=args.device, seed=args.seed, val_every=500,
                      checkpoint_every=2000)
    out = Path(args.out) / f"{args.name or args.model + '-' + args.config}.safetensors"
    t0 = time.time()
    model = train(split_files(data, args.model, "train"), out, cfg, domain=DOMAIN[args.model],
                  val_images=split_files(data, args.model, "val"), init=args.init,
                  checkpoint=out.with_suffix(".ckpt"), resume=args.resume, progress=sys.stderr.isatty())
    device = next(model.parameters()).device
    metrics = {  # added to what the trainer recorded (typical_log_density, ...)
        **model.metadata.get("metrics", {}),
        "val_bpd": validation_bpd(model, planes_of(split_files(data, args.model, "val")), device, draws=4),
        "test_bpd": validation_bpd(model, planes_of(split_files(data, args.model, "test")), device, draws=4),
    }
    save_model(model, out, metrics=metrics)
    summary = {"model": args.model, "config": args.config, **arch, **metrics, "init": args.init,
               "steps": model.metadata["training"]["steps"], "seconds": round(time.time() - t0, 1),
               "hardware": model.metadata["training"]["hardware"],
               "params": sum(p.numel() for p in model.parameters())}
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    torch.set_num_threads(1) if torch.cuda.is_available() else None
    main()
