"""The benchmark's markdown report and plots (from the rows of :mod:`iia_jax.bench.accuracy`)."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import NamedTuple

import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GOAL_NFE = 10


def fmt(v, digits=3):
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def table(header, rows, align: str = "") -> list:
    """Markdown lines of a table; ``align``: ``"l"`` or ``"r"`` per column (default all left)."""
    if len(align) > len(header):
        raise ValueError(f"align has {len(align)} columns but header {len(header)}")
    return ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if a == "r" else "---|"
                                                             for a in align.ljust(len(header), "l"))] + \
           ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _label(r):
    if r.family == "ours":
        return f"{r.method} (base)"
    if r.family == "IIA":
        return f"{r.method} + IIA" + ("" if r.variant == "defaults" else f" [{r.variant}]")
    return r.method


def is_peer(r):
    return r.family in ("diffusers", "diffrax") and r.grid != "adaptive"


def main_rows(rows, model):
    return [r for r in rows if r.model == model and r.grid != "adaptive" and r.variant in ("base", "defaults", "")]


def best(rows, key="median"):
    rows = [r for r in rows if not math.isnan(getattr(r, key))]
    return min(rows, key=lambda r: getattr(r, key)) if rows else None


def nfe_table(rows, model, key, nfes, grids):
    """Rows: method x grid; columns: NFE."""
    sel = main_rows(rows, model)
    order = list(dict.fromkeys(_label(r) for r in sel))
    cells = {(_label(r), r.grid, int(r.nfe)): getattr(r, key) for r in sel}
    out = []
    for lab in order:
        for g in grids:
            vals = [cells.get((lab, g, n)) for n in nfes]
            if any(v is not None for v in vals):
                out.append([lab, g] + [fmt(v) for v in vals])
    return table(["method", "grid"] + [f"NFE {n}" for n in nfes], out)


def default_grid(peer_row) -> str:
    """The grid a peer steps on when not told otherwise: diffusers' schedulers space their timesteps
    uniformly in time (``time_uniform``); diffrax has no default, and EDM's Karras grid stands in."""
    return "vp_time_uniform" if peer_row.family == "diffusers" else "karras"


class Goal(NamedTuple):
    """Best IIA against the peers at one NFE."""

    nfe: int
    ours: object               # the best IIA row
    top: object                # the best peer row (any peer, any grid)
    beaten_best: int           # peers beaten on their best grid ...
    beaten_default: int        # ... and on their default grid (of those run on it)
    peers: int
    on_default: int            # peers that ran on their default grid
    lost_to: int               # peers (best grid) better than the best IIA (quality: beyond 2 se)

    @property
    def met(self) -> bool:
        return self.beaten_best == self.peers


def goal_rows(rows, model, nfes, key="median") -> list:
    """At each NFE <= GOAL_NFE: the best IIA row (any solver, variant, grid) against every peer on
    its best grid and on its default grid (``default_grid``)."""
    out = []
    for n in [n for n in nfes if n <= GOAL_NFE]:
        at = [r for r in rows if r.model == model and r.grid != "adaptive" and int(r.nfe) == n
              and not math.isnan(getattr(r, key))]
        ours = best([r for r in at if r.family == "IIA"], key)
        peers = defaultdict(list)
        for r in at:
            if is_peer(r):
                peers[r.method].append(r)
        if ours is None or not peers:
            continue
        on_best = [best(rs, key) for rs in peers.values()]
        on_default = [r for rs in peers.values() for r in rs if r.grid == default_grid(r)]
        out.append(Goal(n, ours, min(on_best, key=lambda r: getattr(r, key)),
                        sum(_better(ours, p, key) for p in on_best),
                        sum(_better(ours, p, key) for p in on_default), len(on_best), len(on_default),
                        sum(_better(p, ours, key) for p in on_best)))
    return out


def goals(rows, model, nfes, key="median"):
    """Markdown rows of ``goal_rows`` and whether every NFE was won."""
    out = []
    g_all = goal_rows(rows, model, nfes, key)
    for g in g_all:
        v, t = getattr(g.ours, key), getattr(g.top, key)
        se = (lambda r: f" ± {fmt(r.quality_se, 2)}") if key == "quality" else (lambda r: "")
        out.append([g.nfe, f"{_label(g.ours)}, {g.ours.grid}", fmt(v) + se(g.ours), f"{g.top.method}, {g.top.grid}",
                    fmt(t) + se(g.top), f"{t / v:.2f}x" if v > 0 and t > 0 else "—",
                    f"{g.beaten_default}/{g.on_default}" if g.on_default else "not run",
                    f"{g.beaten_best}/{g.peers}", "yes" if g.met else "**no**"])
    return out, bool(g_all) and all(g.met for g in g_all)


def _better(a, b, key):
    """``a`` lower than ``b``; for quality, by more than 2 standard errors of the difference."""
    if key != "quality":
        return getattr(a, key) < getattr(b, key)
    return b.quality - a.quality > 2 * math.hypot(a.quality_se, b.quality_se)


def geo_mean(v):
    v = [x for x in v if x > 0 and not math.isnan(x)]
    return float(np.exp(np.mean(np.log(v)))) if v else float("nan")


def variant_verdict(rows, variant_grid):
    """Per solver and variant: geometric-mean ratio of its median error to the defaults' at the
    same model and NFE (on the variant grid); < 1 means the variant is better."""
    ref = {(r.model, r.method, int(r.nfe)): r.median for r in rows
           if r.family == "IIA" and r.variant == "defaults" and r.grid == variant_grid}
    ratios = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.family == "IIA" and r.variant != "defaults" and r.grid == variant_grid:
            d = ref.get((r.model, r.method, int(r.nfe)))
            if d:
                ratios[r.method][r.variant].append((r.model, r.median / d))
    out = []
    for solver, per in ratios.items():
        for variant, vals in per.items():
            by_model = defaultdict(list)
            for m, v in vals:
                by_model[m].append(v)
            out.append([solver, variant] + [fmt(geo_mean(by_model[m]), 3) if m in by_model else "—"
                                            for m in sorted({r.model for r in rows})] +
                       [fmt(geo_mean([v for _, v in vals]), 3)])
    return out


def grid_verdict(rows, grids):
    """Per model and solver: geometric-mean IIA (defaults) median over the NFE <= GOAL_NFE that
    every grid the solver was fitted on has, per grid ("—" where it was not fitted)."""
    out = []
    for model in dict.fromkeys(r.model for r in rows):
        for solver in dict.fromkeys(r.method for r in rows if r.family == "IIA"):
            sel = [r for r in rows if r.model == model and r.method == solver and r.family == "IIA"
                   and r.variant == "defaults" and r.nfe <= GOAL_NFE]
            fitted = [g for g in grids if any(r.grid == g for r in sel)]
            if len(fitted) < 2:
                continue
            nfes = set.intersection(*[{int(r.nfe) for r in sel if r.grid == g} for g in fitted])
            if not nfes:
                continue
            vals = {g: geo_mean([r.median for r in sel if r.grid == g and int(r.nfe) in nfes]) for g in fitted}
            top = min(vals, key=vals.get)
            out.append([model, solver, ", ".join(map(str, sorted(nfes)))]
                       + [fmt(vals[g]) if g in vals else "—" for g in grids] + [top])
    return out


# ----------------------------------------------------------------------------- plots

PEER_STYLE = dict(linestyle="--", linewidth=1.0, alpha=0.9)
PEER_MARKERS = "sDv<>phP^*X"   # one per peer, in the order of iia_jax.bench.peers.PEERS
# Peers get colours of their own (tab20b, kept apart from our tab10 solver colours) as well as a
# marker each, so eleven peers stay tellable apart in one panel.
PEER_CMAP = "tab20b"


def _color(solver):
    """One colour per solver of ours, the same in every panel."""
    from ..solvers import SOLVERS
    return f"C{list(SOLVERS).index(solver) % 10}"


def _envelope(rows, key):
    """The best row over grids per NFE: sorted ``(nfe, value, se)`` triples (se: ``quality_se``
    for ``key == "quality"``, else NaN)."""
    per = defaultdict(list)
    for r in rows:
        if not math.isnan(getattr(r, key)):
            per[int(r.nfe)].append(r)
    out = []
    for n, rs in sorted(per.items()):
        r = min(rs, key=lambda row: getattr(row, key))
        out.append((n, getattr(r, key), r.quality_se if key == "quality" else float("nan")))
    return out


def _draw(ax, env, fmt=None, shift=0.0, **style):
    """A line through ``env``; with error bars where its standard errors are known, each series
    moved sideways by the factor ``1 + shift`` (on the log NFE axis) so that the bars do not hide
    one another."""
    n, v, se = zip(*env)
    if all(math.isnan(e) for e in se):
        return ax.plot(n, v, *([fmt] if fmt else []), **style)[0]
    return ax.errorbar([x * (1.0 + shift) for x in n], v, yerr=[0.0 if math.isnan(e) else e for e in se],
                       fmt=fmt or "", capsize=1.5, elinewidth=0.7, **style)[0]


def plot_vs_nfe(rows, models, key, ylabel, path, log_y=True):
    """One panel per model: the best grid per NFE of our base solvers (envelope), each solver with
    IIA, and each peer.  ``log_y``: a log axis (errors span decades); for scores that can be
    negative (KID is unbiased) a symmetric log axis, linear within +-10, so one poor sampler does
    not squash the rest.  Quality points carry +- their standard error."""
    width = 4.6 * len(models) + 3.0 if len(models) > 1 else 9.0
    fig, axes = plt.subplots(1, len(models), figsize=(width, 4.2), squeeze=False)
    handles = {}
    for ax, model in zip(axes[0], models):
        sel = main_rows(rows, model)
        series = 1 + len({r.method for r in sel if r.family == "IIA"}) + len({r.method for r in sel if is_peer(r)})
        shifts = iter([0.012 * (k - (series - 1) / 2) for k in range(series)])
        ours = [r for r in sel if r.family == "ours"]
        env = _envelope(ours, key)
        if env:
            handles["ours base (best solver and grid)"] = _draw(ax, env, "k:", next(shifts), marker=".")
        for solver in dict.fromkeys(r.method for r in sel if r.family == "IIA"):
            env = _envelope([r for r in sel if r.family == "IIA" and r.method == solver], key)
            if env:
                handles[f"{solver} + IIA"] = _draw(ax, env, "-o", next(shifts), color=_color(solver), markersize=3)
        peer_names = list(dict.fromkeys(r.method for r in sel if is_peer(r)))
        cmap = plt.get_cmap(PEER_CMAP)
        for j, name in enumerate(peer_names):
            env = _envelope([r for r in sel if r.method == name and is_peer(r)], key)
            if env:
                handles[name] = _draw(ax, env, None, next(shifts), marker=PEER_MARKERS[j % len(PEER_MARKERS)], markersize=4,
                                      color=cmap(j % cmap.N), **PEER_STYLE)
        values = [getattr(r, key) for r in sel if not math.isnan(getattr(r, key))]
        ada = [r for r in rows if r.model == model and r.grid == "adaptive" and not math.isnan(getattr(r, key))]
        top = 3 * max(values) if values else None
        if ada:
            shown = [r for r in ada if top is None or getattr(r, key) <= top]
            if shown:
                handles["diffrax Tsit5 (adaptive; off-scale points omitted)"] = ax.plot(
                    [r.nfe for r in shown], [getattr(r, key) for r in shown], "rx", markersize=6)[0]
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        else:
            ax.set_yscale("symlog", linthresh=10.0)
        nfes = sorted({int(r.nfe) for r in sel})
        far = max([r.nfe for r in ada if top is None or getattr(r, key) <= top], default=0)
        ax.set_xticks(nfes + [n for n in (40, 80, 160, 320) if nfes[-1] < n <= 1.3 * far])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(model)
        ax.set_xlabel("NFE")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    fig.legend(list(handles.values()), list(handles.keys()), loc="center right", fontsize=7)
    bars = " (+- se)" if key == "quality" else ""
    fig.suptitle(f"{ylabel}{bars} vs NFE, best grid per point; peers dashed, a colour and marker each",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 3.0 / fig.get_figwidth(), 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_speed(speed, fitcost, path):
    panels = [p for p in ("overhead", "peer", "scaling", "time", "memory") if speed.get(p) or fitcost.get(p)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, name in zip(axes[0], panels):
        if name == "overhead":
            o = speed["overhead"]
            lo = [r.get("ci_lo", r["q25"]) for r in o]    # the median's 95 % interval (older runs: IQR)
            hi = [r.get("ci_hi", r["q75"]) for r in o]
            ax.bar([r["solver"] for r in o], [r["ratio"] for r in o],
                   yerr=[[r["ratio"] - a for r, a in zip(o, lo)], [b - r["ratio"] for r, b in zip(o, hi)]], color="C0")
            ax.axhline(1.03, color="r", linestyle="--", linewidth=1, label="goal 1.03")
            ax.set_ylim(min(0.8, min(lo) - 0.05), max(1.2, max(hi) + 0.05))
            ax.set_title("iia_sample / sample (wall, median, 95 %)")
            ax.tick_params(axis="x", rotation=45)
            ax.legend(fontsize=7)
        elif name == "peer":
            o = speed["peer"]
            ax.bar([f"{r['peer']}\nvs {r['ours']}" for r in o], [r["ratio"] for r in o], color="C1")
            ax.set_title("diffusers loop / our jitted scan")
            ax.axhline(1.0, color="k", linewidth=0.8)
        elif name == "scaling":
            for nfe in sorted({r["nfe"] for r in speed["scaling"]}):
                sel = [r for r in speed["scaling"] if r["nfe"] == nfe]
                ax.plot([r["batch"] for r in sel], [r["per_eval_us"] for r in sel], "-o", label=f"NFE {nfe}")
            ax.set_xscale("log")
            ax.set_xlabel("batch")
            ax.set_ylabel("µs per sample per evaluation")
            ax.set_title("sample: time / (batch x NFE)")
            ax.legend(fontsize=7)
        elif name == "time":
            o = fitcost["time"]
            pos = np.arange(len(o))
            ax.bar(pos - 0.2, [r["ratio"] for r in o], 0.4, label="first fit (compiles)", color="C3")
            ax.bar(pos + 0.2, [r["ratio_warm"] for r in o], 0.4, label="second fit (compiled)", color="C2")
            ax.axhline(1.2, color="k", linestyle="--", linewidth=1, label="goal 1.2")
            ax.set_xticks(pos, [f"{r['solver']}\n{r['mode'].split('/')[0]}" for r in o])
            ax.set_ylim(bottom=0)
            ax.set_title("fit time / its unavoidable evaluations")
            ax.legend(fontsize=7)
        else:
            for mode in dict.fromkeys(r["mode"] for r in fitcost["memory"]):
                for chunked in (False, True):
                    sel = [r for r in fitcost["memory"] if r["mode"] == mode and (r["chunk"] is not None) == chunked]
                    ax.plot([r["batch"] for r in sel], [max(r["fit_mb"], 0.5) for r in sel],
                            "-o" if chunked else "--s",
                            label=f"{mode}, {'chunk ' + str(sel[0]['chunk']) if chunked else 'no chunk'}")
            ax.set_xscale("log")
            batches = sorted({r["batch"] for r in fitcost["memory"]})
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_ylim(bottom=0)
            ax.set_xlabel("fit batch")
            ax.set_ylabel("fit's own peak RSS (MiB)")
            ax.set_title("fit memory")
            ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
