"""Exactness of the flow core: log-dets against autograd Jacobians, inverses, density maps."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import napari_flow_prior as nfp
from napari_flow_prior.flows import layers as L
from napari_flow_prior.flows.model import Chain


def perturb(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random non-identity values (a fresh flow is the identity) and mark
    ActNorms initialised, so the test exercises real weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for m in module.modules():
            if isinstance(m, L.ActNorm):
                m.initialized.fill_(True)
    return module.eval()


def jacobian_logdet(fn, x: torch.Tensor) -> float:
    """log|det| of the Jacobian of fn at one image x (1, C, H, W), fn returning any shape."""
    shape = x.shape
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(shape)).reshape(-1), x.reshape(-1))
    assert jac.shape[0] == jac.shape[1], "the map must preserve dimension"
    sign, logabs = torch.linalg.slogdet(jac)
    assert sign != 0
    return logabs.item()


LAYERS = {
    "channel_affine": (lambda: L.ChannelAffine(4), (1, 4, 3, 3)),
    "actnorm": (lambda: L.ActNorm(4), (1, 4, 3, 3)),
    "inv_conv_1x1": (lambda: L.InvConv1x1(4), (1, 4, 3, 3)),
    "inv_conv_1x1_lu": (lambda: L.InvConv1x1LU(4), (1, 4, 3, 3)),
    "reverse": (lambda: L.Reverse(), (1, 4, 3, 3)),
    "affine_coupling": (lambda: L.AffineCoupling(4, 8), (1, 4, 3, 3)),
    "affine_coupling_odd_channels": (lambda: L.AffineCoupling(3, 8), (1, 3, 3, 2)),
    "additive_coupling": (lambda: L.AdditiveCoupling(4, 8), (1, 4, 3, 3)),
    "squeeze": (lambda: L.Squeeze(), (1, 2, 4, 2)),
    "split_prior": (lambda: L.SplitPrior(4), (1, 4, 3, 3)),
    "split_prior_odd": (lambda: L.SplitPrior(5), (1, 5, 2, 3)),
    "dense_linear": (lambda: L.DenseLinear(torch.randn(18, 18, dtype=torch.float64) + 3 * torch.eye(18, dtype=torch.float64)), (1, 2, 3, 3)),
    "chain": (lambda: Chain([L.ActNorm(4), L.InvConv1x1LU(4), L.AffineCoupling(4, 8), L.SplitPrior(4)]), (1, 4, 3, 3)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_logdet_matches_autograd_jacobian(name):
    make, shape = LAYERS[name]
    torch.manual_seed(1)
    layer = perturb(make().double())
    x = torch.randn(shape, dtype=torch.float64)
    y, ladj = layer(x)
    assert ladj.shape == (shape[0], y.shape[2], y.shape[3])
    expected = jacobian_logdet(lambda v: layer(v)[0], x)
    assert ladj.sum().item() == pytest.approx(expected, rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("name", LAYERS)
def test_layer_inverse_round_trip(name):
    make, shape = LAYERS[name]
    torch.manual_seed(2)
    layer = perturb(make().double())
    x = torch.randn((3, *shape[1:]), dtype=torch.float64)
    y, _ = layer(x)
    assert torch.allclose(layer.inverse(y), x, atol=1e-10)
    # and the other way round: forward(inverse(y)) == y
    assert torch.allclose(layer(layer.inverse(y))[0], y, atol=1e-10)


def test_layers_start_as_identity():
    x = torch.randn(2, 4, 5, 5)
    for layer in (L.AffineCoupling(4, 8), L.AdditiveCoupling(4, 8), L.SplitPrior(4), L.ChannelAffine(4)):
        y, ladj = layer(x)
        assert torch.equal(y, x) and torch.all(ladj == 0)


def test_actnorm_initialises_once_and_survives_zero_variance():
    layer = L.ActNorm(2)
    x = torch.randn(8, 2, 4, 4) * 3 + 1
    x[:, 1] = 0.25  # a constant channel: zero variance
    y, ladj = layer(x)
    assert bool(layer.initialized)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    assert y[:, 0].mean().abs() < 1e-5 and (y[:, 0].std(unbiased=False) - 1).abs() < 1e-4
    assert torch.allclose(y[:, 1], torch.zeros_like(y[:, 1]))
    before = layer.log_scale.clone()
    layer(torch.randn(8, 2, 4, 4) * 10)  # a second batch must not re-initialise
    assert torch.equal(layer.log_scale, before)


def test_lu_conv_never_singular_and_plain_equivalent():
    lu = perturb(L.InvConv1x1LU(6).double())
    plain = L.InvConv1x1(6).double()
    with torch.no_grad():
        plain.weight.copy_(lu.weight())
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    (y1, l1), (y2, l2) = lu(x), plain(x)
    assert torch.allclose(y1, y2) and torch.allclose(l1, l2)


def test_affine_coupling_scale_is_bounded():
    layer = L.AffineCoupling(4, 8)
    with torch.no_grad():
        layer.net[-1].bias.fill_(1e4)  # a wildly unstable network
    y, ladj = layer(torch.randn(1, 4, 3, 3))
    per_channel = ladj / 2  # two scaled channels
    assert torch.all(per_channel.abs() <= AffineScaleBound() + 1e-6)
    assert torch.isfinite(layer.inverse(y)).all()


def AffineScaleBound():
    return L.AffineCoupling.scale_bound


MODELS = [
    ("glow", (1, 1, 8, 8), 2),
    ("glow", (1, 3, 8, 8), 2),
    ("glow", (1, 1, 2, 2), 1),
    ("glow", (1, 1, 5, 7), 3),
    ("realnvp", (1, 1, 8, 8), 2),
    ("realnvp", (1, 3, 6, 5), 2),
    ("nice", (1, 1, 8, 8), 2),
    ("nice", (1, 1, 3, 3), 2),
]


def _latent_vector(model, x):
    return torch.cat([p.flatten(1) for p in model.encode(x).parts], 1)


@pytest.mark.parametrize("kind,shape,levels", MODELS)
def test_model_logdet_and_density_exact(kind, shape, levels):
    torch.manual_seed(3)
    model = perturb(nfp.build_model(kind, channels=shape[1], levels=levels, steps=2, hidden=8).double())
    x = torch.rand(shape, dtype=torch.float64)
    latent, ladj, logpz = model(x)
    z = torch.cat([p.flatten(1) for p in latent.parts], 1)
    assert z.shape[1] == math.prod(shape[1:]), "the density must be over exactly C*H*W values"
    expected = jacobian_logdet(lambda v: _latent_vector(model, v), x)
    assert ladj.sum().item() == pytest.approx(expected, rel=1e-4)
    log_p = model.log_prob(x).item()
    by_hand = norm.logpdf(z.detach().numpy()).sum() + expected
    assert log_p == pytest.approx(by_hand, rel=1e-4)
    dmap = model.log_density_map(x)
    assert dmap.shape == (1, 1, shape[2], shape[3])
    assert dmap.sum().item() == pytest.approx(log_p, rel=1e-4)


def test_linear_model_density_is_gaussian():
    g = torch.randn(12, 12, dtype=torch.float64) + 2 * torch.eye(12, dtype=torch.float64)
    model = nfp.build_model("linear", matrix=g, shape=(1, 3, 4))
    x = torch.randn(5, 1, 3, 4, dtype=torch.float64)
    cov = (g @ g.T).numpy()
    from scipy.stats import multivariate_normal

    expected = multivariate_normal(mean=np.zeros(12), cov=cov).logpdf(x.reshape(5, -1).numpy())
    assert np.allclose(model.log_prob(x).numpy(), expected, rtol=1e-8)
    assert torch.allclose(model.decode(model.encode(x)), x)
    assert model.log_density_map(x).sum((1, 2, 3)).allclose(model.log_prob(x))
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.zeros(1, 1, 4, 4, dtype=torch.float64))


EXTREMES = {
    "random": lambda s: torch.rand(s),
    "zeros": lambda s: torch.zeros(s),
    "ones": lambda s: torch.ones(s),
    "bright_pixel": lambda s: torch.zeros(s).index_put_((torch.tensor(0), torch.tensor(0), torch.tensor(s[2] // 2), torch.tensor(s[3] // 3)), torch.tensor(1.0)),
}


@pytest.mark.parametrize("image", EXTREMES)
@pytest.mark.parametrize("kind", ["glow", "realnvp", "nice"])
def test_decode_encode_round_trip_float32(kind, image):
    torch.manual_seed(4)
    model = perturb(nfp.build_model(kind, channels=1, levels=2, steps=2, hidden=16), scale=0.1)
    x = EXTREMES[image]((2, 1, 12, 11))
    err = (model.decode(model.encode(x)) - x).abs().max().item()
    assert err <= 1e-5 * 1.0  # range of [0, 1] images is 1


def test_deep_model_round_trip():
    torch.manual_seed(5)
    model = perturb(nfp.build_model("glow", channels=1, levels=3, steps=8, hidden=16), scale=0.05)
    x = torch.rand(2, 1, 32, 24)
    assert (model.decode(model.encode(x)) - x).abs().max().item() <= 1e-4


def test_fresh_glow_density_is_standard_normal_of_shifted_pixels():
    # At initialisation: ActNorm and couplings are the identity, the 1x1 convs rotations (|det| 1,
    # norm preserving), the priors N(0, I): the density is that of N(0.5, I) pixel by pixel.
    model = nfp.build_model("glow", levels=3, steps=2, hidden=8).eval()
    x = torch.rand(2, 1, 9, 13, dtype=torch.float32)
    expected = norm.logpdf(x.numpy() - 0.5).reshape(2, -1).sum(1)
    assert np.allclose(model.log_prob(x).detach().numpy(), expected, rtol=1e-5)


def test_bits_per_dim_by_hand():
    model = nfp.build_model("linear", shape=(1, 4, 5))  # identity G: the standard normal density
    x = torch.rand(3, 1, 4, 5, dtype=torch.float64)
    got = model.bits_per_dim(x, n_bins=256).numpy()
    k = np.round(x.numpy() * 255)
    gen = torch.Generator().manual_seed(0)
    d = 20
    expected = np.zeros(3)
    for _ in range(4):
        u = torch.rand(k.shape, generator=gen, dtype=torch.float64).numpy()
        log_p = norm.logpdf((k + u) / 256).reshape(3, -1).sum(1)
        expected += -(log_p - d * math.log(256)) / (d * math.log(2))
    assert np.allclose(got, expected / 4, rtol=1e-10)


def test_level_bins_reach_the_next_used_level():
    from napari_flow_prior.flows.model import level_bins

    k = torch.tensor([[0.0, 8, 8, 16, 250], [3, 3, 4, 5, 7]])
    assert level_bins(k, 256).tolist() == [[8, 8, 8, 234, 6], [1, 1, 1, 2, 249]]


def test_level_coded_bits_per_dim_is_a_code():
    """Kraft: 2^-(code length) summed over every image of a tiny space is at most 1 for each bins
    mode (a mode that forgot its side information or overlapped bins could exceed it)."""
    import itertools

    n_bins = 4
    model = nfp.build_model("linear", matrix=0.5 * torch.eye(2, dtype=torch.float64), shape=(1, 1, 2))
    images = torch.tensor(list(itertools.product(range(n_bins), repeat=2)), dtype=torch.float64)
    images = images.reshape(-1, 1, 1, 2) / (n_bins - 1)
    for bins in ("unit", "levels", "best"):
        bits = 2 * model.bits_per_dim(images, n_bins=n_bins, draws=200, bins=bins)
        assert float((2.0 ** -bits).sum()) <= 1.0, bins


def test_level_coded_bits_per_dim_charges_side_information_and_saves_the_comb():
    gen = torch.Generator().manual_seed(0)
    model = perturb(nfp.build_model("glow", levels=2, steps=2, hidden=8), scale=0.05).double()
    full = torch.arange(256, dtype=torch.float64).reshape(1, 1, 16, 16) / 255
    d = full.numel()
    unit, levels = (model.bits_per_dim(full, bins=b) for b in ("unit", "levels"))
    assert torch.allclose(levels, unit + 256 / d)  # every level used: only the side information differs
    assert torch.allclose(model.bits_per_dim(full, bins="best"), unit + 1 / d)
    # a dim image stretched to [0, 1] uses every 8th level; a smooth density loses ~log2(8) bits
    # per pixel to the empty levels with unit bins, which the level code does not
    comb = (8 * torch.randint(0, 32, (2, 1, 32, 32), generator=gen)).double() / 255
    saving = model.bits_per_dim(comb, bins="unit") - model.bits_per_dim(comb, bins="levels")
    assert torch.all((saving > 2.7) & (saving < 3.1)), saving
    with pytest.raises(ValueError, match="bins"):
        model.bits_per_dim(comb, bins="wide")


def test_sample_shapes_and_temperature():
    model = perturb(nfp.build_model("glow", levels=2, steps=2, hidden=8), scale=0.05)
    s = model.sample(3, 10, 7, temperature=0.7, seed=1)
    assert s.shape == (3, 1, 10, 7) and torch.isfinite(s).all()
    assert torch.equal(s, model.sample(3, 10, 7, temperature=0.7, seed=1))
    cold = model.sample(3, 10, 7, temperature=0.0)
    assert torch.allclose(cold, model.decode(model.encode(cold)), atol=1e-5)


def test_toy_fit_lowers_bits_per_dim():
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    centres = torch.rand(256, 2) * 8
    data = torch.exp(-((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2) / 6)[:, None]
    model = nfp.build_model("glow", levels=2, steps=2, hidden=16, seed=0)
    before = model.eval().bits_per_dim(data[:64]).mean().item()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(300):
        batch = data[torch.randint(0, 256, (32,))]
        batch = (torch.round(batch * 255) + torch.rand_like(batch)) / 256
        loss = -model.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.eval().bits_per_dim(data[:64]).mean().item()
    assert after < before - 1.0, (before, after)


def test_bad_input_messages():
    model = nfp.build_model("glow", channels=1, levels=2, steps=1, hidden=8)
    with pytest.raises(ValueError, match="1-channel"):
        model.log_prob(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        model.log_prob(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="unknown flow kind"):
        nfp.build_model("vae")
