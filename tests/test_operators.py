import math
import tracemalloc

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_flow_prior import operators as O


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # CI-sized problems: thread start-up costs more than the work (and spins on busy runners)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


RNG = np.random.default_rng(1234)
USER_PSF = RNG.random((4, 7))  # even height, non-symmetric


def _ops():
    return {
        "mask_2d": O.Mask.random((30, 41), missing_fraction=0.5, seed=0),
        "mask_rgb_shared": O.Mask.random((3, 30, 41), missing_fraction=0.7, seed=1),
        "mask_per_channel": O.Mask(RNG.random((2, 30, 41)) > 0.4),
        "mask_lines": O.Mask.lines((1, 37, 45), n_lines=4, width=2, orientation="random"),
        "blur_gauss": O.Blur((30, 41), sigma=1.5),
        "blur_user_psf": O.Blur((1, 37, 45), psf=USER_PSF),
        "blur_big_psf": O.Blur((2, 6, 9), sigma=3.0),  # PSF larger than the image
        "cs_edges": O.GaussianProjection((30, 41), ratio=0.3, seed=0, block=8),
        "cs_rgb_edges": O.GaussianProjection((3, 37, 45), ratio=0.25, seed=2, block=16),
        "cs_exact": O.GaussianProjection((32, 32), ratio=0.1, block=16),
        "matrix": O.Matrix(RNG.standard_normal((50, 2 * 7 * 9)), (2, 7, 9)),
    }


OPS = _ops()


@pytest.mark.parametrize("name", sorted(OPS))
def test_adjointness_float64(name):
    op = OPS[name]
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal(op.shape)
        v = rng.standard_normal(op.out_shape)
        ax, atv = op.forward(x), op.adjoint(v)
        assert ax.dtype == np.float64 and atv.dtype == np.float64
        assert ax.shape == op.out_shape and atv.shape == op.shape
        lhs, rhs = np.vdot(ax, v), np.vdot(x, atv)
        assert abs(lhs - rhs) / (abs(lhs) + 1e-12) < 1e-5
        np.testing.assert_allclose(op.back_projection(v), atv)


@pytest.mark.parametrize("name", sorted(OPS))
def test_linearity_sizes_norm_describe(name):
    op = OPS[name]
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal(op.shape), rng.standard_normal(op.shape)
    np.testing.assert_allclose(op.forward(2.0 * x1 - 3.0 * x2),
                               2.0 * op.forward(x1) - 3.0 * op.forward(x2), atol=1e-10)
    assert op.n == int(np.prod(op.shape))
    assert op.kind in ("mask", "blur", "cs", "matrix")
    if op.kind in ("cs", "matrix"):
        assert op.out_shape == (op.m,)
    # closed-form norms agree with power iteration
    power = op.power_norm(n_iter=500, tol=1e-10)
    assert op.norm() == pytest.approx(power, rel=1e-2)
    import json

    d = json.loads(json.dumps(op.describe()))
    assert d["kind"] == op.kind and d["shape"] == list(op.shape)


@pytest.mark.parametrize("name", sorted(OPS))
def test_numpy_and_torch_io(name):
    op = OPS[name]
    x = np.random.default_rng(2).random(op.shape).astype(np.float32)
    y = op.forward(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert op.adjoint(y).dtype == np.float32
    assert op.pseudo_inverse(y).shape == op.shape
    assert op.forward(x.astype(np.uint8)).dtype == np.float32
    xt = torch.tensor(x, requires_grad=True)
    yt = op.forward(xt)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    np.testing.assert_allclose(yt.detach().numpy(), y, rtol=1e-5, atol=1e-5)
    (yt ** 2).sum().backward()
    assert xt.grad is not None and xt.grad.shape == op.shape
    # gradient of ||Ax||^2 is 2 A^T A x
    np.testing.assert_allclose(xt.grad.numpy(), 2 * op.adjoint(op.forward(x)), rtol=1e-4,
                               atol=1e-4)
    # a leading batch dimension, float64 kept
    xb = torch.rand(2, *op.shape, dtype=torch.float64)
    yb = op.forward(xb)
    assert yb.shape == (2, *op.out_shape) and yb.dtype == torch.float64
    np.testing.assert_allclose(yb[1].numpy(), op.forward(xb[1].numpy()), atol=1e-12)
    assert op.adjoint(yb).shape == (2, *op.shape)


def test_shape_mismatch_names_both_shapes():
    op = O.Blur((30, 41), sigma=1.0)
    with pytest.raises(ValueError, match=r"\(30, 41\).*\(41, 30\)"):
        op.forward(np.zeros((41, 30)))
    cs = O.GaussianProjection((30, 41), ratio=0.2, block=8)
    with pytest.raises(ValueError, match="expects shape"):
        cs.adjoint(np.zeros(cs.m + 1))
    with pytest.raises(ValueError):
        O.Matrix(np.zeros((5, 10)), (3, 3))


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.1])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        O.GaussianProjection((16, 16), ratio=ratio)


def test_mask_constructors_and_channels():
    with pytest.raises(ValueError, match="mask leaves no observed pixel"):
        O.Mask(np.zeros((8, 8), dtype=bool))
    with pytest.raises(ValueError, match="mask leaves no observed pixel"):
        O.Mask.from_missing(np.ones((8, 8), dtype=bool))
    missing = np.zeros((10, 12), dtype=bool)
    missing[2:5, 3:7] = True
    op = O.Mask.from_missing(missing, shape=(3, 10, 12))
    assert op.shape == (3, 10, 12) and op.observed.shape == (10, 12)
    assert op.m == 3 * (120 - 12)
    y = op.forward(np.ones((3, 10, 12)))
    assert y[:, 2:5, 3:7].sum() == 0 and y.sum() == op.m
    r = O.Mask.random((64, 64), missing_fraction=0.8, seed=3)
    assert r.missing.sum() == round(0.8 * 64 * 64)
    np.testing.assert_array_equal(r.observed, O.Mask.random((64, 64), 0.8, seed=3).observed)
    assert O.Mask.blocks((40, 40), n_blocks=3, size=8, seed=0).missing.sum() > 0
    for orientation in ("rows", "cols", "random"):
        assert O.Mask.lines((40, 40), n_lines=3, width=2, orientation=orientation).missing.any()
    rows = O.Mask.lines((40, 40), n_lines=3, width=1, orientation="rows")
    assert np.all(rows.missing.all(axis=1) == rows.missing.any(axis=1))
    with pytest.raises(ValueError):
        O.Mask(np.ones((5, 5), dtype=bool), shape=(3, 6, 6))
    assert O.Mask.random((3, 20, 20), 0.5).describe()["missing_fraction"] == pytest.approx(0.5)
    # 0/1 numbers work like bools; a float map with other values (or NaN) is refused, not thresholded
    np.testing.assert_array_equal(O.Mask(missing.astype(np.float32)).observed, missing)
    np.testing.assert_array_equal(O.Mask.from_missing(missing.astype(np.uint8)).missing, missing)
    with pytest.raises(ValueError, match="only 0 and 1.*bool array"):
        O.Mask(np.full((8, 8), 0.3))
    with pytest.raises(ValueError, match="NaN"):
        O.Mask.from_missing(np.where(missing, np.nan, 0.0))


def test_blur_matches_scipy_reflect_convolution():
    x = np.random.default_rng(3).random((2, 37, 45))
    for op in (O.Blur((2, 37, 45), sigma=2.0), O.Blur((2, 37, 45), psf=USER_PSF)):
        assert op.psf.sum() == pytest.approx(1.0) and all(s % 2 for s in op.psf.shape)
        expected = np.stack([ndimage.convolve(c, op.psf, mode="reflect") for c in x])
        np.testing.assert_allclose(op.forward(x), expected, atol=1e-12)
    assert O.Blur((16, 16), sigma=2.0).psf.shape == (2 * math.ceil(6.0) + 1,) * 2
    for bad in (np.ones(5), np.full((3, 3), np.nan), -np.ones((3, 3)), np.zeros((3, 3))):
        with pytest.raises(ValueError):
            O.Blur((16, 16), psf=bad)
    # a constant image stays constant (no dark border from zero padding)
    np.testing.assert_allclose(O.Blur((16, 20), sigma=3.0).forward(np.full((16, 20), 0.7)), 0.7)


def test_pseudo_inverses():
    rng = np.random.default_rng(4)
    x = rng.random((30, 41))
    blur = O.Blur((30, 41), sigma=0.6)
    np.testing.assert_allclose(blur.pseudo_inverse(blur.forward(x), balance=1e-12), x, atol=1e-6)
    cs = O.GaussianProjection((30, 41), ratio=0.3, block=8)
    y = cs.forward(x)
    np.testing.assert_allclose(cs.forward(cs.pseudo_inverse(y)), y, atol=1e-4)
    mat = O.Matrix(rng.standard_normal((40, 30 * 41)), (30, 41))
    y = mat.forward(x)
    np.testing.assert_allclose(mat.forward(mat.pseudo_inverse(y)), y, atol=1e-8)
    mask = O.Mask.random((30, 41), 0.5)
    np.testing.assert_array_equal(mask.pseudo_inverse(mask.forward(x)), mask.forward(x))


def test_cs_measurement_count():
    for shape, ratio, block in [((30, 41), 0.3, 8), ((3, 37, 45), 0.25, 16), ((64, 64), 0.2, 32),
                                ((5, 7), 1.0, 32)]:
        op = O.GaussianProjection(shape, ratio=ratio, block=block)
        c = shape[0] if len(shape) == 3 else 1
        h, w = shape[-2:]
        expected = c * sum(
            math.ceil(ratio * min(block, h - r) * min(block, w - s))
            for r in range(0, h, block) for s in range(0, w, block))
        assert op.m == expected
    # raster order: a pixel in block (row 1, col 0) only moves measurements of that block
    op = O.GaussianProjection((20, 20), ratio=0.5, block=8)
    x = np.zeros((20, 20))
    x[9, 1] = 1.0
    nz = np.flatnonzero(op.forward(x))
    m_full, m_edge = math.ceil(0.5 * 64), math.ceil(0.5 * 32)
    start = 2 * m_full + m_edge
    assert nz.min() >= start and nz.max() < start + m_full


def test_cs_large_image_is_small_and_fast():
    op = O.GaussianProjection((1024, 1024), ratio=0.2, seed=0, block=32)
    assert op.m == 1024 * math.ceil(0.2 * 1024)
    x = np.random.default_rng(5).random((1024, 1024), dtype=np.float32)
    tracemalloc.start()
    y = op.forward(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    back = op.adjoint(y)
    assert y.shape == (op.m,) and back.shape == (1024, 1024)
    assert op.nbytes < 1e9 and op.nbytes < 50e6  # a few small matrices, not an (m, n) one
    assert peak < 1e9


def test_measure_noise():
    x = np.random.default_rng(6).random((3, 30, 41))
    for op in (O.Mask.random((3, 30, 41), 0.6), O.Blur((3, 30, 41), sigma=1.0),
               O.GaussianProjection((3, 30, 41), 0.3, block=8)):
        np.testing.assert_array_equal(op.measure(x, noise_sigma=0.0), op.forward(x))
        a, b = op.measure(x, 0.05, seed=7), op.measure(x, 0.05, seed=7)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, op.measure(x, 0.05, seed=8))
        assert np.std(a - op.forward(x)) > 0.01
        t = op.measure(torch.tensor(x), 0.05, seed=7)
        np.testing.assert_allclose(t.numpy(), a, atol=1e-12)
    mask = O.Mask.random((3, 30, 41), 0.6)
    y = mask.measure(x, 0.1, seed=0)
    assert np.all(y[:, ~mask.observed] == 0)
    assert np.all(y[:, mask.observed] != x[:, mask.observed])
    # Poisson: mean preserved, variance x / photons
    flat = np.full((64, 64), 0.5)
    yp = O.Blur((64, 64), sigma=1.0).measure(flat, noise="poisson", photons=100.0, seed=0)
    assert abs(yp.mean() - 0.5) < 0.01 and abs(yp.var() - 0.5 / 100) < 1e-3
    with pytest.raises(ValueError):
        O.Blur((8, 8)).measure(np.ones((8, 8)), noise="poisson")
    with pytest.raises(ValueError, match="nonnegative"):
        O.GaussianProjection((8, 8), 0.5).measure(np.ones((8, 8)), noise="poisson", photons=10)
