"""Which digits quality metric can be trusted?  Every candidate on ladders of known order.

    python benchmarks/metric_ladders.py                  # docs/metrics.md and docs/metrics_*.png
    python benchmarks/metric_ladders.py --samples-only   # just fill the sample cache
    python benchmarks/metric_ladders.py --replot         # rewrite the docs from the saved scores

Samples (cached under ``checkpoints/metric_ladders/``, untracked, so reruns only score): the
shipped digits model (``iia_jax.pretrained.digits()``), EDM Karras grid sigma 80 -> 0.002 -> 0,
evaluation noise ``80 N(0, I)`` of ``--n`` draws from ``split(PRNGKey(seed))[1]`` (the demo's
key), fit noise of 256 draws from ``split(PRNGKey(seed))[0]``.

Ladders (the order is known; each metric gets a Spearman rank correlation with it):

(a) heun from the same noise at 4, 5, 6, 8, 12, 18, 32 steps: quality improves with steps
    towards the 64-step reference (which is scored too);
(b) the 64-step reference samples scaled in contrast about their mean image by 0.8, 0.9, 0.97,
    1.0, 1.03, 1.1, 1.25, judged against 64-step samples from other noise (the model's own
    distribution: best factor 1) and, for information, against real digits; the same ladder on the
    600 real digits new to the judge ("test" + "train_check"), whose best factor is 1 by construction;
(c) Gaussian blur (0, 0.3, 0.5, 0.7, 1.0 px) and additive pixel noise (std 0, 0.05, 0.1, 0.2,
    0.4), on the reference samples and on those 600 real digits;
(d) real digits the denoiser never saw (the 300 ``"test"`` digits) vs 300 real digits it was
    trained on and the judge never saw (``digits_split("train_check")``): they must tie.

Then the base-vs-IIA check at NFE 9 (heun, euler, dpmpp_2m; ``iia_jax.fit`` defaults with
fine_steps 8, fit batch 256) with the headline and the independent judges side by side.
"""
from __future__ import annotations

import functools
import json
import platform
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np
from scipy.stats import spearmanr

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import iia_jax
from iia_jax import pretrained, schedules
from iia_jax.bench import harness
from iia_jax.bench.provenance import command_line
from iia_jax.data import digits
from iia_jax.iia import DEFAULT_TARGET
from iia_jax.metrics import ode_error
from iia_jax.metrics import quality as q
from iia_jax.metrics.fd import (apply_in_batches, corrupt_blur, corrupt_noise, digits_features,
                                fd_from_features)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CACHE = ROOT / "checkpoints" / "metric_ladders"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SHAPE = (8, 8, 1)
REF_STEPS = 64
HEUN_LADDER = (4, 5, 6, 8, 12, 18, 32)
NFE9_SOLVERS = ("heun", "euler", "dpmpp_2m")
NFE9_FIT_BATCH = 1024   # the digits judge in fit's never-worse check needs about 1,000 rows
BATCH = 500             # evaluation rows per call


def noise(n: int, fit_batch: int, seed: int) -> harness.Draws:
    """Fit and evaluation noise of the demo's key."""
    return harness.draws(seed, SHAPE, n, fit_batch, SIGMA_MAX)


def _cached(name: str, make):
    """``make()`` once, then the ``.npy`` under ``CACHE``."""
    path = CACHE / f"{name}.npy"
    if path.exists():
        return np.load(path)
    t = time.perf_counter()
    x = np.asarray(make(), np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    print(f"  cached {path.name} ({time.perf_counter() - t:.0f} s)", flush=True)
    return x


def heun_samples(steps: int, n: int, seed: int) -> np.ndarray:
    """heun with ``steps`` Karras steps from the evaluation noise (cached)."""
    plan = iia_jax.plan("heun", schedules.karras(steps, SIGMA_MIN, SIGMA_MAX))
    return _cached(f"heun{steps}_n{n}_seed{seed}", lambda: harness.base_samples(
        pretrained.digits(), plan, noise(n, 256, seed).eval, batch=BATCH))


def nfe9_samples(solver: str, n: int, seed: int, fit_batch: int = 256, fine_steps: int = 8,
                 judged: bool = False):
    """``(base, iia)`` samples of ``solver`` at NFE 9 from the evaluation noise (cached); IIA is
    fitted with the library defaults on the fit noise, with ``judged`` the digits judge in its
    never-worse check (``quality=digits_check``, as ``iia-jax fit --model digits``)."""
    denoiser = pretrained.digits()
    plan = harness.plan_for(solver, 9, SIGMA_MIN, SIGMA_MAX)
    draws = noise(n, fit_batch, seed)
    tag = f"{solver}{plan.num_steps}_n{n}_seed{seed}"
    base = _cached(f"base_{tag}", lambda: harness.base_samples(denoiser, plan, draws.eval, batch=BATCH))

    def make_iia():
        coeffs = iia_jax.fit(denoiser, plan, draws.fit, fine_steps=fine_steps, progress=False,
                             quality=q.digits_check if judged else None).coeffs
        return harness.iia_samples(denoiser, plan, coeffs, draws.eval, batch=BATCH)

    # the cache name carries the target (heun's default changed from local to trajectory) and the
    # spread-matched least squares (now the default)
    suffix = f"_{DEFAULT_TARGET[solver]}_judged_spread" if judged else ""
    iia = _cached(f"iia_{tag}_fit{fit_batch}_m{fine_steps}{suffix}", make_iia)
    return base, iia


def all_samples(n: int, seed: int, fit_batch: int = NFE9_FIT_BATCH) -> dict:
    out = {"reference": heun_samples(REF_STEPS, n, seed),
           "reference, other noise": heun_samples(REF_STEPS, n, seed + 1)}
    for steps in HEUN_LADDER:
        out[f"heun{steps}"] = heun_samples(steps, n, seed)
    for solver in NFE9_SOLVERS:
        out[f"{solver} base"], out[f"{solver} IIA"] = nfe9_samples(solver, n, seed, fit_batch,
                                                                   judged=True)
    return out



# ----------------------------------------------------------------------------- candidate metrics
# Each candidate maps (images, reference images) to (value, standard error, aux); aux lets two rungs
# of a ladder be compared with the error of their *difference*: ("loo", leave-one-out values) for the
# kernel metrics (jackknife), ("boot", replicates) for bootstrap ones (the same resampled rows for
# every rung of equal size, so paired), None where only a binomial error exists.  "lower" says
# whether lower is better.  Features of a reference set are computed once per set (cached by key).

BOOT = 30
_FEATURES: dict = {}


def _feats(kind: str, key: str, images) -> np.ndarray:
    if (kind, key) not in _FEATURES:
        if kind == "judge":
            f = q.judge_features(images)
        elif kind == "judge_unquantised":
            f = q.judge_features(images, quantize=False)
        elif kind == "shipped":  # the shipped classifier on quantised images, scaled like the judge
            f = apply_in_batches(pretrained.digits_classifier().features, q.quantize_digits(images))
            f = f / _shipped_scale()
        else:  # the old FD's features: shipped classifier, clipped, not quantised
            f = digits_features(images)
        _FEATURES[kind, key] = f
    return _FEATURES[kind, key]


@functools.lru_cache(maxsize=1)
def _shipped_scale() -> float:
    f = apply_in_batches(pretrained.digits_classifier().features, q.digits_split("reference"))
    return float(np.sqrt(np.mean(f ** 2)))


def _boot(stat, x):
    """``(se, ("boot", replicates))`` over BOOT resamples of x's rows (seed 0: paired across rungs)."""
    rng = np.random.default_rng(0)
    reps = np.array([stat(x[rng.integers(0, len(x), len(x))]) for _ in range(BOOT)])
    return float(np.std(reps, ddof=1)), ("boot", reps)


def _kid_metric(kind):
    def metric(x, xk, y, yk):
        return _kernel(q.polynomial_kernel, _feats(kind, xk, x), _feats(kind, yk, y))
    return metric


def _kernel(kernel, x, y):
    v, (tx, ty) = q.mmd2_jackknife(kernel, x, y)
    loo = (1000 * tx, 1000 * ty)
    return 1000 * v, q.jackknife_se(loo), ("loo", loo)


def _fd_metric(kind):
    def metric(x, xk, y, yk):
        if kind == "old" and yk == "real":  # the old FD's own reference: all 1,497 train digits
            y, yk = digits("train").images, "train"
        fx, fy = _feats(kind, xk, x), _feats(kind, yk, y)
        return (fd_from_features(fx, fy), *_boot(lambda f: fd_from_features(f, fy), fx))
    return metric


def m_pixel_mmd(x, xk, y, yk):
    flat = lambda a: q.quantize_digits(a).reshape(len(a), -1).astype(np.float64)  # noqa: E731
    return _kernel(lambda a, b: q.rbf_kernel(a, b, _bandwidth()), flat(x), flat(y))


@functools.lru_cache(maxsize=1)
def _bandwidth() -> float:
    return q.median_bandwidth(q.digits_split("reference").reshape(600, -1))


def _binomial(p, n):
    return float(np.sqrt(p * (1 - p) / n))


def m_precision(x, xk, y, yk):
    p, _ = q.precision_recall(_feats("judge", xk, x), _feats("judge", yk, y))
    return p, _binomial(p, len(x)), None


def m_recall(x, xk, y, yk):
    _, r = q.precision_recall(_feats("judge", xk, x), _feats("judge", yk, y))
    return r, _binomial(r, len(y)), None


def m_density(x, xk, y, yk):
    fx, fy = _feats("judge", xk, x), _feats("judge", yk, y)
    return (q.density_coverage(fx, fy)[0], *_boot(lambda f: q.density_coverage(f, fy)[0], fx))


def m_coverage(x, xk, y, yk):
    c = q.density_coverage(_feats("judge", xk, x), _feats("judge", yk, y))[1]
    return c, _binomial(c, len(y)), None


def m_inception(x, xk, y, yk):
    logits = q.judge_logits(x)
    return (q.inception_score(logits), *_boot(q.inception_score, logits))


# name -> (function, lower is better)
METRICS = {
    "digits_score (headline: 1000 KID, judge, quantised)": (_kid_metric("judge"), True),
    "FD, judge, quantised": (_fd_metric("judge"), True),
    "1000 KID, judge, not quantised": (_kid_metric("judge_unquantised"), True),
    "1000 KID, shipped classifier, quantised": (_kid_metric("shipped"), True),
    "old digits FD (shipped classifier, clipped)": (_fd_metric("old"), True),
    "1000 pixel MMD (RBF)": (m_pixel_mmd, True),
    "precision": (m_precision, False),
    "recall": (m_recall, False),
    "density": (m_density, False),
    "coverage": (m_coverage, False),
    "Inception Score (judge)": (m_inception, False),
}
HEADLINE = next(iter(METRICS))


# ----------------------------------------------------------------------------- ladders


def ladders(samples: dict) -> dict:
    """``{ladder: (parameter name, [(parameter, images, key)], reference images, reference key)}``."""
    ref, other = samples["reference"], samples["reference, other noise"]
    test, real = q.digits_split("test"), q.digits_split("reference")
    # all 600 real digits new to the judge and to the reference (they tie, ladder (d)): finer ladders
    new = np.concatenate([test, q.digits_split("train_check")])
    factors = (0.8, 0.9, 0.97, 1.0, 1.03, 1.1, 1.25)

    def contrast(x, f):
        m = x.mean(0)
        return m + f * (x - m)

    return {
        "(a) heun steps vs real": ("steps", [(s, samples[f"heun{s}"] if s != REF_STEPS else ref, f"heun{s}")
                                             for s in HEUN_LADDER + (REF_STEPS,)], real, "real"),
        "(b) contrast of real new digits": ("factor", [(f, contrast(new, f), f"new c{f}") for f in factors],
                                            real, "real"),
        "(b) contrast of model samples vs model samples": (
            "factor", [(f, contrast(ref, f), f"ref c{f}") for f in factors], other, "other"),
        "(b) contrast of model samples vs real": ("factor", [(f, contrast(ref, f), f"ref c{f}") for f in factors],
                                                  real, "real"),
        "(c) blur of real new digits": ("blur px", [(b, corrupt_blur(new, b) if b else new, f"new b{b}")
                                                    for b in (0, 0.3, 0.5, 0.7, 1.0)], real, "real"),
        "(c) noise on real new digits": ("noise std", [(v, corrupt_noise(new, v) if v else new, f"new n{v}")
                                                       for v in (0, 0.05, 0.1, 0.2, 0.4)], real, "real"),
        "(c) blur of model samples vs model samples": ("blur px", [(b, corrupt_blur(ref, b) if b else ref,
                                                                    f"ref b{b}") for b in (0, 0.3, 0.5, 0.7, 1.0)],
                                                       other, "other"),
        "(c) noise on model samples vs model samples": ("noise std", [(v, corrupt_noise(ref, v) if v else ref,
                                                                       f"ref n{v}") for v in (0, 0.05, 0.1, 0.2, 0.4)],
                                                        other, "other"),
        "(d) real: held-out vs denoiser-train": ("set", [("test", test, "test"),
                                                        ("train_check", q.digits_split("train_check"), "check")],
                                                 real, "real"),
    }



def score_ladders(samples: dict, only=None) -> dict:
    """``{ladder: {"param", "points", metric: [(value, se, aux) per rung]}}`` (the ladders whose
    name starts with one of ``only``, or all)."""
    out = {}
    for name, (param, rungs, y, yk) in ladders(samples).items():
        if only and not name.startswith(tuple(only)):
            continue
        t = time.perf_counter()
        res = {"param": param, "points": [p for p, _, _ in rungs]}
        for metric, (fn, _) in METRICS.items():
            res[metric] = [fn(x, xk, y, yk) for _, x, xk in rungs]
        out[name] = res
        print(f"  scored {name} ({time.perf_counter() - t:.0f} s)", flush=True)
    return out


def _badness(values, lower: bool):
    v = np.array([r[0] for r in values], np.float64)
    return (v if lower else -v), np.array([r[1] for r in values], np.float64)


def pair_se(a, b, paired: bool) -> float:
    """Standard error of the difference of two rungs' values (see the metric table's comment)."""
    if a[2] is None or b[2] is None or (a[2][0] == "boot" and not paired):
        return float(np.hypot(a[1], b[1]))
    if a[2][0] == "loo":
        return q.jackknife_se(a[2][1], b[2][1], paired)
    return float(np.std(a[2][1] - b[2][1], ddof=1))


def monotone_verdict(order, values, lower: bool, paired: bool = True):
    """``(rho, passed)`` for rungs whose true badness is ``order``: passed when no pair of rungs is
    in the wrong order by more than 2 standard errors of their difference and the best and worst
    rungs are more than 2 apart (rho, Spearman's, is reported, not required)."""
    b, _ = _badness(values, lower)
    order = np.asarray(order, np.float64)
    rho = float(spearmanr(order, b).statistic) if np.ptp(b) > 0 else 0.0

    def gap(i, j):  # > 0: rung j is worse than rung i, in standard errors of the difference
        se = pair_se(values[i], values[j], paired)
        return 0.0 if b[j] == b[i] else (b[j] - b[i]) / max(se, 1e-300)

    idx = np.argsort(order, kind="stable")
    inverted = any(gap(i, j) < -2 for a, i in enumerate(idx) for j in idx[a + 1:] if order[j] > order[i])
    return rho, bool(not inverted and gap(idx[0], idx[-1]) > 2)


def verdicts(results: dict) -> dict:
    """``{ladder: {metric: (text, passed or None)}}``; ``None``: informational only."""
    out = {}
    for name, res in results.items():
        pts = res["points"]
        out[name] = {}
        for metric, (_, lower) in METRICS.items():
            vals = res[metric]
            if res["param"] == "set":  # different images: unpaired (the shared reference still cancels)
                b, _ = _badness(vals, lower)
                z = abs(b[0] - b[1]) / pair_se(vals[0], vals[1], paired=False)
                out[name][metric] = (f"z = {z:.1f}", bool(z < 2))
            elif res["param"] == "factor":
                sides = [[i for i, f in enumerate(pts) if f <= 1], [i for i, f in enumerate(pts) if f >= 1]]
                got = [monotone_verdict([abs(np.log(pts[i])) for i in s], [vals[i] for i in s], lower)
                       for s in sides]
                bad = _badness(vals, lower)[0]
                best = "/".join(str(pts[i]) for i in np.flatnonzero(bad == bad.min()))  # ties: identical images
                text = f"rho {got[0][0]:.2f} / {got[1][0]:.2f}, best {best}"
                informational = name.endswith("vs real") and "model" in name
                out[name][metric] = (text, None if informational else got[0][1] and got[1][1])
            else:
                order = [-p for p in pts] if res["param"] == "steps" else pts
                rho, ok = monotone_verdict(order, vals, lower)
                out[name][metric] = (f"rho {rho:.2f}", ok)
    return out


# ----------------------------------------------------------------------------- base vs IIA at NFE 9


# judge -> (its metric in METRICS, if it has ladder verdicts; lower is better)
NFE9_JUDGES = {
    "digits_score": (HEADLINE, True), "FD, judge": ("FD, judge, quantised", True),
    "coverage": ("coverage", False), "pixel MMD to real": ("1000 pixel MMD (RBF)", True),
    "pixel MMD to fine ref": (None, True), "precision": ("precision", False),
    "recall": ("recall", False), "density": ("density", False), "IS": ("Inception Score (judge)", False),
    "|contrast - 1|": (None, True),
    # against the model's own distribution (64-step samples from other noise) instead of real digits
    "digits_score vs model": (None, True), "FD, judge, vs model": (None, True),
    "coverage vs model": (None, False),
}


def _judges(x, ref, model) -> dict:
    """Every judge of samples ``x`` (``ref``: the fine reference from the same noise; ``model``:
    fine samples from other noise, the model's own distribution)."""
    qual, own = q.digits_quality(x, boot=2), q.digits_quality(x, reference=model, boot=2)
    xq, rq = q.quantize_digits(x), q.quantize_digits(ref)
    contrast = q.contrast_ratio(xq, rq)
    return {"digits_score": qual["score"], "FD, judge": qual["fd"], "coverage": qual["coverage"],
            "pixel MMD to real": 1000 * qual["pixel_mmd"],
            "pixel MMD to fine ref": 1000 * q.pixel_mmd(xq, rq, _bandwidth())[0],
            "precision": qual["precision"], "recall": qual["recall"], "density": qual["density"],
            "IS": qual["inception_score"], "|contrast - 1|": abs(contrast - 1), "contrast": contrast,
            "digits_score vs model": own["score"], "FD, judge, vs model": own["fd"],
            "coverage vs model": own["coverage"]}


def nfe9_table(samples: dict) -> list:
    """Every judge on base and IIA samples at NFE 9, and each judge's IIA - base difference with a
    paired error: ``score_difference``'s jackknife for the headline, ``BOOT`` bootstrap resamples
    of the noise draws (the same rows for base, IIA and reference) for the others."""
    ref, model = samples["reference"], samples["reference, other noise"]
    rng = np.random.default_rng(0)
    rows = []
    for solver in NFE9_SOLVERS:
        base, iia = samples[f"{solver} base"], samples[f"{solver} IIA"]
        j_base, j_iia = _judges(base, ref, model), _judges(iia, ref, model)
        boots = []
        for _ in range(BOOT):
            idx = rng.integers(0, len(base), len(base))
            b, i = _judges(base[idx], ref[idx], model), _judges(iia[idx], ref[idx], model)
            boots.append({k: i[k] - b[k] for k in b})
        paired = {k: (j_iia[k] - j_base[k], float(np.std([d[k] for d in boots], ddof=1))) for k in j_base}
        paired["digits_score"] = q.score_difference(iia, base, paired=True)
        rows.append(dict(solver=solver, ode_base=ode_error(base, ref).median, ode_iia=ode_error(iia, ref).median,
                         base=j_base, iia=j_iia, paired=paired))
    return rows


# ----------------------------------------------------------------------------- output

PLOTTED = ("digits_score (headline: 1000 KID, judge, quantised)", "FD, judge, quantised",
           "1000 KID, shipped classifier, quantised", "old digits FD (shipped classifier, clipped)",
           "1000 pixel MMD (RBF)")


def plot(results: dict, path: Path):
    names = [n for n in results if results[n]["param"] != "set"]
    fig, axes = plt.subplots(2, (len(names) + 1) // 2, figsize=(4.2 * ((len(names) + 1) // 2), 7.6))
    for ax, name in zip(axes.flat, names):
        res = results[name]
        pts = res["points"]
        xs = np.arange(len(pts))
        for k, metric in enumerate(PLOTTED):
            b, se = _badness(res[metric], METRICS[metric][1])
            lo, span = b.min(), max(np.ptp(b), 1e-12)
            ax.errorbar(xs + 0.06 * (k - 2), (b - lo) / span, se / span, fmt="-o", ms=3, capsize=2,
                        color=f"C{k}", lw=2.2 if k == 0 else 1, label=metric)
        ax.set_xticks(xs, [str(p) for p in pts], fontsize=8)
        ax.set_xlabel(res["param"])
        ax.set_title(name, fontsize=9)
        ax.set_ylim(-0.35, 1.35)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("badness, rescaled to [0, 1] per metric")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", fontsize=8, ncol=3)
    fig.suptitle("metric ladders (bars: standard errors; the headline in bold)", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _num(v):
    return f"{v:.3g}"


def _verdict(diff, se, lower):
    if abs(diff) <= 2 * se:
        return "tie"
    return "IIA" if (diff < 0) == lower else "base"


def _fmt(v, se):
    scale = max(abs(v), 1e-12)
    digits = 3 if scale < 1 else 2 if scale < 10 else 1
    return f"{v:.{digits}f} ± {se:.{digits}f}"


def markdown(results, verdict, rows, args, command, total_s) -> str:
    lines = [
        "# Digits quality metrics: which one can be trusted",
        "",
        f"Produced by `{command}` ({total_s / 60:.1f} min on {args.cpu_note}, scoring only; the samples "
        f"come from the cache under `checkpoints/metric_ladders/`; jax {jax.__version__}, numpy "
        f"{np.__version__}, {platform.machine()}). Samples: the shipped digits model, heun on the EDM Karras "
        f"grid (sigma 80 -> 0.002 -> 0), {args.n} evaluation noise draws (seed {args.seed}, the demo's key); "
        f"the 64-step heun samples are the fine reference, 64-step samples from other noise (seed "
        f"{args.seed + 1}) stand for the model's own distribution. Real digits: the split of "
        "`iia_jax.metrics.quality` (597 `judge_train` digits trained the judge; 600 `reference` digits "
        "are what samples are compared with; 300 `train_check` digits that trained the denoiser, and the "
        "300 held-out `test` digits, are new to the judge and to the reference). Everything is "
        f"deterministic. Standard errors: jackknife for KID/MMD, {BOOT} bootstrap resamples for FD, "
        "density and IS, binomial for precision, recall and coverage.",
        "",
        "A ladder passes when no pair of rungs is in the wrong order by more than 2 standard errors "
        "of their difference and the best and worst rungs are more than 2 such errors apart. The rungs "
        "of a ladder share the reference digits and (except (d)) their noise draws or images, so the "
        "error of a difference is taken paired: the jackknife of the difference for KID/MMD, the same "
        "bootstrap resamples for FD, density and IS; precision, recall and coverage only have binomial "
        "errors, combined as if independent. Spearman's rho between badness and the known order is "
        "reported. Contrast ladders are judged on each side of 1 separately (rho left / right); the "
        "tie (d) passes when the two real sets differ by less than 2 standard errors of their "
        "difference (z < 2). `info`: no known order (see below).",
        "",
        "## Which metric passes which ladder",
        "",
    ]
    ladder_names = list(results)
    lines.append("| metric | " + " | ".join(ladder_names) + " | passes all |")
    lines.append("| --- |" + " --- |" * (len(ladder_names) + 1))
    for metric in METRICS:
        cells, all_ok = [], True
        for name in ladder_names:
            text, ok = verdict[name][metric]
            cells.append(f"{text} {'info' if ok is None else ('pass' if ok else '**FAIL**')}")
            all_ok &= ok is not False
        bold = "**" if metric == HEADLINE else ""
        lines.append(f"| {bold}{metric}{bold} | " + " | ".join(cells) + f" | {'yes' if all_ok else 'no'} |")
    lines += ["", "![ladders](metrics_ladders.png)", "", "## The ladders in numbers", ""]
    for name, res in results.items():
        lines += [f"### {name}", "", "| metric | " + " | ".join(f"{res['param']} {p}" for p in res["points"]) + " |",
                  "| --- |" + " ---: |" * len(res["points"])]
        for metric in METRICS:
            lines.append(f"| {metric} | " + " | ".join(_fmt(r[0], r[1]) for r in res[metric]) + " |")
        lines.append("")
    lines += [
        "## Base vs IIA at NFE 9, by every judge",
        "",
        "heun (5 steps), euler and dpmpp_2m (9 steps) on the Karras grid; IIA from `iia_jax.fit` with the "
        f"library defaults, fine_steps 8, fit batch {NFE9_FIT_BATCH} (fit noise: the demo's key) and the digits "
        "judge in its never-worse check (`quality=digits_check`, what `iia-jax fit --model digits` does); "
        f"the same {args.n} evaluation draws; reference: heun 64 steps from the same noise. Pixel MMD to "
        "real: against the 600 reference digits; to the fine reference: against the 64-step samples "
        "of the same noise (both quantised, bandwidth of the real reference). Contrast: RMS deviation "
        "from the mean image relative to the fine reference's. IS: Inception Score analogue from the "
        "judge's class probabilities (max 10). Each cell: base -> IIA, and the difference IIA - base "
        "with its paired error (the headline: paired jackknife; the others: "
        f"{BOOT} bootstrap resamples of the noise draws, the same rows for both samplers).",
        "",
    ]
    passed = {name: all(verdict[ladder][metric][1] is not False for ladder in verdict)
              for name, (metric, _) in NFE9_JUDGES.items() if metric is not None}
    lines += ["| judge | passes every ladder | " + " | ".join(r["solver"] for r in rows) + " |",
              "| --- | --- |" + " --- |" * len(rows)]
    lines.append("| median ODE error | - | " + " | ".join(
        f"{r['ode_base']:.3f} -> {r['ode_iia']:.3f}" for r in rows) + " |")
    for name in NFE9_JUDGES:
        cells = [f"{_num(r['base'][name])} -> {_num(r['iia'][name])} ({_fmt(*r['paired'][name])})" for r in rows]
        ok = {True: "yes", False: "no"}.get(passed.get(name), "no ladder")
        lines.append(f"| {name} | {ok} | " + " | ".join(cells) + " |")
    lines.append("| contrast vs fine ref (signed: > 1 overshoot, < 1 shrinkage) | - | " + " | ".join(
        f"{_num(r['base']['contrast'])} -> {_num(r['iia']['contrast'])}" for r in rows) + " |")
    lines += ["", "Verdicts: the sampler a judge prefers where the difference exceeds 2 paired errors, "
              "else a tie.", "", "| judge | passes every ladder | " + " | ".join(r["solver"] for r in rows) + " |",
              "| --- | --- |" + " --- |" * len(rows)]
    for name, (_, lower) in NFE9_JUDGES.items():
        ok = {True: "yes", False: "no"}.get(passed.get(name), "no ladder")
        lines.append(f"| {name} | {ok} | " + " | ".join(_verdict(*r["paired"][name], lower) for r in rows) + " |")
    lines += ["", "## Reading the numbers", "", DISCUSSION.strip(), ""]
    return "\n".join(lines) + "\n"


DISCUSSION = """
**The headline is `digits_score` = 1000 x KID of the quantised samples against the 600 reference
digits, in the judge's features.** It passes every ladder with a known order (so do the judge's FD,
its KID without quantisation and coverage; the old digits FD, the shipped classifier's KID, the pixel
MMD, precision, recall, density and IS each fail at least one). Why each choice:

* *Feature space.* The shipped classifier saw all 1,497 training digits, and the old FD uses them
  as its reference: 300 of them score 7.2 +- 5.2 against 18.7 +- 7.8 for the 300 held-out digits
  (ladder (d)), and the fine reference (8.3) scores far below real held-out digits. The judge is
  the same network trained on 597 digits only; the reference and the check digits are new to it.
  Real held-out and real training digits then tie (-6.7 +- 12.0 vs -10.4 +- 12.4), both about 0,
  and so do the judge's own training digits (1.8 +- 13.9 at n = 597, measured while choosing the
  split): it favours no set, and the fine reference scores 4.5 +- 11.5, a little worse than real
  digits, as a model should.
* *KID, not FD.* On judge features FD passes the same ladders, but it is biased upwards at small n,
  so numbers at different n (the demo's 500, the benchmarks' 1,000, the notebook's 300) would not
  compare. KID is unbiased (real digits score about 0 at any n) and its jackknife error is cheap and
  deterministic; `score_difference` gives the error of a difference against the same reference
  digits, which is what "is IIA better than base" needs (paired over the noise draws it is half
  the combined error bars for euler and dpmpp_2m at NFE 9, and about equal to them for heun).
* *Quantised.* Samples are stored as the data is (17 grey levels). The judge without quantisation
  still passes here because it already sees clipped samples, but quantising is what makes
  "overshoot" mean the same as in the data: heun base at NFE 9 puts 66 % of its pixels outside
  [-1, 1] (range -4.7..4.7); measured raw its contrast is 2.4x the reference's and its pixel MMD 0.30,
  as stored 1.25x and 0.014. Judges that look at raw samples (as in the issue's table) see a far
  worse sampler than a user who saves the images does.
* *Contrast is not symmetric in the factor, for any judge.* Scaling up about the mean image pushes
  the background (most pixels are exactly -1) below the stored range, and clipping takes it back,
  so 1.25 changes the stored images less than 0.8 does. The model-free pixel MMD shows the same
  asymmetry as the headline (600 real digits: 0.8 / 1.25 cost 94 / 23 in score; see the table). The
  issue saw the old FD score the fine reference scaled by 1.03 and 1.1 *below* the reference itself
  (here 7.4, 7.0 vs 8.3) against real digits. The headline does that too (2.4, 2.8 vs 4.5), and so
  does the model-free pixel MMD: the fine reference's contrast is 0.979 of the real digits', so the
  model is a little flat and a touch more contrast brings its samples closer to the data. That is
  the model's error, not the judge's (this ladder has no known order, hence `info`); against the
  model's own distribution (64-step samples from other noise) the passing judges have their best
  factor at 1.0-1.03 and rise on both sides. The old FD's optimum sits furthest out (1.1).
* *Resolution.* With 600 real digits the headline cannot see noise of std <= 0.1 or blur <= 0.3 px
  (quantisation undoes most of it: one pixel in five moves one grey level at std 0.05); the ladders
  still pass because no rung is inverted beyond its error and the ends are far apart. Precision,
  density and the Inception Score reward shrinkage toward the mean image (they are highest at
  contrast 0.8-0.9), and recall rewards over-contrast: they tell blur from collapse, not quality,
  and are reported next to the score, not instead of it. The pixel MMD and the old FD fail (a) only
  among rungs that have converged (12-64 steps): their paired errors are small enough to order those
  against real digits, and they put 12 or 18 steps marginally ahead of 64 (pixel MMD: -0.31 vs
  -0.24). The pixel MMD stays a good model-free check of the headline. The old FD's demonstrated
  defect is its reference: 300 of the digits its classifier trained on score 2.6x lower than 300
  held-out ones (ladder (d); not significant by its own wide bootstrap errors, z = 1.2).

**Base vs IIA at NFE 9** (the tables above; n = 1,000, paired differences; IIA fitted with the
library defaults, which now include the spread-matched least squares (`match_spread`,
docs/iia.md), and the digits judge in its never-worse check, which switched off step 5 of dpmpp_2m
and nothing else). **Every judge that passes the ladders prefers IIA or ties, for all three
solvers, and the direction agrees everywhere.** *euler*: digits_score and the judge's FD prefer
IIA (-66 +- 11), coverage ties. *dpmpp_2m*: digits_score and the judge's FD tie (-0.8 +- 4.0),
coverage prefers IIA; the ODE error is 0.096 -> 0.059. *heun*: the judge's FD prefers IIA by 2.3
errors (1.75 -> 1.41) and coverage by 10 (0.76 -> 0.96); digits_score leans the same way, -22 +-
20, a tie by the 2-error rule.

*What changed for heun.* With plain least squares (the earlier default) these judges split: digits_score
tied (+16 +- 25), the judge's FD preferred the base by 2.0 errors, coverage preferred IIA. The base
overshoots the contrast (1.25 of the fine reference's, stored) and plain least squares shrank it
(0.91); on the contrast ladder of model samples KID and FD forgive overshoot more than shrinkage
(factor 1.25: 25.6, 0.9: 39.1) while coverage does the opposite (1.25: 0.929, 0.9: 0.986), so
the two errors were weighed oppositely, and no ladder of known order ranks one against the other.
The shrinkage is what least squares does (it predicts the conditional mean of the target); the
spread-matched fit keeps the target's spread across samples, IIA's contrast is now 0.98, its
median ODE error also fell (0.135 -> 0.126), and the split is gone: nothing is left for the judges
to weigh differently. Against the model's own distribution (the "vs model" rows) every passing
judge prefers IIA for heun and euler and prefers it or ties for dpmpp_2m.
"""


def main(argv=None):
    ap = harness.parser(__doc__, "n 50, fit batch 64, samples only, cache under --out")
    ap.add_argument("--n", type=int, default=1000, help="evaluation samples (fresh noise)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples-only", action="store_true", help="only fill the sample cache")
    ap.add_argument("--replot", action="store_true", help="rewrite the markdown and figure from the saved "
                    "scores (checkpoints/metric_ladders/scores_*.json) without scoring")
    ap.add_argument("--only", nargs="+", default=None, help="rescore only the ladders whose names start "
                    "with these strings, keeping the other saved scores")
    ap.add_argument("--nfe9", action="store_true", help="recompute only the base-vs-IIA table at NFE 9, "
                    "keeping the saved ladder scores")
    ap.add_argument("--out", type=Path, default=DOCS)
    ap.add_argument("--cpu-note", default="2 shared CPU cores", help="hardware note for the markdown")
    args = ap.parse_args(argv)
    if args.smoke:
        global CACHE
        args.n, args.samples_only, CACHE = 50, True, args.out / "cache"
    samples = all_samples(args.n, args.seed, 64 if args.smoke else NFE9_FIT_BATCH)
    if args.samples_only:
        return
    command = command_line("benchmarks/metric_ladders.py", argv)
    saved = CACHE / f"scores_n{args.n}_seed{args.seed}.json"
    if args.replot:
        results, verdict, rows, total, command = json.loads(saved.read_text())
    elif args.nfe9:
        results, verdict, _, total, first = json.loads(saved.read_text())
        start = time.perf_counter()
        rows = nfe9_table(samples)
        total += time.perf_counter() - start
        command = f"{first}` then `{command}"
        saved.write_text(json.dumps([results, verdict, rows, total, command], default=float))
    elif args.only:  # rescore some ladders, keep the rest of the saved scores
        results, verdict, rows, total, command = json.loads(saved.read_text())
        start = time.perf_counter()
        fresh = score_ladders(samples, args.only)
        verdict.update(verdicts(fresh))
        names = [n for n in ladders(samples)]
        results = {n: ({m: ([r[:2] for r in v] if m in METRICS else v) for m, v in fresh[n].items()}
                       if n in fresh else results[n]) for n in names}
        verdict = {n: verdict[n] for n in names}
        total += time.perf_counter() - start
        saved.write_text(json.dumps([results, verdict, rows, total, command], default=float))
    else:
        start = time.perf_counter()
        results = score_ladders(samples)
        verdict = verdicts(results)
        rows = nfe9_table(samples)
        total = time.perf_counter() - start
        results = {k: {m: ([r[:2] for r in v] if m in METRICS else v) for m, v in res.items()}
                   for k, res in results.items()}  # the values and errors; the tables need no more
        saved.write_text(json.dumps([results, verdict, rows, total, command], default=float))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "metrics_ladders.png")
    (args.out / "metrics.md").write_text(markdown(results, verdict, rows, args, command, total))
    print(f"total {total:.0f} s; wrote {args.out / 'metrics.md'} and {args.out / 'metrics_ladders.png'}")


if __name__ == "__main__":
    main()
