"""Method ``map``: minimise -log p(y | x) - weight * log p(x) (full log p, log-dets included).

Over the image x (``space="image"``, iterates kept in [0, 1] with ``box``) or over its latent code
z with x = G(z) (``space="latent"``; log p(G(z)) by re-encoding, exact), from a classical warm start.
With ``adapt``, a copy of the flow adapts to the image as it is solved (``adapt``).
"""

from __future__ import annotations

from . import adapt
from .frames import from_frame, to_frame
from .problem import Problem, Setup


def build(s: Setup) -> Problem:
    lam = float(s.settings["weight"])
    model, frame = s.model, s.frame
    flow_params, trained = [], []
    if s.settings.get("adapt"):  # a private copy of the flow adapts with the image (see adapt.py)
        model, flow_params, trained = adapt.adaptable_copy(model)
        s.adapted = model
    if s.settings["space"] == "latent":
        code = s.latent_start()
        params, project = code.parts, None

        def image():
            return from_frame(model.decode(code), frame)
    else:
        x = s.x0.clone().requires_grad_(True)
        params = [x]
        project = (lambda: x.clamp_(0, 1)) if s.settings.get("box") else None  # the prior's support

        def image():
            return x

    def objective():
        x = image()
        value = s.data_term(x) - lam * model.log_prob(to_frame(x, frame)).sum()
        if flow_params:
            value = value + adapt.anchor(flow_params, trained)
        return value / s.n_pixels

    scales = [1.0] * len(params) + [adapt.LR_SCALE] * len(flow_params) if flow_params else None
    return Problem(params + flow_params, objective, lambda: image().detach(), project, lr_scales=scales)
