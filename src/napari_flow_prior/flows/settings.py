"""The solver settings a model carries: defaults per (method, operator kind), and a model's own.

A model file may hold ``solver`` metadata, ``{method: {operator kind: {setting: value}}}``, chosen
on its validation images (benchmarks/tune_solver.py); those replace ``DEFAULTS`` for that model.
This module is data and its checks only, so that model files can be read and validated without
the solvers (``flows`` imports nothing from ``solvers``).
"""

from __future__ import annotations

METHODS = ("map", "latent", "mle", "posterior")
SPACES = ("image", "latent")

# Defaults per (method, operator kind): iterations, weight, optimiser, learning rate. Adam with a
# cosine-decaying step: strong-Wolfe L-BFGS stalled on these non-convex objectives in our tests.
# The prior weight lambda = 0.3 won on every validation crop and headline operator of the medical
# prior (benchmarks/tune_solver.py, results/tune_solver.md): a flow's -log p favours smooth images,
# and the full weight over-smooths.
# The same objective optimised over z (x = G(z)) follows another path and, stopped after the same
# iterations, lands elsewhere: on the medical prior's validation crops image space was better on
# every operator, on the digits prior latent space (where image-space MAP collapses towards the
# black background); hence the per-model settings.
# ``box``: image-space iterates are projected onto [0, 1] after every step, the support of the
# data a prior is trained on (the library's intensity range). Outside it a flow's density is
# unconstrained: with the longer-trained digits prior, free deblurring iterates reached pixels of
# -0.36 and log-densities down to -1e21, 14.3 dB against 25.5 in the box (box_diagnosis.py).
# ``ensemble``: how many solves to average, each with the prior seen in another symmetry frame
# (``solvers.frames.FRAMES``); 1 is a single solve.
# ``adapt``: a copy of the flow adapts its normalisations and last couplings to the image as it is
# solved (solvers/adapt.py); the held-out selection may switch it on per image.
# ``lr_decay``: Adam's step decays (cosine) to 5% of ``lr`` over the iteration budget; False keeps
# it constant, which a model file may choose (the medical prior's inpainting: +0.32 dB on validation
# with 8 frames at 100 iterations; the larger late steps keep the iterate off the flatter, blurrier
# optima that a converging step settles into).
_MAP = dict(iterations=300, weight=0.3, optimizer="adam", lr=0.01, lr_decay=True, space="image", box=True, ensemble=1,
            adapt=False)
_MLE = dict(iterations=1000, optimizer="auto", lr=1.0, ensemble=1, gtol=1e-10)  # exact: solvers/mle.py, exact.py
_LATENT = dict(iterations=300, weight=0.0, optimizer="adam", lr=0.01, lr_decay=True, ensemble=1)
# posterior: Langevin steps per chain, chains, the prior's temperature T, and lr = the step factor
# (eta = lr * sigma_t^2; see solvers.langevin)
_POSTERIOR = dict(iterations=300, chains=8, temperature=1.0, lr=0.5, ensemble=1)
DEFAULTS = {
    ("map", "mask"): _MAP, ("map", "blur"): _MAP, ("map", "cs"): _MAP, ("map", "matrix"): _MAP,
    ("latent", "mask"): _LATENT, ("latent", "blur"): _LATENT, ("latent", "cs"): _LATENT,
    ("latent", "matrix"): _LATENT,
    ("mle", "mask"): _MLE, ("mle", "cs"): _MLE, ("mle", "matrix"): _MLE,
    ("posterior", "mask"): _POSTERIOR, ("posterior", "blur"): _POSTERIOR, ("posterior", "cs"): _POSTERIOR,
    ("posterior", "matrix"): _POSTERIOR,
}


def check_solver_settings(solver) -> None:
    """ValueError unless ``solver`` is {method: {operator kind: {setting: value}}} with only the
    (method, kind) pairs and setting names of ``DEFAULTS``, each value of its default's type."""
    if not isinstance(solver, dict):
        raise ValueError(f"expected a mapping, got {type(solver).__name__}")
    methods = sorted({m for m, _ in DEFAULTS})
    for method, kinds in solver.items():
        if method not in methods or not isinstance(kinds, dict):
            raise ValueError(f"unknown method {method!r} or not a mapping of operator kinds "
                             f"(expected one of {methods})")
        for kind, settings in kinds.items():
            if (method, kind) not in DEFAULTS or not isinstance(settings, dict):
                pairs = ", ".join(f"{m}/{k}" for m, k in DEFAULTS)
                raise ValueError(f"unknown method/operator {method}/{kind} (expected one of {pairs})")
            for key, value in settings.items():
                default = DEFAULTS[(method, kind)].get(key)
                if isinstance(default, float):
                    kind_ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                else:
                    kind_ok = isinstance(value, type(default)) and isinstance(value, bool) == isinstance(default, bool)
                if default is None or not kind_ok or (key == "space" and value not in SPACES):
                    raise ValueError(f"{method}/{kind}: setting {key}={value!r} is not one of "
                                     f"{sorted(DEFAULTS[(method, kind)])} with a value like {default!r}")


def solver_defaults(method: str, kind: str, model=None) -> dict:
    """The settings ``reconstruct`` uses when the caller gives none: ``DEFAULTS`` for (method,
    operator kind), updated by the model's own ``solver`` metadata for that pair if it has any."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method == "mle" and kind == "blur":
        raise ValueError("method 'mle' keeps A x = y exactly, which a blur does not allow: its A is square, so an "
                         "invertible PSF fixes the image without the prior and a Gaussian one leaves a null space "
                         "below float64 precision; it works for masks, compressed sensing and matrices; for "
                         "deblurring use method='map' (the prior weighed against the data with noise_sigma) or "
                         "method='latent'")
    kind = kind if kind in ("mask", "blur", "cs") else "matrix"
    settings = dict(DEFAULTS[(method, kind)])
    if model is not None:
        own = (model.metadata.get("solver") or {}).get(method, {}).get(kind, {})
        settings.update({k: v for k, v in own.items() if k in settings})
    return settings
