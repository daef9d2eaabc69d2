"""Image-adaptive priors: a private copy of the flow whose normalisations and last couplings move
with the image during a ``map`` solve, so that a prior trained on one microscope adapts to another.

Only a copy is adapted (the loaded model, and its file, never change); its weights move in small
steps (``LR_SCALE`` times the image's) and stay near the trained ones (``ANCHOR``), and a
held-out split of the measurements (``select``) decides whether adapting pays for the image.
"""

from __future__ import annotations

import copy

import torch

LR_SCALE = 0.1  # the flow weights' Adam step, relative to the image's
ANCHOR = 1.0  # weight of ||theta - theta_0||^2 / 2, per pixel of the objective


def adaptable_copy(model) -> tuple[torch.nn.Module, list[torch.nn.Parameter], list[torch.Tensor]]:
    """(copy, parameters that adapt, their trained values): every activation normalisation (loc,
    log_scale, the top prior's) and each level's last coupling network."""
    adapted = copy.deepcopy(model)
    for p in adapted.parameters():
        p.requires_grad_(False)
    chosen: dict[str, torch.nn.Parameter] = {}
    last_net: dict[str, str] = {}
    for name, p in adapted.named_parameters():
        if name.endswith(("loc", "log_scale")):
            chosen[name] = p
        if ".net." in name:
            last_net[name.split(".steps.")[0]] = name.split(".net.")[0]
    for name, p in adapted.named_parameters():
        if ".net." in name and name.split(".net.")[0] in last_net.values():
            chosen[name] = p
    params = list(chosen.values())
    for p in params:
        p.requires_grad_(True)
    return adapted, params, [p.detach().clone() for p in params]


def anchor(params, trained) -> torch.Tensor:
    """ANCHOR * ||theta - theta_0||^2 / 2 over the adapting weights."""
    return ANCHOR * 0.5 * sum((p - q).pow(2).sum() for p, q in zip(params, trained))
