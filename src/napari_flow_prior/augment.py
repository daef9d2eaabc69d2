"""Training augmentations that mimic how microscopes and scanners differ (issue 29, item 2).

Off by default: ``AugmentConfig()`` is the identity, and nothing in the library applies it unless
asked. ``AugmentConfig.microscopy()`` turns on the issue's ranges: random zoom 0.5x to 2x, flips,
rot90, intensity gamma and offset, a linear background gradient, Poisson-Gaussian noise and a
Gaussian PSF blur. ``augment`` works on one float image in [0, 1] and returns float32 in [0, 1] of
the same shape; ``augment_batch`` on (N, H, W) or (N, 1, H, W) arrays. Pure numpy / scipy, seeded
by the caller's ``numpy.random.Generator``.

    from napari_flow_prior.augment import AugmentConfig, augment_batch
    cfg = AugmentConfig.microscopy()
    batch = augment_batch(batch, cfg, np.random.default_rng(step))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class AugmentConfig:
    zoom: tuple[float, float] | None = None      # log-uniform zoom range, e.g. (0.5, 2.0)
    flips: bool = False                          # random horizontal / vertical flips
    rot90: bool = False                          # random multiples of 90 degrees (square images)
    gamma: tuple[float, float] | None = None     # log-uniform gamma range, x -> x ** g
    offset: tuple[float, float] | None = None    # uniform additive offset range (then rescaled)
    gradient: float = 0.0                        # max amplitude of a linear background ramp
    blur: tuple[float, float] | None = None      # uniform PSF sigma range, pixels
    photons: tuple[float, float] | None = None   # log-uniform photons at intensity 1 (shot noise)
    read_noise: float = 0.0                      # max Gaussian read noise (fraction of the range)
    p: float = 1.0                               # probability that each enabled step is applied

    @classmethod
    def microscopy(cls) -> "AugmentConfig":
        return cls(zoom=(0.5, 2.0), flips=True, rot90=True, gamma=(0.6, 1.6), offset=(-0.05, 0.15),
                   gradient=0.2, blur=(0.0, 2.0), photons=(20.0, 2000.0), read_noise=0.02, p=0.5)

    @property
    def enabled(self) -> bool:
        return any([self.zoom, self.flips, self.rot90, self.gamma, self.offset, self.gradient,
                    self.blur, self.photons, self.read_noise])


def _zoom_to(x: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    """Zoom by ``f`` and crop (random position) or reflect-pad back to the input shape."""
    h, w = x.shape
    z = ndi.zoom(x, f, order=1, mode="reflect", grid_mode=True)
    zh, zw = z.shape
    if zh < h or zw < w:
        z = np.pad(z, ((0, max(h - zh, 0)), (0, max(w - zw, 0))), mode="symmetric")
        zh, zw = z.shape
    r = int(rng.integers(0, zh - h + 1))
    c = int(rng.integers(0, zw - w + 1))
    return z[r:r + h, c:c + w]


def augment(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"augment expects one 2-D image, got shape {x.shape}")
    if not cfg.enabled:
        return x.astype(np.float32)

    def on() -> bool:
        return bool(rng.random() < cfg.p)

    if cfg.zoom and on():
        lo, hi = np.log(cfg.zoom[0]), np.log(cfg.zoom[1])
        x = _zoom_to(x, float(np.exp(rng.uniform(lo, hi))), rng)
    if cfg.flips:
        if rng.random() < 0.5:
            x = x[:, ::-1]
        if rng.random() < 0.5:
            x = x[::-1, :]
    if cfg.rot90 and x.shape[0] == x.shape[1]:
        x = np.rot90(x, int(rng.integers(4)))
    if cfg.blur and on():
        s = rng.uniform(*cfg.blur)
        if s > 0:
            x = ndi.gaussian_filter(x, s, mode="reflect")
    if cfg.gamma and on():
        x = np.clip(x, 0, 1) ** float(np.exp(rng.uniform(np.log(cfg.gamma[0]), np.log(cfg.gamma[1]))))
    if cfg.gradient and on():
        h, w = x.shape
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        x = x + rng.uniform(0, cfg.gradient) * (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5) + 0.5)
    if cfg.offset and on():
        x = x + rng.uniform(*cfg.offset)
    if cfg.photons and on():
        ph = float(np.exp(rng.uniform(np.log(cfg.photons[0]), np.log(cfg.photons[1]))))
        x = rng.poisson(np.clip(x, 0, None) * ph) / ph
    if cfg.read_noise and on():
        x = x + rng.uniform(0, cfg.read_noise) * rng.standard_normal(x.shape)
    # back to [0, 1] by the same percentile scaling as the training data
    lo, hi = np.percentile(x, [1.0, 99.8])
    return np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)


def augment_batch(batch: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """``augment`` on every image of (N, H, W) or (N, 1, H, W); returns the same shape, float32."""
    b = np.asarray(batch)
    if not cfg.enabled:
        return b.astype(np.float32)
    flat = b.reshape(-1, *b.shape[-2:])
    return np.stack([augment(im, cfg, rng) for im in flat]).reshape(b.shape).astype(np.float32)
