"""Where a benchmark's numbers came from: versions, machine, git revision, command line.

Every result a benchmark writes (markdown or JSON) carries these, so a number can be traced to
the code and machine that made it; :func:`save_json` puts them beside the raw results.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path


def versions() -> str:
    names = ["jax", "jaxlib", "flax", "torch", "diffusers", "diffrax", "numpy", "iia_jax"]
    out = []
    for n in names:
        try:
            out.append(f"{n} {importlib.metadata.version(n)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{n} (not installed)")
    return ", ".join(out)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import jax
    return (f"{platform.system()} {platform.release()}, {cpu_name()}, {os.cpu_count()} CPU cores visible, "
            f"jax backend {jax.default_backend()} ({jax.devices()[0].device_kind}), Python {platform.python_version()}")


def machine_short() -> str:
    """For the line under each table, e.g. ``2-core AMD EPYC, jax on cpu``."""
    import jax
    return f"{os.cpu_count()}-core {cpu_name()}, jax on {jax.default_backend()}"


def versions_short() -> str:
    def v(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "none"
    return ", ".join(f"{n} {v(n)}" for n in ("jax", "diffusers", "diffrax", "torch"))


def git_revision() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "iia_jax"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line(script: str, argv=None) -> str:
    """``python SCRIPT ARGS`` as typed (``argv``: the arguments, default ``sys.argv[1:]``)."""
    return shlex.join(["python", script] + list(sys.argv[1:] if argv is None else argv))


def provenance(command: str) -> dict:
    """The command, UTC date, machine, versions and git revision of a run."""
    return dict(command=command, date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                machine=machine(), versions=versions(), revision=git_revision())


def setup_line(meta: dict) -> str:
    """``2-core AMD EPYC, jax on cpu; jax 0.10.2, ...`` of a saved :func:`provenance`: the machine and
    versions that made the numbers, not those of the process writing the page."""
    found = re.match(r"[^,]*, (.*), (\d+) CPU cores visible, jax backend (\w+)", meta["machine"])
    where = f"{found[2]}-core {found[1]}, jax on {found[3]}" if found else meta["machine"]
    have = dict(part.rsplit(" ", 1) for part in meta["versions"].split(", ") if " " in part)
    return where + "; " + ", ".join(f"{n} {have.get(n, 'none')}" for n in ("jax", "diffusers", "diffrax", "torch"))


def save_json(path: Path, payload: dict, command: str, meta: dict | None = None) -> None:
    """``payload`` with its ``provenance`` as JSON at ``path`` (written whole, then renamed, so a
    run cut short never leaves half a file).  ``meta``: the :func:`provenance` taken when the run
    started (a long run's revision is the code it ran, not what the checkout holds when it ends);
    by default, taken now."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    meta = meta or provenance(command)
    tmp.write_text(json.dumps(dict(payload, provenance=meta), indent=1, default=float))
    tmp.replace(path)
