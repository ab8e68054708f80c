"""The book's examples in --quick mode: each keeps every claim it prints and writes its plot."""

import importlib
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
pytest.importorskip("sklearn", reason="the datasets need the 'examples' extra (scikit-learn)")
pytest.importorskip("matplotlib", reason="the plots need the 'examples' extra (matplotlib)")

EXAMPLES = {
    "xor": ["xor_boundaries.png"],
    "output_units": ["output_units.png"],
    "depth_vs_width": ["depth_vs_width.png"],
    "linear_regions": ["linear_regions.png"],
    "residual_dense": ["residual_dense.png"],
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_quick_run_keeps_its_claims_and_writes_its_plot(name, tmp_path, capsys):
    example = importlib.import_module(name)
    assert example.main(["--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "CLAIM FAILED" not in printed and printed.count("ok: ") >= 3
    for plot in EXAMPLES[name]:
        assert (tmp_path / plot).read_bytes()[:4] == b"\x89PNG"
        assert f"wrote {tmp_path / plot}" in printed
