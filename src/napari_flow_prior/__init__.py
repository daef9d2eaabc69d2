"""napari-flow-prior: normalizing-flow image priors for inverse problems."""

from .__about__ import __version__
from .flows import FlowModel, Latent, available_models, build_model, load_model, save_model

__all__ = ["FlowModel", "Latent", "__version__", "available_models", "build_model", "load_model", "save_model"]
