"""Training a flow prior on the user's images (maximum likelihood on dequantized patches).

``train_steps`` is a generator: it yields ``TrainProgress`` and returns the trained model, so the
GUI, scripts and the CLI share it; closing it stops training. ``train`` runs it to the end with a
progress bar and writes the model file.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .devices import resolve_device
from .domain import typical_log_density
from .flows import FlowModel, build_model, load_model, save_model
from .imageio import as_planes, image_files, read_image
from .normalization import DEFAULT as DEFAULT_NORMALIZATION
from .normalization import percentile_scaling
from .solvers.checks import is_integer, is_number
from .solvers.result import run_to_end  # noqa: F401  (re-exported: drives train_steps)


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in checkpoints and the model file)."""

    kind: str = "glow"
    levels: int = 3
    steps_per_level: int = 8
    hidden: int = 64
    patch: int = 32
    batch: int = 32
    steps: int | None = 2000
    minutes: float | None = None
    lr: float = 1e-3
    warmup: int = 200
    grad_clip: float = 100.0
    n_bins: int = 256
    augment: bool = True
    background_keep: float = 0.1
    background_std: float = 0.02
    val_fraction: float = 0.15
    val_block: int | None = None
    val_every: int = 200
    val_max_images: int = 512
    checkpoint_every: int = 500
    seed: int = 0
    normalize: bool = True
    low_pct: float = DEFAULT_NORMALIZATION["low_pct"]
    high_pct: float = DEFAULT_NORMALIZATION["high_pct"]
    channels: int = 1
    channel_axis: int | None = None
    device: str = "auto"

    def normalization(self) -> dict:
        return {"low_pct": self.low_pct, "high_pct": self.high_pct, "clip": True}


def check_config(config: TrainConfig) -> None:
    """ValueError naming the first setting that cannot work (e.g. steps=0 would save an untrained model)."""
    if config.steps is None and config.minutes is None:
        raise ValueError("give a number of steps or a time budget in minutes")
    positive_ints = ("levels", "steps_per_level", "hidden", "patch", "batch", "val_every", "checkpoint_every",
                     "n_bins", "channels") + (("steps",) if config.steps is not None else ())
    for name in positive_ints:
        value = getattr(config, name)
        if not is_integer(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name in ("lr", "grad_clip") + (("minutes",) if config.minutes is not None else ()):
        value = getattr(config, name)
        if not is_number(value) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not 0 < config.val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {config.val_fraction!r}")


@dataclass
class TrainProgress:
    step: int
    total: int | None
    loss: float
    val_bpd: float | None
    skipped: int
    seconds: float


@dataclass
class Dataset:
    """Training images with the positions patches may start at, and held-out validation images."""

    images: list[np.ndarray]  # (C, H, W) float32 in [0, 1]
    positions: np.ndarray  # (N, 3) int: image index, row, column of allowed patch corners
    val: list[np.ndarray] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    level_steps: list[float] = field(default_factory=list)  # grey-level spacing of each image, in bins


def level_step(plane: np.ndarray, n_bins: int = 256) -> float:
    """The typical spacing of the grey levels an image uses, in units of 1/n_bins: 1 for a full
    8-bit image; ~8 for a dim 8-bit image stretched to [0, 1] (it uses every 8th level). Training
    dequantizes over that spacing, so the prior models the image, not the comb of levels that
    percentile scaling leaves between the recorded values.

    A comb means that (nearly) all neighbouring levels in use are far apart, so the 10th
    percentile of the gaps is taken: an image that merely skips some levels (an MNIST digit uses
    ~100 scattered levels, gaps 1 to 6) keeps a spacing of 1."""
    levels = np.unique(np.round(plane * (n_bins - 1)))
    if levels.size < 16:  # too few levels to tell a comb from a sparse image
        return 1.0
    return float(max(1.0, np.percentile(np.diff(levels), 10, method="lower")))


def to_unit_range(plane: np.ndarray, config: TrainConfig, name: str) -> np.ndarray:
    """Scale one (C, H, W) plane to [0, 1]: percentiles per channel, or (normalize=False) integer
    data over its dtype's maximum and float data taken as already in [0, 1]."""
    plane = np.asarray(plane)
    if not np.isfinite(plane).all():
        raise ValueError(f"{name}: the image has NaN or infinite pixels")
    if config.normalize:
        scaling = percentile_scaling(plane, config.low_pct, config.high_pct, channel_axis=0)
        return scaling.apply(plane, clip=True)
    if np.issubdtype(plane.dtype, np.integer):
        return plane.astype(np.float32) / np.iinfo(plane.dtype).max
    if plane.min() < 0 or plane.max() > 1:
        raise ValueError(f"{name}: float data must be in [0, 1] when normalize=False "
                         f"(range {plane.min():g}..{plane.max():g})")
    return plane.astype(np.float32)


def _match_channels(plane: np.ndarray, channels: int, name: str) -> list[np.ndarray]:
    """The (C, H, W) images a ``channels``-channel model learns from one plane: the plane itself,
    or for a 1-channel model each colour channel of an RGB(A) plane (as the plugin and the CLI
    then reconstruct such an image channel by channel)."""
    if plane.shape[0] == channels:
        return [plane]
    if channels == 1 and plane.shape[0] in (3, 4):
        return [channel[None] for channel in plane[:3]]
    raise ValueError(f"{name}: has {plane.shape[0]} channels but the model has {channels}; "
                     "say which axis holds the channels (channel_axis) or train a matching model")


def load_planes(sources, config: TrainConfig) -> tuple[list[np.ndarray], list[str]]:
    """Read files/folders (or take arrays) into (C, H, W) planes in [0, 1]."""
    planes, names = [], []
    items = sources if isinstance(sources, (list, tuple)) else [sources]
    for item in items:
        if isinstance(item, np.ndarray):
            arrays = [("array", item)]
        else:
            arrays = [(str(p), read_image(p)) for p in image_files([item])]
        for name, array in arrays:
            for plane in as_planes(array, config.channel_axis, name):
                for image in _match_channels(plane, config.channels, name):
                    planes.append(to_unit_range(image, config, name))
                    names.append(name)
    if not planes:
        raise ValueError("no images found to train on")
    return planes, names


def _allowed_corners(free: np.ndarray, patch: int) -> np.ndarray:
    """(row, col) of every patch corner whose patch lies entirely in ``free`` (an (H, W) bool)."""
    h, w = free.shape
    integral = np.zeros((h + 1, w + 1), np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(free, 0), 1)
    p = patch
    counts = integral[p:, p:] - integral[:-p, p:] - integral[p:, :-p] + integral[:-p, :-p]
    return np.argwhere(counts == p * p)


def make_dataset(planes: list[np.ndarray], config: TrainConfig, val_planes=None, names=None) -> Dataset:
    """Hold out validation data by spatial block and list the allowed training patch corners.

    With ``val_planes`` given, all of ``planes`` is training data. Otherwise each image large
    enough for several blocks (``val_block``, default 2 * patch) gives a random
    ``val_fraction`` of its blocks to validation, and patches are drawn only where they overlap
    no validation pixel; images too small for that are held out whole, by the same fraction, and
    a single such image gives one patch-sized block instead.
    """
    p = config.patch
    for plane, name in zip(planes, names or ["image"] * len(planes)):
        if plane.shape[1] < p or plane.shape[2] < p:
            raise ValueError(f"{name}: image {plane.shape[1]}x{plane.shape[2]} is smaller than the "
                             f"{p}x{p} training patch; use a smaller patch size")
    rng = np.random.default_rng(config.seed)
    block = config.val_block or 2 * p
    val = [] if val_planes is None else list(val_planes)
    free_masks = [np.ones(plane.shape[1:], bool) for plane in planes]
    if val_planes is None:
        small = [i for i, pl in enumerate(planes) if (pl.shape[1] // block) * (pl.shape[2] // block) < 4]
        n_small_val = int(round(config.val_fraction * len(small)))
        if len(small) >= 2:
            n_small_val = max(1, n_small_val)
        for i in rng.permutation(small)[:n_small_val] if small else []:
            val.append(planes[i])
            free_masks[i][:] = False
        for i, plane in enumerate(planes):
            if i in small:
                continue
            rows, cols = plane.shape[1] // block, plane.shape[2] // block
            n_val = max(1, int(round(config.val_fraction * rows * cols)))
            for b in rng.permutation(rows * cols)[:n_val]:
                r, c = divmod(int(b), cols)
                val.append(plane[:, r * block:(r + 1) * block, c * block:(c + 1) * block])
                free_masks[i][r * block:(r + 1) * block, c * block:(c + 1) * block] = False
        if not val and small:  # a lone small image: hold out one patch-sized block of the largest
            i = max(small, key=lambda k: planes[k].shape[1] * planes[k].shape[2])
            rows, cols = planes[i].shape[1] // p, planes[i].shape[2] // p
            if rows * cols >= 2:
                r, c = divmod(int(rng.integers(rows * cols)), cols)
                val.append(planes[i][:, r * p:(r + 1) * p, c * p:(c + 1) * p])
                free_masks[i][r * p:(r + 1) * p, c * p:(c + 1) * p] = False
        if not val:
            shape = planes[0].shape[1:]
            raise ValueError(f"not enough data to hold out a validation set: one {shape[0]}x{shape[1]} image "
                             f"has no room for a {p}x{p} validation block beside a training patch; give a "
                             "larger image, more images, validation images, or a smaller patch size")
    positions = []
    for i, free in enumerate(free_masks):
        corners = _allowed_corners(free, p)
        if len(corners):
            positions.append(np.column_stack([np.full(len(corners), i), corners]))
    if not positions:
        raise ValueError("no training patch fits outside the validation blocks; use more data or a smaller patch")
    return Dataset(planes, np.concatenate(positions).astype(np.int64), val, list(names or []),
                   [level_step(p, config.n_bins) for p in planes])


def sample_batch(data: Dataset, config: TrainConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A batch of patches and their images' grey-level steps; nearly empty patches (std <
    background_std) are kept only with a probability that falls to ``background_keep`` as the
    patch gets flatter."""
    p, out, steps = config.patch, [], []
    while len(out) < config.batch:
        idx, r, c = data.positions[rng.integers(len(data.positions))]
        patch = data.images[idx][:, r:r + p, c:c + p]
        keep = min(1.0, max(config.background_keep, float(patch.std()) / config.background_std))
        if keep < 1.0 and rng.random() > keep:
            continue
        if config.augment:
            patch = np.rot90(patch, k=int(rng.integers(4)), axes=(1, 2))
            if rng.random() < 0.5:
                patch = patch[:, :, ::-1]
        out.append(patch)
        steps.append(data.level_steps[idx] if data.level_steps else 1.0)
    return np.ascontiguousarray(np.stack(out), dtype=np.float32), np.float32(steps)


def dequantize(x: torch.Tensor, n_bins: int, generator: torch.Generator, steps=None) -> torch.Tensor:
    """(k + s u) / n_bins with k = round(x * (n_bins - 1)), u ~ U(0, 1) and s the image's grey-level
    step (1 for full 8-bit data: the bits/dim definition's dequantization)."""
    u = torch.rand(x.shape, generator=generator).to(x.device)
    if steps is not None:
        u = u * torch.as_tensor(steps, device=x.device, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    return (torch.round(x * (n_bins - 1)) + u) / n_bins


@torch.no_grad()
def validation_bpd(model: FlowModel, images: Sequence[np.ndarray], device, n_bins=256, max_images=None, draws=1,
                   bins: str = "unit") -> float:
    """Mean bits/dim over whole validation images (weighted by pixels), batching equal shapes;
    ``bins`` as in ``FlowModel.bits_per_dim``."""
    images = list(images)[: max_images or None]
    total_bits, total_dims = 0.0, 0
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for img in images:
        by_shape.setdefault(img.shape, []).append(img)
    was_training = model.training
    model.eval()
    for shape, group in by_shape.items():
        for start in range(0, len(group), 256):
            x = torch.from_numpy(np.stack(group[start:start + 256])).to(device, model.dtype)
            bpd = model.bits_per_dim(x, n_bins=n_bins, draws=draws, bins=bins)
            total_bits += float(bpd.sum()) * math.prod(shape)
            total_dims += len(bpd) * math.prod(shape)
    model.train(was_training)
    return total_bits / total_dims


def _lr_factor(step: int, config: TrainConfig, elapsed: float) -> float:
    warm = min(1.0, (step + 1) / max(1, config.warmup))
    progress = 0.0
    if config.steps:
        progress = step / config.steps
    if config.minutes:
        progress = max(progress, elapsed / (60 * config.minutes))
    return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_steps(
    images,
    config: TrainConfig | None = None,
    *,
    val_images=None,
    init: str | os.PathLike | FlowModel | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    log_path: str | os.PathLike | None = None,
) -> Iterator[TrainProgress]:
    """Train a prior; yields ``TrainProgress`` after every step and returns the best model.

    ``images``: files, folders or arrays; ``val_images`` likewise (else a spatial-block split);
    ``init``: a model name/path/object to fine-tune; ``checkpoint``: a file written every
    ``checkpoint_every`` steps, from which ``resume=True`` continues exactly. The model returned
    is the one with the lowest validation bits/dim seen (checked every ``val_every`` steps).
    """
    config = replace(config or TrainConfig())
    check_config(config)
    device = resolve_device(config.device)
    planes, names = load_planes(images, config)
    val_planes = load_planes(val_images, config)[0] if val_images is not None else None
    data = make_dataset(planes, config, val_planes, names)

    if isinstance(init, FlowModel):
        model = init
    elif init is not None:
        model = load_model(init)
    else:
        model = build_model(config.kind, channels=config.channels, levels=config.levels,
                            steps=config.steps_per_level, hidden=config.hidden, seed=config.seed)
    if model.channels != config.channels:
        raise ValueError(f"the initial model has {model.channels} channels, the data {config.channels}")
    earlier_training = model.metadata.get("training") if init is not None else None
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    step, skipped, elapsed_before, history = 0, 0, 0.0, []
    best = {"val_bpd": math.inf, "state": None, "step": 0}
    ckpt_path = Path(checkpoint) if checkpoint else None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise ValueError(f"cannot resume: no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        gen.set_state(state["torch_rng"])
        step, skipped, elapsed_before = state["step"], state["skipped"], state["seconds"]
        history, best = state["history"], state["best"]

    def snapshot():
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "numpy_rng": rng.bit_generator.state, "torch_rng": gen.get_state(), "step": step,
                "skipped": skipped, "seconds": elapsed_before + time.time() - start, "history": history,
                "best": best, "config": asdict(config)}

    start = time.time()
    last_val = history[-1]["val_bpd"] if history else None
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        while True:
            elapsed = elapsed_before + time.time() - start
            if config.steps is not None and step >= config.steps:
                break
            if config.minutes is not None and elapsed >= 60 * config.minutes:
                break
            patches, steps = sample_batch(data, config, rng)
            x = dequantize(torch.from_numpy(patches).to(device), config.n_bins, gen, steps)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(step, config, elapsed)
            dims = x[0].numel()
            loss = -(model.log_prob(x).mean() - dims * math.log(config.n_bins)) / (dims * math.log(2))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            if torch.isfinite(loss) and torch.isfinite(norm):
                optimizer.step()
            else:
                skipped += 1
            step += 1
            record = {"step": step, "loss_bpd": loss.item(), "lr": optimizer.param_groups[0]["lr"],
                      "seconds": round(elapsed_before + time.time() - start, 3), "skipped": skipped}
            if step % config.val_every == 0 or step == config.steps:
                last_val = validation_bpd(model, data.val, device, config.n_bins, config.val_max_images)
                record["val_bpd"] = last_val
                history.append(record)
                if last_val < best["val_bpd"]:
                    best = {"val_bpd": last_val, "step": step,
                            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                if log_path:
                    _write_log(Path(log_path), history)
            if ckpt_path and step % config.checkpoint_every == 0:
                _save_checkpoint(ckpt_path, snapshot())
            yield TrainProgress(step, config.steps, record["loss_bpd"], last_val, skipped, record["seconds"])
    finally:
        if ckpt_path and step:
            _save_checkpoint(ckpt_path, snapshot())
    seconds = elapsed_before + time.time() - start
    if best["state"] is None or (history and history[-1]["step"] != step):
        final_val = validation_bpd(model, data.val, device, config.n_bins, config.val_max_images)
        history.append({"step": step, "val_bpd": final_val, "seconds": round(seconds, 3), "skipped": skipped})
        if final_val < best["val_bpd"]:
            best = {"val_bpd": final_val, "step": step, "state": None}
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    if log_path:
        _write_log(Path(log_path), history)
    model.eval()
    model.metadata["normalization"] = config.normalization()
    model.metadata["training"] = {
        "data": sorted(set(data.sources)) or ["arrays"], "n_images": len(data.images),
        "n_val_images": len(data.val), "config": asdict(config), "steps": step, "best_step": best["step"],
        "skipped_steps": skipped, "seconds": round(seconds, 1), "hardware": _hardware(device),
        "seed": config.seed, "command": " ".join(sys.argv),
        "init": None if init is None else (init.metadata.get("name", "model") if isinstance(init, FlowModel) else str(init)),
    }
    if earlier_training:  # a fine-tuned model keeps the record of the training it started from
        model.metadata["training"]["previous"] = earlier_training
    model.metadata["metrics"] = {"val_bpd": best["val_bpd"], "typical_log_density": typical_log_density(
        model, list(data.val)[: config.val_max_images or None], device)}
    return model


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads, torch {torch.__version__}"


def _write_log(path: Path, history: list[dict]) -> None:
    """``<path>.json`` and ``<path>.csv``: one row per validation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(path.name + ".json").write_text(json.dumps(history, indent=1))
    keys = sorted({k for row in history for k in row})
    with open(path.with_name(path.name + ".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def train(images, out: str | os.PathLike, config: TrainConfig | None = None, *, domain: str = "",
          progress: bool = True, **kwargs) -> FlowModel:
    """Train (see ``train_steps``) with a progress bar and save the model to ``out``."""
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    out = Path(out)
    kwargs.setdefault("log_path", out.with_suffix(".log"))
    gen = train_steps(images, config, **kwargs)
    bar = None  # opened at the first step, so that an error reading the images comes without one
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                model = stop.value
                break
            if bar is None:
                bar = tqdm(total=config.steps, disable=not progress, unit="step", dynamic_ncols=True)
            bar.update(1)
            bar.set_postfix(loss=f"{p.loss:.3f}", val_bpd=f"{p.val_bpd:.3f}" if p.val_bpd else "-",
                            skipped=p.skipped, refresh=False)
    finally:
        if bar is not None:
            bar.close()
    save_model(model, out, domain=domain or model.metadata.get("domain", ""))
    return model
