"""Sample images for File > Open Sample > Flow Prior (from the held-out test split)."""

from __future__ import annotations

from importlib import resources

import numpy as np

SAMPLES = {
    "nuclei": ("nuclei", "fluorescence nuclei (test split)"),
    "medical": ("medical slice", "MNI152 T1 axial slice"),
    "digits": ("digits", "8x8 grid of MNIST test digits"),
}


def load_sample(key: str) -> np.ndarray:
    """The sample image ``key`` ("nuclei", "medical" or "digits") as a uint8 array."""
    from PIL import Image

    if key not in SAMPLES:
        raise ValueError(f"unknown sample {key!r}; known: {sorted(SAMPLES)}")
    path = resources.files("napari_flow_prior") / "data" / "samples" / f"{key}.png"
    with resources.as_file(path) as file, Image.open(file) as img:
        return np.asarray(img.convert("L"))


def _sample(key: str) -> list:
    name, description = SAMPLES[key]
    # "model": the shipped prior for this sample; the widgets choose it when the layer is chosen
    return [(load_sample(key), {"name": name, "metadata": {"sample": description, "model": key}}, "image")]


def nuclei_sample() -> list:
    return _sample("nuclei")


def medical_sample() -> list:
    return _sample("medical")


def digits_sample() -> list:
    return _sample("digits")
