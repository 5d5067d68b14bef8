"""The command line as a user meets it: help, version, defaults, --json, overwriting, and
``sample --coeffs`` taking its plan from the coefficient directory."""
import argparse
import json

import numpy as np
import pytest

import iia_jax
from iia_jax import cli, schedules

FIT = ["fit", "--model", "digits", "--solver", "euler", "--steps", "3", "--grid", "karras",
       "--batch", "16", "--fine-steps", "2", "--quality", "none"]


def _subparsers():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"iia-jax {iia_jax.__version__}"


@pytest.mark.parametrize("command", ["demo", "train", "fit", "sample"])
def test_every_option_has_help_and_shows_its_default(command):
    _, commands = _subparsers()
    parser = commands[command]
    text = parser.format_help()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        if action.option_strings and action.default not in (None, argparse.SUPPRESS):
            assert f"(default: {action.default})" in " ".join(text.split()), \
                f"{command} {action.option_strings[0]} does not show its default {action.default!r}"
        elif action.option_strings and not action.required:
            assert "default" in action.help, f"{command} {action.option_strings[0]} never says its default"


def test_one_name_per_meaning():
    """--steps (never --nfe) counts the plan's steps; --batch only ever means fit rows."""
    _, commands = _subparsers()
    for name, parser in commands.items():
        flags = {f for a in parser._actions for f in a.option_strings}
        assert "--nfe" not in flags, name
        if "--batch" in flags:
            assert name in ("fit", "demo"), name


def test_fit_json_then_sample_from_the_stored_plan(tmp_path, capsys):
    coeffs = tmp_path / "coeffs"
    assert cli.main([*FIT, "--json", "--out", str(coeffs)]) == 0
    report = json.loads(capsys.readouterr().out)        # stdout holds only the JSON report
    stored = iia_jax.load_coefficients(coeffs)
    assert report["plan"]["solver"] == "euler" == stored.solver
    assert report["plan"]["steps"] == 3 and report["plan"]["nfe"] == 3
    np.testing.assert_allclose(report["plan"]["sigmas"], schedules.karras(3, 0.002, 80.0), rtol=1e-6)
    assert report["fit_batch"] == 16 and len(report["report"]["kept"]) == 3
    assert np.asarray(report["values"]).shape == tuple(stored.values.shape)

    # no --solver/--steps/--grid: the stored euler, 3 steps, Karras sigmas (not heun, 5, vp_quadratic)
    out = tmp_path / "samples"
    assert cli.main(["sample", "--coeffs", str(coeffs), "--n", "4", "--json", "--out", str(out)]) == 0
    sampled = json.loads(capsys.readouterr().out)
    assert sampled["iia"] and sampled["plan"] == report["plan"]
    x0 = np.load(out / "samples.npz")["samples"]
    plan = iia_jax.plan("euler", schedules.karras(3, 0.002, 80.0))
    x_T = iia_jax.initial_noise(__import__("jax").random.PRNGKey(0), plan, (4, 8, 8, 1))
    expected = iia_jax.iia_sample(iia_jax.pretrained.digits(), plan, stored, x_T)
    np.testing.assert_allclose(x0, np.asarray(expected), rtol=1e-4, atol=1e-4)

    # sample refuses to replace its samples, as fit refuses to replace coefficients
    with pytest.raises(SystemExit, match="pass --overwrite"):
        cli.main(["sample", "--coeffs", str(coeffs), "--n", "4", "--out", str(out)])
    with pytest.raises(SystemExit, match="pass --overwrite"):
        cli.main([*FIT, "--out", str(coeffs)])
    assert cli.main(["sample", "--coeffs", str(coeffs), "--n", "2", "--overwrite", "--out", str(out)]) == 0
    assert np.load(out / "samples.npz")["samples"].shape[0] == 2

    # a plan that disagrees with the stored one is refused, naming the option
    for extra, match in ((["--steps", "4"], "--steps 4 differs"), (["--solver", "heun"], "--solver heun differs"),
                         (["--grid", "vp_quadratic"], "--grid vp_quadratic differs")):
        with pytest.raises(SystemExit, match=match):
            cli.main(["sample", "--coeffs", str(coeffs), *extra, "--out", str(tmp_path / "x")])
    assert cli.main(["sample", "--coeffs", str(coeffs), "--grid", "karras", "--steps", "3", "--n", "2",
                     "--out", str(tmp_path / "y")]) == 0


def test_fit_the_grid_then_sample_it(tmp_path, capsys):
    """``fit --grid fitted`` runs fit_plan with the CLI's fit options (the model's fingerprint
    included) and stores the fitted grid with its coefficients, from which ``sample`` takes it."""
    coeffs = tmp_path / "coeffs"
    args = ["fit", "--model", "digits", "--solver", "euler", "--steps", "3", "--grid", "fitted", "--batch", "32",
            "--fine-steps", "2", "--quality", "none", "--json", "--out", str(coeffs)]
    assert cli.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    stored = iia_jax.load_coefficients(coeffs, fingerprint=cli.load_model("digits").fingerprint)
    np.testing.assert_array_equal(np.asarray(report["plan"]["sigmas"], np.float32), np.asarray(stored.sigmas))
    assert report["report"]["chosen"] in report["report"]["grids"] and stored.solver == "euler"
    out = tmp_path / "samples"
    assert cli.main(["sample", "--coeffs", str(coeffs), "--n", "4", "--out", str(out)]) == 0
    assert np.load(out / "samples.npz")["samples"].shape == (4, 8, 8, 1)


def test_fit_options_reach_the_fit(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_fit(denoiser, plan, x_T, **options):
        seen.update(options)
        raise SystemExit("stop before fitting")

    monkeypatch.setattr(iia_jax, "fit", fake_fit)
    with pytest.raises(SystemExit, match="stop before fitting"):
        cli.main([*FIT, "--refit", "--spread", "free", "--spill-dir", str(tmp_path), "--out", str(tmp_path / "c")])
    assert seen["refit"] is True and seen["match_spread"] is False and seen["fine_steps"] == 2
    assert seen["spill_dir"] == str(tmp_path) and "spill_above" not in seen   # the fit's default
    for flag, expected in (("never", None), ("8", 8 * 2**20)):
        with pytest.raises(SystemExit, match="stop before fitting"):
            cli.main([*FIT, "--spill-above", flag, "--out", str(tmp_path / "c")])
        assert seen["spill_above"] == expected
    with pytest.raises(SystemExit):
        cli.main([*FIT, "--spill-above", "lots", "--out", str(tmp_path / "c")])
    assert "--spill-above" in capsys.readouterr().err


def test_bench_writes_outside_the_repository_by_default():
    from iia_jax.bench.runner import DEFAULT_OUT, config
    args = argparse.Namespace(quick=True, out=None, models=None, grids=None, nfe=None, solvers=None,
                              peers=None, batch=None, sections=None, pairs=None)
    assert config(args).out == DEFAULT_OUT and not DEFAULT_OUT.is_absolute()
    assert config(argparse.Namespace(**{**vars(args), "out": "docs"})).out.name == "docs"


def test_bench_pairs_sets_the_speed_sections_pairs():
    from iia_jax.bench.runner import config
    args = argparse.Namespace(quick=False, out=None, models=None, grids=None, nfe=None, solvers=None,
                              peers=None, batch=None, sections=None, pairs=None)
    assert config(args).overhead_pairs == 100
    assert config(argparse.Namespace(**{**vars(args), "pairs": 101})).overhead_pairs == 101


def test_json_values():
    """Reports hold arrays, numpy scalars, NaN (no judge) and NamedTuples: all plain JSON."""
    from typing import NamedTuple

    class R(NamedTuple):
        kept: object
        pair: tuple
        nested: dict

    out = cli._jsonable(R(np.array([True, False]), (np.float32(0.5), float("nan")),
                          {"a": np.arange(2), "b": np.array([np.nan, 1.0])}))
    assert json.loads(json.dumps(out)) == {"kept": [True, False], "pair": [0.5, None],
                                           "nested": {"a": [0, 1], "b": [None, 1.0]}}
