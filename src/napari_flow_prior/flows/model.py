"""Flow models: a multi-scale Glow / RealNVP / NICE and the dense linear flow, behind one class.

A model maps an image x (B, C, H, W) in [0, 1] to standardised latents z ~ N(0, I) of exactly
C*H*W numbers, and gives the exact log-density

    log p(x) = log N(z; 0, I) + log|det dz/dx|,

both as a per-image total and as a per-pixel map whose sum is that total.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .layers import (
    LOG_2PI,
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ChannelAffine,
    DenseLinear,
    InvConv1x1,
    InvConv1x1LU,
    InvertibleLayer,
    Reverse,
    Squeeze,
    SplitPrior,
    standard_normal_logp,
)
from .memory import memory_saving_chain

KINDS = ("glow", "realnvp", "nice", "linear")


@dataclass
class Latent:
    """The latent code of a batch of images: standardised parts, each N(0, I) under the model.

    ``parts`` are the latents in the order the flow emits them (edges and split halves level by
    level, then the top); ``image_size`` is the (H, W) of the images they encode.
    """

    parts: list[torch.Tensor]
    image_size: tuple[int, int]

    def map(self, fn) -> "Latent":
        """A new Latent with ``fn`` applied to every part."""
        return Latent([fn(p) for p in self.parts], self.image_size)

    def squared_norm(self) -> torch.Tensor:
        """||z||^2 per image."""
        return sum(p.pow(2).flatten(1).sum(1) for p in self.parts)

    def numel_per_image(self) -> int:
        return sum(p[0].numel() for p in self.parts)


class Chain(InvertibleLayer):
    """Composition f_n o ... o f_1 of layers at one resolution; log|det| maps add up.

    With ``memory_saving`` set, a forward pass that records gradients stores only the chain's
    output and recomputes the layers' inputs by inversion in the backward pass
    (:mod:`.memory`): same gradients, memory independent of the number of layers.
    """

    def __init__(self, layers, memory_saving: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.memory_saving = bool(memory_saving)

    def forward(self, x):
        if self.memory_saving and torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in self.parameters())):
            if self.training and any(isinstance(m, ActNorm) and not bool(m.initialized) for m in self.modules()):
                return self.plain_forward(x)  # data-dependent initialisation: plain pass once
            return memory_saving_chain(self, x)
        return self.plain_forward(x)

    def plain_forward(self, x):
        total = x.new_zeros(x.shape[0], x.shape[2], x.shape[3])
        for layer in self.layers:
            x, ladj = layer(x)
            total = total + ladj
        return x, total

    def inverse(self, y):
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


def flow_step(kind: str, channels: int, hidden: int, index: int, lu: bool) -> list[InvertibleLayer]:
    """One step of the flow: Glow = ActNorm, 1x1 conv, affine coupling; RealNVP = ActNorm, channel
    reversal, affine coupling; NICE = channel reversal, additive coupling."""
    if kind == "glow":
        conv = InvConv1x1LU(channels) if lu else InvConv1x1(channels)
        return [ActNorm(channels), conv, AffineCoupling(channels, hidden)]
    if kind == "realnvp":
        return [ActNorm(channels), Reverse(), AffineCoupling(channels, hidden)]
    if kind == "nice":
        return [Reverse(), AdditiveCoupling(channels, hidden)]
    raise ValueError(f"unknown flow kind {kind!r}; expected one of {KINDS}")


def _to_pixels(m: torch.Tensor, scale: int, height: int, width: int) -> torch.Tensor:
    """Spread a (B, h, w) map of ``scale`` x ``scale`` pixel blocks over the (H, W) input grid.

    Position (i, j) covers the block [i*scale, (i+1)*scale) x [j*scale, (j+1)*scale) of the input;
    its value is shared equally by the block's pixels, so sums are preserved exactly.
    """
    if scale > 1:
        m = m.repeat_interleave(scale, 1).repeat_interleave(scale, 2) / (scale * scale)
    return F.pad(m, (0, width - m.shape[2], 0, height - m.shape[1]))


class Level(nn.Module):
    """One scale: edge prior for an odd row/column, squeeze, K steps, optional split."""

    def __init__(self, kind, channels, steps, hidden, lu, split):
        super().__init__()
        self.edge = ChannelAffine(channels)
        self.squeeze = Squeeze()
        c4 = 4 * channels
        self.steps = Chain([layer for i in range(steps) for layer in flow_step(kind, c4, hidden, i, lu)])
        self.split = SplitPrior(c4) if split else None
        # NICE is volume preserving inside; a learned per-channel scale per level (NICE's
        # "scaling layer") lets it fit the data's variance.
        self.scale = ActNorm(c4) if kind == "nice" else None

    @property
    def kept_channels(self) -> int:
        return self.split.n_a if self.split is not None else self.steps_channels

    @property
    def steps_channels(self) -> int:
        return self.edge.loc.shape[1] * 4


class MultiScaleFlow(nn.Module):
    """x -> z for Glow / RealNVP / NICE with a multi-scale architecture (Dinh et al., Glow).

    Images of any size: before each squeeze an odd last row (then an odd last column) leaves the
    flow as a latent with its own learned per-channel Gaussian (the level's edge prior); when a
    level is left with fewer than 2 rows or columns the whole remaining tensor leaves that way and
    the deeper levels are skipped. So the density is always over exactly the input's C*H*W values.
    """

    def __init__(self, kind, channels, levels, steps, hidden, lu=True):
        super().__init__()
        self.levels = nn.ModuleList()
        c = channels
        for i in range(levels):
            level = Level(kind, c, steps, hidden, lu, split=i < levels - 1)
            self.levels.append(level)
            c = level.kept_channels
        self.top = ChannelAffine(c)

    def plan(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) entering each level that squeezes; levels beyond the list are skipped."""
        out, h, w = [], height, width
        for _ in self.levels:
            if h < 2 or w < 2:
                break
            out.append((h, w))
            h, w = h // 2, w // 2
        return out

    def forward(self, x):
        b, _, height, width = x.shape
        plan = self.plan(height, width)
        ladj_total = x.new_zeros(b, height, width)
        logpz_total = x.new_zeros(b, height, width)
        parts = []
        h = x - 0.5

        def leave(z, ladj, scale, pad_top=0, pad_left=0):
            nonlocal ladj_total, logpz_total
            parts.append(z)
            logpz = standard_normal_logp(z)
            ladj = F.pad(ladj, (pad_left, 0, pad_top, 0))
            logpz = F.pad(logpz, (pad_left, 0, pad_top, 0))
            ladj_total = ladj_total + _to_pixels(ladj, scale, height, width)
            logpz_total = logpz_total + _to_pixels(logpz, scale, height, width)

        scale = 1
        for level, (lh, lw) in zip(self.levels, plan):
            if lh % 2:
                z, ladj = level.edge(h[:, :, -1:, :])
                leave(z, ladj, scale, pad_top=lh - 1)
                h = h[:, :, :-1, :]
            if lw % 2:
                z, ladj = level.edge(h[:, :, :, -1:])
                leave(z, ladj, scale, pad_left=lw - 1)
                h = h[:, :, :, :-1]
            h, _ = level.squeeze(h)
            scale *= 2
            level_ladj = h.new_zeros(b, h.shape[2], h.shape[3])
            if level.scale is not None:
                h, ladj = level.scale(h)
                level_ladj = level_ladj + ladj
            h, ladj = level.steps(h)
            level_ladj = level_ladj + ladj
            if level.split is not None:
                h, ladj = level.split(h)
                level_ladj = level_ladj + ladj
                n_a = level.split.n_a
                parts.append(h[:, n_a:])
                logpz = standard_normal_logp(h[:, n_a:])
                logpz_total = logpz_total + _to_pixels(logpz, scale, height, width)
                h = h[:, :n_a]
            ladj_total = ladj_total + _to_pixels(level_ladj, scale, height, width)
        if len(plan) < len(self.levels):
            # too small to squeeze again: what is left leaves through the next level's edge prior
            z, ladj = self.levels[len(plan)].edge(h)
        else:
            z, ladj = self.top(h)
        leave(z, ladj, scale)
        return Latent(parts, (height, width)), ladj_total, logpz_total

    def inverse(self, latent: Latent) -> torch.Tensor:
        height, width = latent.image_size
        plan = self.plan(height, width)
        parts = list(latent.parts)
        if len(plan) < len(self.levels):
            h = self.levels[len(plan)].edge.inverse(parts.pop())
        else:
            h = self.top.inverse(parts.pop())
        for level, (lh, lw) in reversed(list(zip(self.levels, plan))):
            if level.split is not None:
                h = level.split.inverse(torch.cat([h, parts.pop()], 1))
            h = level.steps.inverse(h)
            if level.scale is not None:
                h = level.scale.inverse(h)
            h = level.squeeze.inverse(h)
            if lw % 2:
                h = torch.cat([h, level.edge.inverse(parts.pop())], 3)
            if lh % 2:
                h = torch.cat([h, level.edge.inverse(parts.pop())], 2)
        if parts:
            raise ValueError("latent has more parts than this model and image size produce")
        return h + 0.5

    def latent_shapes(self, channels: int, height: int, width: int) -> list[tuple[int, int, int]]:
        """The (C, h, w) of each latent part for an image of this size (forward on zeros)."""
        device = self.top.loc.device
        with torch.no_grad():
            x = torch.zeros(1, channels, height, width, device=device, dtype=self.top.loc.dtype)
            latent, _, _ = self.forward(x)
        return [tuple(p.shape[1:]) for p in latent.parts]


class LinearFlow(nn.Module):
    """The dense linear flow x = G z, z ~ N(0, I): the density N(0, G G^T) on images of one shape."""

    def __init__(self, matrix: torch.Tensor, shape: tuple[int, int, int]):
        super().__init__()
        n = math.prod(shape)
        if matrix.shape != (n, n):
            raise ValueError(f"linear flow needs an ({n}, {n}) matrix for shape {shape}, got {tuple(matrix.shape)}")
        self.shape = tuple(shape)
        self.dense = DenseLinear(matrix)

    def _check(self, x):
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"this linear flow is for images of shape {self.shape}, got {tuple(x.shape[1:])}")

    def forward(self, x):
        self._check(x)
        z, ladj = self.dense(x)
        # pixel i holds the prior term of z_i (the same raster order)
        return Latent([z], x.shape[2:]), ladj, standard_normal_logp(z)

    def inverse(self, latent: Latent) -> torch.Tensor:
        return self.dense.inverse(latent.parts[0])

    def latent_shapes(self, channels, height, width):
        return [self.shape]


class FlowModel(nn.Module):
    """A normalizing-flow image prior on images scaled to [0, 1], shape (B, C, H, W).

    ``architecture`` holds everything ``build_model`` needs; ``metadata`` holds the model file's
    other keys (normalization, domain, training, metrics).
    """

    def __init__(self, flow: nn.Module, architecture: dict, metadata: dict | None = None):
        super().__init__()
        self.flow = flow
        self.architecture = dict(architecture)
        self.metadata = dict(metadata or {})

    @property
    def channels(self) -> int:
        return int(self.architecture.get("channels", self.architecture.get("shape", [1])[0]))

    @property
    def memory_saving(self) -> bool:
        """Memory-saving gradients: each level's chain of steps stores only its output and
        recomputes its activations by inversion in the backward pass (same gradients, about one
        extra forward pass of compute, memory independent of the number of steps). Off by
        default; the solver switches it on for large images."""
        chains = [m for m in self.modules() if isinstance(m, Chain)]
        return bool(chains) and all(m.memory_saving for m in chains)

    @memory_saving.setter
    def memory_saving(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, Chain):
                m.memory_saving = bool(on)

    @contextlib.contextmanager
    def memory_saving_mode(self, on: bool = True):
        """``with model.memory_saving_mode(): ...`` sets ``memory_saving`` for the block only."""
        chains = [m for m in self.modules() if isinstance(m, Chain)]
        before = [m.memory_saving for m in chains]
        self.memory_saving = on
        try:
            yield self
        finally:
            for m, b in zip(chains, before):
                m.memory_saving = b

    @contextlib.contextmanager
    def cached_constants(self):
        """Within the block, layers whose parameters are all frozen compute their constant terms
        (1x1 convolution weights, their inverses and log-dets) once instead of at every call.
        Leave the block before changing parameters."""
        layers = [m for m in self.modules() if hasattr(m, "cache_constants")]
        for m in layers:
            m.cache_constants(True)
        try:
            yield self
        finally:
            for m in layers:
                m.cache_constants(False)

    def _float_tensor(self) -> torch.Tensor:
        return next(t for t in (*self.parameters(), *self.buffers()) if t.is_floating_point())

    @property
    def device(self) -> torch.device:
        return self._float_tensor().device

    @property
    def dtype(self) -> torch.dtype:
        return self._float_tensor().dtype

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (batch, channels, height, width), got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (batch, channels, height, width), got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(f"this model is for {self.channels}-channel images, got {x.shape[1]} channels")
        return x.to(self.dtype)

    def forward(self, x: torch.Tensor) -> tuple[Latent, torch.Tensor, torch.Tensor]:
        """x -> (latent, log|det| map, log N(z) map); both maps (B, H, W) on the input pixels."""
        return self.flow(self._check(x))

    def log_density_map(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel log-density (B, 1, H, W) in nats; its sum over pixels is ``log_prob(x)``.

        Each log-det and prior term is given to the pixels it comes from: a term at a position of
        level l (after l squeezes) is shared equally by the 2^l x 2^l input pixels of that block,
        channel terms are summed, and an edge row/column's terms stay on that row/column.
        """
        _, ladj, logpz = self(x)
        return (ladj + logpz)[:, None]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of each image (B,) in nats, over its C*H*W dimensions."""
        return self.log_density_map(x).flatten(1).sum(1)

    def encode(self, x: torch.Tensor) -> Latent:
        """z = f(x): the standardised latent code."""
        return self(x)[0]

    def decode(self, latent: Latent) -> torch.Tensor:
        """x = G(z) = f^-1(z): exact inverse of ``encode``."""
        return self.flow.inverse(latent)

    def latent_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        return self.flow.latent_shapes(self.channels, height, width)

    @torch.no_grad()
    def sample(self, n: int, height: int, width: int, temperature: float = 1.0, seed: int | None = None) -> torch.Tensor:
        """n images x = G(T * eps), eps ~ N(0, I) (temperature T scales every latent's std)."""
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if seed is None else seed)
        parts = [
            (temperature * torch.randn((n, *s), generator=gen, dtype=torch.float64)).to(self.device, self.dtype)
            for s in self.latent_shapes(height, width)
        ]
        return self.decode(Latent(parts, (height, width)))

    @torch.no_grad()
    def bits_per_dim(self, x: torch.Tensor, n_bins: int = 256, draws: int = 4, seed: int = 0,
                     bins: str = "unit") -> torch.Tensor:
        """Bits per dimension of the quantised images under uniform dequantization (B,).

        k = round(x * (n_bins - 1)); log p is evaluated at (k + w u) / n_bins, u ~ U(0, 1)^D
        (seeded, mean over ``draws`` draws), and bpd = -(log p + sum log w - D ln n_bins) / (D ln 2),
        D = C*H*W: a code length for the image given its levels (Jensen's bound, as in the papers).

        ``bins="unit"``: w = 1, the papers' definition. ``bins="levels"``: each image is coded on
        the grey levels it actually uses (``level_bins``): a level's bin reaches up to the next
        used level, and the n_bins-bit set of used levels is charged as side information. For a
        full 8-bit image this costs only the side information; for a dim image stretched to [0, 1]
        (every 8th level used) it is the honest code length of the data, which a codec also gets
        for free, where unit bins would charge log2(8) = 3 bits/dim for the empty levels.
        ``bins="best"``: per image the shorter of the two codes, plus one bit saying which.
        """
        if bins == "best":
            unit = self.bits_per_dim(x, n_bins, draws, seed, bins="unit")
            levels = self.bits_per_dim(x, n_bins, draws, seed, bins="levels")
            return torch.minimum(unit, levels) + 1.0 / x[0].numel()
        if bins not in ("unit", "levels"):
            raise ValueError(f"bins must be 'unit', 'levels' or 'best', got {bins!r}")
        x = self._check(x)
        k = torch.round(x.clamp(0, 1) * (n_bins - 1))
        dims = x[0].numel()
        width = level_bins(k, n_bins) if bins == "levels" else torch.ones_like(k)
        log_width = torch.log(width.double()).flatten(1).sum(1)
        side = n_bins * math.log(2) if bins == "levels" else 0.0  # the used-level bitmap, in nats
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for _ in range(draws):
            u = torch.rand(k.shape, generator=gen, dtype=torch.float64).to(x.device, x.dtype)
            logp = self.log_prob((k + width * u) / n_bins).to(torch.float64)
            total += -(logp + log_width - dims * math.log(n_bins) - side) / (dims * math.log(2))
        return total / draws

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.architecture.items())


def level_bins(k: torch.Tensor, n_bins: int = 256) -> torch.Tensor:
    """Per-pixel bin widths (same shape as ``k``, (B, ...) integer levels) of each image's own
    level set: a pixel at level k_i gets the bin [k_i, k_(i+1)) up to the next level the image uses
    (the top level: up to n_bins). The bins of one image are disjoint, so they define a proper
    (sub-normalised) discrete model on the levels it uses."""
    out = torch.empty_like(k)
    for b in range(k.shape[0]):
        levels = torch.unique(k[b])  # sorted
        widths = torch.diff(levels, append=levels.new_tensor([float(n_bins)]))
        out[b] = widths[torch.searchsorted(levels, k[b].contiguous())]
    return out


def build_model(
    kind: str = "glow",
    channels: int = 1,
    levels: int = 3,
    steps: int = 8,
    hidden: int = 64,
    *,
    lu: bool = True,
    matrix=None,
    shape=None,
    seed: int | None = None,
    memory_saving: bool = False,
) -> FlowModel:
    """Build a flow prior.

    kind "glow" | "realnvp" | "nice": multi-scale, fully convolutional, ``levels`` scales of
    ``steps`` steps with coupling networks ``hidden`` channels wide (``lu``: LU-decomposed 1x1
    convolutions for Glow). kind "linear": x = G z with ``matrix`` G (n x n, n = prod(shape)) for
    images of ``shape`` (C, H, W); the model takes G's dtype. ``seed`` makes the random
    initialisation reproducible. ``memory_saving`` sets ``FlowModel.memory_saving`` (gradients
    recomputed by inversion; not part of the architecture).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown flow kind {kind!r}; expected one of {KINDS}")
    if seed is not None:
        torch.manual_seed(seed)
    if kind == "linear":
        if shape is None:
            raise ValueError('build_model("linear") needs shape=(C, H, W)')
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"shape must be (C, H, W), got {shape}")
        n = math.prod(shape)
        g = torch.eye(n, dtype=torch.float64) if matrix is None else torch.as_tensor(matrix)
        flow = LinearFlow(g, shape)
        return FlowModel(flow, {"kind": "linear", "shape": list(shape)})
    for name, value in (("channels", channels), ("levels", levels), ("steps", steps), ("hidden", hidden)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    flow = MultiScaleFlow(kind, int(channels), int(levels), int(steps), int(hidden), lu=lu)
    arch = {"kind": kind, "channels": int(channels), "levels": int(levels), "steps": int(steps),
            "hidden": int(hidden), "lu": bool(lu)}
    model = FlowModel(flow, arch)
    model.memory_saving = memory_saving
    return model
