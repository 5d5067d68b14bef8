"""What IIA costs: a fit's wall time against its unavoidable model evaluations, its peak memory
from 1k to 100k rows, and sampling with IIA against the base sampler (docs/fit_cost.md).

    python benchmarks/fit_cost.py                 # every table (about an hour on 2 CPU cores)
    python benchmarks/fit_cost.py --time          # the time table only (others kept from fit_cost.json)
    python benchmarks/fit_cost.py --memory        # the memory table only
    python benchmarks/fit_cost.py --sampling      # the sampling table only
    python benchmarks/fit_cost.py --smoke         # seconds: tiny batches, nothing written

**Time** (:func:`iia_jax.bench.fitcost.fit_time`): the shipped digits model, heun on the Karras
grid at NFE 5 and 9, 1,024 rows, the fit's defaults (``fine_steps`` 16, the quality guard), each
mode in a fresh process: a first fit (compiling), three interleaved pairs of a second fit of the
same shapes and the warm time of exactly ``batch x 16 x NFE`` evaluations (the floor), and the
fit's own evaluations counted in a last, untimed fit; the ratios against three floors (the page
says which).

**Memory** (:func:`iia_jax.bench.fitcost.memory_probe`): the 8x8 overlapping mixture (exact
denoiser, so the model's own memory is nil and what grows is the fit's), dpmpp_2m NFE 9, chunks
of 1,024 rows; 1,024 (one chunk, on the same path as many), 16,384 and 102,400 rows, each fit in a
fresh process: peak resident set during the fit minus the resident set before it; the sequential
fit by its defaults (its carried state on disk once it passes ``spill_above``), with the state held
in memory (``spill_above=None``) and with ``spill_dir`` (on disk whatever its size).  ``--memory --memory-modes M`` re-measures only mode M.

**Sampling** (:func:`iia_jax.bench.speed.iia_overhead`): the digits model, batch 128, every
solver at NFE 5 and 10 (heun 5 and 9): the median of ``iia_sample`` / ``sample``
wall time over interleaved warm pairs of compiled programs, its 95 % interval and quartiles.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's iia_jax
import iia_jax  # noqa: E402
from iia_jax.bench import fitcost, harness, provenance, speed  # noqa: E402
from iia_jax.bench.models import MODELS  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
MODES = (("sequential", None), ("teacher_forced", None))
TIME = dict(model="digits", solver="heun", nfes=(5, 9), batch=1024, fine_steps=16, repeats=3)
MEMORY = dict(model="overlapping", solver="dpmpp_2m", nfe=9, rows=(1024, 16384, 102400), chunk=1024, repeats=3,
              modes=("sequential", "sequential, in memory", "sequential, spill_dir", "teacher_forced"))
SAMPLING = dict(solvers=("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm"), nfes=(5, 10), batch=128,
                repeats=100)   # 25 left 7 of 12 intervals undecided on a shared 2-core CPU


def time_rows(smoke: bool) -> list:
    if smoke:
        return fitcost.fit_time("overlapping", "euler", 3, 64, 2, MODES[:1], repeats=2)
    return [r for nfe in TIME["nfes"] for r in
            fitcost.fit_time(TIME["model"], TIME["solver"], nfe, TIME["batch"], TIME["fine_steps"], MODES,
                             TIME["repeats"])]


def memory_rows(smoke: bool, modes=MEMORY["modes"], repeats=MEMORY["repeats"]) -> list:
    """Per mode (``"sequential, in memory"``/``"sequential, spill_dir"``: the sequential fit with its
    carried state held in memory or on disk whatever its size; ``"sequential"``: where the
    fit's defaults put it) and batch: the fit's own peak, first fit in a process and with its programs compiled, each
    the median of ``repeats`` fresh processes (the runs are kept)."""
    rows, chunk, repeats = ((256, 1024), 128, 1) if smoke else (MEMORY["rows"], MEMORY["chunk"], repeats)
    out = []
    for label in modes:
        mode, _, state = label.partition(", ")
        for n in rows:
            runs = {compiled: [fitcost.fit_memory(MEMORY["model"], MEMORY["solver"], MEMORY["nfe"], n, chunk, mode,
                                                  compiled, state or "default") for _ in range(repeats)]
                    for compiled in (False, True)}
            first, data = ([r["fit_mb"] for r in runs[c]] for c in (False, True))
            out.append(dict(mode=label, rows=n, chunk=chunk, fit_mb=float(np.median(first)), fit_mb_runs=first,
                            data_mb=float(np.median(data)), data_mb_runs=data,
                            fit_s=float(np.median([r["fit_s"] for r in runs[True]]))))
            print(f"memory {label} {n} rows: first fit +{out[-1]['fit_mb']:.0f} MiB {first}, compiled "
                  f"+{out[-1]['data_mb']:.0f} MiB {data}", flush=True)
    return out


def sampling_rows(smoke: bool) -> list:
    model = MODELS["overlapping" if smoke else "digits"]()
    solvers, nfes = (("euler",), (3,)) if smoke else (SAMPLING["solvers"], SAMPLING["nfes"])
    out = []
    for nfe in nfes:
        for r in speed.iia_overhead(model, solvers, nfe, 16 if smoke else SAMPLING["batch"],
                                    3 if smoke else SAMPLING["repeats"]):
            out.append(r)
            print(f"iia_sample / sample {r['solver']} NFE {r['nfe']}: {r['ratio']:.3f} "
                  f"(95 % interval {speed.interval_text(r)})", flush=True)
    return out


def page(sections: dict) -> str:
    """The markdown of ``sections`` (``time``/``memory``/``sampling``: ``{"rows", "provenance"}``)."""
    def setup(name):
        meta = sections[name]["provenance"]
        return f"*Made by `{meta['command']}` ({meta['date']}); {provenance.setup_line(meta)}; revision {meta['revision']}.*"

    times, memory, sampling = (sections.get(k, {}).get("rows", []) for k in ("time", "memory", "sampling"))
    lines = ["# What IIA costs", "",
             "The floor of a fit is the fine reference it must integrate: `batch x fine_steps x NFE` model "
             "evaluations ([scaling.md](scaling.md#what-a-fit-costs) counts every pass). Sampling with IIA makes "
             "the same model evaluations as the base sampler. Written by `python benchmarks/fit_cost.py` (each "
             "table's own command below it).", ""]
    if times:
        lines += ["## Time against the floor", "",
                  f"The shipped digits model, {TIME['solver']} on the Karras grid, {TIME['batch']:,} rows, the "
                  "fit's defaults (`fine_steps` 16, a quarter held out, the quality guard). Each mode in a fresh "
                  "process: a first fit, which compiles its programs, then "
                  f"{TIME['repeats']} pairs of a second fit (same shapes, it compiles nothing) and the floor, "
                  "timed one after the other, the order inside a pair alternating. `floor s`: the time of "
                  "exactly `batch x 16 x NFE` evaluations (the Euler sampler on a grid of 16 x NFE steps), "
                  "compiled before it is timed. `fit evals / floor`: the fit's own model evaluations, counted in a "
                  "last, untimed fit of the same rows (counting would slow a timed fit), over the floor's. "
                  "`drift`: the second fits' median over the first fit net of its compilation; they do the "
                  "same work.",
                  "",
                  "| NFE | mode | floor s | first fit s (compiling) | second fits s | fit evals / floor | drift |",
                  "|---:|---|---|---:|---|---:|---:|"]
        for r in times:
            runs = lambda key: ", ".join(f"{t:.1f}" for t in r[key])  # noqa: E731
            lines.append(f"| {r['nfe']} | {r['mode']} | {runs('evals_runs')} | {r['fit_s']:.1f} "
                         f"({r['compile_s']:.1f}) | {runs('fit_warm_runs')} | {r['eval_ratio']:.2f} | "
                         f"{r['fit_warm_s'] / (r['fit_s'] - r['compile_s']):.2f} |")
        lines += ["", "The goal: a second fit within 1.2x its floor, a first fit within 1.5x. Three floors, each "
                  "timed at the measured floor's rate: (a) `batch x 16 x NFE` evaluations; (b) the fine "
                  "reference as the fit integrates it plus one pass of the coarse sampler (`reference_row` "
                  "evaluations a row, `iia_jax/iia/fit.py`: heun's last interval takes one more fine step, "
                  "down to 1e-3 of its sigma, before the final one, so 97 + 5 a row at NFE 5, not 80); (c) every "
                  "evaluation the fit makes: (b) plus the coarse passes of its checks (the never-worse check's "
                  "runs of the held-out rows, the quality guard's sampler runs), so the ratio is the time "
                  "beyond the model. `second`: the median of the pairs' ratios, their range in brackets; "
                  "`first`: the first fit over the floors' median, the range over the floors in brackets. "
                  "Within the goal: **yes** when the whole range is, **no** when none of it is, *in the "
                  "noise* otherwise.",
                  "",
                  "| NFE | mode | (a) second | (a) first | (a) within | (b) second | (b) first | (b) within | "
                  "(c) second | (c) first | (c) within |",
                  "|---:|---|---|---|---|---|---|---|---|---|---|"]
        for r in times:
            cells = []
            for scale in (1.0, _reference_row(r) / (r["fine_steps"] * r["nfe"]), r["eval_ratio"]):
                warm = [w / (e * scale) for w, e in zip(r["fit_warm_runs"], r["evals_runs"])]
                first = [r["fit_s"] / (e * scale) for e in r["evals_runs"]]
                cells += [_spread(warm), _spread(first),
                          f"{_within(warm, 1.2)} / {_within(first, 1.5)}"]
            lines.append(f"| {r['nfe']} | {r['mode']} | " + " | ".join(cells) + " |")
        lines += ["", setup("time") + " Noise `80 N(0, I)`, `PRNGKey(7)`.", ""]
    if memory:
        lines += ["## Peak memory from 1k to 100k rows", "",
                  f"The 8x8 overlapping mixture (exact denoiser), {MEMORY['solver']} NFE {MEMORY['nfe']}, "
                  f"`chunk_size={MEMORY['chunk']}`, the fit's defaults. Where the sequential fit keeps every "
                  "row's carried state between steps: `sequential`, by the defaults (on disk, in the "
                  "system's temporary folder, once it passes `spill_above`, 16 MiB: the 16,384- and 102,400-row fits; "
                  "else in memory); `in memory`, held in memory whatever its size (`spill_above=None`, "
                  "the default before it existed); `spill_dir`, on disk whatever its size (a temporary "
                  "folder passed as `spill_dir`). Measured: peak resident set during the fit "
                  "(`VmHWM`, reset just before it) minus the resident set before it. *First fit*: the first "
                  "in a fresh process, so compilation is included (it moves by tens of MiB from run to run); "
                  "*compiled*: after a fit of 2,048 of the rows (1,024: all of them) compiled the same "
                  "programs, the memory of the fit's data alone (the fit hands freed memory back to the "
                  "system between chunks, at most 1 % of the time, so this moves with when those trims fall: "
                  "[scaling.md](scaling.md#the-digits-model-from-16k-to-100k-rows)). Each the median of "
                  "its row's fresh processes (`runs`), their range in brackets; within 1.25x: the first fit's "
                  "peak against the smallest batch's (the goal: memory flat in the batch). With `chunk_size` "
                  "one chunk takes the same path as many, so every batch compiles the same programs.", "",
                  "| mode | rows | runs | first fit MiB | / smallest | compiled MiB | per extra row, compiled "
                  "| compiled fit s | within 1.25x |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        rng = lambda runs: f"{min(runs):.0f}-{max(runs):.0f}"  # noqa: E731
        for r in memory:
            first = next(m for m in memory if m["mode"] == r["mode"])
            per_row = ((r["data_mb"] - first["data_mb"]) * 2 ** 20 / (r["rows"] - first["rows"])
                       if r["rows"] > first["rows"] else float("nan"))
            ratio = r["fit_mb"] / first["fit_mb"]
            lines.append(f"| {r['mode']} | {r['rows']:,} | {len(r['fit_mb_runs'])} | "
                         f"{r['fit_mb']:.0f} ({rng(r['fit_mb_runs'])}) | {ratio:.2f} | "
                         f"{r['data_mb']:.0f} ({rng(r['data_mb_runs'])}) | "
                         + ("" if per_row != per_row else f"{per_row / 1024:.2f} KiB") + f" | {r['fit_s']:.1f} | "
                         + ("" if r is first else "yes" if ratio <= 1.25 else "**no**") + " |")
        made = {r["mode"]: (r.get("command"), r.get("revision")) for r in memory}
        earlier = ("" if len(set(made.values())) < 2 else " Rows by mode: "
                   + "; ".join(f"{m}: `{cmd}` at revision {rev}" for m, (cmd, rev) in made.items()) + ".")
        lines += ["", setup("memory") + " Noise `PRNGKey(8)`; a row is 64 float32 (256 B)." + earlier, ""]
    if sampling:
        lines += ["## Sampling with IIA", "",
                  f"The shipped digits model, batch {SAMPLING['batch']}, Karras grid: `iia_sample` over `sample` "
                  "(both jitted and compiled first, same noise), the median of the ratio over "
                  f"{SAMPLING['repeats']} interleaved warm pairs (the order inside a pair alternating), the "
                  "median's 95 % interval (sign test) and the ratios' quartiles. IIA adds no model evaluation, "
                  "only the features and a weighted sum a step. Within 3 %: yes when the interval lies below "
                  "1.03, no when above, else inconclusive.", "",
                  "| solver | NFE | `sample` s | `iia_sample` / `sample` | 95 % interval | quartiles | within 3 % |",
                  "|---|---:|---:|---:|---|---|---|"]
        for r in sampling:
            lines.append(f"| {r['solver']} | {r['nfe']} | {r['base_s']:.4f} | {r['ratio']:.3f} | "
                         f"{speed.interval_text(r) if 'ci_hi' in r else '—'} | {r['q25']:.3f}-{r['q75']:.3f} | "
                         f"{speed.within_limit(r)} |")
        lines += ["", setup("sampling") + " Noise `PRNGKey(3)`; coefficients from a 16-row fit (their values do not "
                  "change the cost).", ""]
    return "\n".join(lines)


def _spread(values) -> str:
    """``median (min-max)`` of ratios, with two decimals."""
    return f"{np.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _within(values, goal: float) -> str:
    """Whether measured ratios meet ``goal``: all of them, none of them, or some."""
    return "**yes**" if max(values) <= goal else "no" if min(values) > goal else "*in the noise*"


def _reference_row(r) -> int:
    """Model evaluations a row of the fine reference and one coarse pass (``_Passes.reference_row``):
    ``NFE + e x fine_steps x N + 1`` for ``N`` steps of ``e`` evaluations."""
    solver = iia_jax.solvers.get(r["solver"])
    steps = next(n for n in range(1, r["nfe"] + 1) if solver.nfe(n) == r["nfe"])
    return r["nfe"] + solver.evals_per_step * r["fine_steps"] * steps + 1


def main():
    ap = harness.parser(__doc__, "tiny batches, nothing written")
    ap.add_argument("--time", action="store_true", help="the time table only")
    ap.add_argument("--memory", action="store_true", help="the memory table only")
    ap.add_argument("--memory-modes", nargs="+", choices=MEMORY["modes"], default=MEMORY["modes"],
                    help="with --memory: measure these modes, keep the others' rows from fit_cost.json")
    ap.add_argument("--repeats", type=int, default=MEMORY["repeats"],
                    help="with --memory: fresh processes a point (the first fit's peak moves by tens of MiB)")
    ap.add_argument("--sampling", action="store_true", help="the sampling table only")
    ap.add_argument("--out", type=Path, default=DOCS, help="folder for fit_cost.md and fit_cost.json")
    args = ap.parse_args()
    every = not (args.time or args.memory or args.sampling)
    start = time.perf_counter()
    sections = _sections(args.out / "fit_cost.json") if not args.smoke else {}
    command = provenance.command_line("benchmarks/fit_cost.py")
    for name, run, asked in (("time", time_rows, args.time), ("memory", memory_rows, args.memory),
                             ("sampling", sampling_rows, args.sampling)):
        if every or asked:
            if name == "memory":   # rows kept from an earlier run name their revision
                meta = provenance.provenance(command)
                earlier = sections.get("memory", {}).get("provenance", {})
                kept = [dict(r, revision=r.get("revision", earlier.get("revision")),
                             command=r.get("command", earlier.get("command")))
                        for r in sections.get("memory", {}).get("rows", []) if r["mode"] not in args.memory_modes]
                new = [dict(r, revision=meta["revision"], command=meta["command"])
                       for r in memory_rows(args.smoke, args.memory_modes, args.repeats)]
                rows = sorted(kept + new, key=lambda r: (MEMORY["modes"].index(r["mode"]), r["rows"]))
                sections[name] = dict(rows=rows, provenance=meta)
            else:
                sections[name] = dict(rows=run(args.smoke), provenance=provenance.provenance(command))
    print(page(sections))
    print(f"({(time.perf_counter() - start) / 60:.1f} min)")
    if not args.smoke:
        provenance.save_json(args.out / "fit_cost.json", sections, command)
        (args.out / "fit_cost.md").write_text(page(sections))


def _sections(path: Path) -> dict:
    """The sections of an earlier write-up (each with its own provenance), to keep those not run."""
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    return {k: v if isinstance(v, dict) else dict(rows=v, provenance=saved["provenance"])
            for k, v in saved.items() if k in ("time", "memory", "sampling") and v}


if __name__ == "__main__":
    main()
