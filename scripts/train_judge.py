"""Train the digits judge (``iia_jax/pretrained/weights/digits_judge.*``).

    python scripts/train_judge.py     # ~1-2 min on 2 CPU cores; resumable (checkpoints/digits_judge)

The judge is the network of the shipped classifier (:class:`iia_jax.nets.DigitsClassifier`,
recipe ``JUDGE`` below), trained with :func:`iia_jax.train.train_classifier` on the 597
``"judge_train"`` digits of :func:`iia_jax.metrics.quality.digits_split` only. Its penultimate
features define :func:`iia_jax.metrics.digits_score`; the digits it is scored against
(``"reference"``) and checked with (``"train_check"``, ``"test"``) are new to it. The JSON
record holds the config, the split, and the accuracy on every part of it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's iia_jax, not an installed one
from iia_jax import pretrained  # noqa: E402
from iia_jax.data import digits  # noqa: E402
from iia_jax.metrics.quality import JUDGE_SPLIT, digits_split  # noqa: E402
from iia_jax.train import ClassifierConfig, make_classifier_net, train_classifier  # noqa: E402

JUDGE = ClassifierConfig(name="digits_judge", net_kwargs={"features_dim": 64, "dropout": 0.2}, steps=1000)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt-dir", default=None, help="default checkpoints/digits_judge")
    args = ap.parse_args(argv)
    lo, hi = JUDGE_SPLIT["judge_train"]
    labels = {"judge_train": digits("train").labels[lo:hi], "test": digits("test").labels}
    for name in ("reference", "train_check"):
        labels[name] = digits("train").labels[slice(*JUDGE_SPLIT[name])]
    t0 = time.time()
    result = train_classifier(JUDGE, digits_split("judge_train"), labels["judge_train"], args.ckpt_dir)
    wall = time.time() - t0
    net = make_classifier_net(JUDGE)
    predict = jax.jit(lambda x: net.apply(result.state.ema_params, x))
    accuracy = {name: float(np.mean(np.argmax(np.asarray(predict(digits_split(name))), -1) == y))
                for name, y in labels.items()}
    record = result.record(
        "classifier",
        data=f"iia_jax.data.digits('train')[{lo}:{hi}] images+labels (digits_split('judge_train'))",
        split={**{k: f"digits('train')[{a}:{b}]" for k, (a, b) in JUDGE_SPLIT.items()},
               "test": "digits('test')"},
        train_wall_s_this_run=round(wall, 1), accuracy=accuracy)
    path = pretrained.save(JUDGE.name, result.state.ema_params, record)
    print(json.dumps({k: record[k] for k in ("steps", "final_loss", "accuracy", "train_wall_s_this_run")}))
    print("wrote", path)


if __name__ == "__main__":
    main()
