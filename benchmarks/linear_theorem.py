"""The linear-case theorem, checked numerically through the library's public API.

X = G Z, Z ~ N(0, I), so p_G = N(0, S) with S = G G^T; G is n x n with singular values s_i = 0.8^i
(i = 1..n) and random orthogonal singular vectors, built with ``nfp.build_model("linear")``. A has
iid N(0, 1) entries (``operators.Matrix``) and 2 <= m < n. The maximum-likelihood estimate
x = argmax p_G(x) subject to A x = A x0 has the closed form x = S A^T (A S A^T)^-1 y, and for a
fixed A its expected squared error over X0 is exactly tr(S - S A^T (A S A^T)^-1 A S). The theorem
bounds it: sum_{i>m} s_i^2 <= E err <= m * sum_{i>m-2} s_i^2.

For every m, at n = 64 (an 8x8 image; S has condition number 0.8^-128 = 2.6e12):

1. ``nfp.reconstruct(y, op, model, method="mle", noise_sigma=0.0)`` with default arguments is
   compared with the closed form (worst relative distance over 3 draws of (A, x0));
2. the mean squared error of those reconstructions over 40 draws of (A, x0) is compared with the
   mean of the exact expectations tr(...) of the same A's: z = mean(err_k - exact_k) / standard
   error (each difference has mean 0 given A_k). The standard error is exact, from the known
   variances 2 tr(C_k^2) of the errors given A_k (C_k the error covariance); the sample standard
   error is also recorded (``sample_z``), but with 40 draws of these skewed errors (a weighted
   chi-square dominated by few directions) it is itself noisy and correlated with the mean;
3. every exact expectation and the Monte-Carlo mean are checked against the bounds.

The iterative path (``optimizer="lbfgs"``: projected L-BFGS to the projected-gradient criterion,
no closed form) is compared with the closed form at n = 36 (condition 6.3e6) and at n = 64. Last,
the constraint residual ||A x - y|| / ||y|| of ``mle`` with a Glow prior (the shipped digits
model, 16x16 digit crops of its TEST split) for ``Matrix``, ``Mask`` and block CS.

    python benchmarks/linear_theorem.py   # writes results/linear_theorem.json, docs/images/linear_theorem.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import napari_flow_prior as nfp

ROOT = Path(__file__).resolve().parents[1]
MS = {64: [4, 8, 16, 24, 32, 40, 48, 56], 36: [4, 9, 18, 27], 16: [4, 8, 12]}


def make_generator(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """G = U diag(s) V^T with random orthogonal U, V and s_i = 0.8^i, i = 1..n."""
    s = 0.8 ** np.arange(1, n + 1)
    u = np.linalg.qr(rng.standard_normal((n, n)))[0]
    v = np.linalg.qr(rng.standard_normal((n, n)))[0]
    return u @ np.diag(s) @ v.T, s


def bounds(s: np.ndarray, m: int) -> tuple[float, float]:
    """(sum_{i>m} s_i^2, m * sum_{i>m-2} s_i^2) with 1-based i."""
    sq = s ** 2
    return float(sq[m:].sum()), float(m * sq[m - 2:].sum())


def closed_form(G: np.ndarray, A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """S A^T (A S A^T)^-1 y = G (A G)^+ y (the least-norm z with A G z = y, mapped by G): forming
    S = G G^T and solving with A S A^T loses digits at condition 1e12."""
    return G @ np.linalg.lstsq(A @ G, y, rcond=None)[0]


def exact_error(G: np.ndarray, A: np.ndarray) -> tuple[float, float]:
    """(E err, Var err) given A: the error x - x0 = -G (I - Q Q^T) Z is N(0, C) with
    C = S - S A^T (A S A^T)^-1 A S = (G N)(G N)^T, Q and N orthonormal bases of the row space of
    A G and its complement (in z), so E err = tr(C) = ||G N||_F^2 and Var err = 2 tr(C^2)."""
    m = A.shape[0]
    q = np.linalg.qr((A @ G).T, mode="complete")[0]
    gn = G @ q[:, m:]
    return float((gn ** 2).sum()), float(2 * ((gn.T @ gn) ** 2).sum())


def model_for(G: np.ndarray, side: int):
    return nfp.build_model("linear", matrix=torch.as_tensor(G), shape=(1, side, side))


def check_m(G, s, model, m, side, rng, draws=40, worst_of=3):
    """Default-argument mle vs the closed form, Monte Carlo over (A, x0) vs the exact expectation,
    and the bounds, for one m."""
    n = G.shape[0]
    errors, exacts, variances, worst, residual = [], [], [], 0.0, 0.0
    for k in range(draws):
        A = rng.standard_normal((m, n))
        x0 = G @ rng.standard_normal(n)
        y = A @ x0
        result = nfp.reconstruct(y, nfp.operators.Matrix(A, (side, side)), model, method="mle", noise_sigma=0.0)
        x = result.image.ravel()
        assert result.image.dtype == np.float64
        if k < worst_of:
            expected = closed_form(G, A, y)
            worst = max(worst, float(np.linalg.norm(x - expected) / np.linalg.norm(expected)))
        residual = max(residual, float(np.linalg.norm(A @ x - y) / np.linalg.norm(y)))
        errors.append(float(((x - x0) ** 2).sum()))
        exact, variance = exact_error(G, A)
        exacts.append(exact)
        variances.append(variance)
    errors, exacts = np.array(errors), np.array(exacts)
    diff = errors - exacts
    se = float(np.sqrt(np.sum(variances)) / draws)  # exact: the errors' variances given each A are known
    sample_se = float(diff.std(ddof=1) / np.sqrt(draws))
    low, high = bounds(s, m)
    mc, exact = float(errors.mean()), float(exacts.mean())
    return {"n": n, "m": int(m), "rel_closed_form": worst, "residual": residual, "draws": draws, "mc": mc,
            "exact": exact, "se": se, "z": float(diff.mean() / se),
            "sample_se": sample_se, "sample_z": float(diff.mean() / sample_se), "lower": low, "upper": high,
            "inside": bool(low <= exacts.min() and exacts.max() <= high and low <= mc <= high)}


def iterative(G, model, m, side, rng, draws=2):
    """The projected L-BFGS path (``optimizer="lbfgs"``) against the closed form: worst relative
    distance over ``draws``, with the stopping reason, steps and seconds of the worst."""
    n = G.shape[0]
    worst = None
    for _ in range(draws):
        A = rng.standard_normal((m, n))
        y = A @ (G @ rng.standard_normal(n))
        t = time.perf_counter()
        result = nfp.reconstruct(y, nfp.operators.Matrix(A, (side, side)), model, method="mle", noise_sigma=0.0,
                                 optimizer="lbfgs")
        expected = closed_form(G, A, y)
        row = {"n": n, "m": int(m), "rel_closed_form": float(np.linalg.norm(result.image.ravel() - expected)
                                                               / np.linalg.norm(expected)),
               "stop": result.params["stop"], "iterations": result.n_iter,
               "projected_gradient": result.params["projected_gradient"],
               "seconds": round(time.perf_counter() - t, 2)}
        if worst is None or row["rel_closed_form"] > worst["rel_closed_form"]:
            worst = row
    return worst


def sweep(side: int = 8, ms=None, seed: int = 0, draws: int = 40):
    rng = np.random.default_rng(seed)
    G, s = make_generator(side * side, rng)
    model = model_for(G, side)
    return [check_m(G, s, model, m, side, rng, draws) for m in (ms or MS[side * side])]


def iterative_sweep(side: int, ms=None, seed: int = 1, draws: int = 2):
    rng = np.random.default_rng(seed)
    G, _ = make_generator(side * side, rng)
    model = model_for(G, side)
    return [iterative(G, model, m, side, rng, draws) for m in (ms or MS[side * side])]


def glow_residual_rows(side: int = 16, iterations: int | None = None, seed: int = 0) -> list[dict]:
    """||A x - y|| / ||y|| (float64) of ``mle`` with the shipped digits Glow for Matrix, Mask and
    block CS on one 16x16 crop of a digit (``sample_data`` digits), default settings unless
    ``iterations``; the domain check is off so that the flow's own result is measured."""
    from napari_flow_prior import operators as ops

    model = nfp.load_model(ROOT / "sample_models" / "digits.safetensors")
    x = digit_crop(side)
    rng = np.random.default_rng(seed)
    n = side * side
    cases = [("matrix", ops.Matrix(rng.standard_normal((n // 3, n)) / np.sqrt(n), (side, side))),
             ("mask", ops.Mask.random((side, side), missing_fraction=0.6, seed=seed)),
             ("cs", ops.GaussianProjection((side, side), ratio=0.3, seed=seed, block=8))]
    rows = []
    for name, op in cases:
        y = op.forward(x.astype(np.float64))
        kw = {} if iterations is None else {"iterations": iterations}
        t = time.perf_counter()
        result = nfp.reconstruct(y, op, model, method="mle", noise_sigma=0.0, domain_check=False, **kw)
        x_hat = result.image.astype(np.float64)
        rows.append({"operator": name, "m": int(op.m), "n": n,
                     "residual": float(np.linalg.norm(op.forward(x_hat) - y) / np.linalg.norm(y)),
                     "stop": result.params["stop"], "iterations": result.n_iter,
                     "log_density_per_pixel": -result.losses[-1],
                     "psnr": float(-10 * np.log10(np.mean((x_hat - x) ** 2))),
                     "seconds": round(time.perf_counter() - t, 2)})
    return rows


def digit_crop(side: int = 16) -> np.ndarray:
    """A ``side`` x ``side`` crop of the digits sample image (values in [0, 1]) with ink in it."""
    from napari_flow_prior.imageio import read_image

    image = np.asarray(read_image(ROOT / "src" / "napari_flow_prior" / "data" / "samples" / "digits.png"), np.float64)
    image = image.squeeze()
    image = (image - image.min()) / max(float(image.max() - image.min()), 1e-12)
    h, w = image.shape[-2:]
    best, crop = -1.0, None
    for r in range(0, h - side + 1, side):
        for c in range(0, w - side + 1, side):
            part = image[r:r + side, c:c + side]
            if part.std() > best:
                best, crop = float(part.std()), part
    return crop


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = [r["m"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.fill_between(m, [r["lower"] for r in rows], [r["upper"] for r in rows], color="0.9", label="theorem's bounds")
    ax.plot(m, [r["lower"] for r in rows], "k--", lw=1, label=r"$\sum_{i>m} s_i^2$")
    ax.plot(m, [r["upper"] for r in rows], "k:", lw=1, label=r"$m \sum_{i>m-2} s_i^2$")
    ax.plot(m, [r["exact"] for r in rows], "o-", label="exact E||x - x0||^2 (mean over the draws of A)")
    ax.errorbar(m, [r["mc"] for r in rows], yerr=[4 * r["se"] for r in rows], fmt="x",
                label=f"mle through reconstruct, {rows[0]['draws']} draws (±4 s.e.)")
    ax.set_yscale("log")
    ax.set_xlabel("measurements m")
    ax.set_ylabel("expected squared error")
    ax.set_title(f"MLE with a linear flow prior, n = {rows[0]['n']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=40, help="draws of (A, x0) per m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default=str(ROOT / "docs" / "images" / "linear_theorem.png"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = sweep(8, seed=args.seed, draws=args.draws)
    print(f"n = 64, default arguments, {args.draws} draws of (A, x0) per m")
    print(f"{'m':>4} {'vs closed form':>14} {'residual':>9} {'MC mean err':>11} {'exact':>11} {'z':>6} "
          f"{'z (sample se)':>13} {'lower':>11} {'upper':>11} inside")
    for r in rows:
        print(f"{r['m']:4d} {r['rel_closed_form']:14.1e} {r['residual']:9.1e} {r['mc']:11.4e} {r['exact']:11.4e} "
              f"{r['z']:+6.2f} {r['sample_z']:+13.2f} {r['lower']:11.4e} {r['upper']:11.4e} {r['inside']}")
    loops = iterative_sweep(6, seed=args.seed + 1) + iterative_sweep(8, seed=args.seed + 2)
    print("iterative path (optimizer='lbfgs'), worst of 2 draws")
    for r in loops:
        print(f"n = {r['n']:2d} m = {r['m']:2d}: {r['rel_closed_form']:.1e} from the closed form ({r['stop']}, "
              f"{r['iterations']} steps, projected gradient {r['projected_gradient']:.1e}, {r['seconds']} s)")
    glow = glow_residual_rows()
    print("Glow (digits prior, 16x16), default arguments")
    for r in glow:
        print(f"{r['operator']:>6} m = {r['m']:3d}: residual {r['residual']:.1e} ({r['stop']}, {r['iterations']} steps, "
              f"{r['psnr']:.2f} dB, {r['seconds']} s)")
    plot(rows, Path(args.figure))
    out = ROOT / "benchmarks" / "results" / "linear_theorem.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"theorem": rows, "iterative": loops, "glow": glow}, indent=1))
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
