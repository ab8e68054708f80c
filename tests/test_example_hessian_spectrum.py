"""examples/hessian_spectrum.py --quick keeps its claims: sharpening to 2 / eta, the spectrum's outlier, accuracy."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
pytest.importorskip("sklearn", reason="the digits data needs the 'examples' extra (scikit-learn)")
pytest.importorskip("matplotlib", reason="the plots need the 'examples' extra (matplotlib)")
import hessian_spectrum


def test_quick_run_keeps_its_claims_and_writes_both_plots(tmp_path, capsys):
    assert hessian_spectrum.main(["--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "CLAIM FAILED" not in printed
    for name in ("hessian_spectrum_density.png", "hessian_spectrum_sharpness.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
        assert f"wrote {tmp_path / name}" in printed
