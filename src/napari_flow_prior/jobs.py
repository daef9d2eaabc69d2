"""File jobs shared by the command line, ``batch`` and ``demo``: an operator from its text
spec, one image file reconstructed into an output folder (``reconstruct_file``), TIFF output."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

OPERATOR_HELP = "mask:F (F = missing fraction), blur:SIGMA, or cs:RATIO (compressed sensing)"


def parse_operator(spec: str, shape, seed: int = 0, psf=None, missing=None, block: int = 32):
    """An operator from 'mask:0.7' | 'blur:2.0' | 'cs:0.2' (and an optional PSF or mask array)."""
    from . import operators as ops

    kind, _, value = spec.partition(":")
    try:
        number = float(value) if value else None
    except ValueError:
        raise ValueError(f"bad operator {spec!r}: expected {OPERATOR_HELP}") from None
    if psf is not None and (kind != "blur" or number is not None):
        raise ValueError(f"--psf is the blur's point-spread function: use it with --operator blur (no sigma), "
                         f"not {spec!r}")
    if missing is not None and (kind != "mask" or number is not None):
        raise ValueError(f"--mask gives the missing pixels: use it with --operator mask (no fraction), not {spec!r}")
    if kind == "mask":
        if missing is not None:
            return ops.Mask.from_missing(np.broadcast_to(missing, shape[-2:]).copy(), shape=shape)
        return ops.Mask.random(shape, missing_fraction=0.8 if number is None else number, seed=seed)
    if kind == "blur":
        return ops.Blur(shape, psf=psf) if psf is not None else ops.Blur(shape, sigma=2.0 if number is None else number)
    if kind == "cs":
        return ops.GaussianProjection(shape, ratio=0.2 if number is None else number, seed=seed, block=block)
    raise ValueError(f"bad operator {spec!r}: expected {OPERATOR_HELP}")


def progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", dynamic_ncols=True, file=sys.stderr)


def run_with_bar(gen, desc):
    bar = None
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            if bar is None:
                bar = progress_bar(p.total, desc)
            bar.n = p.iteration
            bar.set_postfix(loss=f"{p.loss:.4g}", refresh=True)
    finally:
        if bar is not None:
            bar.close()


def write_tif(path: Path, array, rgb: bool = False) -> None:
    import tifffile

    tmp = path.with_name(path.name + ".part")
    tifffile.imwrite(tmp, np.asarray(array, np.float32), photometric="rgb" if rgb else "minisblack")
    tmp.replace(path)


def model_layout(raw: np.ndarray, channels: int, image_path) -> tuple[np.ndarray, bool]:
    """One image as the model takes it: (H, W) for a 1-channel model, (C, H, W) for a C-channel one
    (from (C, H, W) or (H, W, C)); and whether the channels came last. An RGB(A) image for a
    1-channel model comes back as (3, H, W), channels last: it runs channel by channel."""
    if channels == 1:
        if raw.ndim == 3 and raw.shape[-1] in (3, 4) and raw.shape[0] > 4:
            return np.ascontiguousarray(np.moveaxis(raw[..., :3], -1, 0)), True
        if raw.ndim != 2:
            raise ValueError(f"{image_path}: expected a 2-D grayscale or RGB image for the CLI, got shape {raw.shape}; "
                             "run stacks plane by plane with the batch command (napari-flow-prior batch FILE "
                             "--out DIR), or use the Python API (reconstruct_stack, channel_axis=)")
        return raw, False
    if raw.ndim == 3 and raw.shape[-1] == channels and raw.shape[0] != channels:
        return np.ascontiguousarray(np.moveaxis(raw, -1, 0)), True
    if raw.ndim != 3 or raw.shape[0] != channels:
        raise ValueError(f"{image_path}: the model is for {channels}-channel images, (C, H, W) or (H, W, C); "
                         f"got shape {raw.shape}")
    return raw, False


def reconstruct_file(image_path, *, model="nuclei", operator="mask:0.8", noise="0.01", method="map",
                     out="reconstruction", simulate=False, mask=None, psf=None, device="auto", seed=0,
                     baseline=False, block=32, gain=None, offset=None, **settings) -> dict:
    """The ``reconstruct`` command as a function: returns the report it writes as JSON.
    ``settings`` are the solver's (``SOLVER_OPTIONS``, None = the default), passed to ``reconstruct``.
    An RGB image with a 1-channel prior runs channel by channel (one operator for all channels;
    measurement noise seeded ``seed + channel``) and its outputs are RGB; the log-density is summed
    over the channels. ``gain`` (input units per detected photon) and ``offset`` (the camera's
    baseline): IMAGE holds photon counts, scaled by ``normalize_counts`` and reconstructed with the
    Poisson likelihood (``photons`` from the counts)."""
    import napari_flow_prior as nfp

    from . import pipeline
    from .imageio import read_image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prior = nfp.load_model(model)
    raw = read_image(image_path).astype(np.float32)
    raw, channels_last = model_layout(raw, prior.channels, image_path)
    split = prior.channels == 1 and raw.ndim == 3  # an RGB image, one channel at a time
    missing = (read_image(mask) != 0) if mask else None
    psf_array = read_image(psf).astype(np.float64) if psf else None
    if missing is not None and missing.shape != raw.shape[-2:]:
        raise ValueError(f"mask {mask} has shape {missing.shape}, the image {raw.shape[-2:]}")
    op = parse_operator(operator, raw.shape[1:] if split else raw.shape, seed=seed, psf=psf_array,
                        missing=missing, block=block)
    finite = np.isfinite(raw)
    if not finite.all() and (simulate or op.kind != "mask"):
        why = ("--simulate needs a clean ground-truth image" if simulate
               else "only a mask operator can treat them as missing pixels")
        raise ValueError(f"{image_path} has {int((~finite).sum())} NaN or infinite pixels; {why}")
    if simulate and noise == "auto":
        raise ValueError("--noise auto estimates the noise of measured data; with --simulate give a number")
    photons = settings.pop("photons", None)
    if photons is not None and not simulate:
        raise ValueError("--photons is for --simulate; for measured photon counts give the camera's --gain "
                         "(input units per photon) and --offset")
    if offset is not None and gain is None:
        raise ValueError("--offset is the baseline of photon counts: give the camera's --gain too")
    if gain is not None and (simulate or op.kind not in ("mask", "blur")):
        raise ValueError("--gain (measured photon counts) works with measured data (no --simulate; there use "
                         "--photons) and a mask or blur operator")
    if not simulate and op.kind == "cs":
        raise ValueError("compressed-sensing measurements can only be simulated here (--simulate)")
    report = {"version": nfp.__version__, "image": str(image_path), "model": prior.metadata.get("name"),
              "model_file": prior.metadata.get("path"), "model_sha256": prior.metadata.get("sha256"),
              "operator": op.describe(), "method": method, "seed": seed, "simulate": simulate}
    if split:
        report["channel_by_channel"] = True
    t0 = time.time()
    parts = []
    for c, image in enumerate(raw if split else [raw]):
        job = pipeline.run(image, op, prior, simulate=simulate, noise_sigma=noise if noise == "auto" else float(noise),
                           photons=photons, gain=gain, offset=offset or 0.0, noise_seed=seed + c, baseline=baseline,
                           method=method, device=device, seed=seed, **settings)
        parts.append(run_with_bar(job, f"{method} {op.kind}" + (f" channel {'RGB'[c]}" if split else "")))
    first = parts[0]
    noise_used = [part.result.noise_sigma for part in parts]
    report.update(noise_sigma=noise_used[0] if len(set(noise_used)) == 1 else noise_used,
                  iterations=sum(part.result.n_iter for part in parts), seconds=round(time.time() - t0, 2),
                  device=first.result.device, params=first.provenance()["params"],
                  normalization={key: [v for part in parts for v in part.provenance()["normalization"][key]]
                                 for key in ("low", "high")})

    def stacked(get):  # the channels' parts as one image, channels first
        return np.stack([get(part) for part in parts]) if split else get(first)

    def joined(get):  # in the input file's layout (channels last if they came so)
        return np.moveaxis(stacked(get), 0, -1) if channels_last else stacked(get)

    rgb = channels_last and (split or prior.channels in (3, 4))
    write_tif(out / "reconstruction.tif", joined(lambda p: p.reconstruction), rgb=rgb)
    if op.kind == "cs":
        write_tif(out / "back_projection.tif", joined(lambda p: p.scaling.restore(p.op.back_projection(p.y))), rgb=rgb)
    else:
        write_tif(out / "measurements.tif", joined(lambda p: p.measured), rgb=rgb)
    write_tif(out / "log_density.tif", np.sum([part.result.log_density for part in parts], axis=0))
    if first.std is not None:
        write_tif(out / "posterior_std.tif", joined(lambda p: p.std), rgb=rgb)
    estimates = {"flow": lambda p: p.result.image}
    if baseline:
        estimates[first.baseline_name] = lambda p: p.baseline_estimate
        write_tif(out / f"baseline_{first.baseline_name}.tif", joined(lambda p: p.baseline), rgb=rgb)
    if simulate:  # on the model's [0, 1] scale, all channels together
        truth = stacked(lambda p: p.truth)
        report["metrics"] = {name: {"psnr": nfp.psnr(truth, stacked(get)), "ssim": nfp.ssim(truth, stacked(get))}
                             for name, get in estimates.items()}
    tmp = out / "report.json.part"
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(out / "report.json")
    return report
