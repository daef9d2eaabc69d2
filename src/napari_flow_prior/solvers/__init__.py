"""Likelihood-regularized reconstruction: y = A x + noise -> x, with a flow prior p(x).

Methods (``reconstruct(..., method=...)``), one module each:

- ``map``  minimise -log p(y | x) - weight * log p(x) over the image or its latent code;
- ``latent``  minimise ||A G(z) - y||^2 + weight * ||z||^2 over the latent z;
- ``mle``  maximise p(x) subject to A x = y;
- ``posterior``  the mean (and spread) of p(x | y) by annealed Langevin dynamics (``langevin``).

The rest of the package: ``engine`` (``reconstruct_steps``, the driver), ``problem`` (what the
methods share), ``optimize`` (the optimiser loop, CUDA graphs), ``parts`` (ensembles, tiles),
``api`` (one image, channels, stacks, dask), ``density`` (log-density maps), ``guard`` (the domain
check), ``frames`` (symmetry frames), ``checks`` and ``result``. Images are in [0, 1]; see
``normalize``.
"""

from ..devices import available_devices
from ..flows.settings import DEFAULTS, METHODS, SPACES, solver_defaults
from ..likelihood import diagonal_details, estimate_noise_sigma
from ..normalization import normalize, normalize_counts
from .api import reconstruct, reconstruct_stack, reconstruct_stack_steps
from .checks import check_ensemble, check_posterior, check_solve_values, is_integer, is_number
from .density import log_density
from .engine import reconstruct_steps
from .frames import FRAMES, from_frame, symmetry_frames, to_frame
from .result import Cancelled, Progress, Result, run_to_end

__all__ = [
    "Cancelled", "DEFAULTS", "FRAMES", "METHODS", "Progress", "Result", "SPACES", "available_devices",
    "check_ensemble", "check_posterior", "check_solve_values", "diagonal_details", "estimate_noise_sigma",
    "from_frame", "is_integer", "is_number", "log_density", "normalize", "normalize_counts", "reconstruct",
    "reconstruct_stack", "reconstruct_stack_steps", "reconstruct_steps", "run_to_end", "solver_defaults",
    "symmetry_frames", "to_frame",
]
