"""The CLI's conditional path: `--model digits-cond --label --guidance`, and its refusals."""
import numpy as np
import pytest

from iia_jax import cli


def test_fit_then_sample_a_guided_digit(tmp_path):
    coeffs = tmp_path / "coeffs"
    args = ["--model", "digits-cond", "--guidance", "2", "--solver", "euler", "--steps", "3"]
    assert cli.main(["fit", *args, "--batch", "16", "--fine-steps", "2", "--out", str(coeffs)]) == 0
    assert cli.main(["sample", *args, "--label", "7", "--n", "6", "--coeffs", str(coeffs),
                     "--out", str(tmp_path / "s")]) == 0
    saved = np.load(tmp_path / "s" / "samples.npz")
    assert saved["samples"].shape == (6, 8, 8, 1) and np.all(saved["labels"] == 7)
    # coefficients fitted for guidance 2 are refused for guidance 3 (exit code 2, message on stderr)
    other = ["--model", "digits-cond", "--guidance", "3", "--solver", "euler", "--steps", "3"]
    assert cli.main(["sample", *other, "--n", "2", "--coeffs", str(coeffs), "--out", str(tmp_path / "t")]) == 2


@pytest.mark.parametrize("argv, match", [
    (["sample", "--model", "digits", "--label", "3"], "--label needs a conditional model"),
    (["sample", "--model", "digits", "--guidance", "2"], "--guidance needs a conditional model"),
    (["sample", "--model", "digits-cond", "--label", "12"], "--label must be a digit"),
    (["sample", "--grid", "fitted"], "sample takes the fitted grid from --coeffs"),
])
def test_refusals(tmp_path, argv, match):
    with pytest.raises(SystemExit, match=match):
        cli.main([*argv, "--steps", "2", "--n", "2", "--out", str(tmp_path / "x")])
