"""One image, from the user's data to everything a reconstruction reports.

``run`` owns the job that the plugin's Reconstruct widget, ``napari-flow-prior reconstruct`` and
``batch`` all do: scale the image to the model's [0, 1] range (or photon counts by the camera's
gain), measure it (``simulate=True``: the image is the ground truth) or take it as measured (NaN
pixels of a mask's measurements are missing ones), solve, map the result back to the input's
units, and optionally run the matching classical baseline; the returned ``Outcome`` holds the
arrays, the scores against the truth, and the provenance. The input is never modified.

    outcome = run_to_end(pipeline.run(image, op, "nuclei", simulate=True, noise_sigma=0.01, baseline=True))
    outcome.reconstruction, outcome.scores()   # input units; {'psnr': ..., 'baseline_psnr': ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from . import metrics
from . import operators as ops
from .baselines import matching_baseline, run_baseline
from .flows import FlowModel, as_model
from .likelihood import effective_sigma
from .normalization import Scaling, normalize, normalize_counts
from .solvers import Progress, Result, reconstruct_steps


@dataclass
class Outcome:
    """A finished job. Arrays on the model's [0, 1] scale: ``y`` (the measurements solved from),
    ``truth`` (simulate only), ``result.image``, ``baseline_estimate``; in the input's units:
    ``reconstruction``, ``baseline`` and ``measured``. ``op`` is the operator solved with (a mask
    narrowed to the finite pixels)."""

    result: Result
    op: ops.LinearOperator
    y: np.ndarray
    scaling: Scaling
    truth: np.ndarray | None
    reconstruction: np.ndarray
    photons: float | None = None
    baseline_name: str | None = None
    baseline_estimate: np.ndarray | None = None
    baseline: np.ndarray | None = None

    @property
    def measured(self) -> np.ndarray:
        """What was measured, as an image in input units: y itself for a mask or blur, the
        pseudo-inverse A^+ y for projections."""
        shown = self.y if self.op.kind in ("mask", "blur") else self.op.pseudo_inverse(self.y)
        return self.scaling.restore(np.asarray(shown)).reshape(self.op.shape)

    @property
    def std(self) -> np.ndarray | None:
        """Method posterior: the samples' per-pixel standard deviation, input units."""
        return None if self.result.std is None else self.scaling.restore_spread(self.result.std)

    def scores(self) -> dict[str, float]:
        """PSNR and SSIM (flow, and baseline if run) against the truth on the [0, 1] scale, the
        estimates clipped to [0, 1]; empty for measured data."""
        if self.truth is None:
            return {}
        found = {"psnr": self.result.image}
        if self.baseline_estimate is not None:
            found["baseline_psnr"] = self.baseline_estimate
        out = {}
        for key, estimate in found.items():
            estimate = np.clip(estimate, 0, 1)
            out[key] = metrics.psnr(self.truth, estimate)
            out[key.replace("psnr", "ssim")] = metrics.ssim(self.truth, estimate)
        return out

    def provenance(self) -> dict:
        """What made the result: the solver's settings (without the operator's and model's entries,
        recorded on their own), the noise, the intensity scaling and the baseline."""
        params = {k: v for k, v in self.result.params.items() if k not in ("operator", "model", "model_sha256")}
        info = {"operator": self.op.describe(), "params": params, "noise_sigma": self.result.noise_sigma,
                "device": self.result.device, "seconds": round(self.result.seconds, 3),
                "normalization": {"low": self.scaling.low.ravel().tolist(), "high": self.scaling.high.ravel().tolist()}}
        if self.photons is not None:
            info["photons"] = self.photons
        if self.baseline_name:
            info["baseline"] = self.baseline_name
        return info


def run(image, op: ops.LinearOperator, model: FlowModel | str, *, simulate: bool = False,
        noise_sigma: float | str = 0.01, photons: float | None = None, gain: float | None = None,
        offset: float = 0.0, noise_seed: int | None = None, baseline: bool = False,
        **solve) -> Iterator[Progress]:
    """Reconstruct one image (``op.shape``: (H, W), or (C, H, W) for a C-channel model) in the
    input's units; yields the solver's ``Progress`` and returns an ``Outcome``.

    ``simulate``: ``image`` is the ground truth, scaled by ``normalize`` and measured with
    ``op.measure`` (noise ``noise_sigma``, seeded ``noise_seed``, default the solve's ``seed``;
    ``photons``: Poisson noise of that count at intensity 1 plus ``noise_sigma`` as read noise).
    Otherwise ``image`` is the measurement: a mask's NaN/inf pixels are missing too, and ``gain``
    (input units per detected photon, on the baseline ``offset``) marks photon counts, scaled by
    ``normalize_counts`` and solved with the Poisson likelihood. ``baseline``: also run the
    operator's matching classical method. ``solve`` goes to ``reconstruct_steps`` (method, seed,
    device, cancel, iterations, ...)."""
    model = as_model(model)
    raw = np.asarray(image)
    if tuple(raw.shape) != tuple(op.shape):
        raise ValueError(f"the image has shape {raw.shape} but the operator is for {tuple(op.shape)}")
    finite = np.isfinite(raw)
    truth = None
    if simulate:
        if not finite.all():
            raise ValueError(f"the image has {int((~finite).sum())} NaN or infinite pixels; simulating "
                             "measurements needs a clean ground-truth image")
        if gain is not None:
            raise ValueError("gain (measured photon counts) is for measured data; to simulate photon noise give photons")
        truth, scaling = normalize(raw, model=model)
        seed = solve.get("seed", 0) if noise_seed is None else noise_seed
        y = op.measure(truth, noise_sigma=float(noise_sigma), seed=seed,
                       noise="gaussian" if photons is None else "poisson", photons=photons)
    else:
        if photons is not None:
            raise ValueError("photons is for simulated data; for measured photon counts give the camera's gain")
        if not finite.all() and op.kind != "mask":
            raise ValueError(f"the image has {int((~finite).sum())} NaN or infinite pixels; only a mask can "
                             "treat them as missing pixels")
        if op.kind == "mask":
            op = ops.Mask(np.broadcast_to(op.observed_full, raw.shape) & finite, shape=op.shape)
        observed = op.observed_full if op.kind == "mask" else None
        clean = np.where(finite, raw, 0)
        if gain is None:
            y, scaling = normalize(clean, observed=observed, model=model)
        else:  # photon counts: y * photons are the counts, for the Poisson likelihood
            y, scaling, photons = normalize_counts(clean, gain, offset, observed=observed, model=model)
    result = yield from reconstruct_steps(y, op, model, noise_sigma=noise_sigma, photons=photons, **solve)
    reconstruction = scaling.restore(result.image).reshape(op.shape)
    if not simulate and result.method == "mle" and op.kind == "mask":
        # A x = y exactly: the observed pixels are the input's own values (also where the
        # intensity normalisation clipped them)
        reconstruction = np.where(op.observed_full, raw, reconstruction).astype(np.float32)
    outcome = Outcome(result=result, op=op, y=y, scaling=scaling, truth=truth, reconstruction=reconstruction,
                      photons=photons)
    if baseline:
        outcome.baseline_name = matching_baseline(op)
        sigma = effective_sigma(y, result.noise_sigma if result.noise_sigma is not None else 0.01, photons, op)
        outcome.baseline_estimate = run_baseline(outcome.baseline_name, y, op, noise_sigma=sigma)
        outcome.baseline = scaling.restore(outcome.baseline_estimate).reshape(op.shape)
    return outcome
