"""Every Python example in the README, the user guide and the migration page runs, top to bottom, as a user would.

The fenced ```python blocks of each page are executed in order in one namespace (a later block
may use what an earlier one defined), in a fresh working directory, so an example that stops
working fails here instead of in a reader's hands.  A block that is not meant to run (a multi-host
set-up, a downloaded model) is marked by the HTML comment ``<!-- docs-test: skip -->`` on the
line just before its fence; the comment does not show on a rendered page.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/guide.md", "docs/migrating.md")
SKIP = "<!-- docs-test: skip -->"
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


class Block:
    def __init__(self, page: str, line: int, code: str, skip: bool):
        self.page, self.line, self.code, self.skip = page, line, code, skip


def python_blocks(text: str, page: str = "<page>") -> list:
    """The ```python blocks of a Markdown text, each with its first line number and skip mark."""
    blocks = []
    for m in _FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        blocks.append(Block(page, text.count("\n", 0, m.start()) + 2, m.group(1), before == SKIP))
    return blocks


def test_python_blocks_parser():
    text = "intro\n```python\na = 1\n```\n<!-- docs-test: skip -->\n```python\nraise SystemExit\n```\n```bash\nls\n```\n"
    blocks = python_blocks(text)
    assert [(b.line, b.code, b.skip) for b in blocks] == [(3, "a = 1\n", False), (7, "raise SystemExit\n", True)]


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / page).read_text(), page)
    runnable = [b for b in blocks if not b.skip]
    assert runnable, f"{page} has no runnable python example"
    monkeypatch.chdir(tmp_path)           # examples write (checkpoints, folders) where they stand
    namespace = {"__name__": "__docs__"}
    for block in runnable:
        try:
            exec(compile(block.code, f"{page}:{block.line}", "exec"), namespace)
        except Exception as e:  # name the page and line of the block that broke
            raise AssertionError(f"the example at {page}, line {block.line}, failed: "
                                 f"{type(e).__name__}: {e}") from e


def test_ci_runs_the_readme_test_command():
    """`.ci/run` runs the README's test command verbatim (a fresh virtualenv, then that line)."""
    readme = (ROOT / "README.md").read_text()
    commands = [line.strip() for block in re.findall(r"^```bash\n(.*?)^```", readme, re.S | re.M)
                for line in block.splitlines() if line.strip().startswith("python -m pip install")]
    assert commands[:2] == ['python -m pip install -e . && iia-jax demo',
                            'python -m pip install -e ".[test]" && python -m pytest -q']
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[1] in ci
