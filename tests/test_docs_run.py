"""The code blocks of docs/ run as written (they are documentation, so they must be true)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parent.parent / "docs"
DOCS = sorted(ROOT.rglob("*.md"))  # every page of the site, docs/api/ included
BLOCKS = [
    (doc.relative_to(ROOT).as_posix(), i, code)
    for doc in DOCS
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), re.S))
]


@pytest.mark.parametrize("name, index, code", BLOCKS, ids=[f"{name}[{index}]" for name, index, _ in BLOCKS])
def test_doc_block_runs(name, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("/tmp/purenet-doc-run", str(tmp_path / "run")), f"{name}[{index}]", "exec"), {})


def test_there_are_blocks_to_run():
    assert any(name == "checkpoints.md" for name, _, _ in BLOCKS)
