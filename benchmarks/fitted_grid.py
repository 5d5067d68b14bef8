"""Fitted step grids (``iia_jax.iia.grid.fit_plan``) against fixed grid families, with and without IIA.

    J="--json /tmp/fg.json"        # start from a copy of docs/fitted_grid.json to keep its rows
    nice -n 5 python benchmarks/fitted_grid.py $J --model digits --fixed --nfes 5 8 3 4 6 10
    nice -n 5 python benchmarks/fitted_grid.py $J --model digits --nfes 5 --solvers ipndm euler dpmpp_3m
    V="--init karras --spread free --search-steps 50 --plan-families karras vp_quadratic"
    nice -n 5 python benchmarks/fitted_grid.py $J --model digits --nfes 5 --solvers euler $V  # variants
    nice -n 5 python benchmarks/fitted_grid.py $J --model mixture --nfes 3 5
    python benchmarks/fitted_grid.py $J --write     # docs/fitted_grid.md + PNG from the results
    python benchmarks/fitted_grid.py --model digits --nfes 5 --solvers ipndm --second-call

Each run adds its rows to ``--json`` (default /tmp/fitted_grid.json); ``--write`` rewrites the
doc from everything stored there, so the parts, models and NFEs can be run separately on a busy
machine.
NFE that a solver cannot take exactly (heun: odd NFE ``2N - 1`` only) map to the largest one
below (heun: 4 -> 3, 6 -> 5, 8 -> 7, 10 -> 9).

Common setup: fit noise ``80 N(0, I)`` (``--fit-batch`` draws, seed 1), evaluation noise
``--eval-batch`` fresh draws (seed 2); sigma 0.002..80.  Error: median per-sample RMS error (and
RMSE) at sigma = 0 against heun on 64 Karras steps (NFE 127) from the same evaluation noise.
Quality (digits): ``iia_jax.metrics.digits_quality``'s ``score`` (``digits_score``) and its
jackknife ``score_se``; paired differences by ``score_difference(..., paired=True)``.

``--fixed`` (the cheap part): per solver and NFE, the ordinary ``iia_jax.fit`` (defaults,
``--fine-steps``, key 0) on all fit draws for each of ``--families`` (Karras rho 7, log-SNR
uniform), then base and IIA on the evaluation noise.  "best" is the family with the lowest IIA
error on the evaluation noise itself (a choice that favours the fixed grids).  The samples of
Karras and of the best family are kept in ``--samples`` for the paired quality comparisons below.

Default (the fitted grid): one ``fit_plan`` on the fit draws (a quarter is its judge; key 0)
ranks every fixed family (Karras rho 7 and 3, log-SNR uniform, VP-time quadratic) by its base
sampler on the judge rows, fits the ``--shortlist`` best with the ordinary ``fit`` and searches a
grid over ``--search-rows`` rows from ``--init`` (default ``best``: the fitted family its judge
ranks best), its last non-zero sigma free.  Then every candidate grid, base and (where fitted)
IIA, is measured on the evaluation noise; on digits, the returned grid's IIA score is compared
(paired, same noise) with the IIA of the fitted family that is best on the evaluation noise.
Cost: ``fit_plan``'s model evaluations and wall time against its own first ordinary fit (Karras
where every family was fitted, else the start family; same rows, same call), and the load
average around it.  Rows are keyed ``model/solver/NFE/search`` (``search`` = the start family,
``free``, the shortlist and search rows); rows without ``free`` are from the earlier
parametrisation (last sigma pinned at ``sigma_min``, search from Karras), rows without
``shortlist`` fitted every family and searched over 128 rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import iia_jax  # noqa: E402
from iia_jax.bench import harness, models  # noqa: E402
from iia_jax.bench.grids import steps_for  # noqa: E402
from iia_jax.bench.provenance import command_line, provenance  # noqa: E402
from iia_jax.iia.grid import SEARCH_ROWS, SEARCH_STEPS, family_grid, fit_plan  # noqa: E402
from iia_jax.metrics import score_difference  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm")
NOTES = "## Notes"


def model(name):
    return models.prototypes() if name == "mixture" else iia_jax.pretrained.digits()


def quality(x):
    """``(score, se)``: the validated digits judge on the samples clipped to [-1, 1] (lower is better)."""
    return harness.score(x, clip=True)


def _load():
    return [round(v, 2) for v in os.getloadavg()]


def _sample_path(args, solver, nfe, name):
    return args.samples / f"{args.model}_{solver}_{nfe}_{name}.npy"


def _sample_both(prob, solver, sigmas, coeffs):
    p = iia_jax.plan(solver, sigmas)
    return prob.base(p), prob.iia(p, coeffs)


def run_fixed(args, prob, solver, nfe):
    """The cheap part: ordinary fits on each fixed family, base and IIA on the evaluation noise."""
    steps = steps_for(nfe, solver)
    row = dict(kind="fixed", model=args.model, solver=solver, nfe=nfe, steps=steps, load=_load(),
               grids={}, eval={})
    samples = {}
    for name in args.families:
        sigmas = family_grid(name, steps, SIGMA_MIN, SIGMA_MAX)
        t0 = time.perf_counter()
        fitted = prob.fit(iia_jax.plan(solver, sigmas), key=jax.random.PRNGKey(0), fine_steps=args.fine_steps)
        fit_s = time.perf_counter() - t0
        samples[name] = _sample_both(prob, solver, sigmas, fitted.coeffs)
        eb, ei = (prob.error(x) for x in samples[name])
        row["grids"][name] = np.asarray(sigmas).tolist()
        row["eval"][name] = dict(base=eb.median, base_rmse=eb.rmse, iia=ei.median, iia_rmse=ei.rmse,
                                 fit_s=fit_s, kept=int(np.sum(np.asarray(fitted.coeffs.kept))))
        print(f"fixed {args.model} {solver:9s} NFE {nfe:2d} {name:15s} base {eb.median:.4f} "
              f"IIA {ei.median:.4f} (fit {fit_s:.1f} s)", flush=True)
    row["best"] = min(args.families, key=lambda k: row["eval"][k]["iia"])
    if args.model == "digits":
        args.samples.mkdir(parents=True, exist_ok=True)
        for name in dict.fromkeys(("karras", row["best"])):
            for which, x in zip(("base", "iia"), samples[name]):
                row["eval"][name][f"q_{which}"], row["eval"][name][f"q_{which}_se"] = quality(x)
                np.save(_sample_path(args, solver, nfe, f"{name}_{which}"), x)
    row["load"] += _load()
    return row


def run(args, prob, solver, nfe):
    """The fitted grid: one fit_plan, every candidate grid measured on the evaluation noise."""
    steps = steps_for(nfe, solver)
    load = _load()
    t0 = time.perf_counter()
    result = fit_plan(prob.denoiser, solver, steps, prob.draws.fit, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                      init=args.init, key=jax.random.PRNGKey(0), fine_steps=args.fine_steps,
                      search_steps=args.search_steps, search_rows=args.search_rows, progress=False,
                      families=args.plan_families, shortlist=args.shortlist, match_spread=args.match_spread)
    wall = time.perf_counter() - t0
    rep = result.report
    print(rep.summary(), flush=True)
    row = dict(kind="fitted", model=args.model, solver=solver, nfe=nfe, steps=steps, chosen=rep.chosen,
               best_family=rep.best_family, search=_search(args, rep.start), match_spread=args.match_spread,
               wall=wall, load=load + _load(), evals=rep.evaluations,
               seconds=rep.seconds, search_median=rep.search_median.tolist(), grids={}, eval={})
    samples = {}
    for name, sigmas in rep.grids.items():
        row["grids"][name] = np.asarray(sigmas).tolist()
        if name not in rep.coeffs:   # ranked by its base sampler, not fitted
            eb = prob.error(prob.base(iia_jax.plan(solver, sigmas)))
            row["eval"][name] = dict(base=eb.median, base_rmse=eb.rmse, judge_base=rep.median_base[name])
            print(f"{args.model} {solver:9s} NFE {nfe:2d} {name:15s} base {eb.median:.4f} (not fitted)")
            continue
        samples[name] = _sample_both(prob, solver, sigmas, rep.coeffs[name])
        eb, ei = (prob.error(x) for x in samples[name])
        row["eval"][name] = dict(base=eb.median, base_rmse=eb.rmse, iia=ei.median, iia_rmse=ei.rmse,
                                 judge=rep.median[name], kept=int(np.sum(np.asarray(rep.coeffs[name].kept))))
        if args.model == "digits":
            row["eval"][name]["q_iia"], row["eval"][name]["q_iia_se"] = quality(samples[name][1])
        print(f"{args.model} {solver:9s} NFE {nfe:2d} {name:15s} base {eb.median:.4f} IIA {ei.median:.4f}"
              f" (judge {rep.median[name]:.4f})", flush=True)
    if args.model == "digits":
        # Paired (same noise) quality of what fit_plan returned against the best fixed-grid IIA of
        # the cheap part, when its samples are there.
        best = _best_fixed_samples(args, solver, nfe)
        if best is not None:
            row["q_vs_fixed"] = dict(zip(("diff", "se"), score_difference(
                np.clip(samples[rep.chosen][1], -1, 1), np.clip(best, -1, 1), paired=True)))
        # ... and against the best of fit_plan's own families on the evaluation noise
        family = min((k for k in samples if k != "fitted"), key=lambda k: row["eval"][k]["iia"])
        row["q_vs_family"] = dict(zip(("diff", "se"), score_difference(
            np.clip(samples[rep.chosen][1], -1, 1), np.clip(samples[family][1], -1, 1), paired=True)),
            family=family)
    return row


def second_call(args, denoiser, x, solver, nfe):
    """``fit_plan`` twice on the same rows in one process (the second compiles nothing): each
    call's wall time over its own first ordinary fit (compiling in the first call, not in the
    second), printed."""
    steps = steps_for(nfe, solver)
    for call in (1, 2):
        t0 = time.perf_counter()
        rep = fit_plan(denoiser, solver, steps, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                       key=jax.random.PRNGKey(0), fine_steps=args.fine_steps, search_steps=args.search_steps,
                       search_rows=args.search_rows, shortlist=args.shortlist, progress=False,
                       match_spread=args.match_spread).report
        wall, plain = time.perf_counter() - t0, rep.seconds[f"fit {rep.start}"]
        print(f"{solver} NFE {nfe} call {call}: {wall:.1f} s, its ordinary fit {plain:.1f} s, {wall / plain:.2f}x; "
              + ", ".join(f"{k} {v:.1f} s" for k, v in rep.seconds.items()), flush=True)


def _search(args, start):
    """How the search ran: its start family, ``free`` (the last sigma free), the families fitted
    (``shortlist``), the search rows and Adam steps.  Rows without ``shortlist`` fitted every
    family and searched over 128 rows, 25 Adam steps unless they say otherwise."""
    spread = ", match_spread" if args.match_spread else ""
    families = "" if args.plan_families is None else f", families {'+'.join(args.plan_families)}"
    return (f"{start}{' (best)' if args.init == 'best' else ''}, free{spread}{families}, "
            f"shortlist {args.shortlist}, {args.search_rows} rows, {args.search_steps} steps")


def _plain_fit(r):
    """The phase a row's cost is measured against: fit_plan's own first ordinary fit (it compiles
    the fit's programs, as a plain fit in a fresh process does): Karras where every family was
    fitted, else the start family."""
    return "fit karras" if "fit karras" in r["seconds"] else f"fit {r['search'].split(' ')[0].rstrip(',')}"


def _best_fixed_samples(args, solver, nfe):
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    fixed = results.get(f"fixed/{args.model}/{solver}/{nfe}")
    if fixed is None:
        return None
    path = _sample_path(args, solver, nfe, f"{fixed['best']}_iia")
    return np.load(path) if path.exists() else None


# ----------------------------------------------------------------------------- the doc

def _fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def _score(e, which="iia"):
    s, se = e.get(f"q_{which}"), e.get(f"q_{which}_se")
    return "-" if s is None else f"{s:.1f} +- {se:.1f}"


def _fixed_best_iia(fixed_rows, nfe):
    """(error, solver, family) of the best fixed-grid IIA at ``nfe`` over every solver."""
    return min(((r["eval"][r["best"]]["iia"], r["solver"], r["best"]) for r in fixed_rows
                if r["nfe"] == nfe), default=None)


def _current(fitted):
    """The rows of the current fit_plan (a shortlist), else those with the last sigma free, or
    all rows when there are none."""
    return ([r for r in fitted if "shortlist" in r.get("search", "")]
            or [r for r in fitted if "free" in r.get("search", "")] or fitted)


def goals(fixed, fitted):
    """The issue's goals, computed from the digits rows of the current fit_plan (met / not met)."""
    out = ["## Goals (digits)", "",
           "From the rows of the current `fit_plan` (`shortlist` in `search`) where there are any; the "
           "fixed-grid baseline from every row.", ""]
    everything, fitted = fitted, _current(fitted)
    nfe5 = [r for r in fitted if r["nfe"] == 5]
    if nfe5:
        # Conservative: the best fixed-grid IIA over every solver and family, fixed part or
        # any fit_plan's own family fits, chosen on the evaluation noise itself.
        cands = [(e["iia"], r["solver"], k) for r in everything if r["nfe"] == 5
                 for k, e in r["eval"].items() if k != "fitted" and "iia" in e]
        cands += [(r["eval"][r["best"]]["iia"], r["solver"], r["best"]) for r in fixed if r["nfe"] == 5]
        e_fixed, solver, family = min(cands)
        best = min(nfe5, key=lambda r: r["eval"][r["chosen"]]["iia"])
        e_best = best["eval"][best["chosen"]]["iia"]
        ratio = e_fixed / e_best
        out.append(f"- **Error at NFE 5.** Best `fit_plan` result {e_best:.4f} ({best['solver']}, "
                   f"{best['chosen']} grid) vs best fixed-grid IIA {e_fixed:.4f} ({solver}, {family}; "
                   f"the lowest of every fixed-grid IIA measured at NFE 5, on the evaluation noise): "
                   f"{ratio:.2f}x lower; goal >= 1.4x **{'met' if ratio >= 1.4 else 'not met'}** "
                   f"(over the solvers with a fitted cell: {', '.join(dict.fromkeys(r['solver'] for r in nfe5))}).")
    # fit_plan's defaults
    defaults = f"shortlist 1, {SEARCH_ROWS} rows, {SEARCH_STEPS} steps"
    default = [r for r in fitted if r.get("search", "").endswith(defaults) and "families" not in r["search"]]
    if default:
        evals = max(sum(r["evals"].values()) / r["evals"][_plain_fit(r)] for r in default)
        wall = max(r["wall"] / r["seconds"][_plain_fit(r)] for r in default)
        longest = max(default, key=lambda r: r["wall"])
        ok = evals <= 5 and wall <= 5
        out.append(f"- **Cost.** At most {evals:.1f}x the model evaluations and {wall:.1f}x the wall "
                   f"time of a plain fit of the same rows (fit_plan's own first ordinary fit, of the "
                   f"start family, inside the same call; rows with fit_plan's own defaults); "
                   f"goal <= 5x **{'met' if ok else 'not met'}** for a first call in its process (a "
                   f"second call against a second fit: Notes, 2). Longest `fit_plan` "
                   f"{longest['wall'] / 60:.1f} min ({longest['solver']} NFE {longest['nfe']}).")
    earlier = {}   # per solver: the earlier default (every family fitted, 25 steps over 128 rows)
    for r in everything:
        label = r.get("search", "")
        if r["nfe"] == 5 and label.startswith("vp_quadratic (best), free") and "shortlist" not in label \
                and not any(w in label for w in ("steps", "families")):
            if r["solver"] not in earlier or "match_spread" in label:   # prefer the same spread
                earlier[r["solver"]] = r
    pairs = [(earlier[r["solver"]], r) for r in default if r["nfe"] == 5 and r["solver"] in earlier]
    if pairs:
        iia = lambda r: r["eval"][r["chosen"]]["iia"]  # noqa: E731
        out.append("- **Against the earlier defaults** (every family fitted, 25 Adam steps; median error of "
                   "the returned IIA on the same evaluation noise, earlier -> now): " + "; ".join(
                       f"{new['solver']} {iia(old):.4f} -> {iia(new):.4f}"
                       + ("" if "match_spread" in old["search"] else " (earlier without match_spread)")
                       for old, new in pairs)
                   + f". Never more than 2 % worse: **{'met' if all(iia(n) <= 1.02 * iia(o) for o, n in pairs) else 'not met'}**.")
    paired = [r for r in fitted if "q_vs_family" in r]
    if paired:
        worse = [r for r in paired if r["q_vs_family"]["diff"] > 2 * r["q_vs_family"]["se"]]
        out.append("- **Quality** (paired `digits_score` difference, returned IIA - IIA of the "
                   "family with the lowest error on the evaluation noise, same noise; negative = "
                   "better): " + "; ".join(
                       f"{r['solver']} NFE {r['nfe']} ({r['search']}) {r['q_vs_family']['diff']:+.1f} "
                       f"+- {r['q_vs_family']['se']:.1f} (vs {r['q_vs_family']['family']})" for r in paired)
                   + f". Goal (no worse) **{'met' if not worse else 'not met'}** where measured"
                   + ("" if not worse else " (worse by more than 2 se: "
                      + ", ".join(f"{r['solver']} NFE {r['nfe']}" for r in worse) + ")") + ".")
    paired = [r for r in fitted if "q_vs_fixed" in r and "q_vs_family" not in r]
    if paired:
        worse = [r for r in paired if r["q_vs_fixed"]["diff"] > 2 * r["q_vs_fixed"]["se"]]
        out.append("- **Quality** (paired `digits_score` difference, returned IIA - best fixed-grid "
                   "IIA of the cheap part, same noise; negative = better): "
                   + "; ".join(f"{r['solver']} NFE {r['nfe']} {r['q_vs_fixed']['diff']:+.1f} +- "
                               f"{r['q_vs_fixed']['se']:.1f}" for r in paired)
                   + f". Goal (no worse) **{'met' if not worse else 'not met'}** where measured"
                   + ("" if not worse else " (worse by more than 2 se: "
                      + ", ".join(f"{r['solver']} NFE {r['nfe']}" for r in worse) + ")") + ".")
    return out + [""]


def fixed_table(rows):
    lines = ["| solver | NFE | karras base | karras IIA | best family | best base | best IIA | "
             "score karras base | score karras IIA | score best IIA | IIA steps kept | fit s (karras) |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        e, b = r["eval"], r["best"]
        lines.append(f"| {r['solver']} | {r['nfe']} | {e['karras']['base']:.4f} | {e['karras']['iia']:.4f} | "
                     f"{b} | {e[b]['base']:.4f} | {e[b]['iia']:.4f} | {_score(e['karras'], 'base')} | "
                     f"{_score(e['karras'])} | {_score(e[b])} | {e[b]['kept']}/{r['steps']} | "
                     f"{e['karras']['fit_s']:.0f} |")
    return lines


def fitted_table(rows, fixed_by_cell, digits):
    head = ("| solver | NFE | search | karras base | karras IIA | best fixed base | best fixed IIA | "
            "fitted base | fitted IIA | returned | gain | evals x plain fit | time x plain fit | min |")
    sep = "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    if digits:
        head += (" cheap-part best IIA | score returned | paired score diff vs cheap-part best | "
                 "paired score diff vs best family |")
        sep += "---:|---:|---:|---:|"
    lines = [head, sep]
    for r in rows:
        e, best, chosen = r["eval"], r["best_family"], r["chosen"]
        karras_iia = f"{e['karras']['iia']:.4f}" if "iia" in e["karras"] else "not fitted"
        line = (f"| {r['solver']} | {r['nfe']} | {r.get('search', 'karras, pinned')} | "
                f"{e['karras']['base']:.4f} | {karras_iia} | "
                f"{e[best]['base']:.4f} | {e[best]['iia']:.4f} ({best}) | {e['fitted']['base']:.4f} | "
                f"{e['fitted']['iia']:.4f} | {chosen} | {e[best]['iia'] / e[chosen]['iia']:.2f}x | "
                f"{sum(r['evals'].values()) / r['evals'][_plain_fit(r)]:.1f} | "
                f"{r['wall'] / r['seconds'][_plain_fit(r)]:.1f} | {r['wall'] / 60:.1f} |")
        if digits:
            f = fixed_by_cell.get((r["solver"], r["nfe"]))
            q = r.get("q_vs_fixed")
            paired = "-" if q is None else f"{q['diff']:+.1f} +- {q['se']:.1f}"
            qf = r.get("q_vs_family")
            vs_family = "-" if qf is None else f"{qf['diff']:+.1f} +- {qf['se']:.1f} ({qf['family']})"
            line += (f" {'-' if f is None else format(f['eval'][f['best']]['iia'], '.4f')} | "
                     f"{_score(e[chosen])} | {paired} | {vs_family} |")
        lines.append(line)
    lines += ["", "Grids (sigmas) of the fitted candidates:", ""]
    for r in rows:
        start = r.get("search", "karras").split(" ")[0].rstrip(",")
        lines.append(f"- {r['solver']} NFE {r['nfe']} ({r.get('search', 'karras, pinned')}): fitted "
                     f"{', '.join(f'{s:.3g}' for s in r['grids']['fitted'])}; {start} "
                     f"{', '.join(f'{s:.3g}' for s in r['grids'][start])}")
    return lines + [""]


def _order(r):
    return SOLVERS.index(r["solver"]), r["nfe"]


def write(results, path_md, path_png):
    rows = list(results.values())
    fixed = sorted((r for r in rows if r.get("kind") == "fixed" and r["model"] == "digits"), key=_order)
    fitted = {m: sorted((r for r in rows if r.get("kind", "fitted") == "fitted" and r["model"] == m),
                        key=_order) for m in ("digits", "mixture")}
    fixed_by_cell = {(r["solver"], r["nfe"]): r for r in fixed}
    meta = next(r for r in sorted(rows, key=lambda r: r["model"] != "digits"))["meta"]
    lines = ["# Fitted step grids vs fixed grid families", "",
             "Produced by `benchmarks/fitted_grid.py` (its docstring has the commands and setup); "
             f"{meta['machine']}, jax {meta['jax']}. Fit noise: {meta['fit_batch']} draws of "
             "`80 N(0, I)` (seed 1), `fine_steps="
             f"{meta['fine_steps']}`. Evaluation: {meta['eval_batch']} fresh draws (seed 2), median "
             "per-sample RMS error at sigma = 0 against heun with 64 Karras steps (NFE 127) from the "
             "same noise; sigma 0.002..80. Score: `iia_jax.metrics.digits_quality`'s `score` "
             "(= `digits_score`, 1000 x KID against 600 real digits in the judge's features; lower is "
             "better, real digits about 0) +- its jackknife standard error, n = "
             f"{meta['eval_batch']}. heun has odd NFE only (2N - 1).", ""]
    if fixed:
        lines += ["## digits: fixed grids, base and IIA (the cheap part, `--fixed`)", "",
                  "The ordinary `iia_jax.fit` (defaults, key 0) on all fit draws for each family "
                  f"({', '.join(fixed[0]['eval'])}); `best` = the family with the lowest IIA error on "
                  "the evaluation noise (favours the fixed grids). Scores for Karras and the best family.", ""]
        lines += fixed_table(fixed) + [""]
    if fitted["digits"]:
        lines += ["## digits: fitted grid (`fit_plan`)", "",
                  "`fit_plan` on the same fit draws (key 0: a quarter is its judge), Adam (lr 0.1) "
                  "from the family in `search` (`(best)`: the fitted family fit_plan's judge ranked "
                  "best): 25 steps over 128 search rows with every family fitted, unless `search` says "
                  "otherwise (`shortlist K, R rows, S steps`: the K families with the best base "
                  "sampler on the judge rows fitted, R search rows, S Adam steps); `pinned`: the earlier "
                  "parametrisation, last non-zero sigma fixed at sigma_min; `free`: last sigma free. "
                  "`karras`/`best fixed` = fit_plan's own ordinary fits on its training rows (`best fixed` "
                  "= the fitted family its judge picked; `not fitted`: ranked by its base sampler only); "
                  "`fitted` = the searched grid; `returned` = what "
                  "`fit_plan` returned (the fitted grid only if it beat the best family on the judge "
                  "rows); `gain` = best fixed IIA / returned IIA; cost against fit_plan's own first ordinary "
                  "fit (Karras, or the start family where not every family is fitted); `min` = wall "
                  "minutes of the whole `fit_plan`. `cheap-part "
                  "best IIA`: the best fixed-grid IIA of the table above (fitted on all draws); the paired "
                  "score difference is returned IIA - that, from the same noise (negative = better); "
                  "`vs best family`: returned IIA - the IIA of the family of that fit_plan with the "
                  "lowest error on the evaluation noise (0 when it is the one returned).", ""]
        lines += fitted_table(fitted["digits"], fixed_by_cell, True)
        lines += ["![digits: median ODE error and digits_score vs NFE, fixed grids and fit_plan](fitted_grid.png)", ""]
    if fitted["mixture"]:
        lines += ["## mixture (earlier run)", "",
                  "An image-shaped exact mixture (10 prototypes, std 0.2), 25 Adam steps, measured at "
                  "commit 6ef2fcd, when `fit_plan` drew its judge rows by a permutation of the batch "
                  "(now by `iia_jax.rows`, as `fit` holds out rows); not rerun since.", ""]
        lines += fitted_table(fitted["mixture"], {}, False)
    lines += goals(fixed, fitted["digits"])
    # The hand-written notes (from "## Notes" on) survive a rewrite of the tables.
    old = path_md.read_text() if path_md.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""
    path_md.write_text("\n".join(lines) + "\n" + notes)
    plot(fixed, fitted["digits"], path_png)


def plot(fixed, fitted, path_png):
    """digits: median error and score vs NFE; per solver, dotted base and dashed IIA on the best
    fixed grid, filled circles where fit_plan's returned grid was measured."""
    if not fixed and not fitted:
        return
    fig, (ax_e, ax_q) = plt.subplots(1, 2, figsize=(12, 4.4))
    for solver in SOLVERS:
        i = SOLVERS.index(solver)
        color = f"C{i}"
        fr = [r for r in fixed if r["solver"] == solver]
        nfes = [r["nfe"] + 0.05 * (i - 2.5) for r in fr]   # side by side at equal NFE
        if fr:
            ax_e.semilogy(nfes, [r["eval"][r["best"]]["base"] for r in fr], ":", color=color, marker="x")
            ax_e.semilogy(nfes, [r["eval"][r["best"]]["iia"] for r in fr], "--", color=color, marker="s",
                          mfc="none", label=f"{solver}")
            ax_q.errorbar(nfes, [r["eval"][r["best"]]["q_iia"] for r in fr],
                          [r["eval"][r["best"]]["q_iia_se"] for r in fr], ls="--", color=color, marker="s",
                          mfc="none", capsize=2, label=f"{solver}")
        for free in (False, True):   # open: last sigma pinned (earlier runs); filled: free
            pr = [r for r in fitted if r["solver"] == solver and ("free" in r.get("search", "")) == free]
            if not pr:
                continue
            x = [r["nfe"] + 0.05 * (i - 2.5) for r in pr]
            style = dict(color=color, ms=7, mfc=color if free else "none", ls="none", marker="o")
            ax_e.semilogy(x, [r["eval"][r["chosen"]]["iia"] for r in pr], **style)
            ax_q.errorbar(x, [r["eval"][r["chosen"]]["q_iia"] for r in pr],
                          [r["eval"][r["chosen"]]["q_iia_se"] for r in pr], capsize=2, **style)
    ax_e.set_ylim(top=1.0)   # heun's base (2-80 at NFE <= 7) would flatten everything else
    ax_e.set_title("digits: median ODE error (dotted base, dashed IIA, best of Karras/log-SNR; dots\n"
                   "fit_plan: open last sigma pinned, filled free); values above 1 (heun base) off scale",
                   fontsize=9)
    ax_e.set_ylabel("median ODE error")
    ax_q.set_title("digits_score of IIA +- se (dashed best of Karras/log-SNR; dots fit_plan)", fontsize=9)
    ax_q.set_ylabel("digits_score (lower is better)")
    ax_q.set_yscale("symlog", linthresh=30)
    for ax in (ax_e, ax_q):
        ax.set_xlabel("NFE")
        ax.set_xticks(sorted({r["nfe"] for r in fixed + fitted}))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("mixture", "digits"))
    ap.add_argument("--fixed", action="store_true", help="the cheap part: fixed grids only")
    ap.add_argument("--solvers", nargs="+", default=None)
    ap.add_argument("--nfes", nargs="+", type=int, default=[5, 8])
    ap.add_argument("--families", nargs="+", default=["karras", "logsnr_uniform"],
                    help="fixed families of the cheap part")
    ap.add_argument("--fit-batch", type=int, default=256)
    ap.add_argument("--eval-batch", type=int, default=500)
    ap.add_argument("--fine-steps", type=int, default=16)
    ap.add_argument("--search-steps", type=int, default=SEARCH_STEPS)
    ap.add_argument("--search-rows", type=int, default=SEARCH_ROWS)
    ap.add_argument("--shortlist", type=int, default=1, help="fit_plan's shortlist (its default 1)")
    ap.add_argument("--init", default="best", help="fit_plan's start: 'best' or a grid family")
    ap.add_argument("--plan-families", nargs="+", default=None,
                    help="fit_plan's families (default: its own; keep karras, the cost's yardstick)")
    ap.add_argument("--spread", choices=("match", "free"), default=None,
                    help="match: iia_jax.fit(match_spread=True) in fit_plan's fits, free: False, as "
                         "`iia-jax fit --spread` (default: fit's own default)")
    ap.add_argument("--json", type=Path, default=Path("/tmp/fitted_grid.json"))
    ap.add_argument("--samples", type=Path, default=Path("/tmp/fitted_grid_samples"))
    ap.add_argument("--write", action="store_true", help="only rewrite the doc from --json")
    ap.add_argument("--second-call", action="store_true",
                    help="only time fit_plan twice in this process against its own ordinary fit (printed)")
    ap.add_argument("--out", type=Path, default=DOCS, help="folder for fitted_grid.md and the PNG")
    args = ap.parse_args(argv)
    args.match_spread = (iia_jax.FitConfig().match_spread if args.spread is None
                         else args.spread == "match")
    if not args.write:
        if args.model is None:
            ap.error("--model is required unless --write")
        denoiser = model(args.model)
        solvers = args.solvers or list(SOLVERS)
        noise = harness.draws(1, (8, 8, 1), args.eval_batch, args.fit_batch, SIGMA_MAX, keys="consecutive")
        if args.second_call:
            for nfe in args.nfes:
                for solver in solvers:
                    second_call(args, denoiser, noise.fit, solver, nfe)
            return
        meta = dict(machine=f"{platform.machine()}, {jax.devices()[0].platform}", jax=jax.__version__,
                    fit_batch=args.fit_batch, eval_batch=args.eval_batch, fine_steps=args.fine_steps,
                    search_steps=args.search_steps, search_rows=args.search_rows,
                    provenance=provenance(command_line("benchmarks/fitted_grid.py", argv)))
        prob = harness.problem(denoiser, noise, 64, SIGMA_MIN, SIGMA_MAX)
        for nfe in args.nfes:
            for solver in solvers:
                steps = steps_for(nfe, solver)
                if steps is None:
                    continue
                actual = iia_jax.solvers.get(solver).nfe(steps)
                key = (f"fixed/{args.model}/{solver}/{actual}" if args.fixed else
                       f"{args.model}/{solver}/{actual}/{args.init}-free"
                       + ("" if args.search_steps == 25 else f"-{args.search_steps}")
                       + ("-ms" if args.match_spread else "")
                       + ("" if args.plan_families is None else "-" + "+".join(args.plan_families))
                       + f"-s{args.shortlist}-r{args.search_rows}")
                results = json.loads(args.json.read_text()) if args.json.exists() else {}
                if key in results:
                    continue   # heun's odd NFE: 4 -> 3 was done at 3
                row = (run_fixed if args.fixed else run)(args, prob, solver, actual)
                row["meta"] = meta
                results[key] = row
                args.json.write_text(json.dumps(results, indent=1))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    write(json.loads(args.json.read_text()), args.out / "fitted_grid.md", args.out / "fitted_grid.png")
    print(f"wrote {args.out / 'fitted_grid.md'} and {args.out / 'fitted_grid.png'}")


if __name__ == "__main__":
    sys.exit(main())
