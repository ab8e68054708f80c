"""The main demo keeps its three promises (it also exits non-zero if it does not)."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
pytest.importorskip("sklearn", reason="the digits demo needs the 'examples' extra (scikit-learn)")
import quickstart


def test_hand_set_xor_is_exact():
    np.testing.assert_array_equal(quickstart.xor_hand_set(), [0.0, 1.0, 1.0, 0.0])


def test_xor_trains_below_1e_3_from_random_initialization():
    loss, draws, successes = quickstart.xor_trained()
    assert loss < 1e-3 and successes == 1 and draws <= 10


def test_quickstart_main_reaches_its_targets(tmp_path, capsys):
    assert quickstart.main(["--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.split("test accuracy ")[1].split("%")[0])
    assert accuracy >= 97.0
    assert (tmp_path / "quickstart_digits_loss.png").stat().st_size > 0
