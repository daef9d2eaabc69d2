"""Record each shipped prior's typical log-density (``domain.typical_log_density``) on its
validation images in the model file's ``metrics``, for the solvers' domain check.

    PYTHONPATH=src python scripts/typical_density.py --data /work/data [--models nuclei,medical,digits]

The trainer records it for every model it trains; this script adds it to files trained before.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from napari_flow_prior.domain import typical_log_density  # noqa: E402
from napari_flow_prior.flows import load_model, save_model  # noqa: E402
from train_shipped import planes_of, split_files  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--models", default="nuclei,medical,digits")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.models.split(","):
        model = load_model(name)
        typical = typical_log_density(model, planes_of(split_files(args.data, name, "val")))
        metrics = {**model.metadata.get("metrics", {}), "typical_log_density": typical}
        save_model(model, model.metadata["path"], metrics=metrics)
        print(name, json.dumps(typical))


if __name__ == "__main__":
    main()
