"""Model files: safetensors weights plus JSON metadata under fixed keys.

A file holds tensors only (loading can never execute code) and these metadata keys, each a JSON
string: ``format_version``, ``architecture`` (the arguments of ``build_model``),
``normalization`` ({"low_pct", "high_pct", "clip"}), ``domain``, ``training``, ``metrics`` and,
optionally, ``solver``: the reconstruction settings chosen for this prior on its validation
images, ``{method: {operator kind: {setting: value}}}`` (see ``flows.settings``).
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import settings
from .model import KINDS, FlowModel, build_model

FORMAT_VERSION = 1
METADATA_KEYS = ("architecture", "normalization", "domain", "training", "metrics", "solver")
OPTIONAL_KEYS = {"solver": {}}  # absent in files written before the key existed
DEFAULT_NORMALIZATION = {"low_pct": 1.0, "high_pct": 99.8, "clip": True}
SUFFIX = ".safetensors"


def shipped_models_dir() -> Path:
    """The shipped ``sample_models`` folder: inside the installed package (a wheel install), or at
    the repository root (an editable install, where the top-level folder is the only copy)."""
    packaged = Path(str(resources.files("napari_flow_prior"))) / "sample_models"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "sample_models"


def user_models_dir() -> Path:
    """Per-user folder for models trained by the user (``NAPARI_FLOW_PRIOR_MODELS`` overrides)."""
    env = os.environ.get("NAPARI_FLOW_PRIOR_MODELS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "napari-flow-prior" / "models"


def available_models() -> dict[str, Path]:
    """Model names and files: the shipped ones, then the user's (a user's name never hides a
    shipped one)."""
    found: dict[str, Path] = {}
    for folder in (shipped_models_dir(), user_models_dir()):
        if folder.is_dir():
            for path in sorted(folder.glob("*" + SUFFIX)):
                found.setdefault(path.name[: -len(SUFFIX)], path)
    return found


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A shipped or user model name, or a path to a ``.safetensors`` file."""
    text = str(name_or_path)
    models = available_models()
    if text in models:
        return models[text]
    path = Path(text).expanduser()
    if path.is_file():
        return path
    names = ", ".join(models) or "none"
    raise FileNotFoundError(f"no model named or at {text!r}; available models: {names}")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model: FlowModel, path: str | os.PathLike, **metadata) -> Path:
    """Write the model's weights and metadata (its own ``metadata`` updated by the keywords).

    Keywords must be among ``normalization``, ``domain``, ``training``, ``metrics``, ``solver``. The file is
    written to a temporary name and renamed, so an interrupted save never leaves a broken file.
    """
    unknown = set(metadata) - set(METADATA_KEYS)
    if unknown:
        raise ValueError(f"unknown metadata keys {sorted(unknown)}; allowed: {METADATA_KEYS[1:]}")
    meta = {"normalization": DEFAULT_NORMALIZATION, "domain": "", "training": {}, "metrics": {}, "solver": {}}
    meta.update(model.metadata)
    meta.update(metadata)
    check_solver_settings(meta["solver"], path)
    meta["architecture"] = model.architecture
    header = {"format_version": json.dumps(FORMAT_VERSION)}
    header.update({key: json.dumps(meta[key]) for key in METADATA_KEYS})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    os.replace(tmp, path)
    model.metadata.update({k: meta[k] for k in METADATA_KEYS if k != "architecture"})
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The decoded metadata of a model file, checked; ValueError for anything but a model file."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= 100_000_000:
                raise ValueError
            raw = json.loads(handle.read(size))
    except (ValueError, UnicodeDecodeError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path} is not a napari-flow-prior model file (not a readable safetensors file)") from None
    header = raw.get("__metadata__") if isinstance(raw, dict) else None
    if not header or "format_version" not in header:
        raise ValueError(f"{path} is a safetensors file but not a napari-flow-prior model (no format_version)")
    try:
        meta = {key: json.loads(header[key]) for key in ("format_version", *METADATA_KEYS) if key not in OPTIONAL_KEYS}
        meta.update({key: json.loads(header[key]) if key in header else default
                     for key, default in OPTIONAL_KEYS.items()})
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: model metadata is missing or damaged ({err})") from None
    if meta["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: model format version {meta['format_version']} is not supported "
                         f"(this version reads {FORMAT_VERSION})")
    arch = meta["architecture"]
    if not isinstance(arch, dict) or arch.get("kind") not in KINDS:
        raise ValueError(f"{path}: architecture {arch!r} is not one this version can build")
    check_solver_settings(meta["solver"], path)
    return meta


def check_solver_settings(solver, path) -> None:
    """ValueError, naming the file, unless ``solver`` holds only settings ``settings.DEFAULTS`` knows."""
    try:
        settings.check_solver_settings(solver)
    except ValueError as err:
        raise ValueError(f"{path}: solver settings in the model metadata: {err}") from None


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> FlowModel:
    """Load a shipped model by name (see ``available_models()``) or a ``.safetensors`` file.

    The model comes back in eval mode, with its metadata in ``model.metadata`` (plus ``name``,
    ``path`` and ``sha256``). A truncated, corrupted or foreign file raises ValueError.
    """
    path = resolve_model_path(name_or_path)
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: the model file is truncated or corrupted ({err})") from None
    arch = dict(meta["architecture"])
    kind = arch.pop("kind")
    if kind == "linear":
        model = build_model("linear", shape=arch["shape"], matrix=tensors["flow.dense.matrix"])
    else:
        model = build_model(kind, **arch)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not match the architecture {meta['architecture']}: {err}") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path}: the model file holds non-finite weights ({bad[0]}, ...)")
    model.metadata = {k: meta[k] for k in METADATA_KEYS if k != "architecture"}
    model.metadata.update(name=path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name,
                          path=str(path), sha256=file_sha256(path))
    return model.eval().to(device)


def as_model(model: "FlowModel | str | os.PathLike") -> FlowModel:
    """The model itself, or the shipped/user model of that name, or the ``.safetensors`` file at
    that path (loaded), so every public function takes any of them."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if isinstance(model, FlowModel) or hasattr(model, "log_prob"):  # a model, or a wrapper of one
        return model
    raise TypeError(f"model must be a FlowModel, a model name or a .safetensors path, got {type(model).__name__}")
