"""Run the benchmark and write ``benchmarks.md`` and ``bench_*.png`` under ``--out``
(``./iia_jax_bench`` by default; ``--out docs`` rewrites the repository's ``docs/benchmarks.md``)."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import NamedTuple

from . import accuracy, fitcost, report, speed
from .markdown import markdown
from .grids import GRIDS, OLD_NAMES
from .models import MODELS
from .peers import PEERS
from .provenance import git_revision, machine, machine_short, versions, versions_short

# Relative to where the command runs, never inside the installed package or the repository's
# docs/ (which `--out docs` rewrites on purpose).
DEFAULT_OUT = Path("iia_jax_bench")
SECTIONS = ("accuracy", "speed", "fitcost")


class IIASet(NamedTuple):
    """IIA (library defaults) for these solvers on these grids at these NFE."""

    grids: tuple
    solvers: tuple
    nfes: tuple

    def covers(self, solver: str, grid_name: str, nfe: int) -> bool:
        return solver in self.solvers and grid_name in self.grids and nfe in self.nfes


class ModelSettings(NamedTuple):
    """What runs on one model: NFE values, grids, batches, where IIA is fitted, the variants."""

    nfes: tuple
    grids: tuple
    eval_batch: int
    fit_batch: int
    iia: tuple                 # IIASet, ...: a solver/grid/NFE gets an IIA row when one covers it
    variant_solvers: tuple
    variant_nfes: tuple
    ref_steps: int             # Karras steps of the heun reference
    variant_only: tuple = ()   # variant labels to run (empty: all, see accuracy.variants)

    def has_iia(self, solver: str, grid_name: str, nfe: int) -> bool:
        return any(s.covers(solver, grid_name, nfe) for s in self.iia)

    @property
    def iia_solvers(self) -> tuple:
        return tuple(dict.fromkeys(s for i in self.iia for s in i.solvers))


class Config(NamedTuple):
    quick: bool
    models: tuple
    per_model: dict            # model name -> ModelSettings
    solvers: tuple             # base rows for every one of these
    peers: tuple               # peer names (iia_jax.bench.peers.PEERS)
    variant_grid: str
    tolerances: tuple
    sections: tuple
    speed_solvers: tuple
    speed_batch: int
    repeats: int
    overhead_pairs: int        # iia_sample / sample and the peer loop: pairs for the median's 95 % interval
    fit_time_solvers: tuple
    fit_batch_time: int
    memory_batches: tuple
    memory_modes: tuple
    out: Path

    def __getattr__(self, name):   # cfg.nfes(model), cfg.eval_batch(model), ...
        if name in ModelSettings._fields:
            return lambda model: getattr(self.per_model[model], name)
        raise AttributeError(name)

    def model_grids(self, model):
        return self.per_model[model].grids

    @property
    def grids(self):
        return tuple(g for g in GRIDS if any(g in s.grids for s in self.per_model.values()))


MAIN_SOLVERS = ("euler", "heun", "dpmpp_2m", "unipc")   # IIA rows and variants in both modes


def config(args) -> Config:
    from ..solvers import SOLVERS
    solvers = tuple(args.solvers or SOLVERS)
    main = tuple(s for s in MAIN_SOLVERS if s in solvers)
    euler_and_2m = tuple(s for s in ("euler", "dpmpp_2m") if s in solvers)
    if args.quick:
        # a few minutes of CPU: two grids on the mixtures, Karras on digits, IIA for four solvers
        # (two on digits, whose fits cost the most)
        mix = (IIASet(("karras", "vp_quadratic"), main, (5, 10)),)
        per = {"separated": ModelSettings((5, 10), ("karras", "vp_quadratic"), 128, 128, mix, (), (), 512),
               "overlapping": ModelSettings((5, 10), ("karras", "vp_quadratic"), 128, 128, mix,
                                            tuple(s for s in ("euler", "heun", "dpmpp_2m") if s in solvers),
                                            (5,), 512),
               "digits": ModelSettings((5, 10), ("karras",), 128, 48,
                                       (IIASet(("karras",), euler_and_2m, (5, 10)),), (), (), 128)}
    else:
        # Sized for the 2-core CPU this runs on, shared with other jobs: about an hour in one
        # process (docs/benchmarks.md states the duration).  A fit compiles its programs: ~5 s on a
        # mixture, ~30 s on the digits U-Net, where a base row or peer also costs seconds of
        # compilation.  So: every solver and peer at every NFE (base rows are cheap), all four grids
        # on the mixtures, Karras + quadratic (its best other grid) on digits.  IIA where the goals
        # are decided (NFE <= 10): euler, heun, dpmpp_2m, unipc on the mixtures' Karras and
        # quadratic grids, euler and dpmpp_2m on their other grids at NFE 5 and 10; on digits euler
        # and dpmpp_2m at every NFE <= 10 on both its grids (the peers run both; a verdict against
        # a peer's best grid needs IIA there too).  The variants of
        # euler, heun and dpmpp_2m at NFE 5 and 10 on the mixtures, and heun's target at NFE 5 on
        # digits (its default changed).  Fit time for euler only (two fits per mode, own process).
        nfes = (3, 4, 5, 6, 8, 10, 15, 20)
        mix = (IIASet(("karras", "vp_quadratic"), main, (3, 4, 5, 6, 8, 10)),
               IIASet(("logsnr_uniform", "vp_time_uniform"), euler_and_2m, (5, 10)))
        heun = tuple(s for s in ("heun",) if s in solvers)
        digits_iia = (IIASet(("karras", "vp_quadratic"), euler_and_2m, (3, 4, 5, 6, 8, 10)),
                      IIASet(("karras",), heun, (5,)))
        tuned = tuple(s for s in ("euler", "heun", "dpmpp_2m") if s in solvers)
        per = {"separated": ModelSettings(nfes, GRIDS, 512, 512, mix, tuned, (5, 10), 1024),
               "overlapping": ModelSettings(nfes, GRIDS, 512, 512, mix, tuned, (5, 10), 1024),
               "digits": ModelSettings(nfes, ("karras", "vp_quadratic"), 128, 128, digits_iia, heun, (5,), 256,
                                       ("target=local",))}
    models = tuple(args.models or MODELS)
    per = {m: per[m] for m in models}
    if args.nfe:
        per = {m: s._replace(nfes=tuple(args.nfe), variant_nfes=tuple(n for n in s.variant_nfes if n in args.nfe),
                             iia=tuple(i._replace(nfes=tuple(args.nfe)) for i in s.iia))
               for m, s in per.items()}
    if args.grids:
        per = {m: s._replace(grids=tuple(args.grids), iia=tuple(i._replace(grids=tuple(args.grids)) for i in s.iia))
               for m, s in per.items()}
    if args.batch:
        per = {m: s._replace(eval_batch=args.batch, fit_batch=args.batch) for m, s in per.items()}
    return Config(
        quick=args.quick, models=models, per_model=per, solvers=solvers, peers=tuple(args.peers or PEERS),
        variant_grid="karras",
        tolerances=(0.1, 0.01) if args.quick else (0.3, 0.1, 0.03, 0.01),
        sections=tuple(args.sections or SECTIONS),
        speed_solvers=tuple(s for s in (("euler", "dpmpp_2m") if args.quick else MAIN_SOLVERS) if s in solvers),
        speed_batch=32 if args.quick else 128, repeats=5 if args.quick else 7,
        # 100 pairs: on a shared 2-core CPU, 25 left the 95 % intervals 1.03-1.08 wide (docs/benchmarks.md)
        overhead_pairs=args.pairs or (9 if args.quick else 100),
        fit_time_solvers=("euler",),
        fit_batch_time=32 if args.quick else 128,
        memory_batches=(512, 8192) if args.quick else (256, 1024, 4096, 16384),
        memory_modes=("sequential",),
        out=Path(args.out) if args.out else DEFAULT_OUT)


def run(cfg: Config, log=print, save=lambda results: None) -> dict:
    """Every section of ``cfg``; ``save(results)`` after each section, model and grid, so a run cut
    short leaves what it measured (speed and fit cost first: they are short, and the goals need them)."""
    start = time.perf_counter()
    results = {"rows": [], "extra": {}, "speed": {}, "fitcost": {}, "load": [os.getloadavg()[0]], "seconds": 0.0,
               "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "nice": os.nice(0), "revision": git_revision(),
               # where the numbers were measured: --replot on another machine must not relabel them
               "machine": machine(), "machine_short": machine_short(), "versions": versions(),
               "versions_short": versions_short()}

    def checkpoint():
        results["seconds"] = time.perf_counter() - start
        results["load"].append(os.getloadavg()[0])
        save(results)

    model = MODELS["digits" if "digits" in cfg.models else cfg.models[0]]()
    results["speed_model"] = model.name
    if "speed" in cfg.sections:
        t = time.perf_counter()
        s = results["speed"]
        s["overhead"] = speed.iia_overhead(model, cfg.speed_solvers, 10, cfg.speed_batch, cfg.overhead_pairs)
        s["peer"] = speed.peer_loop(model, [("euler", "DDIM"), ("dpmpp_2m", "DPM++2M"), ("unipc", "UniPC")]
                                    if "unipc" in cfg.solvers else [("euler", "DDIM")], 10, cfg.speed_batch,
                                    cfg.overhead_pairs)
        s["scaling"] = speed.scaling(model, "euler", (8, 32, 128) if cfg.quick else (8, 32, 128, 512),
                                     (5, 20) if cfg.quick else (5, 10, 20), 3)
        log(f"speed done ({time.perf_counter() - t:.0f} s)")
        checkpoint()
    if "fitcost" in cfg.sections:
        t = time.perf_counter()
        f = results["fitcost"]
        modes = [("teacher_forced", "local"), ("sequential", None)]
        f["time"] = []
        for solver in cfg.fit_time_solvers:
            f["time"] += fitcost.fit_time(model.name, solver, 5 if cfg.quick else 9, cfg.fit_batch_time, 16, modes,
                                          log)
        checkpoint()
        f["memory_model"] = "overlapping"
        f["memory"] = fitcost.peak_memory("overlapping", "euler", 5, cfg.memory_batches, 256, cfg.memory_modes, log)
        log(f"fit cost done ({time.perf_counter() - t:.0f} s)")
        checkpoint()
    if "accuracy" in cfg.sections:
        for name in cfg.models:
            def emit(rows, extra=None, name=name):
                results["rows"] += rows
                if extra is not None:
                    results["extra"][name] = extra
                checkpoint()
            accuracy.run_model(MODELS[name](), cfg, emit, log)
    results["seconds"] = time.perf_counter() - start
    return results


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in ``--help``; an option whose default is None says what it means in its help."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def main(argv=None) -> int:
    """``python -m iia_jax.bench [--quick]``: run, print progress, write the report and plots;
    ``iia-jax bench few-steps ...``: :mod:`.few_steps` (NFE 3-5, and 6, 8, 10 on request, with 2,000 draws)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["few-steps"]:
        from .few_steps import main as few_steps_main
        return few_steps_main(argv[1:])
    ap = argparse.ArgumentParser(prog="iia-jax bench", formatter_class=_Help,
                                 description=__doc__ + " 'iia-jax bench few-steps --help': NFE 3-5 (6, 8, 10 on request) on the "
                                 "digits model with 2,000 draws each, every base with IIA and fit_plan.")
    ap.add_argument("--quick", action="store_true", help="smaller batches, fewer NFE (a few minutes)")
    ap.add_argument("--out", default=str(DEFAULT_OUT),
                    help="directory for benchmarks.md, bench_*.png and the raw results ('docs' for the "
                         "repository's pages)")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="subset of the models (default: all)")
    ap.add_argument("--grids", nargs="+", choices=list(GRIDS), help="subset of the grids (default: each model's own set)")
    ap.add_argument("--nfe", nargs="+", type=int, help="NFE values, for all models (default: each model's own set)")
    ap.add_argument("--solvers", nargs="+", help="subset of our solvers (default: all)")
    ap.add_argument("--peers", nargs="+", choices=PEERS, metavar="PEER",
                    help=f"subset of the peers (default: all): {', '.join(repr(p) for p in PEERS)}")
    ap.add_argument("--batch", type=int, help="evaluation and fit batch, for all models (default: each model's own)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, help="subset of the sections (default: all)")
    ap.add_argument("--pairs", type=int, help="speed: interleaved pairs for iia_sample / sample and the peer "
                    "loop; more narrow the median's interval on a noisy machine (default: 100, --quick 9)")
    ap.add_argument("--replot", metavar="JSON", help="rewrite the report from the raw results of an "
                    "earlier run with the same options (each run saves them, see its last line; default: run)")
    ap.add_argument("--note", action="append", help="with --replot: a line for the report's Setup "
                    "(kept in the raw results), e.g. what happened to the run; repeatable (default: none)")
    ap.add_argument("--rerun", action="store_true", help="with --replot: run --sections for --models "
                    "again and replace them in the saved results")
    args = ap.parse_args(argv)
    cfg = config(args)
    if args.solvers:
        from ..solvers import SOLVERS
        unknown = set(args.solvers) - set(SOLVERS)
        if unknown:
            ap.error(f"--solvers: unknown {sorted(unknown)}; known: {sorted(SOLVERS)}")
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        command, results = saved["command"], saved["results"]
        results["rows"] = [accuracy.Row(*r)._replace(grid=OLD_NAMES.get(r[4], r[4])) for r in results["rows"]]
        results["notes"] = results.get("notes", []) + (args.note or [])
        if args.rerun:
            results, command = rerun(cfg, results, command, argv)
            cfg = config(argparse.Namespace(**{**vars(args), "models": None, "sections": None}))
    else:
        command = ("python -m iia_jax.bench " + shlex.join(argv)).strip()
        cfg.out.mkdir(parents=True, exist_ok=True)
        raw = raw_path(cfg)
        print(f"raw results (written after every section, model and grid): {raw}", flush=True)
        results = run(cfg, lambda s: print(s, flush=True), lambda r: save_raw(raw, command, r))
    if args.rerun or not args.replot or args.note:
        save_raw(Path(args.replot) if args.note and not args.rerun else raw_path(cfg), command, results)
    cfg.out.mkdir(parents=True, exist_ok=True)
    paths = write(results, cfg, command.strip())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def raw_path(cfg: Config) -> Path:
    """Where the raw results go: ``bench_results_quick.json`` or ``bench_results_full.json`` beside the report."""
    return cfg.out / f"bench_results_{'quick' if cfg.quick else 'full'}.json"


def save_raw(path: Path, command: str, results: dict) -> None:
    """Write the raw results (rows as lists); ``--replot`` reads them back."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(command=command, results=results)))
    tmp.replace(path)


def rerun(cfg: Config, results: dict, command: str, argv) -> tuple:
    """Run ``cfg.sections`` for ``cfg.models`` again and put them in place of the saved ones
    (saved to the raw results after every section, model and grid, like a run)."""
    again = shlex.join(argv)
    command = f"{command.strip()}; then python -m iia_jax.bench {again}"
    old = dict(results)

    def merged(new):
        out = dict(old)
        if "accuracy" in cfg.sections:
            out["rows"] = [r for r in old["rows"] if r.model not in cfg.models] + new["rows"]
            out["extra"] = {**old["extra"], **new["extra"]}
        for section in ("speed", "fitcost"):
            if section in cfg.sections:
                out[section] = new[section]
                out["speed_model"] = new["speed_model"]
        # an earlier rerun of no more than these models and sections is replaced whole: its time goes
        earlier = [r for r in old.get("reruns", []) if set(r.get("models", ())) <= set(cfg.models)
                   and set(r.get("sections", ())) <= set(cfg.sections) and r.get("models")]
        out["seconds"] = old["seconds"] - sum(r["seconds"] for r in earlier) + new["seconds"]
        out["load"] = old.get("load", []) + new["load"]
        out["reruns"] = [r for r in old.get("reruns", []) if r not in earlier] + [
            dict(started=new["started"], seconds=new["seconds"], revision=new["revision"], command=again,
                 models=list(cfg.models), sections=list(cfg.sections), machine=new["machine_short"])]
        return out
    raw = raw_path(cfg)
    new = run(cfg, lambda s: print(s, flush=True), lambda new: save_raw(raw, command, merged(new)))
    return merged(new), command


def write(results, cfg: Config, command: str) -> list:
    rows, out = results["rows"], cfg.out
    paths = [out / "benchmarks.md"]
    models = [m for m in cfg.models if any(r.model == m for r in rows)]
    if rows:
        report.plot_vs_nfe(rows, models, "median", "median ODE error", out / "bench_error_vs_nfe.png")
        paths.append(out / "bench_error_vs_nfe.png")
        if any(r.model == "digits" and r.quality == r.quality for r in rows):
            report.plot_vs_nfe(rows, ["digits"], "quality", "digits_score (lower is better)",
                               out / "bench_quality_vs_nfe.png", log_y=False)
            paths.append(out / "bench_quality_vs_nfe.png")
    if results["speed"] or results["fitcost"].get("memory"):
        report.plot_speed(results["speed"], results["fitcost"], out / "bench_speed.png")
        paths.append(out / "bench_speed.png")
    # Machine and versions as recorded by the run; raw results from before they were recorded
    # fall back to the machine writing the report, and say so.
    unrecorded = " (not recorded by the run: the machine that wrote the report)"
    meta = dict(command=command, date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                machine=results.get("machine") or machine() + unrecorded,
                versions=results.get("versions") or versions() + unrecorded,
                revision=results.get("revision") or f"{git_revision()} (when the report was written)",
                machine_short=results.get("machine_short") or machine_short(),
                versions_short=results.get("versions_short") or versions_short(),
                few_steps=(out / "few_steps.md").exists(),   # `iia-jax bench few-steps`'s page beside it
                reruns=results.get("reruns", []))             # captions name the machine of their rows
    paths[0].write_text(markdown(results, cfg, meta, [p.name for p in paths[1:]]))
    return paths
