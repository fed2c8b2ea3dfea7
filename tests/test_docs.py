"""The Python examples in README.md and docs/ run as written (and their assertions hold)."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300


def _examples():
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)):
            yield pytest.param(block, id=f"{doc.name}-{i}")


def _missing_imports(code: str) -> list[str]:
    """The top-level packages an example imports that are not installed here (torch, onnxruntime, ...)."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return sorted(name for name in names if importlib.util.find_spec(name) is None)


@pytest.mark.parametrize("code", list(_examples()))
def test_example_runs(code, tmp_path, monkeypatch):
    missing = _missing_imports(code)
    if missing:
        pytest.skip(f"the example imports {', '.join(missing)}, which is not installed")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})


def test_missing_optional_packages_skip_the_example_instead_of_failing_it():
    code = "import numpy\nimport surely_not_installed_pkg.sub\nfrom also_absent_pkg import x\nfrom . import y\n"
    assert _missing_imports(code) == ["also_absent_pkg", "surely_not_installed_pkg"]


def test_every_docs_page_has_examples_run_and_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ has no pages"
    assert set(pages) <= set(DOCS)
    unlinked = [p.name for p in pages if f"(docs/{p.name}" not in readme]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


def test_readme_is_a_place_to_start():
    text = (ROOT / "README.md").read_text()
    lines = text.count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it at most {README_MAX_LINES}"
    assert "pip install -e . && xpcnn train\n" in text          # the two commands, exactly
    assert 'pip install -e ".[test]" && python -m pytest\n' in text   # .ci/run runs this one


def _links(doc: pathlib.Path):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if "://" not in target and not target.startswith("mailto:"):
            yield target


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_relative_links_point_to_files_that_exist(doc):
    broken = [t for t in _links(doc) if not (doc.parent / t).exists()]
    assert not broken, f"{doc.name} links to files that do not exist: {broken}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_section_links_name_headings_that_exist(doc):
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", doc.read_text()):
        page = doc.parent / target if target else doc
        if page.suffix == ".md" and page.exists():
            text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
            headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
            if anchor not in headings:
                broken.append(f"{target}#{anchor}")
    assert not broken, f"{doc.name} links to sections that do not exist: {broken}"


EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_scripts_run(path, tmp_path, monkeypatch):
    """Each script in examples/ runs as `python examples/NAME.py` would, and the own-data one learns."""
    import runpy

    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(path), run_name="__example__")
    result = namespace["main"]()
    assert result["accuracy"] > 0.9, result


def test_there_are_example_scripts():
    assert [p.name for p in EXAMPLES] == ["own_data.py"]
