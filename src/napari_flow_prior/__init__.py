"""napari-flow-prior: normalizing-flow image priors for inverse problems.

    import napari_flow_prior as nfp
    model = nfp.load_model("nuclei")
    op = nfp.operators.Mask.random(image.shape, missing_fraction=0.8, seed=0)
    result = nfp.reconstruct(op.measure(image, noise_sigma=0.01, seed=0), op, model, noise_sigma=0.01)
"""

from . import baselines, likelihood, metrics, operators
from .__about__ import __version__
from .flows import FlowModel, Latent, available_models, build_model, load_model, save_model
from .metrics import psnr, ssim
from .solvers import (
    Cancelled,
    Progress,
    Result,
    available_devices,
    estimate_noise_sigma,
    log_density,
    normalize,
    normalize_counts,
    reconstruct,
    reconstruct_stack,
    reconstruct_stack_steps,
    reconstruct_steps,
)

__all__ = [
    "Cancelled", "FlowModel", "Latent", "Progress", "Result", "__version__", "available_devices",
    "available_models", "baselines", "build_model", "estimate_noise_sigma", "likelihood", "load_model", "log_density",
    "metrics", "normalize", "normalize_counts", "operators", "psnr", "reconstruct", "reconstruct_stack",
    "reconstruct_stack_steps", "reconstruct_steps", "save_model", "ssim",
]
