"""Linear forward operators y = A x for inpainting, deblurring and compressed sensing.

Every operator works on one image of shape ``op.shape`` -- ``(H, W)`` or ``(C, H, W)``, channels
first -- and maps it to a measurement of shape ``op.out_shape``:

==========================  ===========  ============================================
operator                    ``kind``     measurement ``y``
==========================  ===========  ============================================
:class:`Mask`               ``"mask"``   image shape, unobserved pixels are 0
:class:`Blur`               ``"blur"``   image shape, reflect boundary, no wrap-around
:class:`GaussianProjection` ``"cs"``     1-D, length ``op.m`` (block Gaussian sensing)
:class:`Matrix`             ``"matrix"`` 1-D, length ``A.shape[0]``
==========================  ===========  ============================================

Conventions shared by all operators (implemented once in :class:`LinearOperator`):

* ``forward`` (A), ``adjoint`` (A^T), ``pseudo_inverse`` (A^+ or a regularised version),
  ``back_projection`` (= adjoint) and ``measure`` accept numpy arrays or torch tensors and return
  the same kind.
* dtype: float64 input (numpy or torch) is computed and returned in float64; any other numpy input
  is computed and returned in float32. Torch input keeps its device and dtype (float16/bfloat16
  and integer tensors are computed in float32 and cast back) and stays differentiable.
* An optional leading batch axis is accepted: ``(B, *op.shape) -> (B, *op.out_shape)``.
* A wrong shape raises ``ValueError`` naming the expected and the received shape.
* Nothing passed to one call is kept: every method is a pure function of the operator's
  construction parameters.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "LinearOperator",
    "Mask",
    "Blur",
    "GaussianProjection",
    "Matrix",
    "gaussian_psf",
]

_COMPUTE_DTYPES = (torch.float32, torch.float64)


def _check_image_shape(shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as exc:  # pragma: no cover - defensive
        raise ValueError(f"shape must be (H, W) or (C, H, W), got {shape!r}") from exc
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) or (C, H, W) with positive sizes, got {shape}")
    return shape


def _hash(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def _spectral_norm(a: np.ndarray) -> float:
    """Largest singular value (torch LAPACK, so it follows torch's thread settings)."""
    return float(torch.linalg.matrix_norm(torch.from_numpy(np.asarray(a, np.float64)), ord=2))


def _symmetric_index(n: int, before: int, after: int) -> np.ndarray:
    """Indices of a half-sample symmetric extension (numpy 'symmetric' = scipy 'reflect')."""
    j = np.arange(-before, n + after) % (2 * n)
    return np.where(j < n, j, 2 * n - 1 - j).astype(np.int64)


class LinearOperator:
    """Base class: y = A x for images of shape ``self.shape``; subclasses implement ``_forward``,
    ``_adjoint`` (and optionally ``_pseudo_inverse``) on batched torch tensors ``(B, *shape)``."""

    kind = "linear"

    def __init__(self, shape):
        self.shape = _check_image_shape(shape)
        self._cache: dict[tuple, torch.Tensor] = {}
        self._norm: float | None = None

    # ------------------------------------------------------------------ sizes and provenance
    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def n(self) -> int:
        """Number of unknowns (pixels x channels)."""
        return int(np.prod(self.shape))

    @property
    def m(self) -> int:
        """Number of measurements."""
        return int(np.prod(self.out_shape))

    def describe(self) -> dict[str, Any]:
        """JSON-able parameters for provenance (no large arrays)."""
        return {"kind": self.kind, "shape": list(self.shape), "m": self.m, "n": self.n}

    @property
    def nbytes(self) -> int:
        """Bytes held by the operator's stored arrays and cached tensors."""
        total = sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))
        total += sum(t.element_size() * t.numel() for t in self._cache.values())
        return int(total)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({params})"

    # ------------------------------------------------------------------ public maths
    def forward(self, x):
        """y = A x."""
        return self._apply(x, self.shape, self._forward)

    def adjoint(self, y):
        """x = A^T y."""
        return self._apply(y, self.out_shape, self._adjoint)

    def back_projection(self, y):
        """A^T y as an image (same as :meth:`adjoint`; the shape is always ``op.shape``)."""
        return self.adjoint(y)

    def pseudo_inverse(self, y, **kwargs):
        """A (regularised) pseudo-inverse x = A^+ y, for initialisation and display."""
        return self._apply(y, self.out_shape, lambda t: self._pseudo_inverse(t, **kwargs))

    # DeepInverse-style aliases
    __call__ = forward
    A = forward
    A_adjoint = adjoint
    A_dagger = pseudo_inverse

    def measure(self, x, noise_sigma: float = 0.0, seed=None, noise: str = "gaussian",
                photons: float | None = None):
        """y = noise(A x).

        ``noise="gaussian"``: y = A x + noise_sigma * N(0, 1).
        ``noise="poisson"``: y = Poisson(photons * A x) / photons + noise_sigma * N(0, 1)
        (photon-limited imaging with ``photons`` the expected count at intensity 1, plus optional
        Gaussian read noise); needs A x >= 0. ``seed`` makes the noise reproducible; the noise is
        drawn with numpy, so the same seed gives the same noise for numpy and torch input. For
        torch input the result stays differentiable w.r.t. x (the noise is an additive constant).
        """
        if noise_sigma < 0:
            raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
        if noise not in ("gaussian", "poisson"):
            raise ValueError(f"noise must be 'gaussian' or 'poisson', got {noise!r}")
        y = self.forward(x)
        if noise == "gaussian" and noise_sigma == 0:
            return y
        rng = np.random.default_rng(seed)
        clean = (y.detach().cpu().double().numpy() if isinstance(y, torch.Tensor)
                 else np.asarray(y, dtype=np.float64))
        delta = np.zeros_like(clean)
        if noise == "poisson":
            if photons is None or not photons > 0:
                raise ValueError(f"poisson noise needs photons > 0, got {photons}")
            scale = max(1.0, float(np.abs(clean).max()))
            if clean.min() < -1e-6 * scale:
                raise ValueError("poisson noise needs a nonnegative A x "
                                 f"(min {clean.min():.3g}); use noise='gaussian'")
            lam = photons * np.clip(clean, 0.0, None)
            delta += rng.poisson(lam) / photons - clean
        if noise_sigma > 0:
            delta += noise_sigma * rng.standard_normal(clean.shape)
        delta = self._restrict_noise(delta)
        if isinstance(y, torch.Tensor):
            return y + torch.as_tensor(delta, dtype=y.dtype, device=y.device)
        return (y + delta).astype(y.dtype)

    def norm(self) -> float:
        """Operator norm ||A||_2: closed form where known, else :meth:`power_norm`; computed once
        per operator (a pure function of its construction parameters) and cached."""
        if self._norm is None:
            self._norm = float(self._closed_form_norm() or self.power_norm())
        return self._norm

    def _closed_form_norm(self) -> float | None:
        return None

    def power_norm(self, n_iter: int = 100, tol: float = 1e-7, seed: int = 0) -> float:
        """||A||_2 = sqrt(largest eigenvalue of A^T A), by power iteration (float64)."""
        x = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, *self.shape)))
        x /= torch.linalg.vector_norm(x)
        lam = 0.0
        with torch.no_grad():
            for _ in range(n_iter):
                z = self._adjoint(self._forward(x))
                new = float(torch.linalg.vector_norm(z))
                if new == 0.0:
                    return 0.0
                x = z / new
                if abs(new - lam) <= tol * new:
                    lam = new
                    break
                lam = new
        return math.sqrt(lam)

    # ------------------------------------------------------------------ helpers for subclasses
    def _restrict_noise(self, delta: np.ndarray) -> np.ndarray:
        return delta

    def _pseudo_inverse(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def _tensor(self, name: str, array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """``array`` as a tensor on ``like``'s device (float arrays in ``like``'s dtype), cached."""
        array = np.asarray(array)
        dtype = like.dtype if array.dtype.kind in "fc" else None
        key = (name, like.device, dtype)
        t = self._cache.get(key)
        if t is None:
            t = torch.as_tensor(array, device=like.device)
            if dtype is not None:
                t = t.to(dtype)
            self._cache[key] = t
        return t

    def _apply(self, data, in_shape, fn):
        """Convert numpy/torch ``data`` of shape in_shape or (B, *in_shape), run fn on (B, ...)."""
        is_torch = isinstance(data, torch.Tensor)
        if is_torch:
            t = data
            out_dtype = t.dtype if t.is_floating_point() else torch.float32
            if t.dtype not in _COMPUTE_DTYPES:
                t = t.to(torch.float32)
        else:
            arr = np.asarray(data)
            if np.iscomplexobj(arr):
                raise ValueError("complex input is not supported")
            dtype = np.float64 if arr.dtype == np.float64 else np.float32
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=dtype))
        got = tuple(t.shape)
        if got == tuple(in_shape):
            batched = False
            t = t.unsqueeze(0)
        elif len(got) == len(in_shape) + 1 and got[1:] == tuple(in_shape):
            batched = True
        else:
            raise ValueError(f"{type(self).__name__} expects shape {tuple(in_shape)} "
                             f"(or a batch (B, *{tuple(in_shape)})), got {got}")
        out = fn(t)
        if not batched:
            out = out.squeeze(0)
        if is_torch:
            return out.to(out_dtype)
        return out.detach().numpy()


# ---------------------------------------------------------------------------------------- Mask
def _as_bool(array, what: str) -> np.ndarray:
    """A bool array from bools, integers (nonzero = True) or floats that hold only 0 and 1; a
    float mask with other values (a probability map, NaN) is ambiguous and a ValueError."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating) and not np.isin(array, (0, 1)).all():
        raise ValueError(f"a float {what} array must hold only 0 and 1 (got values from {np.nanmin(array):g} "
                         f"to {np.nanmax(array):g}{', and NaN' if np.isnan(array).any() else ''}); "
                         f"pass a bool array, e.g. probability > 0.5")
    if not (np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)):
        raise ValueError(f"{what} must be a numeric or bool array, got dtype {array.dtype}")
    return array.astype(bool)


class Mask(LinearOperator):
    """Inpainting: y = M x (pixelwise product with the 0/1 mask of observed pixels).

    ``observed`` is a bool array of the image shape, or of shape (H, W) for a (C, H, W) image, in
    which case it applies to every channel. The measurement has the image shape with unobserved
    pixels set to 0; ``measure`` adds noise only on observed pixels. A is an orthogonal
    projection, so A^T = A, ||A|| = 1 and the pseudo-inverse is y on observed pixels, 0 elsewhere.
    """

    kind = "mask"

    def __init__(self, observed, shape=None):
        observed = _as_bool(observed, "mask")
        if observed.ndim not in (2, 3):
            raise ValueError(f"mask must be 2-D or 3-D, got shape {observed.shape}")
        super().__init__(observed.shape if shape is None else shape)
        if observed.shape not in (self.shape, self.shape[-2:]):
            raise ValueError(f"mask shape {observed.shape} does not match image shape "
                             f"{self.shape} (or its (H, W) {self.shape[-2:]})")
        if not observed.any():
            raise ValueError("mask leaves no observed pixel")
        self._observed = np.ascontiguousarray(observed)

    # constructors -------------------------------------------------------------------------
    @classmethod
    def from_missing(cls, missing, shape=None) -> "Mask":
        """Mask from a bool array that is True where pixels are missing (e.g. painted ones)."""
        return cls(~_as_bool(missing, "missing"), shape=shape)

    @classmethod
    def random(cls, shape, missing_fraction: float = 0.8, seed=0) -> "Mask":
        """Exactly round(missing_fraction * H * W) pixels missing, chosen uniformly; the same
        pixels in every channel."""
        shape = _check_image_shape(shape)
        if not 0.0 <= missing_fraction < 1.0:
            raise ValueError(f"missing_fraction must be in [0, 1), got {missing_fraction}")
        h, w = shape[-2:]
        n_missing = int(round(missing_fraction * h * w))
        flat = np.ones(h * w, dtype=bool)
        flat[np.random.default_rng(seed).permutation(h * w)[:n_missing]] = False
        return cls(flat.reshape(h, w), shape=shape)

    @classmethod
    def blocks(cls, shape, n_blocks: int = 10, size: int = 16, seed=0) -> "Mask":
        """``n_blocks`` missing squares of side ``size`` at uniform random positions (they may
        overlap)."""
        shape = _check_image_shape(shape)
        h, w = shape[-2:]
        sh, sw = min(int(size), h), min(int(size), w)
        rng = np.random.default_rng(seed)
        missing = np.zeros((h, w), dtype=bool)
        for _ in range(int(n_blocks)):
            r, c = rng.integers(0, h - sh + 1), rng.integers(0, w - sw + 1)
            missing[r:r + sh, c:c + sw] = True
        return cls.from_missing(missing, shape=shape)

    @classmethod
    def lines(cls, shape, n_lines: int = 5, width: int = 1, seed=0,
              orientation: str = "rows") -> "Mask":
        """``n_lines`` missing lines ``width`` pixels wide: dead rows (``"rows"``), dead columns
        (``"cols"``) or straight scratches at random positions and angles (``"random"``)."""
        shape = _check_image_shape(shape)
        h, w = shape[-2:]
        rng = np.random.default_rng(seed)
        missing = np.zeros((h, w), dtype=bool)
        width = max(1, int(width))
        if orientation == "rows":
            for r in rng.integers(0, h, size=int(n_lines)):
                missing[r:r + width, :] = True
        elif orientation == "cols":
            for c in rng.integers(0, w, size=int(n_lines)):
                missing[:, c:c + width] = True
        elif orientation == "random":
            rr, cc = np.mgrid[0:h, 0:w]
            for _ in range(int(n_lines)):
                r0, c0 = rng.uniform(0, h), rng.uniform(0, w)
                theta = rng.uniform(0, np.pi)
                dist = np.abs((rr - r0) * np.cos(theta) - (cc - c0) * np.sin(theta))
                missing |= dist < width / 2.0
        else:
            raise ValueError(f"orientation must be 'rows', 'cols' or 'random', got {orientation!r}")
        return cls.from_missing(missing, shape=shape)

    # properties ---------------------------------------------------------------------------
    @property
    def observed(self) -> np.ndarray:
        """Bool array, True where observed: image shape, or (H, W) shared by all channels."""
        return self._observed

    @property
    def missing(self) -> np.ndarray:
        return ~self._observed

    @property
    def observed_full(self) -> np.ndarray:
        """The observed mask broadcast to the full image shape."""
        return np.broadcast_to(self._observed, self.shape)

    @property
    def m(self) -> int:
        """Number of observed entries (pixels x channels)."""
        return int(self.observed_full.sum())

    @property
    def missing_fraction(self) -> float:
        return 1.0 - float(self._observed.mean())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "missing_fraction": round(self.missing_fraction, 6),
                "per_channel": self._observed.ndim == 3 and len(self.shape) == 3,
                "mask_sha1": _hash(np.packbits(self._observed))}

    def _closed_form_norm(self) -> float:
        return 1.0

    # maths --------------------------------------------------------------------------------
    def _forward(self, x):
        return x * self._tensor("mask", self._observed, x)

    _adjoint = _forward

    def _pseudo_inverse(self, y):
        """y on observed pixels, 0 elsewhere (A^+ = A for a projection)."""
        return self._forward(y)

    def _restrict_noise(self, delta):
        return delta * self._observed


# ---------------------------------------------------------------------------------------- Blur
def gaussian_psf(sigma: float, size: int | None = None) -> np.ndarray:
    """Isotropic Gaussian PSF of side ``2 * ceil(3 sigma) + 1`` (or ``size``), summing to 1."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    size = 2 * math.ceil(3 * sigma) + 1 if size is None else int(size)
    r = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(r ** 2) / (2.0 * sigma ** 2))
    psf = np.outer(g, g)
    return psf / psf.sum()


def _validate_psf(psf) -> np.ndarray:
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 2:
        raise ValueError(f"psf must be 2-D, got shape {psf.shape}")
    if not np.all(np.isfinite(psf)):
        raise ValueError("psf has non-finite values")
    if psf.min() < 0:
        raise ValueError("psf must be nonnegative")
    if not psf.sum() > 0:
        raise ValueError("psf must have a positive sum")
    # even sizes: add a zero row/column at the end so the centre is at (kh // 2, kw // 2)
    pad = [(0, 1 - s % 2) for s in psf.shape]
    psf = np.pad(psf, pad)
    return psf / psf.sum()


class Blur(LinearOperator):
    """Deblurring: y = crop(psf * pad(x)), a same-size convolution with REFLECT boundary.

    The image is extended symmetrically by half the PSF size (numpy mode 'symmetric', the same
    as scipy.ndimage mode 'reflect'), convolved by FFT (linear, never circular: no wrap-around)
    and cropped back, so ``forward`` equals ``scipy.ndimage.convolve(x, psf, mode='reflect')``
    channel by channel. The adjoint is the exact adjoint pad^T conv^T crop^T of that map.
    PSF: Gaussian from ``sigma`` (default 2.0, side 2*ceil(3 sigma)+1) or a user ``psf`` array
    (2-D, finite, nonnegative, positive sum; normalised to sum 1; even sizes get a zero row/column
    appended so the centre is at (kh//2, kw//2)). The same PSF blurs every channel.
    """

    kind = "blur"

    def __init__(self, shape, sigma: float | None = None, psf=None):
        super().__init__(shape)
        if psf is not None and sigma is not None:
            raise ValueError("give either sigma or psf, not both")
        self.sigma = None if psf is not None else float(2.0 if sigma is None else sigma)
        self._psf = _validate_psf(psf) if psf is not None else gaussian_psf(self.sigma)
        kh, kw = self._psf.shape
        h, w = self.shape[-2:]
        self._pad = (kh // 2, kw // 2)
        self._pad_idx_h = _symmetric_index(h, kh // 2, kh // 2)
        self._pad_idx_w = _symmetric_index(w, kw // 2, kw // 2)
        from scipy.fft import next_fast_len

        self._fft_shape = (next_fast_len(h + kh - 1, real=True),
                           next_fast_len(w + kw - 1, real=True))

    @property
    def psf(self) -> np.ndarray:
        """The normalised (odd-sized) PSF."""
        return self._psf

    def describe(self) -> dict[str, Any]:
        d = {**super().describe(), "boundary": "reflect", "psf_shape": list(self._psf.shape)}
        if self.sigma is not None:
            d["sigma"] = self.sigma
        else:
            d["psf_sha1"] = _hash(self._psf)
        return d

    # maths --------------------------------------------------------------------------------
    def _kernel_ft(self, like):
        key = ("psf_ft", like.device, like.dtype)
        k = self._cache.get(key)
        if k is None:
            psf = self._tensor("psf", self._psf, like)
            k = torch.fft.rfft2(psf, s=self._fft_shape)
            self._cache[key] = k
        return k

    def _forward(self, x):
        h, w = self.shape[-2:]
        ph, pw = self._pad
        xp = x.index_select(-2, self._tensor("idx_h", self._pad_idx_h, x))
        xp = xp.index_select(-1, self._tensor("idx_w", self._pad_idx_w, x))
        full = torch.fft.irfft2(torch.fft.rfft2(xp, s=self._fft_shape) * self._kernel_ft(x),
                                s=self._fft_shape)
        return full[..., 2 * ph:2 * ph + h, 2 * pw:2 * pw + w]

    def _adjoint(self, y):
        h, w = self.shape[-2:]
        ph, pw = self._pad
        n1, n2 = self._fft_shape
        z = torch.nn.functional.pad(y, (2 * pw, n2 - 2 * pw - w, 2 * ph, n1 - 2 * ph - h))
        zp = torch.fft.irfft2(torch.fft.rfft2(z) * self._kernel_ft(y).conj(), s=self._fft_shape)
        zp = zp[..., :h + 2 * ph, :w + 2 * pw]
        out = zp.new_zeros((*zp.shape[:-1], w)).index_add(
            -1, self._tensor("idx_w", self._pad_idx_w, y), zp)
        return out.new_zeros((*out.shape[:-2], h, w)).index_add(
            -2, self._tensor("idx_h", self._pad_idx_h, y), out)

    def _pseudo_inverse(self, y, balance: float = 1e-2):
        """Wiener inverse conj(K) Y / (|K|^2 + balance) on the symmetric extension of y to
        (2H, 2W) (exact inverse of the reflect-boundary blur for symmetric PSFs as balance -> 0)."""
        h, w = self.shape[-2:]
        kh, kw = self._psf.shape
        idx_h = np.concatenate([np.arange(h), np.arange(h)[::-1]])
        idx_w = np.concatenate([np.arange(w), np.arange(w)[::-1]])
        ye = y.index_select(-2, torch.as_tensor(idx_h, device=y.device))
        ye = ye.index_select(-1, torch.as_tensor(idx_w, device=y.device))
        s = (2 * h, 2 * w)
        centred = np.zeros(s)
        for i in range(kh):  # wrap the PSF so its centre sits at (0, 0)
            for j in range(kw):
                centred[(i - kh // 2) % s[0], (j - kw // 2) % s[1]] += self._psf[i, j]
        k = torch.fft.rfft2(torch.as_tensor(centred, dtype=y.dtype, device=y.device))
        xe = torch.fft.irfft2(torch.fft.rfft2(ye) * k.conj() / (k.abs() ** 2 + balance), s=s)
        return xe[..., :h, :w]


# ---------------------------------------------------------------------------- GaussianProjection
class GaussianProjection(LinearOperator):
    """Block compressed sensing: y_b = Phi_b x_b for every block x_b of block x block pixels.

    Blocks tile (H, W) in raster order (row of blocks by row of blocks), with channels as the
    outer loop; edge blocks are smaller. A block of n_b pixels gives m_b = ceil(ratio * n_b)
    measurements with N(0, 1/n_b) entries. As in Gan's block CS, all blocks of the same size share
    ONE random matrix (at most four: full, right edge, bottom edge, corner), so the operator stores
    only a few small matrices and applies them as one batched matmul over the unfolded blocks --
    a 1024 x 1024 image at ratio 0.2 needs about 2 MB. ``y`` is 1-D of length ``op.m``, the block
    measurements concatenated in that order. ``norm()`` is exact (largest block-matrix norm);
    ``pseudo_inverse`` is the per-block least-norm solution Phi^T (Phi Phi^T + ridge I)^-1 y.
    """

    kind = "cs"

    def __init__(self, shape, ratio: float = 0.2, seed=0, block: int = 32):
        super().__init__(shape)
        ratio = float(ratio)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        block = int(block)
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.ratio, self.seed, self.block = ratio, seed, block
        c = self.shape[0] if len(self.shape) == 3 else 1
        h, w = self.shape[-2:]
        # row bands and column bands: (first pixel, number of blocks, block size)
        rows = [(0, h // block, block), ((h // block) * block, 1, h % block)]
        cols = [(0, w // block, block), ((w // block) * block, 1, w % block)]
        rng = np.random.default_rng(seed)
        self._groups = []  # (r0, n_r, bh, c0, n_c, bw, matrix key)
        self._mats: dict[tuple[int, int], np.ndarray] = {}
        for r0, n_r, bh in rows:
            for c0, n_c, bw in cols:
                if n_r == 0 or n_c == 0 or bh == 0 or bw == 0:
                    continue
                if (bh, bw) not in self._mats:
                    n_b = bh * bw
                    m_b = self.measurements_per_block(n_b, ratio)
                    self._mats[(bh, bw)] = rng.standard_normal((m_b, n_b)) / math.sqrt(n_b)
                self._groups.append((r0, n_r, bh, c0, n_c, bw))
        # position in y of every entry produced group by group (see _forward)
        n_br, n_bc = -(-h // block), -(-w // block)
        bh_of = np.minimum(block, h - block * np.arange(n_br))
        bw_of = np.minimum(block, w - block * np.arange(n_bc))
        m_of = np.array([[self.measurements_per_block(a * b, ratio) for b in bw_of] for a in bh_of])
        m_of = np.broadcast_to(m_of, (c, n_br, n_bc))
        offsets = (np.cumsum(m_of.ravel()) - m_of.ravel()).reshape(c, n_br, n_bc)
        self._m = int(m_of.sum())
        pos = []
        for r0, n_r, bh, c0, n_c, bw in self._groups:
            m_b = self._mats[(bh, bw)].shape[0]
            off = offsets[:, r0 // block:r0 // block + n_r, c0 // block:c0 // block + n_c]
            pos.append((off.reshape(c, n_r * n_c, 1) + np.arange(m_b)).ravel())
        pos = np.concatenate(pos)
        self._identity_order = bool(np.all(pos == np.arange(self._m)))
        self._pos = None if self._identity_order else pos.astype(np.int64)
        self._inv = None if self._identity_order else np.argsort(pos).astype(np.int64)
        self._pinv_mats: dict[tuple[int, int], np.ndarray] | None = None

    @staticmethod
    def measurements_per_block(n_b: int, ratio: float) -> int:
        """m_b = ceil(ratio * n_b) (rounded to 9 decimals first to avoid 0.1 * 30 > 3)."""
        return int(math.ceil(round(ratio * n_b, 9)))

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self._m,)

    @property
    def m(self) -> int:
        return self._m

    @property
    def nbytes(self) -> int:
        total = super().nbytes + sum(a.nbytes for a in self._mats.values())
        if self._pinv_mats is not None:
            total += sum(a.nbytes for a in self._pinv_mats.values())
        return int(total)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ratio": self.ratio, "block": self.block,
                "seed": self.seed if isinstance(self.seed, (int, type(None))) else str(self.seed)}

    def _closed_form_norm(self) -> float:
        return max(_spectral_norm(a) for a in self._mats.values())

    # maths --------------------------------------------------------------------------------
    def _blocks(self, x, r0, n_r, bh, c0, n_c, bw):
        b, c = x.shape[0], (self.shape[0] if len(self.shape) == 3 else 1)
        region = x[..., r0:r0 + n_r * bh, c0:c0 + n_c * bw].reshape(b, c, n_r, bh, n_c, bw)
        return region.permute(0, 1, 2, 4, 3, 5).reshape(b, c, n_r * n_c, bh * bw)

    def _apply_blocks(self, x, mats, name):
        parts = []
        for r0, n_r, bh, c0, n_c, bw in self._groups:
            mat = self._tensor(f"{name}{bh}x{bw}", mats[(bh, bw)], x)
            parts.append((self._blocks(x, r0, n_r, bh, c0, n_c, bw) @ mat.T).flatten(1))
        z = torch.cat(parts, dim=1)
        return z if self._identity_order else z.index_select(1, self._tensor("inv", self._inv, z))

    def _apply_blocks_t(self, y, mats, name):
        if not self._identity_order:
            y = y.index_select(1, self._tensor("pos", self._pos, y))
        b, c = y.shape[0], (self.shape[0] if len(self.shape) == 3 else 1)
        h, w = self.shape[-2:]
        rows = []
        start = 0
        regions = {}
        for r0, n_r, bh, c0, n_c, bw in self._groups:
            mat = self._tensor(f"{name}{bh}x{bw}", mats[(bh, bw)], y)
            m_b = mat.shape[0]
            size = c * n_r * n_c * m_b
            blocks = y[:, start:start + size].reshape(b, c, n_r * n_c, m_b) @ mat
            start += size
            region = blocks.reshape(b, c, n_r, n_c, bh, bw).permute(0, 1, 2, 4, 3, 5)
            regions[(r0, c0)] = region.reshape(b, c, n_r * bh, n_c * bw)
        for r0 in sorted({g[0] for g in self._groups}):
            rows.append(torch.cat([regions[k] for k in sorted(regions) if k[0] == r0], dim=-1))
        out = torch.cat(rows, dim=-2)
        assert out.shape[-2:] == (h, w)
        return out.reshape(b, *self.shape)

    def _forward(self, x):
        return self._apply_blocks(x, self._mats, "phi")

    def _adjoint(self, y):
        return self._apply_blocks_t(y, self._mats, "phi")

    def _pseudo_inverse(self, y, ridge: float = 1e-6):
        """Per-block least-norm solution Phi^T (Phi Phi^T + ridge I)^-1 y."""
        if self._pinv_mats is None:
            self._pinv_mats = {}
            for key, a in self._mats.items():
                gram = a @ a.T + ridge * np.eye(a.shape[0])
                # (m_b, n_b) matrix P^T with P = A^T (A A^T + ridge)^-1, applied like A^T
                self._pinv_mats[key] = torch.linalg.solve(
                    torch.from_numpy(gram), torch.from_numpy(a)).numpy()
        return self._apply_blocks_t(y, self._pinv_mats, f"pinv{ridge}_")


# ---------------------------------------------------------------------------------------- Matrix
class Matrix(LinearOperator):
    """A dense operator: y = A vec(x), with A of shape (m, C*H*W) and x flattened in C order.

    ``pseudo_inverse`` is the least-norm least-squares solution pinv(A) y (computed once, by SVD,
    on first use); ``norm`` is the exact largest singular value for matrices with min(m, n) <= 2048,
    power iteration otherwise.
    """

    kind = "matrix"

    def __init__(self, A, shape):
        super().__init__(shape)
        if isinstance(A, torch.Tensor):
            A = A.detach().cpu().numpy()
        A = np.asarray(A, dtype=np.float64)
        if A.ndim != 2 or A.shape[1] != self.n:
            raise ValueError(f"matrix must have shape (m, {self.n}) for image shape {self.shape}, "
                             f"got {A.shape}")
        if not np.all(np.isfinite(A)):
            raise ValueError("matrix has non-finite values")
        self._A = np.ascontiguousarray(A)
        self._pinv: np.ndarray | None = None

    @property
    def matrix(self) -> np.ndarray:
        return self._A

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self._A.shape[0],)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "matrix_sha1": _hash(self._A),
                "frobenius": float(np.linalg.norm(self._A))}

    def _closed_form_norm(self) -> float | None:
        if min(self._A.shape) <= 2048:
            return _spectral_norm(self._A)
        return None

    def _forward(self, x):
        return x.reshape(x.shape[0], -1) @ self._tensor("A", self._A, x).T

    def _adjoint(self, y):
        return (y @ self._tensor("A", self._A, y)).reshape(y.shape[0], *self.shape)

    def _pseudo_inverse(self, y):
        if self._pinv is None:
            self._pinv = torch.linalg.pinv(torch.from_numpy(self._A)).numpy()
        return (y @ self._tensor("pinv", self._pinv, y).T).reshape(y.shape[0], *self.shape)
