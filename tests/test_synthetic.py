"""Synthetic nuclei generator and training augmentations (fast: small images)."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_flow_prior.augment import AugmentConfig, augment, augment_batch
from napari_flow_prior.synthetic import NucleiParams, clean_nuclei, random_params, synthetic_batch, synthetic_nuclei

S = (96, 96)


def test_shape_range_dtype():
    img = synthetic_nuclei(S, seed=1)
    assert img.shape == S and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert img.std() > 0.05  # not blank


def test_deterministic_under_seed():
    a = synthetic_nuclei(S, seed=7)
    b = synthetic_nuclei(S, seed=7)
    c = synthetic_nuclei(S, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(synthetic_batch(3, (32, 32), seed=2), synthetic_batch(3, (32, 32), seed=2))


def test_density_sets_coverage():
    sparse = (clean_nuclei(S, NucleiParams(density=0.1), seed=0) > 0.2).mean()
    dense = (clean_nuclei(S, NucleiParams(density=0.6), seed=0) > 0.2).mean()
    assert dense > sparse + 0.15


def test_more_photons_less_noise():
    err = {}
    for photons in (10.0, 1000.0):
        noisy, clean = synthetic_nuclei(S, seed=3, photons=photons, read_noise=0.0, return_clean=True)
        err[photons] = float(np.std(noisy - np.clip(clean, 0, 1)))
    assert err[10.0] > 2 * err[1000.0]


def test_wider_psf_removes_high_frequencies():
    def hf(img):
        return float(np.abs(ndi.laplace(img.astype(np.float64))).mean())

    sharp = synthetic_nuclei(S, seed=4, psf_sigma=0.5, return_clean=True)[1]
    blurred = synthetic_nuclei(S, seed=4, psf_sigma=3.0, return_clean=True)[1]
    assert hf(blurred) < 0.5 * hf(sharp)


def test_random_params_in_ranges():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = random_params(rng)
        assert 0 <= p.psf_sigma <= 3 and 10 <= p.photons <= 2000 and p.radius[0] < p.radius[1]


def test_augment_off_by_default_is_identity():
    x = synthetic_nuclei((32, 32), seed=0)
    cfg = AugmentConfig()
    assert not cfg.enabled
    np.testing.assert_array_equal(augment(x, cfg, np.random.default_rng(0)), x)
    np.testing.assert_array_equal(augment_batch(x[None, None], cfg, np.random.default_rng(0)), x[None, None])


def test_augment_microscopy_shapes_ranges_determinism():
    x = np.stack([synthetic_nuclei((64, 64), seed=s) for s in range(3)])[:, None]
    cfg = AugmentConfig.microscopy()
    a = augment_batch(x, cfg, np.random.default_rng(5))
    b = augment_batch(x, cfg, np.random.default_rng(5))
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, x)


@pytest.mark.parametrize("f", [0.5, 2.0])
def test_zoom_changes_object_scale(f):
    x = synthetic_nuclei((96, 96), seed=2, photons=1e5, read_noise=0.0, psf_sigma=1.0)
    y = augment(x, AugmentConfig(zoom=(f, f)), np.random.default_rng(0))
    assert y.shape == x.shape

    def hf(img):
        return float(np.abs(np.diff(img, axis=1)).mean())

    assert (hf(y) > hf(x)) if f < 1 else (hf(y) < hf(x))


def test_augment_noise_and_blur_change_statistics():
    x = synthetic_nuclei((64, 64), seed=1, photons=1e5, read_noise=0.0, psf_sigma=0.3)
    rng = np.random.default_rng(0)
    noisy = augment(x, AugmentConfig(photons=(5.0, 5.0)), rng)
    blurred = augment(x, AugmentConfig(blur=(2.0, 2.0)), rng)
    d = lambda im: float(np.abs(np.diff(im.astype(np.float64), axis=0)).mean())  # noqa: E731
    assert d(noisy) > 1.5 * d(x)
    assert d(blurred) < 0.8 * d(x)
