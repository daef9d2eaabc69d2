"""The README's self-contained Python examples run, and the values their comments promise are true."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def block_with(text: str) -> str:
    found = [b for b in python_blocks() if text in b]
    assert len(found) == 1, f"expected one README example containing {text!r}, found {len(found)}"
    return found[0]


def test_solver_defaults_example_prints_what_its_comment_says():
    lines = [l for l in block_with("solver_defaults(").splitlines() if l.startswith("solver_defaults(")]
    assert len(lines) == 2
    namespace: dict = {}
    exec("import napari_flow_prior as nfp\nfrom napari_flow_prior.solvers import solver_defaults", namespace)
    for line in lines:
        call, _, comment = line.partition("#")
        assert eval(call, namespace) == ast.literal_eval(comment.strip())


@pytest.mark.parametrize("marker", ["x = sample_image(\"nuclei\", 128)", "model.bits_per_dim(block",
                                    "photons=20, seed=0"])
def test_self_contained_example_runs(marker, capsys):
    source = block_with(marker)
    exec(compile(source, "README.md", "exec"), {"__name__": "readme_example"})
    assert capsys.readouterr().out.strip(), "the example prints its result"
