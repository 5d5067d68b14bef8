"""Training: loss goes down, resuming is exact, bad checkpoints are refused."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iia_jax.data import digits, toy
from iia_jax.train import (CheckpointError, ClassifierConfig, DenoiserConfig, _keys, edm_loss, make_denoiser,
                           read_checkpoint, train_classifier, train_denoiser)
from training_helpers import Interrupted, interrupt_at

# One tiny config shared by the tests below, so its step function compiles once.
TINY = DenoiserConfig(
    name="tiny",
    net="mlp",
    net_kwargs={"hidden": 64, "depth": 2},
    sigma_data=1.0,
    batch_size=128,
    steps=100,
    lr=3e-3,
    warmup=10,
    ckpt_every=25,
    log_every=1,
)
DATA = toy("two_moons", 512, seed=0)


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("full") / "run"
    return train_denoiser(TINY, DATA, ckpt, progress=False)


def _fixed_eval_loss(*params, config=TINY):
    """EDM loss on all of DATA with fixed sigmas and noise (deterministic), per params."""
    _, denoise = make_denoiser(config)
    rng = np.random.default_rng(123)
    sigma = jnp.asarray(np.exp(-1.2 + 1.2 * rng.standard_normal(len(DATA))), jnp.float32)
    noise = jnp.asarray(rng.standard_normal(DATA.shape), jnp.float32)
    loss = jax.jit(lambda p: edm_loss(denoise, p, jnp.asarray(DATA), sigma, noise, config.sigma_data))
    return [float(loss(p)) for p in params]


def test_training_decreases_loss(full_run):
    assert full_run.start_step == 0 and full_run.losses.shape == (TINY.steps,)
    assert int(full_run.state.step) == TINY.steps
    assert np.all(np.isfinite(full_run.losses))
    # Same fixed batch, before vs after: the initial params are the untrained network's.
    net, _ = make_denoiser(TINY)
    init = net.init(_keys(TINY.seed)[0], jnp.asarray(DATA[:1]), jnp.zeros(1))
    # Two moons: the untrained c_skip * x scores 1; the Bayes-optimal denoiser about 0.75.
    trained, untrained = _fixed_eval_loss(full_run.state.params, init)
    assert 0.9 < untrained < 1.1 and trained < 0.95 * untrained
    assert np.mean(full_run.losses[-20:]) < np.mean(full_run.losses[:20])


def test_checkpoint_record(full_run):
    state, meta = read_checkpoint(full_run.ckpt_dir)
    assert meta["step"] == TINY.steps and meta["kind"] == "denoiser"
    assert meta["config"] == TINY.to_json() and meta["data_hash"] == full_run.data_hash
    assert DenoiserConfig.from_json(meta["config"]) == TINY
    assert _leaves_equal(state["ema_params"], full_run.state.ema_params)


def test_resume_after_interruption_equals_uninterrupted_run(full_run, tmp_path):
    ckpt = tmp_path / "run"
    with pytest.raises(Interrupted):  # "killed" at step 60: steps 51-60 are lost
        train_denoiser(TINY, DATA, ckpt, progress=False, callback=interrupt_at(60))
    assert sorted(int(p) for p in os.listdir(ckpt) if p.isdigit())[-1] == 50
    resumed = train_denoiser(TINY, DATA, ckpt, progress=False)
    assert resumed.start_step == 50
    np.testing.assert_array_equal(resumed.losses, full_run.losses[50:])
    assert _leaves_equal(resumed.state, full_run.state)
    # Resuming a finished run is a no-op that returns the final state.
    again = train_denoiser(TINY, DATA, ckpt, progress=False)
    assert again.start_step == TINY.steps and again.losses.size == 0
    assert _leaves_equal(again.state, full_run.state)


def test_resume_refuses_other_config_or_data(full_run, tmp_path):
    ckpt = tmp_path / "copy"
    shutil.copytree(full_run.ckpt_dir, ckpt)
    with pytest.raises(ValueError, match=r"different config.*lr: saved 0.003, now 0.02"):
        train_denoiser(dataclasses.replace(TINY, lr=0.02), DATA, ckpt, progress=False)
    with pytest.raises(ValueError, match="different data"):
        train_denoiser(TINY, DATA[::-1], ckpt, progress=False)


def _latest_step_dir(ckpt):
    return os.path.join(ckpt, str(max(int(p) for p in os.listdir(ckpt) if p.isdigit())))


# A failed orbax restore can leave an asyncio callback that fires after its loop closed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["garbage", "truncate", "bitflip", "junk_step", "checksum"])
def test_corrupted_checkpoint_is_refused(tmp_path, damage):
    ckpt = str(tmp_path / "run")
    with pytest.raises(Interrupted):
        train_denoiser(TINY, DATA, ckpt, progress=False, callback=interrupt_at(25))
    step_dir = _latest_step_dir(ckpt)
    if damage == "junk_step":
        step_dir = os.path.join(ckpt, "30")
        os.makedirs(step_dir)
        with open(os.path.join(step_dir, "state"), "w") as f:
            f.write("not a checkpoint")
    elif damage == "checksum":  # state readable, but not what the record says was saved
        import json

        meta_path = os.path.join(step_dir, "meta", "metadata")
        with open(meta_path) as f:
            meta = json.load(f)
        meta["checksum"] = "sha256:" + "0" * 64
        with open(meta_path, "w") as f:
            json.dump(meta, f)
    else:
        data_files = [
            os.path.join(root, name)
            for root, _, names in os.walk(os.path.join(step_dir, "state"))
            for name in names
            if os.sep + "d" + os.sep in os.path.join(root, name) + os.sep or name.endswith(".ocdbt")
        ]
        assert data_files
        for path in data_files:
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                if damage == "garbage":
                    f.write(np.random.default_rng(0).bytes(size))
                elif damage == "truncate":
                    f.truncate(size // 3)
                else:  # flip one byte in the middle of the array data
                    f.seek(size // 2)
                    b = f.read(1)
                    f.seek(size // 2)
                    f.write(bytes([b[0] ^ 0xFF]))
    before = sorted(os.listdir(ckpt))
    with pytest.raises(CheckpointError) as info:
        train_denoiser(TINY, DATA, ckpt, progress=False)
    msg = str(info.value)
    assert os.path.abspath(ckpt) in msg and "Refusing to re-initialise" in msg
    assert sorted(os.listdir(ckpt)) == before  # nothing was overwritten
    with pytest.raises(CheckpointError):
        read_checkpoint(ckpt)


@pytest.mark.slow
def test_resume_after_sigkill(full_run, tmp_path):
    """A real kill (SIGKILL mid-training) loses at most one checkpoint interval, and the
    resumed run ends exactly where an uninterrupted one does."""
    ckpt = str(tmp_path / "run")
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        from test_train import TINY, DATA
        from iia_jax.train import train_denoiser
        train_denoiser(TINY, DATA, {ckpt!r}, progress=False, callback=lambda step, loss: time.sleep(0.05))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            steps = [int(p) for p in os.listdir(ckpt) if p.isdigit()] if os.path.isdir(ckpt) else []
            if steps and max(steps) >= 25:
                break
            if proc.poll() is not None:
                pytest.fail(f"training subprocess exited early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        else:
            pytest.fail("training subprocess wrote no checkpoint in time")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    saved = max(int(p) for p in os.listdir(ckpt) if p.isdigit())
    assert 25 <= saved < TINY.steps
    resumed = train_denoiser(TINY, DATA, ckpt, progress=False)
    assert resumed.start_step == saved
    assert _leaves_equal(resumed.state, full_run.state)


def test_classifier_training_learns_digits(tmp_path):
    config = ClassifierConfig(name="clf", batch_size=64, steps=60, lr=3e-3, warmup=5, ckpt_every=30,
                              net_kwargs={"features_dim": 16})
    train = digits("train")
    result = train_classifier(config, train.images, train.labels, tmp_path / "clf", progress=False)
    assert np.mean(result.losses[-10:]) < 0.5 * np.mean(result.losses[:10])
    _, meta = read_checkpoint(result.ckpt_dir)
    assert meta["kind"] == "classifier" and meta["step"] == 60
    with pytest.raises(ValueError, match="labels must lie"):
        train_classifier(config, train.images, train.labels + 10, False, progress=False)
