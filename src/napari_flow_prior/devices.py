"""Choosing the torch device: CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """Devices this machine offers: "auto", "cpu", and "cuda" / "mps" where present."""
    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks CUDA, then MPS, then the CPU; an explicit device must exist here."""
    name = str(device)
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if d in available_devices()))
    if name.split(":")[0] not in available_devices():
        raise ValueError(f"device {name!r} is not available here; choose one of {available_devices()}")
    return torch.device(name)
