"""Pages name only what the repository has, and no machine's paths.

Checked in the README, every page of ``docs/``, the notebooks (sources and outputs) and the
docstrings and comments of ``iia_jax/``: every relative Markdown link and every repository path
written in backticks (``docs/x.md``, ``iia_jax/...``, ``benchmarks/x.py``, ...) exists, and no text
names a machine path (``/tmp/...``, ``/home/...``, ``/work/...``, ``/root/...``).  Every dotted
name ``iia_jax.x.y`` a page or notebook names can be imported.  Every PNG in ``docs/`` is shown by
some page.
"""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("iia_jax", "docs", "tests", "benchmarks", "notebooks", "scripts", "checkpoints", ".ci")
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")                     # [text](target)
_PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./*-]*[\w*])" % "|".join(re.escape(t) for t in TOP))
_MACHINE = re.compile(r"(?<![\w.])/(?:tmp|home|work|root|Users)/[\w.-]")
_DOTTED = re.compile(r"(?<![\w/\"'])(iia_jax(?:\.[A-Za-z_]\w*)+)")
# Paths that a command creates (outputs), not files the repository holds.
_OUTPUTS = ("checkpoints/",)


def _pages():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return {str(p.relative_to(ROOT)): p.read_text() for p in pages}


def _notebooks():
    out = {}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        text = []
        for cell in cells:
            text.append("".join(cell.get("source", "")))
            for o in cell.get("outputs", []):
                text.append("".join(o.get("text", "")))
                text.extend("".join(v) for k, v in o.get("data", {}).items() if k.startswith("text/"))
        out[str(nb.relative_to(ROOT))] = "\n".join(text)
    return out


def _code():
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "iia_jax").rglob("*.py"))}


def _exists(target: str, base: Path) -> bool:
    target = target.rstrip(".,;:")
    if target.startswith(_OUTPUTS):
        return True
    candidates = [(base / target), (ROOT / target)]
    return any(c.exists() or any(c.parent.glob(c.name)) for c in candidates if "*" not in target) or \
        ("*" in target and any(ROOT.glob(target)))


def _missing(name: str, text: str, links: bool):
    base = (ROOT / name).parent
    found = set(_PATH.findall(text))
    if links:
        found |= {t for t in _LINK.findall(text) if not re.match(r"[a-z]+:", t)}
    return sorted(t for t in found if not _exists(t, base))


def _cases(*sources):
    texts = {k: v for source in sources for k, v in source().items()}
    return [pytest.param(name, text, id=name) for name, text in sorted(texts.items())]


@pytest.mark.parametrize("name, text", _cases(_pages, _notebooks))
def test_pages_name_existing_files(name, text):
    assert _missing(name, text, links=True) == [], f"{name} names files the repository lacks"


@pytest.mark.parametrize("name, text", _cases(_code))
def test_docstrings_name_existing_files(name, text):
    assert _missing(name, text, links=False) == [], f"{name} names files the repository lacks"


@pytest.mark.parametrize("name, text", _cases(_pages, _notebooks, _code))
def test_no_machine_paths(name, text):
    assert _MACHINE.findall(text) == [], f"{name} names a machine path"


def _resolves(name: str) -> bool:
    """``iia_jax.a.b.c``: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("name, text", _cases(_pages, _notebooks))
def test_pages_name_existing_python_objects(name, text):
    stale = {n for n in _DOTTED.findall(text) if not _resolves(n)}
    assert stale == set(), f"{name} names Python objects that do not exist"


def test_every_docs_png_is_shown():
    """Shown as an image (``![...](x.png)``) by a page, not only named."""
    shown = {Path(t).name for t in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", "\n".join(_pages().values()))}
    unshown = [p.name for p in sorted((ROOT / "docs").glob("*.png")) if p.name not in shown]
    assert unshown == [], f"PNGs in docs/ that no page shows: {unshown}"


def test_the_checker_catches_what_it_should():
    assert _missing("docs/x.md", "see [a](no_such_page.md) and `iia_jax/no_such.py`", True) == \
        ["iia_jax/no_such.py", "no_such_page.md"]
    assert _missing("docs/x.md", "see [a](design.md#1) and `docs/guide.md`, `iia_jax/iia/fit.py`.", True) == []
    assert _MACHINE.findall("wrote /tmp/x.json") and not _MACHINE.findall("see docs/x and a/tmp/b")
    assert _resolves("iia_jax.models.from_eps") and _resolves("iia_jax.schedules")
    assert not _resolves("iia_jax.models.from_epsilon") and not _resolves("iia_jax.no_such_module.x")
