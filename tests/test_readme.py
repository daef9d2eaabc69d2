"""The README and the docs/ pages: their self-contained Python examples run, the values their
comments promise are true, the README stays a short front door, and every relative link resolves."""
from __future__ import annotations

import ast
import contextlib
import functools
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 15_000                       # bytes: the README is the front door, the manual is in docs/

FENCED = re.compile(r"^```.*?^```", flags=re.S | re.M)
PYTHON = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def pages() -> list[Path]:
    """README.md and every docs/*.md page."""
    return [README, *sorted(DOCS.glob("*.md"))]


def python_blocks(page: Path) -> list[str]:
    return PYTHON.findall(page.read_text(encoding="utf-8"))


def block_with(text: str) -> tuple[Path, str]:
    """The one Python example, in the README or a docs page, that contains ``text``."""
    found = [(page, block) for page in pages() for block in python_blocks(page) if text in block]
    where = [str(page.relative_to(ROOT)) for page, _ in found]
    assert len(found) == 1, f"expected one example containing {text!r} in README.md and docs/, found {where}"
    return found[0]


@functools.lru_cache(maxsize=None)
def run_example(name: str, source: str) -> str:
    """Run an example once (several tests share it) and return what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, name, "exec"), {"__name__": "readme_example"})
    return out.getvalue()


def test_solver_defaults_example_prints_what_its_comment_says():
    _, block = block_with("solver_defaults(")
    lines = [l for l in block.splitlines() if l.startswith("solver_defaults(")]
    assert len(lines) == 2
    namespace: dict = {}
    exec("import napari_flow_prior as nfp\nfrom napari_flow_prior.solvers import solver_defaults", namespace)
    for line in lines:
        call, _, comment = line.partition("#")
        assert eval(call, namespace) == ast.literal_eval(comment.strip())


@pytest.mark.parametrize("marker", ["x = sample_image(\"nuclei\", 128)", "model.bits_per_dim(block",
                                    "photons=20, seed=0", "adapt=True, select=\"off\""])
def test_self_contained_example_runs(marker):
    page, source = block_with(marker)
    assert run_example(str(page.relative_to(ROOT)), source).strip(), "the example prints its result"


def test_the_readme_has_one_python_example_and_it_runs():
    blocks = python_blocks(README)
    assert len(blocks) == 1, f"the README shows one Python example (the rest is in docs/python.md), found {len(blocks)}"
    assert run_example("README.md", blocks[0]).strip(), "the README's example prints its result"


def test_the_readme_is_a_front_door():
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; move detail into docs/ (limit {README_LIMIT})"


def test_the_readme_test_command_is_the_one_ci_runs():
    bash = re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)
    commands = [l.split("#")[0].strip() for b in bash for l in b.splitlines() if l.startswith("python -m pytest")]
    assert len(commands) == 1, commands
    ci = ROOT / ".ci" / "run"
    if not ci.is_file():
        pytest.skip("no .ci/run in this tree")
    assert f'/bin/python" {commands[0][len("python "):]}\n' in ci.read_text(encoding="utf-8")


def test_the_headline_table_matches_the_benchmarks_page():
    readme = README.read_text(encoding="utf-8")
    start = readme.index("| prior | set | problem |")
    table = readme[start:readme.index("\n\n", start)]
    assert table.count("\n") >= 19, "the headline table has its 18 rows"
    assert table in (DOCS / "benchmarks.md").read_text(encoding="utf-8")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCED.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(page: Path) -> list[str]:
    text = FENCED.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)                 # inline code is not a link
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {file.relative_to(ROOT) if ROOT in file.parents else file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_the_docs_pages_are_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link to: {missing}"
