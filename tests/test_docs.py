"""The Python examples in README.md and docs/ run as written (and their assertions hold)."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _examples():
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)):
            yield pytest.param(block, id=f"{doc.name}-{i}")


@pytest.mark.parametrize("code", list(_examples()))
def test_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})


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
