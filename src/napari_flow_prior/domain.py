"""Is an image within a prior's domain? The typical log-density of a model's validation images.

A flow prior is only a good prior for images like those it was trained on. Far outside that
domain a likelihood-regularized solve still finds an image the prior likes, but it is not the
image that was measured: the digits prior, deblurring a 28x28 photograph, paints pen strokes into
the parts of the image the blur hides (13.7 dB, where Wiener reaches 26.7).

The check compares a reconstruction's mean log-density per dimension with the model's
validation images: ``typical_log_density`` (stored in the model file's ``metrics``) records their
1st percentile, and a reconstruction more than ``MARGIN_BITS`` bits per dimension below it is
out of the prior's domain. The solvers then return a classical reconstruction instead
(``baselines.fallback``; see ``solvers.reconstruct_steps``, ``domain_check``). A reconstruction
is smoother, hence more likely, than the truth, so the check is loose for images of the domain;
a flow can give high likelihood to simple images of other domains (natural photographs under
the medical prior are as likely as its own test crops), so passing the check is not proof that
the prior fits.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .flows import FlowModel

MARGIN_BITS = 1.0  # bits per dimension below the typical range that count as outside the domain
QUANTILE = 0.01  # the low quantile of the validation images' mean log-density that is recorded


def mean_log_density(log_density_map: np.ndarray, channels: int) -> float:
    """Mean log-density per dimension (nats) of a (H, W) map summed over ``channels``."""
    return float(np.mean(log_density_map)) / channels


@torch.no_grad()
def typical_log_density(model: FlowModel, images: Sequence[np.ndarray], device="cpu") -> dict:
    """The spread of the mean log-density per dimension (nats, intensities in [0, 1]) over
    validation ``images`` ((C, H, W) or (H, W) arrays in [0, 1]), for the model file's
    ``metrics``: ``{"q01", "median", "n_images"}``."""
    if not len(images):
        raise ValueError("typical_log_density needs at least one validation image")
    values = []
    was_training = model.training
    model.eval()
    for image in images:
        x = torch.as_tensor(np.asarray(image, np.float32), device=device, dtype=model.dtype)
        x = x.reshape(1, model.channels, *x.shape[-2:])
        values.append(mean_log_density(model.log_density_map(x)[0, 0].cpu().numpy(), model.channels))
    model.train(was_training)
    values = np.asarray(values)
    return {"q01": float(np.quantile(values, QUANTILE)), "median": float(np.median(values)),
            "n_images": int(len(values)), "unit": "nats per dimension, intensities in [0, 1]"}


def domain_report(log_density_map: np.ndarray, model: FlowModel) -> dict:
    """How a reconstruction's log-density compares with the model's validation images:
    ``{"log_density", "threshold", "in_domain"}``; ``threshold`` and ``in_domain`` are None for a
    model file without ``typical_log_density`` (files saved before it was recorded)."""
    value = mean_log_density(log_density_map, model.channels)
    typical = (model.metadata.get("metrics") or {}).get("typical_log_density") or {}
    if "q01" not in typical:
        return {"log_density": value, "threshold": None, "in_domain": None}
    threshold = float(typical["q01"]) - MARGIN_BITS * math.log(2)
    return {"log_density": value, "threshold": threshold, "in_domain": bool(value >= threshold)}
