"""Synthetic fluorescence nuclei for training (issue 29, item 2).

``synthetic_nuclei`` draws a field of textured ellipsoidal nuclei of varied size, shape, brightness
and density, blurs it with a Gaussian PSF and adds Poisson-Gaussian (photon + read) noise. Pure
numpy / scipy, seeded: the same arguments and seed give the same image.

    from napari_flow_prior.synthetic import synthetic_nuclei
    img = synthetic_nuclei((256, 256), seed=3)               # float32 in [0, 1]
    img, clean = synthetic_nuclei((256, 256), seed=3, return_clean=True)

The output is scaled like the training blocks (1st / 99.8th percentile, clipped), so it can be
mixed with real blocks as is. ``random_params`` draws the generator's parameters from broad ranges
(what a mixed training set would use); nothing in the library calls either function by default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class NucleiParams:
    density: float = 0.35        # expected fraction of the field covered by nuclei (before overlap)
    radius: tuple[float, float] = (6.0, 14.0)   # range of the semi-major axis, pixels
    aspect: tuple[float, float] = (0.6, 1.0)    # minor / major axis ratio range
    brightness: tuple[float, float] = (0.4, 1.0)  # per-nucleus mean intensity range
    texture: float = 0.35        # relative amplitude of the chromatin texture inside nuclei
    texture_scale: float = 1.5   # correlation length of the texture, pixels
    edge: float = 1.0            # soft-edge width of each nucleus, pixels
    background: float = 0.03     # constant background (fraction of the brightest nucleus)
    gradient: float = 0.0        # amplitude of a linear background ramp across the field
    psf_sigma: float = 1.2       # Gaussian PSF standard deviation, pixels (0: no blur)
    photons: float = 200.0       # expected photon count at intensity 1 (lower: more shot noise)
    read_noise: float = 2.0      # Gaussian read noise, in photons (standard deviation)


def _smooth_noise(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    f = ndi.gaussian_filter(rng.standard_normal(shape), max(scale, 1e-3), mode="wrap")
    return f / max(float(f.std()), 1e-12)


def clean_nuclei(shape=(256, 256), params: NucleiParams = NucleiParams(), seed: int = 0) -> np.ndarray:
    """The noiseless, unblurred object (float64, nuclei at their own brightness, background 0)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    p = params
    r_lo, r_hi = p.radius
    mean_area = np.pi * ((r_lo + r_hi) / 2) ** 2 * (p.aspect[0] + p.aspect[1]) / 2
    n = rng.poisson(max(p.density, 0.0) * h * w / mean_area)
    texture = _smooth_noise(rng, shape, p.texture_scale)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    obj = np.zeros(shape)
    for _ in range(n):
        cy, cx = rng.uniform(-r_hi, h + r_hi), rng.uniform(-r_hi, w + r_hi)
        a = rng.uniform(r_lo, r_hi)
        b = a * rng.uniform(*p.aspect)
        t = rng.uniform(0, np.pi)
        level = rng.uniform(*p.brightness)
        r0, r1 = int(max(cy - a - 3 * p.edge - 1, 0)), int(min(cy + a + 3 * p.edge + 2, h))
        c0, c1 = int(max(cx - a - 3 * p.edge - 1, 0)), int(min(cx + a + 3 * p.edge + 2, w))
        if r0 >= r1 or c0 >= c1:
            continue
        dy, dx = yy[r0:r1, c0:c1] - cy, xx[r0:r1, c0:c1] - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / a
        v = (-dx * np.sin(t) + dy * np.cos(t)) / b
        rho = np.sqrt(u * u + v * v)  # 1 on the boundary
        inside = 1.0 / (1.0 + np.exp((rho - 1.0) * a / max(p.edge, 1e-3)))  # soft ellipse
        shade = 1.0 + 0.15 * (1.0 - np.clip(rho, 0, 1) ** 2)  # slightly brighter centre (ellipsoid)
        tex = np.clip(1.0 + p.texture * texture[r0:r1, c0:c1], 0.0, None)
        patch = level * inside * shade * tex
        obj[r0:r1, c0:c1] = np.maximum(obj[r0:r1, c0:c1], patch)
    return obj


def image_formation(obj: np.ndarray, params: NucleiParams = NucleiParams(), seed: int = 0,
                    noise: bool = True) -> np.ndarray:
    """Background and gradient, PSF blur, then Poisson-Gaussian noise (in photons; float64)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    h, w = obj.shape
    p = params
    x = obj + p.background
    if p.gradient:
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        x = x + p.gradient * (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5) + 0.5)
    if p.psf_sigma > 0:
        x = ndi.gaussian_filter(x, p.psf_sigma, mode="reflect")
    x = np.clip(x, 0, None) * p.photons
    if noise:
        x = rng.poisson(x).astype(np.float64) + p.read_noise * rng.standard_normal(x.shape)
    return x


def scale01(x: np.ndarray, p_lo: float = 1.0, p_hi: float = 99.8) -> np.ndarray:
    lo, hi = np.percentile(x, [p_lo, p_hi])
    return np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)


def synthetic_nuclei(shape=(256, 256), seed: int = 0, params: NucleiParams | None = None,
                     return_clean: bool = False, **overrides):
    """A synthetic fluorescence nuclei image, float32 (H, W) in [0, 1] (percentile-scaled).

    ``params`` (or keyword overrides of ``NucleiParams`` fields, e.g. ``psf_sigma=2``) set the
    generator. ``return_clean=True`` also returns the blurred, noiseless image on the same scale
    (the same affine map as the noisy one, not clipped), for denoising targets and tests."""
    p = params or NucleiParams()
    if overrides:
        p = NucleiParams(**{**asdict(p), **overrides})
    obj = clean_nuclei(shape, p, seed)
    noisy = image_formation(obj, p, seed, noise=True)
    lo, hi = np.percentile(noisy, [1.0, 99.8])
    out = np.clip((noisy - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)
    if not return_clean:
        return out
    clean = image_formation(obj, p, seed, noise=False)
    return out, ((clean - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def random_params(rng: np.random.Generator) -> NucleiParams:
    """Generator parameters drawn from broad ranges (sizes, density, texture, PSF, noise)."""
    r = float(np.exp(rng.uniform(np.log(3.0), np.log(20.0))))
    return NucleiParams(
        density=float(rng.uniform(0.05, 0.7)),
        radius=(r * 0.7, r * 1.3),
        aspect=(float(rng.uniform(0.4, 0.8)), 1.0),
        brightness=(float(rng.uniform(0.1, 0.6)), 1.0),
        texture=float(rng.uniform(0.0, 0.6)),
        texture_scale=float(rng.uniform(0.7, 3.0)),
        edge=float(rng.uniform(0.5, 2.0)),
        background=float(rng.uniform(0.0, 0.2)),
        gradient=float(rng.uniform(0.0, 0.3)),
        psf_sigma=float(rng.uniform(0.0, 3.0)),
        photons=float(np.exp(rng.uniform(np.log(10.0), np.log(2000.0)))),
        read_noise=float(rng.uniform(0.0, 5.0)),
    )


def synthetic_batch(n: int, shape=(128, 128), seed: int = 0) -> np.ndarray:
    """``n`` images (n, H, W) float32, each with parameters from ``random_params`` (seeded)."""
    ss = np.random.SeedSequence(seed)
    out = np.empty((n, *shape), np.float32)
    for i, child in enumerate(ss.spawn(n)):
        rng = np.random.default_rng(child)
        out[i] = synthetic_nuclei(shape, seed=int(rng.integers(2**31)), params=random_params(rng))
    return out
