"""The README's verification tutorial runs as written, its blocks in order in one namespace."""

import pathlib
import re

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()


def tutorial_blocks() -> list[str]:
    section = README.split("### Verify your own derivation", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_tutorial_runs_and_locates_the_slip(capsys):
    blocks = tutorial_blocks()
    assert len(blocks) == 3
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README tutorial[{i}]", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "the backward of Swish at params[2]['block'][1] is wrong: its g_x" in printed
    assert namespace["report"].verdict == "derivation"


def second_order_blocks() -> list[str]:
    section = README.split("### Second order: the R-operator", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_second_order_section_runs_and_passes(capsys):
    blocks = second_order_blocks()
    assert len(blocks) == 2
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README second order[{i}]", "exec"), namespace)
    assert capsys.readouterr().out.split() == ["passed", "True", "passed", "passed"]
    assert namespace["report"].passed
