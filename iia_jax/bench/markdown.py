"""The text of ``docs/benchmarks.md``: every table states machine, versions, batch sizes and seeds."""
from __future__ import annotations

from .peers import DIFFUSERS_PEERS, TAIL_RATIO
from .report import GOAL_NFE, fmt, goals, grid_verdict, nfe_table, table, variant_verdict


def _setup(cfg, results, meta):
    extra = results["extra"]
    judge = next((e["judge"] for e in extra.values() if e.get("judge")), None)
    score, score_se = extra["digits"]["reference_quality"] if judge else (None, None)
    lines = [
        "## Setup", "",
        f"- **Command**: `{meta['command']}` ({'quick' if cfg.quick else 'full'} mode), {meta['date']}, "
        f"took {results['seconds'] / 60:.1f} min. The full mode is `python -m iia_jax.bench`, the quick one "
        "`python -m iia_jax.bench --quick`.",
        f"- **Machine**: {meta['machine']}; 1-minute load average during the run "
        f"{min(results['load']):.1f}..{max(results['load']):.1f} (sampled between sections), so other jobs "
        "shared the cores: only ratios measured within this run are reported for speed, and the run took "
        "longer than it would alone.",
        f"- **Versions**: {meta['versions']}; library revision {meta['revision']}.",
        f"- **Models** (EDM denoisers, sigma {0.002}..{80.0}): `separated` = exact 2-D mixture, 8 modes on "
        "the unit circle, std 0.05; `overlapping` = exact 8x8x1 mixture, 10 modes, means U[-1, 1] (seed 11), "
        "std 0.5, weights 1..10; `digits` = the shipped EDM U-Net (`iia_jax.pretrained.digits()`).",
        "- **Batches and seeds**: evaluation noise `80 * N(0, I)` from `PRNGKey(1)`, fit noise from "
        "`PRNGKey(0)`, fit shuffle key `PRNGKey(2)`. Fits use `iia_jax.fit` library defaults (25 % of the fit "
        "batch held out for the never-worse check) unless a variant says otherwise. Per model:", "",
        *table(["model", "evaluation batch", "fit batch", "NFE", "grids", "IIA (library defaults) at",
                "variants (solvers at NFE)"],
               [[m, s.eval_batch, s.fit_batch, list(s.nfes), ", ".join(s.grids),
                 "; ".join(f"{', '.join(i.solvers)} on {', '.join(i.grids)} at NFE {list(i.nfes)}" for i in s.iia),
                 f"{', '.join(s.variant_solvers)} at {list(s.variant_nfes)}" if s.variant_nfes else "—"]
                for m, s in cfg.per_model.items()]), "",
        f"- **Our solvers** (base rows, every NFE and grid): {', '.join(cfg.solvers)}; the IIA variants are "
        f"fitted on the {cfg.variant_grid} grid.",
        "- **NFE**: where the solver has a plan with exactly that NFE (heun and diffusers Heun: 2N - 1, odd only; diffrax Heun 2N - 1; "
        "diffrax Bosh3 3N - 1). NFE is counted (diffusers) or follows from the solver's stages (diffrax, "
        "checked in tests/test_bench.py).",
        f"- **Grids** (sigma 80 -> 0.002 -> 0): {', '.join(cfg.grids)} (see `iia_jax/bench/grids.py`; "
        "time_uniform and quadratic are in the time of a linear-beta VP schedule, `t_i = T (1 - i/N)^p` with "
        "p = 1, 2, as DDIM; they end at a larger last sigma). Every peer gets the same sigmas.",
        "- **Error**: per-sample RMS distance at sigma = 0 to the reference, heun with "
        + ", ".join(f"{m}: {s.ref_steps}" for m, s in cfg.per_model.items())
        + " Karras steps, from the same noise; median over samples (the integration accuracy) and RMSE "
        "(dominated by the few trajectories that switch modes). The reference's own median error (against heun with half "
        "the steps): " + ", ".join(f"{m} {e['reference_error']:.1e}" for m, e in extra.items()) + ".",
        "- **Quality** (digits): " + (
            f"`iia_jax.metrics.quality.digits_score` ({judge}), with its block standard error (se) from "
            "`digits_quality`; the fine reference samples score "
            f"{fmt(score)} ± {fmt(score_se)}. "
            "A quality goal counts as met only where IIA is better by more than 2 se of the difference."
            if judge else "no validated judge was installed; only ODE error is reported."),
        "- **Peers** stepping the same JAX model in the same run: diffusers "
        + ", ".join(f"{p.name} (`{p.cls}`)" for p in DIFFUSERS_PEERS if p.name in cfg.peers)
        + " with their default orders and options, given our grid as their training table (float64) "
        "and timesteps N-1..0, and our model's `eps = (x - D(x, sigma)) / sigma` at `x_vp = x / sqrt(1 + "
        f"sigma^2)`; DEIS ends at {TAIL_RATIO:g} x the last grid sigma instead of 0 (it cannot end at 0). "
        "diffrax Euler, Heun and Bosh3 (3rd order) step on the grid (`StepTo`), then `x_0 = D(x, sigma_{N-1})`; "
        "diffrax Tsit5 with a PID controller runs per sample (`vmap`) at several tolerances and reports its "
        "mean NFE. Peer \"default grid\": time_uniform is diffusers' default for VP schedulers, Karras EDM's; "
        "the goal compares with each peer's best grid, which covers both.",
    ]
    return lines


def _accuracy(cfg, results):
    rows, lines = results["rows"], []
    models = list(dict.fromkeys(r.model for r in rows))
    lines += ["## Goals", "",
              f"At every NFE <= {GOAL_NFE}: our best IIA configuration (any solver, variant and grid) against "
              "every peer on its best grid; `peer on Karras` is the best peer on the EDM default grid."]
    for key, what in (("median", "median ODE error"), ("quality", "digits_score")):
        for m in models:
            if key == "quality" and m != "digits":
                continue
            g, won = goals(rows, m, cfg.nfes(m), key)
            if not g:
                continue
            lines += ["", f"**{m}, {what}: {'met' if won else 'not met'}**", ""]
            lines += table(["NFE", "best IIA", what, "best peer", what, "peer / IIA", "peer on Karras",
                            "peers beaten", "met"], g)
    for m in models:
        nfes = cfg.nfes(m)
        lines += ["", f"## {m}: median ODE error", ""] + nfe_table(rows, m, "median", nfes, cfg.grids)
        lines += ["", f"## {m}: RMSE", ""] + nfe_table(rows, m, "rmse", nfes, cfg.grids)
        if m == "digits" and any(r.quality == r.quality for r in rows if r.model == m):
            lines += ["", "## digits: digits_score (lower is better)", ""] + nfe_table(rows, m, "quality", nfes, cfg.grids)
            lines += ["", "Standard errors of those scores:", ""] + nfe_table(rows, m, "quality_se", nfes, cfg.grids)
    ada = [r for r in rows if r.grid == "adaptive"]
    if ada:
        lines += ["", "## Adaptive peer: diffrax Tsit5 (PID, rtol = atol = tol), mean NFE per sample", ""]
        lines += table(["model", "tol", "mean NFE", "median", "RMSE", "quality"],
                       [[r.model, r.variant, f"{r.nfe:.1f}", fmt(r.median), fmt(r.rmse), fmt(r.quality)] for r in ada])
    var = variant_verdict(rows, cfg.variant_grid)
    if var:
        lines += ["", "## IIA variants against the library defaults", "",
                  "Geometric mean over the variant NFE (heun: odd NFE only) on the "
                  f"{cfg.variant_grid} grid of (variant median error / defaults median error): below 1 the "
                  "variant is better than the default."]
        lines += [""] + table(["solver", "variant"] + sorted({r.model for r in rows}) + ["all"], var)
        better = [f"{v[0]} {v[1]} ({v[-1]})" for v in var
                  if all(c == "—" or float(c) < 1.0 for c in v[2:]) and float(v[-1]) < 0.9]
        lines += ["", "Variants better than the default by more than 10 % (geometric mean) and on every model: "
                  + (", ".join(better) if better else "none") + "."]
        det = [[r.model, r.method, r.variant, int(r.nfe), fmt(r.median), fmt(r.rmse), fmt(r.quality), r.kept,
                f"{r.fit_s:.1f}"] for r in rows if r.family == "IIA" and r.grid == cfg.variant_grid
               and int(r.nfe) in cfg.variant_nfes(r.model)]
        lines += ["", "<details><summary>every variant row</summary>", ""]
        lines += table(["model", "solver", "variant", "NFE", "median", "RMSE", "quality", "kept", "fit s"], det)
        lines += ["", "</details>"]
    gv = grid_verdict(rows, cfg.grids)
    if gv:
        lines += ["", "## Which grid suits IIA", "",
                  f"Geometric-mean median error of IIA (library defaults) over the NFE <= {GOAL_NFE} that every "
                  "grid has, per grid."]
        lines += [""] + table(["model", "solver", "NFE"] + list(cfg.grids) + ["best"], gv)
    return lines


def _within(r, limit):
    """yes / no when the interquartile range is on one side of ``limit``, else inconclusive."""
    if r["q75"] <= limit:
        return "yes"
    return "**no**" if r["q25"] > limit else "inconclusive (noise)"


def _speed(cfg, results):
    s, model = results["speed"], results.get("speed_model")
    if not s:
        return []
    lines = ["## Speed (ratios within this run)", "",
             f"Model: {model}, batch {cfg.speed_batch}, Karras grid, noise `PRNGKey(3..6)`; "
             f"ratios are medians (and interquartile ranges) of {cfg.repeats} interleaved pairs.", ""]
    lines += table(["solver", "NFE", "iia_sample / sample", "IQR", "sample s", "within 3 %",
                    "compile sample s", "compile iia_sample s"],
                   [[r["solver"], r["nfe"], f"{r['ratio']:.3f}", f"{r['q25']:.3f}-{r['q75']:.3f}",
                     f"{r['base_s']:.3f}", _within(r, 1.03),
                     f"{r['compile_sample']:.2f}", f"{r['compile_iia']:.2f}"] for r in s["overhead"]])
    lines += ["", "Python loop stepping a diffusers scheduler around the same jitted `eps` over our jitted "
              "`lax.scan` sampler (same model, NFE and grid):", ""]
    lines += table(["ours", "peer", "NFE", "peer / ours", "IQR", "ours s"],
                   [[r["ours"], r["peer"], r["nfe"], f"{r['ratio']:.2f}", f"{r['q25']:.2f}-{r['q75']:.2f}",
                     f"{r['ours_s']:.3f}"] for r in s["peer"]])
    lines += ["", "Jitted `sample` (euler) over batch and NFE: compile time of the plan "
              "(`jax.jit(...).lower(x).compile()`) and warm wall time (median of 3):", ""]
    lines += table(["NFE", "batch", "compile s", "seconds", "µs per sample-evaluation"],
                   [[r["nfe"], r["batch"], f"{r['compile_s']:.2f}", f"{r['seconds']:.4f}",
                     f"{r['per_eval_us']:.1f}"] for r in s["scaling"]])
    return lines


def _fitcost(cfg, results):
    f, model = results["fitcost"], results.get("speed_model")
    if not f:
        return []
    lines = ["## Fit cost", "",
             f"Model: {model}, Karras grid, fine_steps 16, fit batch {cfg.fit_batch_time}, noise `PRNGKey(7)`. "
             "`evals s` is the warm time of exactly batch x 16 x NFE model evaluations (the Euler sampler on a "
             "grid of 16 x NFE steps); the fit's wall time includes compiling its programs.", ""]
    lines += table(["solver", "NFE", "mode", "fit s", "evals s (warm)", "evals s (incl. compile)", "fit / evals",
                    "within 1.2x"],
                   [[r["solver"], r["nfe"], r["mode"], f"{r['fit_s']:.2f}", f"{r['evals_s']:.2f}",
                     f"{r['evals_cold_s']:.2f}", f"{r['ratio']:.2f}", "yes" if r["ratio"] <= 1.2 else "**no**"]
                    for r in f["time"]])
    lines += ["", f"Peak memory of one fit (model {f['memory_model']}, euler, NFE 5, fine_steps 16): peak RSS of a "
              "fresh process (`VmHWM`, reset just before `fit`) minus its resident set just before `fit`, "
              "noise `PRNGKey(8)`.", ""]
    lines += table(["mode", "fit batch", "chunk_size", "fit's peak MiB", "fit s"],
                   [[r["mode"], r["batch"], r["chunk"] or "none", f"{r['fit_mb']:.0f}", f"{r['fit_s']:.1f}"]
                    for r in f["memory"]])
    return lines


def markdown(results, cfg, meta, images) -> str:
    lines = ["# Benchmarks: IIA against the peers", "",
             "Written by `iia_jax.bench` (`python -m iia_jax.bench [--quick]`). Error is distance to the "
             "exact ODE solution from the same noise, so lower is better everywhere."]
    lines += [""] + [f"![{name}]({name})" for name in images] + [""]
    lines += _setup(cfg, results, meta) + [""]
    if results["rows"]:
        lines += _accuracy(cfg, results) + [""]
    lines += _speed(cfg, results) + [""] + _fitcost(cfg, results)
    return "\n".join(lines).rstrip() + "\n"
