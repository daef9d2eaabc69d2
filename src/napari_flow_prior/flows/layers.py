"""Invertible layers with one contract.

Every layer maps a batch ``x`` of shape (B, C, H, W) to ``(y, ladj)`` with ``forward`` and back
with ``inverse(y) -> x``. ``ladj`` is a *map* of shape (B, H', W') over the spatial positions of
the layer's output: the log|det| of the Jacobian contributed at each position, so that
``ladj.sum((1, 2))`` is the layer's log|det dy/dx| per sample. Keeping the positions (instead of
summing at once) is what lets a model hand every term of its density to the pixels it comes from.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LOG_2PI = math.log(2 * math.pi)


def soft_clamp(h: torch.Tensor, bound: float) -> torch.Tensor:
    """Smoothly map h into (-bound, bound): ``bound * tanh(h / bound)`` (identity near 0)."""
    return bound * torch.tanh(h / bound)


def standard_normal_logp(z: torch.Tensor) -> torch.Tensor:
    """Log N(z; 0, I) summed over channels: a (B, H, W) map."""
    return (-0.5 * (z * z + LOG_2PI)).sum(1)


def _position_map(value: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A (B, H, W) map holding the scalar ``value`` at every spatial position of ``y``."""
    return value.expand(y.shape[0], y.shape[2], y.shape[3])


class InvertibleLayer(nn.Module):
    """Base class: ``forward(x) -> (y, ladj_map)`` and ``inverse(y) -> x``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ChannelAffine(InvertibleLayer):
    """y = (x + loc) * exp(log_scale), per channel; zero-initialised (the identity)."""

    def __init__(self, channels: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        y = (x + self.loc) * torch.exp(self.log_scale)
        return y, _position_map(self.log_scale.sum(), y)

    def inverse(self, y):
        return y * torch.exp(-self.log_scale) - self.loc


class ActNorm(ChannelAffine):
    """Per-channel affine with data-dependent initialisation (Glow).

    The first forward pass in training mode sets loc and scale so that each channel of that batch
    has zero mean and unit variance. A persistent ``initialized`` flag is saved with the weights,
    so a loaded model never re-initialises. A channel of (near) zero variance keeps scale 1
    instead of being divided by ~0.
    """

    def __init__(self, channels: int):
        super().__init__(channels)
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        std = torch.where(std > 1e-3, std, torch.ones_like(std))
        self.loc.copy_(-mean)
        self.log_scale.copy_(-torch.log(std))
        self.initialized.fill_(True)

    def forward(self, x):
        if self.training and not bool(self.initialized):
            self.initialize(x)
        return super().forward(x)


class _CachedWeight:
    """Mixin for 1x1 convolutions: ``cache_constants(True)`` computes W, W^-1 and log|det W| once
    (for a solve with frozen parameters) instead of at every call; ``cache_constants(False)``
    drops them. The cache is never used while a parameter requires grad."""

    _constants = None

    def cache_constants(self, on: bool = True) -> None:
        self._constants = None
        if on and not any(p.requires_grad for p in self.parameters()):
            with torch.no_grad():
                w = self._weight()
                self._constants = (w, torch.linalg.inv(w), self._logdet())


class InvConv1x1(_CachedWeight, InvertibleLayer):
    """Invertible 1x1 convolution y = W x at every pixel, W a dense (C, C) matrix.

    log|det| per pixel is ``slogdet(W)``. Initialised as a random rotation.
    """

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]
        self.weight = nn.Parameter(w)

    def _weight(self) -> torch.Tensor:
        return self.weight

    def _logdet(self) -> torch.Tensor:
        return torch.linalg.slogdet(self.weight)[1]

    def forward(self, x):
        c = self._constants
        w, logdet = (c[0], c[2]) if c is not None else (self._weight(), self._logdet())
        y = F.conv2d(x, w[:, :, None, None])
        return y, _position_map(logdet, y)

    def inverse(self, y):
        c = self._constants
        w_inv = c[1] if c is not None else torch.linalg.inv(self._weight())
        return F.conv2d(y, w_inv[:, :, None, None])


class InvConv1x1LU(_CachedWeight, InvertibleLayer):
    """Invertible 1x1 convolution with W = P L (U + diag(sign * exp(log_s))) (Glow's LU form).

    log|det| per pixel is ``sum(log_s)``: cheap, and W can never become singular.
    """

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def weight(self) -> torch.Tensor:
        eye = torch.eye(self.perm.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def _weight(self) -> torch.Tensor:
        return self.weight()

    def _logdet(self) -> torch.Tensor:
        return self.log_s.sum()

    forward = InvConv1x1.forward
    inverse = InvConv1x1.inverse


class Reverse(InvertibleLayer):
    """Reverse the channel order (the fixed permutation of NICE / RealNVP); log|det| = 0."""

    def forward(self, x):
        return x.flip(1), x.new_zeros(x.shape[0], x.shape[2], x.shape[3])

    def inverse(self, y):
        return y.flip(1)


def coupling_network(in_channels: int, out_channels: int, hidden: int) -> nn.Sequential:
    """3x3 conv -> ReLU -> 1x1 conv -> ReLU -> zero-initialised 3x3 conv (starts as identity)."""
    last = nn.Conv2d(hidden, out_channels, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(),
        last,
    )


class AffineCoupling(InvertibleLayer):
    """y_a = x_a; y_b = x_b * exp(s(x_a)) + t(x_a), with a bounded log-scale.

    The log-scale is soft-clamped, ``s = 2 tanh(h / 2)``, so each coupling scales by a factor in
    (e^-2, e^2) in both directions: the inverse divides by at most e^2, so it can never produce inf
    or NaN, and unlike Glow's sigmoid(h + 2) (scale < 1) the layer can also expand. At
    initialisation h = 0 (zero-initialised last layer), so the layer is the identity.
    """

    scale_bound = 2.0

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        if channels < 2:
            raise ValueError("a coupling layer needs at least 2 channels")
        self.n_a = channels // 2
        self.net = coupling_network(self.n_a, 2 * (channels - self.n_a), hidden)

    def _scale_shift(self, x_a):
        h = self.net(x_a)
        log_s, t = h[:, 0::2], h[:, 1::2]
        return soft_clamp(log_s, self.scale_bound), t

    def forward(self, x):
        x_a, x_b = x[:, : self.n_a], x[:, self.n_a :]
        log_s, t = self._scale_shift(x_a)
        y_b = x_b * torch.exp(log_s) + t
        return torch.cat([x_a, y_b], 1), log_s.sum(1)

    def inverse(self, y):
        y_a, y_b = y[:, : self.n_a], y[:, self.n_a :]
        log_s, t = self._scale_shift(y_a)
        return torch.cat([y_a, (y_b - t) * torch.exp(-log_s)], 1)

    def reconstruct(self, y):
        """(x, y', ladj): the input recovered from ``y`` as a leaf and this layer re-run on it,
        sharing one evaluation of the coupling network (x_a = y_a), for memory-saving gradients."""
        x_a = y[:, : self.n_a].detach().requires_grad_(True)
        log_s, t = self._scale_shift(x_a)
        with torch.no_grad():
            x_b = (y[:, self.n_a :] - t) * torch.exp(-log_s)
        x_b.requires_grad_(True)
        y_b = x_b * torch.exp(log_s) + t
        return (x_a, x_b), torch.cat([x_a, y_b], 1), log_s.sum(1)


class AdditiveCoupling(InvertibleLayer):
    """NICE: y_a = x_a; y_b = x_b + t(x_a); volume preserving (log|det| = 0)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        if channels < 2:
            raise ValueError("a coupling layer needs at least 2 channels")
        self.n_a = channels // 2
        self.net = coupling_network(self.n_a, channels - self.n_a, hidden)

    def forward(self, x):
        x_a, x_b = x[:, : self.n_a], x[:, self.n_a :]
        y = torch.cat([x_a, x_b + self.net(x_a)], 1)
        return y, x.new_zeros(x.shape[0], x.shape[2], x.shape[3])

    def inverse(self, y):
        y_a, y_b = y[:, : self.n_a], y[:, self.n_a :]
        return torch.cat([y_a, y_b - self.net(y_a)], 1)

    def reconstruct(self, y):
        """(x, y', ladj) sharing one evaluation of the coupling network; see AffineCoupling."""
        x_a = y[:, : self.n_a].detach().requires_grad_(True)
        t = self.net(x_a)
        with torch.no_grad():
            x_b = y[:, self.n_a :] - t
        x_b.requires_grad_(True)
        return (x_a, x_b), torch.cat([x_a, x_b + t], 1), y.new_zeros(y.shape[0], y.shape[2], y.shape[3])


class Squeeze(InvertibleLayer):
    """Space to depth: (C, H, W) -> (4C, H/2, W/2), each 2x2 block becomes 4 channels."""

    def forward(self, x):
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even height and width, got {h}x{w}")
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        y = y.reshape(b, 4 * c, h // 2, w // 2)
        return y, y.new_zeros(b, h // 2, w // 2)

    def inverse(self, y):
        b, c4, h, w = y.shape
        c = c4 // 4
        x = y.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c, 2 * h, 2 * w)


class SplitPrior(InvertibleLayer):
    """Multi-scale split with a learned conditional prior (Glow).

    The first half x_a of the channels stays in the flow; the second half x_b leaves it as a latent
    whose density is N(mu(x_a), sigma(x_a)^2). The layer standardises it, y_b = (x_b - mu) / sigma,
    so the latent that leaves is N(0, I); log|det| = -sum log sigma. log sigma is soft-clamped to
    (-5, 5) and the predicting convolution is zero-initialised (prior N(0, I) at the start).
    """

    log_sigma_bound = 5.0

    def __init__(self, channels: int):
        super().__init__()
        self.n_a = channels - channels // 2
        self.conv = nn.Conv2d(self.n_a, 2 * (channels - self.n_a), 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def _mu_log_sigma(self, x_a):
        h = self.conv(x_a)
        return h[:, 0::2], soft_clamp(h[:, 1::2], self.log_sigma_bound)

    def forward(self, x):
        x_a, x_b = x[:, : self.n_a], x[:, self.n_a :]
        mu, log_sigma = self._mu_log_sigma(x_a)
        y_b = (x_b - mu) * torch.exp(-log_sigma)
        return torch.cat([x_a, y_b], 1), -log_sigma.sum(1)

    def inverse(self, y):
        y_a, y_b = y[:, : self.n_a], y[:, self.n_a :]
        mu, log_sigma = self._mu_log_sigma(y_a)
        return torch.cat([y_a, y_b * torch.exp(log_sigma) + mu], 1)


class DenseLinear(InvertibleLayer):
    """z = G^-1 x on the flattened image, for the model x = G z with a full invertible G.

    log|det dz/dx| = -log|det G|, shared equally by all positions of the map.
    """

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.register_buffer("matrix", matrix.clone())

    def forward(self, x):
        b, c, h, w = x.shape
        flat = x.reshape(b, -1).to(self.matrix.dtype)
        z = torch.linalg.solve(self.matrix, flat.T).T.reshape(b, c, h, w)
        ladj = -torch.linalg.slogdet(self.matrix)[1] / (h * w)
        return z, _position_map(ladj, z)

    def inverse(self, z):
        b = z.shape[0]
        return (z.reshape(b, -1).to(self.matrix.dtype) @ self.matrix.T).reshape(z.shape)
