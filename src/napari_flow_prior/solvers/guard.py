"""The domain check: a reconstruction far less likely under the prior than its validation images
is replaced by a classical one (``baselines.fallback``), with a warning naming why."""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..baselines import fallback
from ..domain import MARGIN_BITS, domain_report
from ..flows import FlowModel
from .density import log_density
from .result import Result


OUT_OF_DOMAIN = ("the reconstruction is far less likely under the prior ({value:.2f} nats/dim) than its "
                 "validation images (1st percentile {typical:.2f}): the image is outside the prior's domain, "
                 "or the measurements leave the prior too much to guess, so the result is the classical "
                 "reconstruction ({baseline}); choose a prior trained on images like this one, measure more, "
                 "or pass domain_check=False to keep the flow's result")
OUT_OF_DOMAIN_MLE = ("the mle reconstruction is far less likely under the prior ({value:.2f} nats/dim) than its "
                     "validation images (1st percentile {typical:.2f}): kept, as it solves A x = y exactly, but the "
                     "image is outside the prior's domain or the measurements leave it too much to guess; "
                     "method='map' with noise_sigma > 0 falls back to a classical reconstruction there")


def domain_guard(result: Result, y, op, model: FlowModel, noise_sigma: float, enabled: bool) -> Result:
    """``result`` with ``params["domain"]`` (``domain.domain_report``) or, for a reconstruction far
    outside the prior's domain, a classical reconstruction in its place (``baselines.fallback``,
    with a warning); method ``mle`` keeps its exact constrained result, with the warning."""
    if not enabled:
        return result
    report = domain_report(result.log_density, model)
    result.params["domain"] = report
    if report["in_domain"] is not False:
        return result
    typical = report["threshold"] + MARGIN_BITS * math.log(2)
    if result.method == "mle":  # asked for the constrained maximum: kept (a classical one breaks A x = y)
        what = OUT_OF_DOMAIN_MLE.format(value=report["log_density"], typical=typical)
        warnings.warn(what, RuntimeWarning, stacklevel=3)
        result.params["domain_warning"] = what
        return result
    name, image = fallback(y, op, noise_sigma)
    what = OUT_OF_DOMAIN.format(value=report["log_density"], typical=typical, baseline=name)
    warnings.warn(what, RuntimeWarning, stacklevel=3)
    image = np.asarray(image, np.float32).reshape(op.shape)
    result.params["fallback"] = what
    result.params["flow_log_density"] = report["log_density"]
    result.image, result.std = image, None
    result.log_density = log_density(np.clip(image, 0, 1), model, device=result.device)
    return result
