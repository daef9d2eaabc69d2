"""The plugin's work as plain generator functions (no Qt, no viewer).

Each ``run_*`` function checks its inputs at once (a ``ValueError`` with a message meant for the
user), then returns a generator that yields :class:`Step` progress and returns napari layer-data
tuples ``(data, kwargs, "image")``. The widgets are thin skins over them; scripts drive them the
same way::

    from napari_flow_prior.plugin import OperatorSpec, run_reconstruction, run_to_end
    layers = run_to_end(run_reconstruction(image, "nuclei", OperatorSpec("mask", missing_fraction=0.8)))
    for data, kwargs, _ in layers:
        viewer.add_image(data, **kwargs)

Layer layout (stacks, RGB): ``_layout.py``; provenance, run names and placing results in a viewer:
``_layers.py``; the model chooser's helpers: ``_models.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..likelihood import check_photons
from ..solvers import METHODS, SPACES, check_ensemble, check_posterior, run_to_end  # noqa: F401  (run_to_end: re-exported for scripts)
from ._layers import DENSITY_COLORMAP, DENSITY_UNIT, LayerData, clean_kwargs, density_limits, provenance
from ._layout import MIN_SIDE, _Layout, as_missing, layout_for, nonfinite_missing, plane_text  # noqa: F401
from ._models import model_card, resolve_model

OPERATORS = ("mask", "blur", "cs")
MODES = ("simulate", "measured")


@dataclass
class Step:
    """Progress of a plugin job: ``done`` of ``total`` work units (optimiser iterations over all
    planes), with a short human-readable ``text``."""

    done: int
    total: int
    text: str
    plane: int = 0
    n_planes: int = 1
    loss: float | None = None


@dataclass
class OperatorSpec:
    """A measurement operator described independently of the image size.

    ``kind``: ``"mask"`` (inpainting), ``"blur"`` (deblurring) or ``"cs"`` (block Gaussian
    projections, simulate mode only). Mask: ``missing`` (bool, True = missing: ``(H, W)`` for every
    plane or the layer's full grayscale shape) or else ``missing_fraction`` at random. Blur: a
    ``psf`` array, or else a Gaussian of ``sigma``. CS: ``ratio`` (m/n) and ``block``.
    """

    kind: str = "mask"
    missing_fraction: float = 0.8
    missing: np.ndarray | None = None
    sigma: float = 2.0
    psf: np.ndarray | None = None
    ratio: float = 0.2
    block: int = 32

    def summary(self) -> dict:
        d = {"kind": self.kind}
        if self.kind == "mask":
            d["missing"] = "from layer" if self.missing is not None else f"random {self.missing_fraction:g}"
        elif self.kind == "blur":
            d["psf"] = "from layer" if self.psf is not None else f"gaussian sigma {self.sigma:g}"
        else:
            d.update(ratio=self.ratio, block=self.block)
        return d

    def build(self, shape: tuple[int, ...], seed: int, missing: np.ndarray | None = None):
        from .. import operators as ops

        if self.kind == "mask":
            if missing is not None:
                return ops.Mask.from_missing(missing, shape=shape)
            return ops.Mask.random(shape, self.missing_fraction, seed=seed)
        if self.kind == "blur":
            if self.psf is not None:
                return ops.Blur(shape, psf=self.psf)
            return ops.Blur(shape, sigma=self.sigma)
        return ops.GaussianProjection(shape, ratio=self.ratio, seed=seed, block=self.block)


def _model_channels(model) -> int:
    return int(model.channels)


def _sized(model) -> bool:
    """Whether the minimum image size applies (flows; not a linear Gaussian prior), as in the library."""
    return model.architecture.get("kind") != "linear"


# ---------------------------------------------------------------------------------- reconstruct
def _optional_number(value, what: str, expected: str) -> float | None:
    """A widget's text (or a number) as a float; None for an empty field."""
    if value is None or not isinstance(value, str):
        return None if value is None else float(value)
    text = value.strip().lower()
    if text in ("", "none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what} must be {expected}, got {value!r}") from None


def run_reconstruction(
    data,
    model,
    operator: OperatorSpec | None = None,
    *,
    mode: str = "simulate",
    noise_sigma: float | str = 0.01,
    photons: float | str | None = None,
    gain: float | str | None = None,
    offset: float | str = 0.0,
    method: str = "map",
    select: bool = True,
    iterations: int | None = None,
    weight: float | None = None,
    space: str | None = None,
    ensemble: int | None = None,
    chains: int | None = None,
    device: str = "auto",
    seed: int = 0,
    baseline: bool = False,
    name: str = "image",
    rgb: bool = False,
    layer_kwargs: dict | None = None,
    image_kwargs: dict | None = None,
    cancel: Callable[[], bool] | None = None,
    plane_offset: int = 0,
) -> Iterator[Step]:
    """Reconstruct every plane of ``data`` (a layer's array) with a flow prior.

    ``mode="simulate"``: ``data`` is a clean image; it is measured with ``operator`` (noise
    ``noise_sigma``, seed ``seed + plane``), reconstructed, and PSNR/SSIM against it are reported.
    ``mode="measured"``: ``data`` already is the measurement (mask or blur; ``noise_sigma`` may be
    ``"auto"``); NaN/infinite pixels count as missing for a mask, and with no ``operator.missing``
    they are the mask (``missing_from`` in the provenance says how many). ``photons`` (simulate mode, mask or blur):
    photon-limited data, Poisson noise of that expected count at intensity 1 plus ``noise_sigma`` as
    read noise, reconstructed with the Poisson likelihood; None or "" for Gaussian noise. ``gain``
    and ``offset`` (measured mode, mask or blur): the layer holds photon counts, (data - offset) / gain
    (a camera's gain in units per detected photon and its baseline), scaled by ``normalize_counts``
    and reconstructed with the Poisson likelihood; None or "" for ordinary data. Intensities go through ``normalize`` with
    the model's settings and results come back in the input's units. ``iterations``, ``weight``
    ``space`` (where ``map`` optimises: "image" or "latent") and ``ensemble`` (solves averaged
    over the prior's symmetry frames, 1 to 8) default to the model's own; ``chains`` is the number
    of Langevin chains of method ``posterior``. ``select``: map on a mask or blur chooses the weight
    and iterations per plane from a held-out share of its measurements (``solvers.select``).

    Returns a generator (checks are done before it is returned) that yields :class:`Step` and
    returns layer-data tuples: ``<name> measurements`` (simulate mode: the masked or blurred image,
    or the pseudo-inverse for projections), ``<name> reconstruction``, ``<name> log-density``
    (nats/pixel), with method ``posterior`` ``<name> posterior std`` (the samples' per-pixel standard
    deviation, input units: where the measurements leave the image open) and, with
    ``baseline=True``, ``<name> baseline``. ``layer_kwargs`` (scale,
    translate, ...) go to every output, ``image_kwargs`` (e.g. contrast limits) to the image-valued
    ones. ``cancel()`` returning True stops the work within one optimiser evaluation (raising
    ``napari_flow_prior.Cancelled``); so does closing the generator. ``plane_offset``: the index of
    ``data``'s first plane in a larger stack; the per-plane seeds follow it, so one plane cut out of a
    stack gives what the whole stack's run gives for it.
    """
    operator = operator or OperatorSpec()
    if operator.kind not in OPERATORS:
        raise ValueError(f"operator must be one of {OPERATORS}, got {operator.kind!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if space is not None and (space not in SPACES or method != "map"):
        raise ValueError(f"space must be one of {SPACES} and is for method 'map' only "
                         f"(got space={space!r}, method={method!r})")
    if method == "mle" and operator.kind == "blur":
        raise ValueError("method 'mle' cannot undo a blur (it only keeps A x = y); use 'map' or 'latent'")
    if mode == "measured" and operator.kind == "cs":
        raise ValueError("compressed sensing works in simulate mode only: a layer cannot hold "
                         "projection measurements")
    if isinstance(noise_sigma, str):
        noise_sigma = noise_sigma.strip().lower()
        if noise_sigma != "auto":
            try:
                noise_sigma = float(noise_sigma)
            except ValueError:
                raise ValueError(f"noise sigma must be a number or 'auto', got {noise_sigma!r}") from None
    if noise_sigma == "auto" and mode == "simulate":
        raise ValueError("noise sigma 'auto' estimates the noise of measured data; give a number "
                         "to simulate measurements with")
    if noise_sigma != "auto" and not (0 <= float(noise_sigma) < 1):
        raise ValueError(f"noise sigma must be in [0, 1) (image scaled to [0, 1]), got {noise_sigma}")
    if operator.kind == "mask" and operator.missing is None and not 0 <= operator.missing_fraction < 1:
        raise ValueError(f"missing fraction must be in [0, 1), got {operator.missing_fraction}")
    if operator.kind == "cs" and not 0 < operator.ratio <= 1:
        raise ValueError(f"ratio m/n must be in (0, 1], got {operator.ratio}")
    if operator.kind == "blur" and operator.psf is None and not operator.sigma > 0:
        raise ValueError(f"blur sigma must be > 0, got {operator.sigma}")
    if iterations is not None and iterations <= 0:
        iterations = None
    if ensemble is not None:
        check_ensemble(ensemble)
    if chains is not None and method != "posterior":
        raise ValueError(f"chains is for method 'posterior', not {method!r}")
    check_posterior(chains)
    model = resolve_model(model)
    shape = np.shape(data)
    layout = layout_for(shape, rgb, _model_channels(model), f"layer {name!r}", _sized(model))
    missing = as_missing(operator.missing, layout)
    holes = None
    if mode == "measured" and operator.kind == "mask" and missing is None:
        missing = nonfinite_missing(data, layout)  # (N, H, W): the layer's NaN/inf pixels are the mask
        holes = int(missing.sum())
        if not holes:
            raise ValueError("measured data needs its missing pixels: draw them in a Labels or Shapes layer "
                             "and choose it as the mask, or leave them NaN in the layer (a random mask is "
                             "for simulate mode)")
        missing = missing if layout.lead else missing[0]
    if missing is not None and missing.all():
        raise ValueError("the mask marks every pixel as missing: nothing to reconstruct from")
    photons = _optional_number(photons, "photons", "a number > 0 or empty (Gaussian noise)")
    gain = _optional_number(gain, "camera gain", "a number > 0 (units per photon) or empty (not photon counts)")
    offset = _optional_number(offset, "camera offset", "a number (the baseline, in the layer's units)") or 0.0
    if gain is not None:
        if not 0 < gain < float("inf"):
            raise ValueError(f"camera gain must be a number > 0 (units per detected photon), got {gain}")
        if mode != "measured" or operator.kind == "cs":
            raise ValueError("camera gain (photon counts) is for measured data with a mask or a blur; "
                             "in simulate mode give photons")
    if check_photons(photons) is not None:
        if mode != "simulate" or operator.kind == "cs":
            raise ValueError("photons (Poisson noise) works in simulate mode, with a mask or a blur: measured "
                             "counts would have to be on the [0, 1] scale as counts / photons, which the "
                             "intensity normalisation does not keep")
    from .. import available_devices

    if device not in available_devices():
        raise ValueError(f"device {device!r} is not available here; choose one of {available_devices()}")
    return _reconstruction_steps(data, model, operator, layout, missing, mode=mode, noise_sigma=noise_sigma,
                                 photons=photons, counts=None if gain is None else (gain, offset), method=method, select=select, iterations=iterations, weight=weight, space=space,
                                 ensemble=ensemble, chains=chains, device=device, seed=int(seed), baseline=baseline, name=name, layer_kwargs=layer_kwargs,
                                 image_kwargs=image_kwargs, cancel=cancel, plane_offset=int(plane_offset), holes=holes)


def _reconstruction_steps(data, model, spec: OperatorSpec, layout: _Layout, missing, *, mode, noise_sigma,
                          photons, counts, method, select, iterations, weight, space, ensemble, chains, device, seed, baseline,
                          name, layer_kwargs, image_kwargs, cancel, plane_offset, holes=None):
    from .. import pipeline

    stack = layout.canonical(data)
    jobs = layout.jobs()
    n_jobs = len(jobs)
    recon = np.zeros_like(stack)
    meas = np.zeros_like(stack) if mode == "simulate" else None
    base = np.zeros_like(stack) if baseline else None
    spread = np.zeros_like(stack) if method == "posterior" else None
    density = np.zeros((layout.n_planes, *layout.hw), np.float32)
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "baseline_psnr": [], "baseline_ssim": []}
    first_params: dict = {}
    noise_used: list[float] = []
    baseline_name = None
    seconds = 0.0
    per_job = None  # optimiser iterations per plane, known after the first Progress
    gain, offset = counts if counts is not None else (None, 0.0)
    for j, (n, c) in enumerate(jobs):
        plane = stack[n] if c is None else stack[n, c:c + 1]
        if plane.shape[0] == 1:
            plane = plane[0]
        plane_missing = None
        if missing is not None:
            plane_missing = missing if missing.ndim == 2 else missing[n]
        op = spec.build(plane.shape, seed + plane_offset + n, plane_missing)
        if mode == "simulate" and not np.isfinite(plane).all():
            raise ValueError(f"layer {name!r} has NaN or infinite pixels; simulate mode needs a clean image")
        if mode == "measured" and op.kind != "mask" and not np.isfinite(plane).all():
            raise ValueError(f"layer {name!r} has NaN or infinite pixels; only a mask can treat them as missing")
        label = plane_text(layout, n, c)
        job = pipeline.run(plane, op, model, simulate=mode == "simulate", noise_sigma=noise_sigma, photons=photons,
                           gain=gain, offset=offset, noise_seed=seed + j + plane_offset * (n_jobs // layout.n_planes),
                           baseline=baseline, method=method, select="auto" if select else "off",
                           iterations=iterations, weight=weight, space=space,
                           ensemble=ensemble, chains=chains, device=device, seed=seed, cancel=cancel)
        try:
            while True:
                try:
                    p = next(job)
                except StopIteration as stop:
                    outcome = stop.value
                    break
                per_job = per_job or max(int(p.total), 1)  # planes' totals differ with selection: share of each
                done = j * per_job + min(round(per_job * int(p.iteration) / max(int(p.total), 1)), per_job)
                text = f"{label + ' · ' if label else ''}iteration {p.iteration}/{p.total} · loss {p.loss:.4g}"
                yield Step(done, per_job * n_jobs, text, plane=n, n_planes=layout.n_planes, loss=float(p.loss))
        finally:
            job.close()
        result, op = outcome.result, outcome.op
        seconds += result.seconds
        noise_used.append(float(result.noise_sigma) if result.noise_sigma is not None else float("nan"))
        if not first_params:
            first_params = {k: v for k, v in result.params.items() if k not in ("model", "model_sha256")}
        sl = (n, slice(None)) if c is None else (n, slice(c, c + 1))
        recon[sl] = outcome.reconstruction.reshape(recon[sl].shape)
        density[n] += result.log_density
        if spread is not None:
            spread[sl] = outcome.std.reshape(spread[sl].shape)
        if meas is not None:
            meas[sl] = outcome.measured.reshape(meas[sl].shape)
        for key, value in outcome.scores().items():
            scores[key].append(value)
        if base is not None:
            baseline_name = outcome.baseline_name
            base[sl] = outcome.baseline.reshape(base[sl].shape)

    metrics = {k: float(np.mean(v)) for k, v in scores.items() if v}
    info = {
        "source_layer": name,
        "mode": mode,
        "operator": spec.summary(),
        "operator_first_plane": op.describe(),
        "method": method,
        "params": first_params,
        "noise_sigma": noise_used[0] if len(set(noise_used)) == 1 else noise_used,
        "seed": seed,
        "plane_seeds": "seed + plane index" if layout.n_planes > 1 or plane_offset else None,
        "plane_offset": plane_offset or None,
        "planes": layout.n_planes,
        "channel_by_channel": layout.split,
        "device": result.device,
        "seconds": round(seconds, 3),
        "metrics": metrics,
    }
    if baseline_name:
        info["baseline"] = baseline_name
    if holes is not None:
        info["missing_from"] = f"{holes} NaN/infinite pixel(s) of the layer taken as the missing pixels"
    spatial = clean_kwargs(layer_kwargs)
    shown = {**spatial, **{k: v for k, v in (image_kwargs or {}).items() if v is not None}}
    rgb_kw = {"rgb": True} if layout.rgb else {}
    layers: list[LayerData] = []
    hidden = {"visible": False}  # only the reconstruction is shown; the rest is a click (or 'side by side') away
    if meas is not None:
        what = {"mask": "masked image (missing pixels at the low intensity)", "blur": "blurred image",
                "cs": "pseudo-inverse A^+ y of the projections"}[spec.kind]
        layers.append((layout.restore_shape(meas), {
            "name": f"{name} measurements", **shown, **rgb_kw, **hidden,
            "metadata": provenance(model, {**info, "output": "measurements", "content": what})}, "image"))
    layers.append((layout.restore_shape(recon), {
        "name": f"{name} reconstruction", **shown, **rgb_kw,
        "metadata": provenance(model, {**info, "output": "reconstruction",
                                       "content": "reconstruction, input units"})}, "image"))
    density_map = density.reshape(*layout.lead, *layout.hw)
    layers.append((density_map, {
        "name": f"{name} log-density", **spatial, "colormap": DENSITY_COLORMAP, **hidden,
        "contrast_limits": density_limits(density_map),
        "metadata": provenance(model, {**info, "output": "log-density", "content": "log-density of the reconstruction",
                                       "unit": DENSITY_UNIT})}, "image"))
    if spread is not None:
        layers.append((layout.restore_shape(spread), {
            "name": f"{name} posterior std", **spatial, **(rgb_kw or {"colormap": "magma"}), **hidden,
            "metadata": provenance(model, {**info, "output": "posterior std",
                                           "content": "per-pixel standard deviation of the posterior "
                                           "samples, input units"})}, "image"))
    if base is not None:
        layers.append((layout.restore_shape(base), {
            "name": f"{name} baseline", **shown, **rgb_kw, **hidden,
            "metadata": provenance(model, {**info, "output": "baseline",
                                           "content": f"classical baseline {baseline_name}"})}, "image"))
    return layers


# ---------------------------------------------------------------------------------- density
def run_density(data, model, *, device: str = "auto", name: str = "image", rgb: bool = False,
                layer_kwargs: dict | None = None) -> Iterator[Step]:
    """Per-pixel log-density (nats/pixel) of every plane of a layer under ``model``.

    Returns a generator yielding :class:`Step` per plane and returning one layer-data tuple,
    ``<name> log-density`` (summed over channels; NaN pixels are filled with the plane's median
    before scoring)."""
    model = resolve_model(model)
    layout = layout_for(np.shape(data), rgb, _model_channels(model), f"layer {name!r}", _sized(model))
    from .. import available_devices

    if device not in available_devices():
        raise ValueError(f"device {device!r} is not available here; choose one of {available_devices()}")
    return _density_steps(data, model, layout, device, name, layer_kwargs)


def _density_steps(data, model, layout, device, name, layer_kwargs):
    import napari_flow_prior as nfp

    stack = layout.canonical(data)
    jobs = layout.jobs()
    density = np.zeros((layout.n_planes, *layout.hw), np.float32)
    for j, (n, c) in enumerate(jobs):
        plane = stack[n] if c is None else stack[n, c:c + 1]
        finite = np.isfinite(plane)
        if not finite.any():
            raise ValueError(f"layer {name!r}: plane {n + 1} has no finite pixel")
        if not finite.all():
            plane = np.where(finite, plane, np.median(plane[finite]))
        x01, _ = nfp.normalize(plane, model=model)
        density[n] += nfp.log_density(x01, model, device=device)
        yield Step(j + 1, len(jobs), plane_text(layout, n, c) or "log-density", plane=n,
                   n_planes=layout.n_planes)
    meta = provenance(model, {"source_layer": name, "output": "log-density", "content": "per-pixel log-density",
                               "unit": DENSITY_UNIT, "device": device,
                               "mean": float(density.mean())})
    return [(density.reshape(*layout.lead, *layout.hw),
             {"name": f"{name} log-density", **clean_kwargs(layer_kwargs), "colormap": DENSITY_COLORMAP,
              "contrast_limits": density_limits(density), "metadata": meta}, "image")]


# ---------------------------------------------------------------------------------- training
MODEL_SIZES = {
    "tiny (levels 2, 2 steps, 16 hidden)": dict(levels=2, steps_per_level=2, hidden=16),
    "small (levels 3, 4 steps, 32 hidden)": dict(levels=3, steps_per_level=4, hidden=32),
    "standard (levels 3, 8 steps, 64 hidden)": dict(levels=3, steps_per_level=8, hidden=64),
}


def run_training(images: list, *, steps: int = 500, size: str | dict = "small (levels 3, 4 steps, 32 hidden)",
                 kind: str = "glow", patch: int = 32, batch: int = 16, init=None, device: str = "auto",
                 seed: int = 0, val_every: int | None = None, channels: int = 1, rgb: list[bool] | None = None):
    """Train a prior (or fine-tune ``init``: a model, name or path) on layer arrays.

    Grayscale layers: every plane of a stack is an image. RGB layers (``rgb[i]`` True, shape
    ``(..., H, W, 3|4)``, alpha dropped): each colour channel is an image for a 1-channel model (as
    the Reconstruct widget runs such a model channel by channel), the colour image for a 3-channel one.
    Returns ``train_steps``'s generator: it yields ``TrainProgress`` (step, loss, live validation
    bits/dim) and returns the trained model (save it with :func:`save_user_model`)."""
    from ..training import TrainConfig, train_steps

    if not images:
        raise ValueError("choose at least one image layer to train on")
    arch = MODEL_SIZES[size] if isinstance(size, str) else dict(size)
    if init is not None:
        init = resolve_model(init)
        channels = init.channels
        arch = {"levels": init.architecture.get("levels", 3),
                "steps_per_level": init.architecture.get("steps", 8),
                "hidden": init.architecture.get("hidden", 64)}
        kind = init.architecture.get("kind", kind)
    rgb = list(rgb) if rgb is not None else [False] * len(images)
    if len(rgb) != len(images):
        raise ValueError(f"rgb has {len(rgb)} flags for {len(images)} images")
    if channels not in (1, 3):
        raise ValueError(f"the plugin trains 1-channel (grayscale) or 3-channel (RGB) models, not {channels}")
    arrays = []
    for i, (image, is_rgb) in enumerate(zip(images, rgb)):
        array = np.asarray(image)
        if array.ndim < 2:
            raise ValueError(f"image {i + 1} has shape {array.shape}; an image needs 2 dimensions")
        if not np.isfinite(array).all():
            raise ValueError(f"image {i + 1} has NaN or infinite pixels")
        if is_rgb:
            if array.ndim < 3 or array.shape[-1] not in (3, 4):
                raise ValueError(f"image {i + 1}: an RGB layer needs a last axis of 3 or 4, got shape {array.shape}")
            array = np.moveaxis(array[..., :3], -1, -3)  # (..., 3, H, W)
            array = array.reshape(-1, *array.shape[-2:]) if channels == 1 else array.reshape(-1, 3, *array.shape[-2:])
        elif channels == 3:
            raise ValueError(f"image {i + 1} is a grayscale layer but the model has 3 (RGB) channels; "
                             "train on RGB layers or start from a 1-channel model")
        else:
            array = array.reshape(-1, *array.shape[-2:])
        arrays.append(array)
    config = TrainConfig(kind=kind, patch=patch, batch=batch, steps=int(steps), device=device, seed=seed,
                         channels=channels, channel_axis=1 if channels == 3 else None,
                         warmup=min(200, max(1, steps // 10)),
                         val_every=val_every or max(1, min(200, steps // 5)),
                         checkpoint_every=10**9, **arch)
    try:
        return train_steps(arrays, config, init=init)
    except ValueError as err:
        raise ValueError(f"cannot train: {err}") from None


def save_user_model(model, name: str, domain: str = "", folder: str | Path | None = None,
                    overwrite: bool = False) -> Path:
    """Save a trained model as ``<user models folder>/<name>.safetensors`` (it then shows up in
    ``available_models()`` and the model choosers). A shipped model's name is refused (the shipped
    model would hide it), and so is an existing file unless ``overwrite``."""
    from ..flows import save_model
    from ..flows.files import shipped_models_dir, user_models_dir

    name = name.strip()
    if not name or any(ch in name for ch in '/\\:*?"<>|') or name.startswith("."):
        raise ValueError(f"model name {name!r} is not a valid file name")
    if (shipped_models_dir() / f"{name}.safetensors").is_file():
        raise ValueError(f"{name!r} is the name of a shipped model; choose another name")
    folder = Path(folder) if folder is not None else user_models_dir()
    path = folder / f"{name}.safetensors"
    if path.exists() and not overwrite:
        raise ValueError(f"a model named {name!r} already exists ({path}); choose another name, or "
                         "replace it")
    return save_model(model, path, domain=domain or name)


__all__ = ["MIN_SIDE", "OperatorSpec", "Step", "model_card", "resolve_model", "run_density", "run_reconstruction",
           "run_to_end", "run_training", "save_user_model", "layout_for"]
