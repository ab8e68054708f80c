"""The README's runnable sections run as written, each section's blocks in order in one namespace."""

import pathlib
import re

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()


def run_section(heading: str, label: str) -> dict:
    """Execute the python blocks of the README section under ``heading``; the namespace they leave."""
    section = README.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict = {"block_count": len(blocks)}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README {label}[{i}]", "exec"), namespace)
    return namespace


def test_the_tutorial_runs_and_locates_the_slip(capsys):
    namespace = run_section("### Verify your own derivation", "tutorial")
    assert namespace["block_count"] == 3
    printed = capsys.readouterr().out
    assert "the backward of Swish at params[2]['block'][1] is wrong: its g_x" in printed
    assert namespace["report"].verdict == "derivation"


def test_the_second_order_section_runs_and_passes(capsys):
    namespace = run_section("### Second order: the R-operator", "second order")
    assert namespace["block_count"] == 2
    assert capsys.readouterr().out.split() == ["passed", "True", "passed", "passed"]
    assert namespace["report"].passed
