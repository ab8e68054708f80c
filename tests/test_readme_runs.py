"""Every python block of the README runs as written.

The tour defines the names a reader carries on with (``model``, ``params``,
``x``, ``labels``, ``key``, the digits); the sections after it run their
blocks in order in the tour's namespace, as a reader would run them.  The
verification tutorial and the second-order section set up their own names
and are run, with their printed results asserted, by test_readme_tutorial.py;
the interop section needs the ``interop`` extra.
"""

import importlib.util
import pathlib
import re
import textwrap

import matplotlib
import pytest

matplotlib.use("Agg")

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
TUTORIAL_SECTIONS = ("### Verify your own derivation", "### Second order: the R-operator")  # test_readme_tutorial.py
INTEROP_SECTION = "### Inside Flax and Equinox"


def sections() -> list[tuple[str, list[str]]]:
    """(heading, its python blocks dedented) for every section of the README, in order."""
    parts = re.split(r"^(#{2,3} .*)$", README, flags=re.M)
    found = [("(preamble)", parts[0]), *zip(parts[1::2], parts[2::2])]
    return [(heading, [textwrap.dedent(block) for block in re.findall(r"^ *```python\n(.*?)^ *```", body, re.S | re.M)])
            for heading, body in found]


def run(heading: str, blocks: list[str], namespace: dict) -> None:
    for i, code in enumerate(blocks):
        exec(compile(code, f"README {heading}[{i}]", "exec"), namespace)


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    heading, blocks = next((h, b) for h, b in sections() if b)
    assert heading == "## A short tour"
    namespace: dict = {}
    run(heading, blocks, namespace)
    return namespace


def test_every_block_is_run_by_a_test():
    run_here = [h for h, b in sections() if b and not h.startswith(TUTORIAL_SECTIONS)]
    run_by_tutorial = [h for h, b in sections() if b and h.startswith(TUTORIAL_SECTIONS)]
    assert len(run_by_tutorial) == 2 and len(run_here) >= 7
    assert sum(len(b) for _, b in sections()) >= 13


def test_the_sections_run_in_order_from_the_tour(tour, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the training sections write runs/ and spectrum.png here
    namespace = dict(tour)
    assert namespace["history"]["val_accuracy"][-1] > 0.9
    ran = []
    for heading, blocks in sections()[1:]:
        if blocks and heading != "## A short tour" and not heading.startswith((*TUTORIAL_SECTIONS, INTEROP_SECTION)):
            run(heading, blocks, namespace)
            ran.append(heading)
    printed = capsys.readouterr().out
    assert "labels must be class indices in [0, 10)" in printed  # the refusals section's DataError
    assert "PASSED" in printed  # check_gradients' report
    assert namespace["step"].iterations <= 50 and (tmp_path / "spectrum.png").stat().st_size > 0
    assert (tmp_path / "runs" / "digits-kept" / "best.npz").exists()
    assert len(ran) >= 6


@pytest.mark.skipif(
    importlib.util.find_spec("flax") is None or importlib.util.find_spec("equinox") is None,
    reason="flax or equinox missing: needs the optional extra interop: pip install '.[interop]'",
)
def test_the_interop_section_runs_and_trains(tour):
    heading, blocks = next((h, b) for h, b in sections() if h.startswith(INTEROP_SECTION))
    namespace = dict(tour)
    run(heading, blocks, namespace)
    assert namespace["losses"][-1] < 0.5 * namespace["losses"][0]
    assert float(namespace["loss"]) < 0.5 * namespace["losses"][0]
    assert namespace["log_probs"].shape == (len(namespace["x_test"]), 10)
