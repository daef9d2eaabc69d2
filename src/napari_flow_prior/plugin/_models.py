"""The model behind a chooser: resolve a name, file or model object, and a one-line model card."""

from __future__ import annotations

import math


def resolve_model(model):
    """A loaded model from a model object, a shipped/user model name, or a file path; a
    ``ValueError`` naming the problem otherwise."""
    from ..flows import FlowModel, load_model

    if isinstance(model, FlowModel):
        return model
    if model is None or str(model).strip() == "":
        raise ValueError("choose a model (a shipped or saved model, or a .safetensors file)")
    try:
        return load_model(model)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from None
    except ValueError as err:
        raise ValueError(f"cannot use this model: {err}") from None


def model_card(path_or_name) -> str:
    """One-line summary of a model file (domain, training size, bits/dim) from its metadata only."""
    from ..flows.files import read_metadata, resolve_model_path

    try:
        path = resolve_model_path(path_or_name)
        meta = read_metadata(path)
    except (FileNotFoundError, ValueError) as err:
        return f"not a usable model: {err}"
    arch = meta["architecture"]
    training = meta.get("training") or {}
    metrics = meta.get("metrics") or {}
    parts = [meta.get("domain") or "domain not stated"]
    parts.append(f"{arch.get('kind')} {arch.get('channels', 1)}-channel")
    if training.get("n_images") is not None:
        parts.append(f"trained on {training['n_images']} image(s)")
    for key, label in (("test_bpd", "test"), ("val_bpd", "val")):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{label} {value:.3f} bits/dim")
    return " · ".join(parts)
