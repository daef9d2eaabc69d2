"""The napari plugin: Reconstruct, Train prior and Log-density widgets, and sample data.

The work lives in plain generator functions (``run_reconstruction``, ``run_density``,
``run_training``) that scripts call without a viewer; the widgets are thin skins over them.
Importing this package does not import Qt or napari; the widget classes load on first use.
"""

from ._core import (
    OperatorSpec,
    Step,
    model_card,
    run_density,
    run_reconstruction,
    run_to_end,
    run_training,
    save_user_model,
)
from ._sample_data import digits_sample, load_sample, medical_sample, nuclei_sample

_WIDGETS = {
    "ReconstructWidget": "._reconstruct",
    "TrainWidget": "._train",
    "DensityWidget": "._density",
}


def __getattr__(name):
    if name in _WIDGETS:
        from importlib import import_module

        return getattr(import_module(_WIDGETS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DensityWidget", "OperatorSpec", "ReconstructWidget", "Step", "TrainWidget", "digits_sample",
    "load_sample", "medical_sample", "model_card", "nuclei_sample", "run_density", "run_reconstruction",
    "run_to_end", "run_training", "save_user_model",
]
