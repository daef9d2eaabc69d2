"""Normalizing flows: invertible layers, multi-scale models, model files."""

from .files import as_model, available_models, load_model, save_model, user_models_dir
from .model import FlowModel, Latent, build_model

__all__ = ["FlowModel", "Latent", "as_model", "available_models", "build_model", "load_model", "save_model", "user_models_dir"]
