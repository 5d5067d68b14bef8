"""The text of ``docs/benchmarks.md``: every table states machine, versions, batch sizes and seeds."""
from __future__ import annotations

from .peers import DIFFRAX_ADAPTIVE, DIFFUSERS_PEERS, TAIL_RATIO
from .speed import interval_text, within_limit
from .report import GOAL_NFE, fmt, goal_rows, goals, grid_verdict, nfe_table, table, variant_verdict

TIE = 0.1     # a variant beats the defaults when its geometric-mean error ratio is below 1 - TIE
FLAT = 1.25   # chunked peak memory counts as flat when the largest batch needs at most this times the smallest's


def _goal_a(rows, cfg, model, key) -> str:
    g = goal_rows(rows, model, cfg.nfes(model), key)
    if not g:
        return ""
    val = (lambda r: f"{fmt(r.quality)} ± {fmt(r.quality_se, 2)}") if key == "quality" else (lambda r: fmt(r.median))
    lost = [x for x in g if not x.met]
    beyond = " beyond 2 se" if key == "quality" else ""
    if not lost:
        tight = min(g, key=lambda x: getattr(x.top, key) / getattr(x.ours, key))
        return (f"**met** at all {len(g)} NFE <= {GOAL_NFE}; smallest margin "
                f"{getattr(tight.top, key) / getattr(tight.ours, key):.2f}x at NFE {tight.nfe} "
                f"({_name(tight.ours)} {val(tight.ours)} vs {tight.top.method} on {tight.top.grid} {val(tight.top)})")
    return (f"**not met** at NFE {', '.join(str(x.nfe) for x in lost)} of {len(g)}: " + "; ".join(
        f"NFE {x.nfe}: {_name(x.ours)} {val(x.ours)} vs best peer {x.top.method} on {x.top.grid} {val(x.top)}, "
        f"{x.beaten_best}/{x.peers} peers beaten, {x.lost_to} better than IIA{beyond}{_unfitted(rows, model, x)}"
        for x in lost))


def _unfitted(rows, model, goal) -> str:
    """`` (no IIA fitted on GRID at this NFE)`` when the best peer's grid had no IIA row there."""
    fitted = {r.grid for r in rows if r.model == model and r.family == "IIA" and int(r.nfe) == goal.nfe}
    return "" if goal.top.grid in fitted else f" (no IIA fitted on {goal.top.grid} at this NFE)"


def _name(r) -> str:
    return f"{r.method} + IIA" + ("" if r.variant == "defaults" else f" [{r.variant}]") + f" on {r.grid}"


# The fit's time over its unavoidable evaluations: the goals with and without compilation.
FIRST_FIT, SECOND_FIT = 1.5, 1.2
FIT_COST_PAGE = "the goals at their own sizes, with today's defaults: [fit_cost.md](fit_cost.md)"


def _fitcost_date(results) -> str:
    """When the fit-cost section was measured: the last rerun of it, else the first run."""
    dates = [r["started"] for r in results.get("reruns", []) if "fitcost" in r.get("sections", [])]
    return (dates or [results.get("started", "in the first run")])[-1]


def _goal_memory(memory) -> list:
    out = []
    for mode in dict.fromkeys(r["mode"] for r in memory):
        sel = {(r["batch"], r["chunk"] is not None): r["fit_mb"] for r in memory if r["mode"] == mode}
        lo, hi = min(b for b, _ in sel), max(b for b, _ in sel)
        if (lo, True) not in sel or (hi, True) not in sel:
            continue
        growth = sel[hi, True] / max(sel[lo, True], 1.0)
        out.append(f"{mode}: chunked {sel[lo, True]:.0f} MiB at batch {lo} -> {sel[hi, True]:.0f} MiB at {hi} "
                   f"({growth:.2f}x for {hi // lo}x the batch; **{'met' if growth <= FLAT else 'not met'}**, flat "
                   f"meaning <= {FLAT}x); unchunked {sel.get((lo, False), float('nan')):.0f} -> "
                   f"{sel.get((hi, False), float('nan')):.0f} MiB")
    return out


def _goal_defaults(rows, cfg) -> list:
    """(e): per solver, whether a variant beat the defaults by more than ``TIE`` (geometric mean
    over models and NFE); heun's target; the best grid for IIA per model."""
    out = []
    var = [v for v in variant_verdict(rows, cfg.variant_grid) if v[-1] != "—"]
    models = sorted({r.model for r in rows})

    def per_model(v):
        return ", ".join(f"{m} {c}" for m, c in zip(models, v[2:-1]) if c != "—")
    for solver in dict.fromkeys(v[0] for v in var):
        mine = sorted((v for v in var if v[0] == solver), key=lambda v: float(v[-1]))
        wins = [v for v in mine if float(v[-1]) < 1 - TIE]
        ties = [v for v in mine if 1 - TIE <= float(v[-1]) < 1]
        listed = lambda vs: "; ".join(f"{v[1]} {v[-1]}x ({per_model(v)})" for v in vs)  # noqa: E731
        if wins:
            out.append(f"{solver}: **the defaults are not the best here**: {listed(wins)} of the defaults' error")
        elif ties:
            out.append(f"{solver}: **supported** (no variant better by more than {TIE:.0%}); within it: "
                       f"{listed(ties)} of the defaults' error")
        else:
            out.append(f"{solver}: **supported**: every variant is worse (closest {listed(mine[:1])} of the "
                       "defaults' error)")
    for v in (v for v in var if v[0] == "heun" and v[1] == "target=local"):
        ratio = float(v[-1])
        verdict = ("confirms" if ratio > 1 + TIE else "contradicts" if ratio < 1 - TIE
                   else f"neither confirms nor contradicts (within {TIE:.0%})")
        out.append(f"heun's default target, trajectory since this change: target=local gives {v[-1]}x its error "
                   f"(geometric mean; {per_model(v)}): the run **{verdict}** the change")
    gv = grid_verdict(rows, cfg.grids)
    for model in dict.fromkeys(r[0] for r in gv):
        picks = [f"{r[1]} {r[-1]}" for r in gv if r[0] == model]
        out.append(f"grid for IIA on {model} (best geometric mean over the NFE <= {GOAL_NFE} its grids share): "
                   + ", ".join(picks) + (" (so `iia-jax fit/sample --model digits` default to `--grid vp_quadratic`)"
                                         if model == "digits" else ""))
    return out


def summary(results, cfg) -> list:
    """The issue's goals, each met or not, with its numbers."""
    rows, lines = results["rows"], ["## Goals: met or not", ""]
    models = list(dict.fromkeys(r.model for r in rows))
    for m in models:
        text = _goal_a(rows, cfg, m, "median")
        if text:
            lines.append(f"- (a) {m}, median ODE error: {text}.")
    if "digits" in models and any(r.quality == r.quality for r in rows if r.model == "digits"):
        text = _goal_a(rows, cfg, "digits", "quality")
        lines.append(f"- (a) digits, digits_score (a win counts beyond 2 se): {text}.")
    over = results["speed"].get("overhead")
    if over:
        verdicts = [within_limit(r, 1.03) for r in over]
        overall = "met" if all(v == "yes" for v in verdicts) else (
            "not met" if any(v == "**no**" for v in verdicts) else "inconclusive")
        what = "95 % interval" if "ci_hi" in over[0] else "IQR"
        lines.append(f"- (b) `iia_sample` / `sample` at NFE {over[0]['nfe']} (median of paired ratios, {what}): "
                     + ", ".join(f"{r['solver']} {r['ratio']:.3f} ({interval_text(r)})" for r in over)
                     + f": **{overall}** (within 3 % when the {what} is below 1.03).")
    probe = f"this report's small probe, made {_fitcost_date(results)}; {FIT_COST_PAGE}"
    for r in results["fitcost"].get("time", []):
        lines.append(f"- (c) fit / unavoidable evaluations, {r['solver']} {r['mode']} NFE {r['nfe']} "
                     f"batch {r['batch']}: "
                     f"{r['ratio']:.2f}x with compilation ({r['compile_s']:.1f} of {r['fit_s']:.1f} s compiling), "
                     f"{r['ratio_warm']:.2f}x for a second fit with the programs compiled: "
                     f"**{'met' if r['ratio'] <= FIRST_FIT else 'not met'}** with compile time (goal "
                     f"{FIRST_FIT}x), **{'met' if r['ratio_warm'] <= SECOND_FIT else 'not met'}** without (goal "
                     f"{SECOND_FIT}x) ({probe}).")
    for text in _goal_memory(results["fitcost"].get("memory", [])):
        lines.append(f"- (d) fit peak memory, {text} ({probe}).")
    for text in _goal_defaults(rows, cfg):
        lines.append(f"- (e) {text}.")
    return lines


def _cut_short(cfg, results) -> str:
    """`` (cut short: ...)`` when sections or models of ``cfg`` are missing from ``results``."""
    missing = [f"{name} section" for name in ("speed", "fitcost") if name in cfg.sections and not results[name]]
    if "accuracy" in cfg.sections:
        for m in cfg.models:
            grids = {r.grid for r in results["rows"] if r.model == m}
            if not grids:
                missing.append(f"model {m}")
            elif set(cfg.model_grids(m)) - grids:
                missing.append(f"{m} grids {', '.join(g for g in cfg.model_grids(m) if g not in grids)}")
            elif DIFFRAX_ADAPTIVE in cfg.peers and "adaptive" not in grids:
                missing.append(f"{m} variants or adaptive peer")
    return f" (cut short: no {', '.join(missing)})" if missing else ""


def _setup(cfg, results, meta):
    extra = results["extra"]
    judge = next((e["judge"] for e in extra.values() if e.get("judge")), None)
    score, score_se = extra["digits"]["reference_quality"] if judge else (None, None)
    lines = [
        "## Setup", "",
        f"- **Command**: `{meta['command']}` ({'quick' if cfg.quick else 'full'} mode), one process at nice "
        f"level {results.get('nice', '(not recorded)')}, started {results.get('started', '(not recorded)')}, "
        f"took **{results['seconds'] / 60:.1f} min** of wall time{' in all' if results.get('reruns') else ''}"
        f"{_cut_short(cfg, results)}; report written "
        f"{meta['date']}. The full mode is `iia-jax bench --out docs` (also `python -m iia_jax.bench --out docs`), "
        "the quick one `iia-jax bench --quick` (written to `./iia_jax_bench` unless `--out` says otherwise); "
        "`--replot docs/bench_results_full.json --out docs` rewrites this report from the saved raw results.",
        *[f"- **Rerun**: `python -m iia_jax.bench {r['command']}`, started {r['started']}, took "
          f"{r['seconds'] / 60:.1f} min (library revision {r['revision']}"
          f"{'; ' + r['machine'] if r.get('machine') else ''}); its sections and models replace the "
          "first run's." for r in results.get("reruns", [])],
        *[f"- **Note**: {note}" for note in results.get("notes", [])],
        f"- **Machine**: {meta['machine']}; the cores were shared with other jobs: only ratios "
        "measured within this run are reported for speed, and the run took longer than it would alone.",
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
                 f"{', '.join(s.variant_solvers)} at {list(s.variant_nfes)}"
                 + (f" ({', '.join(s.variant_only)} only)" if s.variant_only else "") if s.variant_nfes else "—"]
                for m, s in cfg.per_model.items()]), "",
        f"- **Our solvers** (base rows, every NFE and grid): {', '.join(cfg.solvers)}; the IIA variants are "
        f"fitted on the {cfg.variant_grid} grid.",
        "- **NFE**: where the solver has a plan with exactly that NFE (heun and diffusers Heun: 2N - 1, odd only; "
        "diffrax Heun 2N - 1; "
        "diffrax Bosh3 3N - 1). NFE is counted (diffusers) or follows from the solver's stages (diffrax, "
        "checked in tests/test_bench.py).",
        f"- **Grids** (sigma 80 -> 0.002 -> 0): {', '.join(cfg.grids)} (see `iia_jax/bench/grids.py`; "
        "vp_time_uniform and vp_quadratic are in the time of a linear-beta VP schedule, `t_i = T (1 - i/N)^p` with "
        "p = 1, 2, as DDIM; they end at a larger last sigma). Every peer gets the same sigmas.",
        "- **Error**: per-sample RMS distance at sigma = 0 to the reference, heun with "
        + ", ".join(f"{m}: {s.ref_steps}" for m, s in cfg.per_model.items())
        + " Karras steps, from the same noise; median over samples (the integration accuracy) and RMSE "
        "(dominated by the few trajectories that switch modes). The reference's own median error (against heun "
        "with half "
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
        "mean NFE. A peer's \"default grid\": vp_time_uniform for diffusers (their default timestep spacing is "
        "uniform in time), Karras for diffrax (it has none; EDM's). A peer's \"best grid\" is the best of the "
        "grids this model ran, so on a model that ran only some grids it is the best of those.",
    ]
    return lines


def _accuracy(cfg, results, meta):
    rows, lines = results["rows"], []
    models = list(dict.fromkeys(r.model for r in rows))
    lines += ["## Goal (a): best IIA against every peer, per NFE", "",
              f"At every NFE <= {GOAL_NFE}: our best IIA configuration (any solver, variant and grid run) against "
              "every peer, each on its best grid of this run and on its default grid (diffusers: vp_time_uniform; "
              "diffrax: Karras, EDM's). `best peer` is the best of all peers on any grid. For digits_score a peer "
              "counts as beaten only where IIA is lower by more than 2 standard errors of the difference."]
    for key, what in (("median", "median ODE error"), ("quality", "digits_score")):
        for m in models:
            if key == "quality" and m != "digits":
                continue
            g, won = goals(rows, m, cfg.nfes(m), key)
            if not g:
                continue
            lines += ["", f"**{m}, {what}: {'met' if won else 'not met'}**", ""]
            lines += table(["NFE", "best IIA", what, "best peer (any grid)", what, "peer / IIA",
                            "peers beaten on their default grid", "peers beaten on their best grid", "met"], g)
            lines += ["", _model_caption(cfg, meta, m)]
    for m in models:
        nfes = cfg.nfes(m)
        cap = ["", _model_caption(cfg, meta, m)]
        lines += ["", f"## {m}: median ODE error", ""] + nfe_table(rows, m, "median", nfes, cfg.grids) + cap
        lines += ["", f"## {m}: RMSE", ""] + nfe_table(rows, m, "rmse", nfes, cfg.grids) + cap
        if m == "digits" and any(r.quality == r.quality for r in rows if r.model == m):
            lines += ["", "## digits: digits_score (lower is better)", ""]
            lines += nfe_table(rows, m, "quality", nfes, cfg.grids) + cap
            lines += ["", "Standard errors of those scores:", ""] + nfe_table(rows, m, "quality_se", nfes, cfg.grids)
    ada = [r for r in rows if r.grid == "adaptive"]
    if ada:
        lines += ["", "## Adaptive peer: diffrax Tsit5 (PID, rtol = atol = tol), mean NFE per sample", ""]
        lines += table(["model", "tol", "mean NFE", "median", "RMSE", "quality"],
                       [[r.model, r.variant, f"{r.nfe:.1f}", fmt(r.median), fmt(r.rmse), fmt(r.quality)] for r in ada])
        lines += ["", _all_models_caption(cfg, meta)]
    var = variant_verdict(rows, cfg.variant_grid)
    if var:
        lines += ["", "## IIA variants against the library defaults", "",
                  "Geometric mean over the variant NFE (heun: odd NFE only) on the "
                  f"{cfg.variant_grid} grid of (variant median error / defaults median error): below 1 the "
                  "variant is better than the default."]
        lines += [""] + table(["solver", "variant"] + sorted({r.model for r in rows}) + ["all"], var)
        lines += ["", _all_models_caption(cfg, meta)]
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
                  "grid the solver was fitted on has (column NFE), per grid; — where it was not fitted."]
        lines += [""] + table(["model", "solver", "NFE"] + list(cfg.grids) + ["best"], gv)
        lines += ["", _all_models_caption(cfg, meta)]
    return lines


def _speed(cfg, results, meta):
    s, model = results["speed"], results.get("speed_model")
    if not s:
        return []
    cap = _caption(meta, f"model {model}, Karras grid", section="speed")
    pairs = s["overhead"][0].get("pairs", cfg.repeats)
    lines = ["## Speed (ratios within this run)", "",
             f"Model: {model}, batch {cfg.speed_batch}, Karras grid; `iia_sample` / `sample` is the median of the "
             f"time ratios of {pairs} interleaved pairs (warm; the order inside a pair alternates), with the "
             "median's 95 % interval (sign test) and the ratios' interquartile range. Within 3 %: yes when the "
             "interval lies below 1.03, no when above, else inconclusive.", ""]
    lines += table(["solver", "NFE", "iia_sample / sample", "95 % interval", "IQR", "sample s", "within 3 %",
                    "compile sample s", "compile iia_sample s"],
                   [[r["solver"], r["nfe"], f"{r['ratio']:.3f}", interval_text(r) if "ci_hi" in r else "—",
                     f"{r['q25']:.3f}-{r['q75']:.3f}", f"{r['base_s']:.3f}", within_limit(r, 1.03),
                     f"{r['compile_sample']:.2f}", f"{r['compile_iia']:.2f}"] for r in s["overhead"]])
    lines += ["", cap + f" Batch {cfg.speed_batch}, noise `PRNGKey(3)`; coefficients fitted on its first 16 rows.",
              "", "Python loop stepping a diffusers scheduler around the same jitted `eps` over our jitted "
              "`lax.scan` sampler (same model, NFE and grid):", ""]
    lines += table(["ours", "peer", "NFE", "peer / ours", "95 % interval", "IQR", "ours s"],
                   [[r["ours"], r["peer"], r["nfe"], f"{r['ratio']:.2f}", interval_text(r, 2) if "ci_hi" in r else "—",
                     f"{r['q25']:.2f}-{r['q75']:.2f}", f"{r['ours_s']:.3f}"] for r in s["peer"]])
    peer_pairs = s["peer"][0].get("pairs", max(3, cfg.repeats // 3)) if s["peer"] else 0
    lines += ["", cap + f" Batch {cfg.speed_batch}, noise `PRNGKey(4)`, {peer_pairs} interleaved pairs (the order "
              "alternating); the median's 95 % interval as above.",
              "", "Jitted `sample` (euler) over batch and NFE: compile time of the plan "
              "(`jax.jit(...).lower(x).compile()`) and warm wall time (median of 3):", ""]
    lines += table(["NFE", "batch", "compile s", "seconds", "µs per sample-evaluation"],
                   [[r["nfe"], r["batch"], f"{r['compile_s']:.2f}", f"{r['seconds']:.4f}",
                     f"{r['per_eval_us']:.1f}"] for r in s["scaling"]])
    lines += ["", cap + " Batches as listed, noise `PRNGKey(6)`."]
    return lines


def _fitcost(cfg, results, meta):
    f, model = results["fitcost"], results.get("speed_model")
    if not f:
        return []
    lines = ["## Fit cost", "",
             "The fit's time against its floor at 1,024 digits rows (NFE 5 and 9, both modes, the fit's own "
             "evaluations counted) and its memory from 1k to 100k rows: [fit_cost.md](fit_cost.md) "
             "(`python benchmarks/fit_cost.py`); `fit_plan` against a plain fit: "
             "[fitted_grid.md](fitted_grid.md#goals-digits) (`python benchmarks/fitted_grid.py`). The tables "
             "below are this run's smaller probe.", ""]
    if f.get("time"):
        lines += [f"Model: {model}, Karras grid, fine_steps 16. `evals s` is the warm time of exactly batch x 16 x "
                  "NFE model evaluations (the Euler sampler on a grid of 16 x NFE steps), the least a fit must "
                  "compute. Each mode runs in a fresh process with JAX's persistent compilation cache in an empty "
                  "directory: the first fit compiles its programs (`compile s`: the tracing, lowering and XLA "
                  "compilation JAX reports during that fit), the second, on the same shapes, loads them.", ""]
        lines += table(["solver", "NFE", "mode", "batch", "evals s (warm)", "first fit s", "of which compile s",
                        "first fit / evals", "second fit s", "second fit / evals", "within 1.2x (first, second)"],
                       [[r["solver"], r["nfe"], r["mode"], r["batch"], f"{r['evals_s']:.2f}", f"{r['fit_s']:.2f}",
                         f"{r['compile_s']:.2f}", f"{r['ratio']:.2f}", f"{r['fit_warm_s']:.2f}",
                         f"{r['ratio_warm']:.2f}", f"{_yes(r['ratio'] <= 1.2)}, {_yes(r['ratio_warm'] <= 1.2)}"]
                        for r in f["time"]])
        lines += ["", _caption(meta, f"model {model}", section="fitcost") + f" Fit batch {cfg.fit_batch_time}, "
                  "noise `PRNGKey(7)`."]
    if f.get("memory"):
        lines += ["", f"Peak memory of one fit (model {f['memory_model']}, euler, NFE 5, fine_steps 16): peak RSS "
                  "of a fresh process (`VmHWM`, reset just before `fit`) minus its resident set just before `fit` "
                  "(it includes what XLA allocates to compile).", ""]
        lines += table(["mode", "fit batch", "chunk_size", "fit's peak MiB", "fit s"],
                       [[r["mode"], r["batch"], r["chunk"] or "none", f"{r['fit_mb']:.0f}", f"{r['fit_s']:.1f}"]
                        for r in f["memory"]])
        lines += ["", _caption(meta, f"model {f['memory_model']}", section="fitcost")
                  + " Fit batches as listed, noise `PRNGKey(8)`."]
    return lines


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def measured_on(meta, *, models=(), section=None) -> str:
    """The machine that measured a table: the last rerun of ``section`` (speed, fitcost) or of the
    accuracy rows of ``models`` where one replaced the first run's, else the first run's; a table
    whose models were measured on different machines names each."""
    def machine(model):
        found = meta["machine_short"]
        for r in meta.get("reruns", []):
            covers = (section in r.get("sections", ()) if section else
                      model in r.get("models", ()) and "accuracy" in r.get("sections", ()))
            if covers:
                found = r.get("machine") or "machine not recorded"
        return found
    by = {}
    for model in (models if not section else (None,)):
        by.setdefault(machine(model), []).append(model)
    if len(by) == 1:
        return next(iter(by))
    return "; ".join(f"{', '.join(ms)} on {m}" for m, ms in by.items())


def _caption(meta, what: str, *, models=(), section=None) -> str:
    """The line under a table: the machine that measured it, versions, model; batch and seeds follow."""
    return f"*{measured_on(meta, models=models, section=section)}; {meta['versions_short']}; {what}.*"


def _model_caption(cfg, meta, model) -> str:
    s = cfg.per_model[model]
    return _caption(meta, f"model {model}", models=(model,)) + (
        f" Evaluation batch {s.eval_batch} (noise `80 N(0, I)`, `PRNGKey(1)`), fit batch {s.fit_batch} "
        f"(`PRNGKey(0)`, shuffle `PRNGKey(2)`), reference heun with {s.ref_steps} Karras steps.")


def _all_models_caption(cfg, meta) -> str:
    batches = ", ".join(f"{m} {s.eval_batch}/{s.fit_batch}" for m, s in cfg.per_model.items())
    return _caption(meta, "models as named", models=tuple(cfg.per_model)) + (
        f" Evaluation/fit batch: {batches}; noise `PRNGKey(1)`, fit `PRNGKey(0)`, shuffle `PRNGKey(2)`.")


def markdown(results, cfg, meta, images) -> str:
    lines = ["# Benchmarks: IIA against the peers", "",
             "Written by `iia_jax.bench` (`python -m iia_jax.bench [--quick]`). Error is distance to the "
             "exact ODE solution from the same noise, so lower is better everywhere."]
    if meta.get("few_steps"):
        lines += ["", "The digits model at few steps with 2,000 paired draws per method, enough for quality "
                  "verdicts (this report's digits rows have 128): [few_steps.md](few_steps.md) "
                  f"(`iia-jax bench few-steps --out {cfg.out}`)."]
    lines += [""] + [f"![{name}]({name})" for name in images] + [""]
    lines += summary(results, cfg) + [""]
    lines += _setup(cfg, results, meta) + [""]
    if results["rows"]:
        lines += _accuracy(cfg, results, meta) + [""]
    lines += _speed(cfg, results, meta) + [""] + _fitcost(cfg, results, meta)
    return "\n".join(lines).rstrip() + "\n"
