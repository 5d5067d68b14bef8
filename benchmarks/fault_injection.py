"""Fault injection on coefficient directories: the figures of docs/reliability.md.

    python benchmarks/fault_injection.py            # every single-bit flip, byte and truncation
    python benchmarks/fault_injection.py --quick    # a seeded sample of them

Saves heun coefficients (``plan("heun", karras(3, 0.002, 80))``, preset iia-edm, history 1,
guidance_scale 3.0) with :func:`iia_jax.save_coefficients`, then damages a fresh copy of the
directory once per case and loads it: each case is *refused* (a ValueError), *loaded unchanged*
(bit-identical arrays and every field equal) or *loaded changed* (the outcome the format must
never allow).  Cases, per file of the directory: every single-bit flip; every byte replaced by
a random other value (a seeded draw per byte); a truncation at every length; the file deleted.
``--v1`` adds the same single-bit flips of ``metadata.json`` of the last format-1 directory
(``tests/data/coefficients_v1/format1_match_spread``, read through ``migrate``), whose metadata
had no checksum.  Prints one markdown table row per file and a total.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import iia_jax
from iia_jax import schedules
from iia_jax.iia import Coefficients

ROOT = Path(__file__).resolve().parent.parent


def coefficients() -> Coefficients:
    plan = iia_jax.plan("heun", schedules.karras(3, 0.002, 80.0))
    values = (1e-2 * np.random.default_rng(0).standard_normal((3, 4))).astype(np.float32)
    return Coefficients(values=jnp.asarray(values), sigmas=plan.sigmas, kept=jnp.ones(3, bool),
                        solver="heun", preset="iia-edm", history=1, fine_steps=4, mode="sequential",
                        target="trajectory", batch_size=48, fingerprint="gmm-3", guidance_scale=3.0,
                        version=iia_jax.__version__, plan_fingerprint=plan.fingerprint,
                        match_spread=True)


def _bits(a):
    a = np.asarray(a)
    return a.dtype.str, a.shape, a.tobytes()


def outcome(path: Path, expected: Coefficients) -> str:
    try:
        got = iia_jax.load_coefficients(path)
    except ValueError:
        return "refused"
    same = got.metadata() == expected.metadata() and all(
        _bits(getattr(got, n)) == _bits(getattr(expected, n)) for n in ("values", "sigmas", "kept"))
    return "unchanged" if same else "changed"


def cases(size: int, quick: bool, rng, flips_only: bool):
    """(kind, offset, value) of every case for a file of ``size`` bytes (a sample with quick)."""
    flips = [("bit", o, b) for o in range(size) for b in range(8)]
    if flips_only:
        out = flips
    else:
        out = flips + [("byte", o, int(rng.integers(256))) for o in range(size)] + \
              [("truncate", n, 0) for n in range(size)] + [("delete", 0, 0)]
    if quick:
        keep = rng.choice(len(out), size=min(len(out), 40), replace=False)
        out = [out[i] for i in sorted(keep)]
    return out


def damage(file: Path, kind: str, offset: int, value: int) -> None:
    if kind == "delete":
        file.unlink()
        return
    data = bytearray(file.read_bytes())
    if kind == "bit":
        data[offset] ^= 1 << value
    elif kind == "byte":
        data[offset] = value if value != data[offset] else (value + 1) % 256
    elif kind == "truncate":
        data = data[:offset]
    file.write_bytes(bytes(data))


def campaign(template: Path, expected: Coefficients, files, work: Path, quick: bool, flips_only=False):
    rng = np.random.default_rng(20)
    rows = {}
    n = 0
    for rel in files:
        tally = Counter()
        for kind, offset, value in cases((template / rel).stat().st_size, quick, rng, flips_only):
            n += 1
            copy = work / f"case{n}"            # a fresh path: no reader sees a cached copy
            shutil.copytree(template, copy)
            damage(copy / rel, kind, offset, value)
            tally[outcome(copy, expected)] += 1
            shutil.rmtree(copy)
        rows[rel] = tally
    return rows


def table(rows) -> str:
    lines = ["| file | cases | refused | loaded unchanged | loaded changed |",
             "| --- | ---: | ---: | ---: | ---: |"]
    total = Counter()
    for rel, t in rows.items():
        total.update(t)
        lines.append(f"| `{rel}` | {sum(t.values())} | {t['refused']} | {t['unchanged']} | {t['changed']} |")
    lines.append(f"| all | {sum(total.values())} | {total['refused']} | {total['unchanged']} | "
                 f"{total['changed']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 seeded cases per file")
    parser.add_argument("--v1", action="store_true", help="also flip bits of a format-1 metadata.json")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    expected = coefficients()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        template = iia_jax.save_coefficients(tmp / "template", expected)
        files = sorted(str(p.relative_to(template)) for p in template.rglob("*") if p.is_file())
        print(f"format {iia_jax.iia.storage.FORMAT_VERSION}, {len(files)} files, "
              f"{sum((template / f).stat().st_size for f in files)} bytes")
        rows = campaign(template, expected, files, tmp, args.quick)
        print(table(rows))
        changed = sum(t["changed"] for t in rows.values())
        if args.v1:
            v1 = ROOT / "tests" / "data" / "coefficients_v1" / "format1_match_spread"
            old = iia_jax.load_coefficients(v1)
            print("\nformat 1 (no metadata checksum), single-bit flips of metadata.json:")
            print(table(campaign(v1, old, ["metadata.json"], tmp, args.quick, flips_only=True)))
    print(f"\n{time.perf_counter() - start:.0f} s: python benchmarks/fault_injection.py"
          f"{' --quick' if args.quick else ''}{' --v1' if args.v1 else ''}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
