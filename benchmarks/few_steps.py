"""``iia-jax bench few-steps --out docs`` run from this checkout's root (iia_jax/bench/few_steps.py):
IIA against the peers at NFE 3-5 (6, 8, 10 on request) on the digits model, written to docs/few_steps.md.

    python benchmarks/few_steps.py [--nfes 5] [--table]
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # this checkout's iia_jax
from iia_jax.bench.few_steps import main  # noqa: E402

if __name__ == "__main__":
    os.chdir(ROOT)   # docs/ and checkpoints/few_steps/ of this checkout
    sys.exit(main(["--out", "docs"] + sys.argv[1:]))
