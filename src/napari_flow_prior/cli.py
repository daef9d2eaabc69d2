"""Command line: ``napari-flow-prior reconstruct | batch | density | demo | train | models``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .flows.settings import METHODS
from .jobs import OPERATOR_HELP, model_layout, parse_operator, reconstruct_file, write_tif  # noqa: F401  (the API of the commands)
from .solvers.select import summary


def density_file(image_path, *, model="nuclei", out="density", device="auto") -> dict:
    """The ``density`` command for one file: the per-pixel log-density (nats per pixel, on the
    model's [0, 1] scale after its own normalisation; summed over the channels of an RGB image under
    a 1-channel prior) of a 2-D image, or of each plane of a stack, written to
    ``OUT/<stem>_log_density.tif``; returns the summary it reports."""
    import napari_flow_prior as nfp

    from .imageio import read_image

    prior = nfp.load_model(model) if isinstance(model, (str, Path)) else model
    raw = read_image(image_path).astype(np.float32)
    single = raw.ndim == 2 or prior.channels > 1 or raw.shape[-1] in (3, 4)  # else a stack of 2-D planes
    if single:
        raw = model_layout(raw, prior.channels, image_path)[0]
    elif raw.ndim != 3:
        raise ValueError(f"{image_path}: expected a 2-D image or a stack of 2-D planes, got shape {raw.shape}")
    if not np.isfinite(raw).all():
        raise ValueError(f"{image_path} has {int((~np.isfinite(raw)).sum())} NaN or infinite pixels")
    planes = raw[None] if single else raw

    def density(image):  # an RGB image with a 1-channel prior: channel by channel, summed
        parts = image if prior.channels == 1 and image.ndim == 3 else [image]
        return sum(nfp.log_density(nfp.normalize(part, model=prior)[0], prior, device=device) for part in parts)

    maps = np.stack([density(plane) for plane in planes])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{Path(image_path).stem}_log_density.tif"
    write_tif(target, maps[0] if single else maps)
    per_plane = maps.reshape(len(maps), -1).mean(1)
    return {"image": str(image_path), "shape": list(raw.shape), "output": str(target),
            "mean_nats_per_pixel": float(maps.mean()), "planes_mean_nats_per_pixel": per_plane.tolist()}


def _cmd_density(args) -> int:
    import napari_flow_prior as nfp

    prior = nfp.load_model(args.model)
    report = {"version": nfp.__version__, "model": prior.metadata.get("name"),
              "model_sha256": prior.metadata.get("sha256"), "images": []}
    print(f"{'image':>32}  mean log-density (nats/pixel)")
    for path in args.images:
        entry = density_file(path, model=prior, out=args.out, device=args.device)
        report["images"].append(entry)
        print(f"{Path(path).name:>32}  {entry['mean_nats_per_pixel']:.3f}")
    out = Path(args.out)
    tmp = out / "density.json.part"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "density.json")
    print(f"wrote {args.out}/ (<image>_log_density.tif, density.json)")
    return 0


def _cmd_reconstruct(args) -> int:
    report = reconstruct_file(args.image, model=args.model, operator=args.operator, noise=args.noise,
                              method=args.method, out=args.out, simulate=args.simulate, mask=args.mask,
                              psf=args.psf, device=args.device, seed=args.seed, baseline=args.baseline,
                              **_counts_settings(args),
                              block=args.block, **_solver_settings(args))
    for name, m in report.get("metrics", {}).items():
        print(f"{name:>16}: PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}")
    if "selection" in report.get("params", {}):
        print(summary(report["params"]["selection"]))
    extra = ", posterior_std.tif" if args.method == "posterior" else ""
    print(f"wrote {args.out}/ (reconstruction.tif, log_density.tif{extra}, report.json) in {report['seconds']} s")
    return 0


def _cmd_batch(args) -> int:
    from .batch import REPORT, run_batch

    report = run_batch(args.input, args.out, model=args.model, operator=args.operator, noise=args.noise,
                       method=args.method, simulate=args.simulate, device=args.device, seed=args.seed,
                       block=args.block, **_counts_settings(args), **_solver_settings(args))
    print(f"{report['done']} done, {report['skipped']} skipped (already finished), {report['failed']} failed: "
          f"see {Path(args.out) / REPORT}")
    for name, entry in report["images"].items():
        if entry["status"] == "failed":
            print(f"  {name}: {entry['error']}", file=sys.stderr)
    return 1 if report["failed"] else 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out=args.out, size=args.size, model=args.model, iterations=args.iterations, device=args.device)
    return 0


def _cmd_train(args) -> int:
    from .training import TrainConfig, train

    architecture = {"kind": args.kind, "levels": args.levels, "steps_per_level": args.steps_per_level,
                    "hidden": args.hidden}
    given = [f"--{k.replace('_', '-')}" for k, v in architecture.items() if v is not None]
    if args.init and given:
        raise ValueError(f"{', '.join(given)}: the architecture of a fine-tuned prior is that of --init {args.init}")
    defaults = TrainConfig()
    architecture = {k: getattr(defaults, k) if v is None else v for k, v in architecture.items()}
    config = TrainConfig(**architecture, patch=args.patch, batch=args.batch, steps=args.steps,
                         minutes=args.minutes, lr=args.lr, seed=args.seed, augment=not args.no_augment,
                         normalize=not args.no_normalize, low_pct=args.low_pct, high_pct=args.high_pct,
                         channels=args.channels, channel_axis=args.channel_axis, device=args.device,
                         val_every=args.val_every)
    if args.steps is None and args.minutes is None:
        config.steps = 2000
    out = Path(args.out)
    model = train(args.images, out, config, domain=args.domain, val_images=args.val, init=args.init,
                  checkpoint=args.checkpoint or out.with_suffix(".ckpt"), resume=args.resume)
    print(f"saved {out}: validation {model.metadata['metrics']['val_bpd']:.3f} bits/dim, "
          f"{model.metadata['training']['steps']} steps, {model.metadata['training']['skipped_steps']} skipped")
    return 0


def _cmd_models(args) -> int:
    from .flows.files import read_metadata
    from .flows import available_models

    for name, path in available_models().items():
        meta = read_metadata(path)
        bpd = meta["metrics"].get("test_bpd", meta["metrics"].get("val_bpd"))
        print(f"{name:>12}  {meta['domain'] or '-'}  (bits/dim {bpd if bpd is None else round(bpd, 3)})  {path}")
    return 0


SOLVER_OPTIONS = ("iterations", "weight", "space", "lr", "lr_decay", "box", "ensemble", "chains", "temperature",
                  "photons", "select", "adapt")


def _solver_settings(args) -> dict:
    return {k: getattr(args, k) for k in SOLVER_OPTIONS}


def _add_counts_options(p: argparse.ArgumentParser) -> None:
    """Measured photon counts (``reconstruct`` and ``batch``)."""
    p.add_argument("--gain", type=float, help="measured photon counts: input units per detected photon "
                   "(the camera's gain); the solve then uses the Poisson likelihood, --noise the read noise")
    p.add_argument("--offset", type=float, help="with --gain: the camera's baseline, in input units (default 0)")


def _counts_settings(args) -> dict:
    return {k: getattr(args, k) for k in ("gain", "offset") if getattr(args, k) is not None}


def _add_solver_options(p: argparse.ArgumentParser) -> None:
    """The solve's settings (``SOLVER_OPTIONS``), shared by ``reconstruct`` and ``batch``."""
    p.add_argument("--method", default="map", choices=list(METHODS),
                   help="map (default), latent, mle, or posterior: the mean of posterior samples, "
                        "with their per-pixel standard deviation (posterior_std.tif)")
    p.add_argument("--iterations", type=int)
    p.add_argument("--weight", type=float, help="prior weight (default per model, method and operator)")
    p.add_argument("--space", choices=["image", "latent"],
                   help="where map optimises: the image or its latent code (default per model and operator)")
    p.add_argument("--lr", type=float, help="Adam step size; for posterior the Langevin step factor "
                   "(default per model, method and operator)")
    p.add_argument("--lr-decay", action=argparse.BooleanOptionalAction, default=None,
                   help="Adam's step decays to 5%% of --lr over the iterations (cosine), or stays constant "
                        "(default per model, method and operator)")
    p.add_argument("--box", action=argparse.BooleanOptionalAction, default=None,
                   help="map in image space: keep the iterates in [0, 1] (default per model and operator)")
    p.add_argument("--ensemble", type=int, metavar="K",
                   help="average K solves (1-8), each with the prior turned or mirrored: better, K times slower "
                        "(default per model and operator)")
    p.add_argument("--select", choices=["auto", "off"], default="auto",
                   help="map on a mask or blur: choose the prior weight, iterations and --adapt per image from a "
                        "held-out share of the measurements (auto, the default), or keep the model's defaults (off)")
    p.add_argument("--adapt", action=argparse.BooleanOptionalAction, default=None,
                   help="map: adapt a copy of the flow to the image while solving (default: as --select chooses)")
    p.add_argument("--chains", type=int, help="posterior: Langevin chains run as one batch (default 8)")
    p.add_argument("--temperature", type=float,
                   help="posterior: the prior's temperature T, below 1 sharpens it (default 1, the exact posterior)")
    p.add_argument("--photons", type=float,
                   help="with --simulate: photon-limited data, Poisson noise of this expected count at intensity 1 "
                        "(plus --noise as read noise), reconstructed with the Poisson likelihood (mask or blur)")
    p.add_argument("--block", type=int, default=32, help="compressed-sensing block size")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-flow-prior", description="Normalizing-flow priors for "
                                     "inpainting, deblurring and compressed sensing.")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: all cores; use 1 on a machine busy with other jobs)")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("reconstruct", help="reconstruct one image from measurements")
    r.add_argument("image", help="measured image (or, with --simulate, the ground truth)")
    r.add_argument("--model", default="nuclei", help="shipped model name or .safetensors file")
    r.add_argument("--operator", default="mask:0.8", help=OPERATOR_HELP)
    r.add_argument("--noise", default="0.01", help="noise sigma on the [0, 1] scale, or 'auto'")
    r.add_argument("--out", default="reconstruction", help="output folder")
    r.add_argument("--simulate", action="store_true", help="IMAGE is the ground truth: measure it first and report metrics")
    r.add_argument("--mask", help="image file of the missing pixels (nonzero = missing), for measured data")
    r.add_argument("--psf", help="image file of the point-spread function, for measured blurred data")
    _add_counts_options(r)
    _add_solver_options(r)
    r.add_argument("--baseline", action="store_true", help="also run the matching classical baseline")
    r.set_defaults(fn=_cmd_reconstruct)

    b = sub.add_parser("batch", help="reconstruct every image of a folder or zarr array (resumable)")
    b.add_argument("input", help="folder of images, or a zarr array of 2-D planes")
    b.add_argument("--out", required=True, help="output folder: one subfolder per image, batch_report.json")
    b.add_argument("--model", default="nuclei", help="shipped model name or .safetensors file")
    b.add_argument("--operator", default="mask:0.8", help=OPERATOR_HELP)
    b.add_argument("--noise", default="0.01", help="noise sigma on the [0, 1] scale, or 'auto'")
    b.add_argument("--simulate", action="store_true", help="inputs are ground truths: measure them first, report metrics")
    _add_counts_options(b)
    _add_solver_options(b)
    b.set_defaults(fn=_cmd_batch)

    g = sub.add_parser("density", help="per-pixel log-density maps of images under a prior")
    g.add_argument("images", nargs="+", help="image files (2-D, RGB, or stacks of 2-D planes)")
    g.add_argument("--model", default="nuclei", help="shipped model name or .safetensors file")
    g.add_argument("--out", default="density", help="output folder")
    g.add_argument("--device", default="auto")
    g.set_defaults(fn=_cmd_density)

    d = sub.add_parser("demo", help="all three operators on a shipped sample image, flow vs baselines")
    d.add_argument("--out", default="demo")
    d.add_argument("--model", default="nuclei",
                   help="shipped model name (run on its own sample image) or .safetensors file (run on the nuclei sample)")
    d.add_argument("--size", type=int, default=128, help="crop size of the sample images")
    d.add_argument("--iterations", type=int, default=None)
    d.add_argument("--device", default="auto")
    d.set_defaults(fn=_cmd_demo)

    t = sub.add_parser("train", help="train a prior on your images")
    t.add_argument("images", nargs="+", help="image files or folders (TIFF, PNG, JPEG, .npy, .npz)")
    t.add_argument("--out", required=True, help="model file to write (.safetensors)")
    t.add_argument("--val", nargs="+", help="validation images (default: held-out spatial blocks)")
    t.add_argument("--init", help="fine-tune this model (name or file)")
    t.add_argument("--domain", default="", help="one line: what images the model is for")
    t.add_argument("--kind", choices=["glow", "realnvp", "nice"], help="default glow (with --init: that model's)")
    t.add_argument("--levels", type=int, help="default 3 (with --init: that model's)")
    t.add_argument("--steps-per-level", type=int, help="default 8 (with --init: that model's)")
    t.add_argument("--hidden", type=int, help="coupling network width, default 64 (with --init: that model's)")
    t.add_argument("--patch", type=int, default=32)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--steps", type=int, help="training steps (default 2000 unless --minutes)")
    t.add_argument("--minutes", type=float, help="time budget")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--val-every", type=int, default=200)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--channels", type=int, default=1)
    t.add_argument("--channel-axis", type=int, default=None)
    t.add_argument("--no-augment", action="store_true", help="no flips/rotations (for oriented data such as digits)")
    t.add_argument("--no-normalize", action="store_true", help="data already in [0, 1] (or integers over their dtype's max)")
    t.add_argument("--low-pct", type=float, default=1.0)
    t.add_argument("--high-pct", type=float, default=99.8)
    t.add_argument("--checkpoint", help="checkpoint file (default OUT with .ckpt)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    t.add_argument("--device", default="auto")
    t.set_defaults(fn=_cmd_train)

    m = sub.add_parser("models", help="list the available models")
    m.set_defaults(fn=_cmd_models)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"napari-flow-prior {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
