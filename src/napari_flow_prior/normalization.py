"""Intensity scaling to the [0, 1] range the models work on, and the way back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .flows import as_model

DEFAULT = {"low_pct": 1.0, "high_pct": 99.8, "clip": True}


@dataclass(frozen=True)
class Scaling:
    """x01 = (x - low) / (high - low), per channel; ``restore`` maps back to the input's units."""

    low: np.ndarray
    high: np.ndarray

    def apply(self, image: np.ndarray, clip: bool = False) -> np.ndarray:
        out = (np.asarray(image, np.float32) - self.low) / (self.high - self.low)
        return np.clip(out, 0, 1) if clip else out

    def restore(self, image01: np.ndarray) -> np.ndarray:
        return np.asarray(image01, np.float32) * (self.high - self.low) + self.low

    def restore_spread(self, spread01: np.ndarray) -> np.ndarray:
        """A spread (a standard deviation) on the [0, 1] scale in the input's units: no offset."""
        return np.asarray(spread01, np.float32) * (self.high - self.low)


def percentile_scaling(image: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.8,
                       observed: np.ndarray | None = None, channel_axis: int | None = None) -> Scaling:
    """Percentiles of the (observed, finite) pixels, per channel when ``channel_axis`` is given.

    A constant image gets high = low + 1, so it maps to 0 instead of dividing by zero.
    """
    image = np.asarray(image, np.float32)
    if not 0 <= low_pct < high_pct <= 100:
        raise ValueError(f"need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}")
    keep = np.isfinite(image)
    if observed is not None:
        observed = np.asarray(observed, bool)
        try:
            keep &= np.broadcast_to(observed, image.shape)
        except ValueError:
            raise ValueError(f"observed has shape {observed.shape}, which does not fit the image's "
                             f"{image.shape}") from None
    if channel_axis is None:
        channels = [(image, keep)]
    else:
        channels = list(zip(np.moveaxis(image, channel_axis, 0), np.moveaxis(keep, channel_axis, 0)))
    lows, highs = [], []
    for values, mask in channels:
        values = values[mask]
        if values.size == 0:
            raise ValueError("no observed, finite pixel to compute the intensity range from")
        lo, hi = np.percentile(values, [low_pct, high_pct])
        if hi <= lo:
            hi = lo + 1.0
        lows.append(lo)
        highs.append(hi)
    shape = [1] * image.ndim
    if channel_axis is not None:
        shape[channel_axis] = -1
    return Scaling(np.float32(lows).reshape(shape), np.float32(highs).reshape(shape))


def counts_scaling(image: np.ndarray, gain: float, offset: float = 0.0, high_pct: float = 99.8,
                   observed: np.ndarray | None = None) -> tuple[Scaling, float]:
    """The scaling of photon-count data to [0, 1] that keeps its Poisson statistics, and the photon
    count at 1: counts = (image - offset) / gain (``gain``: input units per detected photon,
    ``offset``: the camera's baseline), divided by ``photons``, the ``high_pct`` percentile of the
    (observed, finite) counts. Unlike ``percentile_scaling`` the zero stays at zero photons, so
    y * photons are the counts that ``Operator.measure(noise="poisson")`` models."""
    gain, offset = float(gain), float(offset)
    if not 0 < gain < np.inf:
        raise ValueError(f"gain must be a number > 0 (input units per detected photon), got {gain}")
    if not np.isfinite(offset):
        raise ValueError(f"offset must be a finite number, got {offset}")
    counts = (np.asarray(image, np.float64) - offset) / gain
    keep = np.isfinite(counts)
    if observed is not None:
        keep &= np.broadcast_to(np.asarray(observed, bool), counts.shape)
    if not keep.any():
        raise ValueError("no observed, finite pixel to compute the photon count from")
    photons = float(np.percentile(counts[keep], high_pct))
    if not photons > 0:
        raise ValueError(f"the brightest pixels hold {photons:.3g} photons after subtracting the offset "
                         f"{offset:g} and dividing by the gain {gain:g}: check both")
    return Scaling(np.float32(offset), np.float32(offset + gain * photons)), photons


def normalize(image, observed=None, model=None) -> tuple[np.ndarray, Scaling]:
    """Scale an image to the [0, 1] range of ``model`` (its ``normalization`` metadata: percentiles
    over the observed, finite pixels), returning the scaled image and the ``Scaling`` whose
    ``restore`` maps results back to the input's units. The input is never modified. A (C, H, W)
    image for a C-channel model is scaled channel by channel, as the trainer scales its data."""
    norm = dict(DEFAULT)
    channel_axis = None
    if model is not None:
        model = as_model(model)
        norm.update(model.metadata.get("normalization") or {})
        shape = np.shape(image)
        if model.channels > 1 and len(shape) == 3 and shape[0] == model.channels:
            channel_axis = 0
    scaling = percentile_scaling(image, norm["low_pct"], norm["high_pct"], observed=observed,
                                 channel_axis=channel_axis)
    scaled = scaling.apply(image, clip=bool(norm.get("clip", True)))
    if observed is not None:
        scaled = np.where(np.broadcast_to(observed, scaled.shape), scaled, 0).astype(np.float32)
    return scaled, scaling


def normalize_counts(image, gain: float, offset: float = 0.0, observed=None,
                     model=None) -> tuple[np.ndarray, Scaling, float]:
    """Scale photon-count data (e.g. a camera image: ``gain`` input units per detected photon, on a
    baseline ``offset``) to [0, 1] for ``reconstruct(..., photons=photons)``: returns the scaled
    image (counts / photons, not clipped, unobserved pixels 0), the ``Scaling`` back to the input's
    units and ``photons``, the count at intensity 1 (the model's upper normalisation percentile of
    the counts). The input is never modified."""
    norm = dict(DEFAULT)
    if model is not None:
        norm.update(as_model(model).metadata.get("normalization") or {})
    scaling, photons = counts_scaling(image, gain, offset, norm["high_pct"], observed=observed)
    scaled = scaling.apply(image)
    if observed is not None:
        scaled = np.where(np.broadcast_to(observed, scaled.shape), scaled, 0)
    return np.asarray(scaled, np.float32), scaling, photons
