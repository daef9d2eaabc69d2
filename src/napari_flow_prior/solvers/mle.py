"""Method ``mle``: maximise log p(x) subject to A x = y.

For a mask only the unobserved pixels move; otherwise x = A^+ y + (v - A^+ A v) stays in y's
affine space, the free parameter v moving in the null space of A.
"""

from __future__ import annotations

import numpy as np
import torch

from .frames import to_frame
from .problem import Problem, Setup


def build(s: Setup) -> Problem:
    op, shape, image_shape = s.op, s.shape, s.image_shape
    if op.kind == "mask":
        observed = torch.as_tensor(np.array(op.observed_full), device=s.x0.device).reshape(image_shape)
        free = s.x0.clone().requires_grad_(True)
        params = [free]

        def image():
            return torch.where(observed, s.y.reshape(image_shape), free)
    else:
        # x = x_p + (v - A^+ A v): x_p = A^+ y satisfies A x_p = y, the rest is in null(A)
        x_p = op.pseudo_inverse(s.y).reshape(image_shape)
        v = (s.x0 - x_p).clone().requires_grad_(True)
        params = [v]

        def image():
            null = v - op.pseudo_inverse(op.forward(v.reshape(shape))).reshape(image_shape)
            return x_p + null

    def objective():
        return -s.model.log_prob(to_frame(image(), s.frame)).sum() / s.n_pixels

    return Problem(params, objective, lambda: image().detach())
