"""``napari-flow-prior demo``: the three measurement operators on a shipped sample image, the flow
prior against every classical baseline, as a table and a PNG figure."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).parent / "data" / "samples"
CASES = (("inpainting 80% missing", "mask:0.8"), ("deblurring sigma 2", "blur:2.0"),
         ("compr. sensing m/n 0.2", "cs:0.2"))
FIGURE_SCALE, FIGURE_CAPTION, FIGURE_PAD = 2, 16, 4  # pixels per image pixel, caption height, gap


def sample_image(name: str = "nuclei", size: int | None = None) -> np.ndarray:
    """A shipped sample (from the test split) in [0, 1], centre-cropped to ``size``."""
    from PIL import Image

    with Image.open(SAMPLES / f"{name}.png") as img:
        image = np.asarray(img.convert("L"), np.float32) / 255
    if size:
        r0, c0 = max(0, (image.shape[0] - size) // 2), max(0, (image.shape[1] - size) // 2)
        image = image[r0:r0 + size, c0:c0 + size]
    return np.ascontiguousarray(image)


def run_demo(out="demo", size: int = 128, model: str = "nuclei", noise_sigma: float = 0.01,
             iterations: int | None = None, device: str = "auto", echo=print) -> list[dict]:
    import napari_flow_prior as nfp

    from .baselines import BASELINES, run_baseline
    from .jobs import parse_operator

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prior = nfp.load_model(model)
    truth = sample_image(model if (SAMPLES / f"{model}.png").exists() else "nuclei", size)
    rows, panels = [], []
    for title, spec in CASES:
        op = parse_operator(spec, truth.shape, seed=0, block=32)
        y = op.measure(truth, noise_sigma=noise_sigma, seed=0)
        t0 = time.time()
        result = nfp.reconstruct(y, op, prior, noise_sigma=noise_sigma, iterations=iterations, device=device)
        estimates = {"flow prior (map)": (result.image, time.time() - t0)}
        for name in BASELINES[op.kind]:
            t0 = time.time()
            estimates[name] = (run_baseline(name, y, op, noise_sigma=noise_sigma), time.time() - t0)
        for method, (estimate, seconds) in estimates.items():
            rows.append({"case": title, "method": method, "psnr": nfp.psnr(truth, estimate),
                         "ssim": nfp.ssim(truth, estimate), "seconds": seconds})
        best = max((k for k in estimates if k != "flow prior (map)"), key=lambda k: nfp.psnr(truth, estimates[k][0]))
        measured = op.back_projection(y) if op.kind == "cs" else y
        panels.append([(truth, "ground truth"), (measured, title), (estimates[best][0], best),
                       (result.image, "flow prior")])
    echo(f"{'case':<30} {'method':<20} {'PSNR dB':>8} {'SSIM':>6} {'s':>6}")
    for r in rows:
        echo(f"{r['case']:<30} {r['method']:<20} {r['psnr']:8.2f} {r['ssim']:6.3f} {r['seconds']:6.1f}")
    figure = out / "demo.png"
    _figure(panels, figure)
    echo(f"figure: {figure}")
    return rows


def _figure(panels, path: Path, scale: int = FIGURE_SCALE) -> None:
    """Rows of (image, caption) panels as one PNG (Pillow only)."""
    from PIL import Image, ImageDraw

    h, w = panels[0][0][0].shape
    cap, pad = FIGURE_CAPTION, FIGURE_PAD
    ph, pw = h * scale + cap, w * scale
    sheet = Image.new("L", (len(panels[0]) * (pw + pad) + pad, len(panels) * (ph + pad) + pad), 255)
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(panels):
        for c, (image, caption) in enumerate(row):
            tile = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize((pw, h * scale), Image.NEAREST)
            x, y = pad + c * (pw + pad), pad + r * (ph + pad)
            sheet.paste(tile, (x, y + cap))
            draw.text((x + 2, y + 2), caption[: max(8, pw // 7)], fill=0)
    sheet.save(path)
