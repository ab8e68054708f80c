"""examples/gradcheck.py: the right swish derivation passes, the slip is caught."""

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import gradcheck


def test_swish_derivative_matches_a_closed_form_value():
    # f'(z) = sigma(z) (1 + z (1 - sigma(z))); at z = 2, sigma = 1 / (1 + e^-2).
    s = 1 / (1 + np.exp(-2.0))
    np.testing.assert_allclose(gradcheck.swish_derivative(np.array(2.0)), s * (1 + 2 * (1 - s)), rtol=1e-15)


def test_gradcheck_example_keeps_its_claims(capsys):
    assert gradcheck.main() == 0
    printed = capsys.readouterr().out
    assert printed.count("PASSED") == 3 and "FAILED: gradients of 1 of 1 leaves" in printed
    assert "the backward of Swish at params[2]['block'][1] is wrong: its g_x" in printed
    assert "lost precision" in printed and "float32 constant of shape (5, 3)" in printed
