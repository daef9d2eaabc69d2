"""The linear-case theorem, checked numerically with the library's own solver.

X = G Z, Z ~ N(0, I), so p_G = N(0, S) with S = G G^T; G is n x n with singular values s_i = 0.8^i
(i = 1..n). A has iid N(0, 1) entries and 4 <= m < n. The maximum-likelihood estimate
x = argmax p_G(x) subject to A x = A x0 has the closed form x = S A^T (A S A^T)^-1 y, and for a
fixed A its expected error over X0 is exactly tr(S - S A^T (A S A^T)^-1 A S). The theorem bounds
the error between sum_{i>m} s_i^2 and m * sum_{i>m-2} s_i^2.

For every m this script (1) runs ``nfp.reconstruct(..., method="mle")`` with ``operators.Matrix``
on the dense linear flow and compares it with the closed form, (2) compares a Monte-Carlo estimate
of the expected error with the exact value (z-score), (3) checks both lie within the bounds, and
plots the sweep over m.

    python benchmarks/linear_theorem.py            # n = 36 (6x6), writes docs/images/linear_theorem.png

n = 36 because the solver is a gradient method: S = G G^T has condition number 0.8^(-2n), 6e6 at
n = 36 but 1e12 at n = 64, where L-BFGS stops short of the closed form for small m (the closed
form, the exact expectation and the Monte-Carlo check do not depend on the solver).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import napari_flow_prior as nfp

ROOT = Path(__file__).resolve().parents[1]


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


def closed_form(S: np.ndarray, A: np.ndarray, y: np.ndarray) -> np.ndarray:
    return S @ A.T @ np.linalg.solve(A @ S @ A.T, y)


def exact_error(S: np.ndarray, A: np.ndarray) -> float:
    SA = S @ A.T
    return float(np.trace(S - SA @ np.linalg.solve(A @ SA, SA.T)))


def check_m(G, s, m, side, rng, n_draws=2000, solver_draws=3, iterations=300):
    """Everything for one m: solver vs closed form, MC vs exact, bounds."""
    n = G.shape[0]
    S = G @ G.T
    model = nfp.build_model("linear", matrix=torch.as_tensor(G), shape=(1, side, side))
    A = rng.standard_normal((m, n))
    op = nfp.operators.Matrix(A, (side, side))
    worst = 0.0
    for _ in range(solver_draws):
        x0 = G @ rng.standard_normal(n)
        y = A @ x0
        result = nfp.reconstruct(y, op, model, method="mle", init="pinv", optimizer="lbfgs", lr=1.0,
                                 iterations=iterations, tol=0)
        expected = closed_form(S, A, y)
        worst = max(worst, float(np.linalg.norm(result.image.ravel() - expected) / np.linalg.norm(expected)))
    X0 = G @ rng.standard_normal((n, n_draws))
    errors = ((closed_form(S, A, A @ X0) - X0) ** 2).sum(0)
    exact = exact_error(S, A)
    mc, se = float(errors.mean()), float(errors.std(ddof=1) / np.sqrt(n_draws))
    low, high = bounds(s, m)
    return {"m": int(m), "solver_rel_error": worst, "exact": exact, "mc": mc, "se": se,
            "z": (mc - exact) / se, "lower": low, "upper": high,
            "inside": bool(low <= exact <= high and low <= mc <= high)}


def sweep(side: int = 8, ms=None, seed: int = 0, n_draws: int = 2000, solver_draws: int = 3, iterations: int = 300):
    rng = np.random.default_rng(seed)
    n = side * side
    G, s = make_generator(n, rng)
    ms = ms or sorted(set(np.linspace(4, n - 1, 12).astype(int)))
    return [check_m(G, s, m, side, rng, n_draws, solver_draws, iterations) for m in ms]


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = [r["m"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.fill_between(m, [r["lower"] for r in rows], [r["upper"] for r in rows], color="0.9", label="theorem's bounds")
    ax.plot(m, [r["lower"] for r in rows], "k--", lw=1, label=r"$\sum_{i>m} s_i^2$")
    ax.plot(m, [r["upper"] for r in rows], "k:", lw=1, label=r"$m \sum_{i>m-2} s_i^2$")
    ax.plot(m, [r["exact"] for r in rows], "o-", label="exact E||x - x0||^2 (given A)")
    ax.errorbar(m, [r["mc"] for r in rows], yerr=[4 * r["se"] for r in rows], fmt="x", label="Monte Carlo (±4 s.e.)")
    ax.set_yscale("log")
    ax.set_xlabel("measurements m")
    ax.set_ylabel("expected squared error")
    ax.set_title(f"MLE with a linear flow prior, n = {rows[0].get('n', '')}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=6, help="image side: n = side^2")
    ap.add_argument("--iterations", type=int, default=1500, help="solver iterations (4 L-BFGS steps each)")
    ap.add_argument("--draws", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default=str(ROOT / "docs" / "images" / "linear_theorem.png"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = sweep(args.side, seed=args.seed, n_draws=args.draws, iterations=args.iterations)
    for r in rows:
        r["n"] = args.side ** 2
    print(f"{'m':>4} {'solver rel. err':>15} {'exact':>11} {'Monte Carlo':>11} {'z':>6} {'lower':>11} {'upper':>11} inside")
    for r in rows:
        print(f"{r['m']:4d} {r['solver_rel_error']:15.2e} {r['exact']:11.4e} {r['mc']:11.4e} {r['z']:6.2f} "
              f"{r['lower']:11.4e} {r['upper']:11.4e} {r['inside']}")
    plot(rows, Path(args.figure))
    out = ROOT / "benchmarks" / "results" / "linear_theorem.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
