"""Class-conditional EDM U-Net: label embedding, conditional training, the shipped model."""

import dataclasses
import hashlib
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import iia_jax
from iia_jax import pretrained
from iia_jax.data import data_hash, digits
from iia_jax.nets import EDMUNet, edm_coefficients
from iia_jax.train import (DIGITS_COND_DENOISER, DenoiserConfig, _check_compatible, _keys, make_denoiser,
                           train_denoiser)
from training_helpers import Interrupted, interrupt_at

# norm_groups=2: with one channel per GroupNorm group the per-channel embedding would be normalised away.
TINY_NET = {"channels": 8, "channel_mults": (1,), "num_res_blocks": 1, "attention": False, "norm_groups": 2}
X = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
C_NOISE = jnp.log(jnp.array([0.05, 0.5, 2.0, 20.0])) / 4


def _random_params(net, *args):
    """Random (non-zero) params of ``net``'s shapes; ``eval_shape`` avoids compiling ``init``."""
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), *args)
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)


def _with_table(params, table):
    return {"params": {**params["params"], "label_embedding": jnp.asarray(table, jnp.float32)}}


def test_label_embedding_is_added_to_the_noise_embedding_and_null_is_the_last_row():
    uncond = EDMUNet(**TINY_NET)
    cond = EDMUNet(**TINY_NET, num_classes=3)
    labels = jnp.array([0, 1, 2, 3], jnp.int32)
    p_u = _random_params(uncond, X, C_NOISE)
    p_c = _random_params(cond, X, C_NOISE, labels)
    # The conditional net is the unconditional one plus a [num_classes + 1, C] table.
    assert p_c["params"]["label_embedding"].shape == (4, TINY_NET["channels"])
    assert set(p_c["params"]) - set(p_u["params"]) == {"label_embedding"}
    apply = jax.jit(cond.apply)
    y_u = uncond.apply(p_u, X, C_NOISE)
    # A zero table gives the unconditional network for every label (the embedding is additive).
    y_0 = apply(_with_table(p_u, np.zeros((4, 8))), X, C_NOISE, labels)
    np.testing.assert_allclose(y_0, y_u, atol=1e-5)
    # Only the row of the label reaches the output: row 3 (= num_classes) is the null label.
    for row in range(4):
        table = np.zeros((4, 8))
        table[row] = np.linspace(-2.0, 2.0, 8)
        change = np.asarray(jnp.abs(apply(_with_table(p_u, table), X, C_NOISE, labels) - y_0).max(axis=(1, 2, 3)))
        assert change[row] > 1e-3 and np.all(np.delete(change, row) == 0), (row, change)
    # Different labels give different outputs with a random table.
    y = apply(p_c, X[:1].repeat(4, 0), jnp.full((4,), C_NOISE[1]), labels)
    assert min(float(jnp.abs(y[i] - y[j]).max()) for i in range(4) for j in range(i)) > 1e-3


def test_shipped_unconditional_weights_load_and_match_the_edm_formula():
    denoise, variables, config = pretrained.digits_model()
    assert config.num_classes == 0  # a record written before num_classes existed loads with the default
    net = EDMUNet(**dict(config.net_kwargs))
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), X, C_NOISE)
    assert jax.tree.structure(shapes) == jax.tree.structure(variables)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(variables)))
    # D = c_skip x + c_out F(c_in x, c_noise), written out here from Karras et al. Table 1.
    sigma = jnp.array([0.01, 0.5, 3.0, 60.0])
    x = 2.0 * X
    c = edm_coefficients(sigma, config.sigma_data)
    b = (slice(None), None, None, None)
    f = net.apply(variables, c.c_in[b] * x, c.c_noise)
    np.testing.assert_allclose(denoise(variables, x, sigma), c.c_skip[b] * x + c.c_out[b] * f, rtol=1e-5, atol=1e-5)
    # The same weights in a conditional net with a zero label table give the same denoiser.
    cond_net = EDMUNet(**dict(config.net_kwargs), num_classes=10)
    f_c = cond_net.apply(_with_table(variables, np.zeros((11, 32))), c.c_in[b] * x, c.c_noise,
                         jnp.array([0, 4, 9, 10], jnp.int32))
    np.testing.assert_allclose(f_c, f, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unconditional.*takes no labels"):
        denoise(variables, x, sigma, jnp.zeros(4, jnp.int32))


# Tiny conditional run: digits 0-4 only, so table rows 5-9 never receive a gradient.
TINY_COND = DenoiserConfig(name="tiny_cond", net="unet", net_kwargs=TINY_NET, sigma_data=0.75, batch_size=16,
                           steps=6, lr=3e-3, warmup=2, weight_decay=0.0, ckpt_every=3, log_every=1,
                           num_classes=10, label_dropout=0.5)


@pytest.fixture(scope="module")
def tiny_data():
    d = digits("train")
    keep = np.flatnonzero(d.labels < 5)[:64]
    return d.images[keep], d.labels[keep]


def test_tiny_conditional_training_is_deterministic_resumes_and_drops_labels(tiny_data, tmp_path):
    images, labels = tiny_data
    # Two runs from scratch, one cut after step 5 (its last checkpoint: step 3) and resumed,
    # end bit-identical: label dropout is drawn from the step key like everything else.
    full = train_denoiser(TINY_COND, images, False, labels=labels, progress=False)
    with pytest.raises(Interrupted):
        train_denoiser(TINY_COND, images, tmp_path / "cut", labels=labels, progress=False, callback=interrupt_at(5))
    resumed = train_denoiser(TINY_COND, images, tmp_path / "cut", labels=labels, progress=False)
    assert resumed.start_step == 3
    np.testing.assert_array_equal(resumed.losses, full.losses[3:])
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)))
    # Label dropout trains the null row (10); labels never seen (5-9) keep their initial rows.
    net, _ = make_denoiser(TINY_COND)
    init = net.init(_keys(TINY_COND.seed)[0], jnp.asarray(images[:1]), jnp.zeros(1), jnp.zeros(1, jnp.int32))
    t0, t1 = (np.asarray(p["params"]["label_embedding"]) for p in (init, full.state.params))
    np.testing.assert_array_equal(t1[5:10], t0[5:10])
    assert all(np.any(t1[row] != t0[row]) for row in (0, 1, 2, 3, 4, 10))
    # The labels are part of the data hash (which a resumed run must match).
    assert full.data_hash == data_hash(images) + "+" + data_hash(labels.astype(np.int32))


def test_config_records_without_the_new_fields_stay_valid(tmp_path):
    old = {k: v for k, v in DenoiserConfig().to_json().items() if k not in ("num_classes", "label_dropout")}
    assert DenoiserConfig.from_json(old) == DenoiserConfig()
    meta = {"kind": "denoiser", "config": old, "data_hash": "h"}
    _check_compatible(meta, "denoiser", DenoiserConfig(), "h", str(tmp_path))  # an old checkpoint resumes
    with pytest.raises(ValueError, match="num_classes: saved 0, now 10"):
        _check_compatible(meta, "denoiser", DenoiserConfig(num_classes=10), "h", str(tmp_path))


def test_bad_labels_and_configs_are_refused(tiny_data):
    images, labels = tiny_data
    with pytest.raises(ValueError, match="labels: a conditional config"):
        train_denoiser(TINY_COND, images, False, progress=False)
    with pytest.raises(ValueError, match=r"labels: expected shape \[N\]"):
        train_denoiser(TINY_COND, images, False, labels=labels[:-1], progress=False)
    with pytest.raises(ValueError, match="labels: expected an integer dtype"):
        train_denoiser(TINY_COND, images, False, labels=labels.astype(np.float32), progress=False)
    with pytest.raises(ValueError, match=r"labels: must lie in \[0, 10\)"):
        train_denoiser(TINY_COND, images, False, labels=labels + 7, progress=False)
    with pytest.raises(ValueError, match="labels: this config is unconditional"):
        train_denoiser(dataclasses.replace(TINY_COND, num_classes=0), images, False, labels=labels, progress=False)
    with pytest.raises(ValueError, match="num_classes > 0 needs net='unet'"):
        make_denoiser(dataclasses.replace(TINY_COND, net="mlp", net_kwargs={}))
    # The network itself: missing labels, and a traced out-of-range label gives NaN, never another class.
    net = EDMUNet(**TINY_NET, num_classes=10)
    params = _random_params(net, X, C_NOISE, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="cond: this network is class-conditional"):
        net.apply(params, X, C_NOISE)
    y = jax.jit(net.apply)(params, X, C_NOISE, jnp.array([0, 10, 11, -1], jnp.int32))
    assert bool(jnp.all(jnp.isfinite(y[:2]))) and bool(jnp.all(jnp.isnan(y[2:])))


@pytest.fixture(scope="module")
def shipped():
    return pretrained.digits_cond()


@pytest.mark.parametrize(
    "cond, match",
    [
        (np.zeros((4, 1), np.int32), r"cond: expected integer labels of shape \[B\] = \(4,\)"),
        (np.zeros(3, np.int32), r"cond: expected integer labels of shape \[B\]"),
        (np.zeros(4, np.float32), "cond: expected an integer dtype"),
        (np.array([0, 1, 2, 11], np.int32), r"cond: labels must lie in 0\.\.10"),
        (np.array([-1, 1, 2, 3], np.int32), r"cond: labels must lie in 0\.\.10"),
        (None, "cond: this network is class-conditional"),
    ],
)
def test_shipped_digits_cond_refuses_bad_labels(shipped, cond, match):
    with pytest.raises(ValueError, match=match):
        shipped(X, 1.0, cond)


def test_shipped_digits_cond_checks_its_sha256(tmp_path):
    record = pretrained.load("digits_cond").record
    with open(os.path.join(pretrained.WEIGHTS_DIR, "digits_cond.msgpack"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == record["weights_sha256"]
    assert record["config"]["num_classes"] == 10 and record["num_params"] * 4 < 4e6
    assert DenoiserConfig.from_json(record["config"]) == dataclasses.replace(DIGITS_COND_DENOISER,
                                                                             steps=record["steps"])
    for ext in ("msgpack", "json"):
        shutil.copy(os.path.join(pretrained.WEIGHTS_DIR, f"digits_cond.{ext}"), tmp_path)
    with open(tmp_path / "digits_cond.msgpack", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256.*does not match"):
        pretrained.load("digits_cond", weights_dir=str(tmp_path))


def test_shipped_digits_cond_honours_labels_under_guidance(shipped):
    """Guidance 3 (``models.guided``: D_u + 3 (D_c - D_u), one call on [x; x]), dpmpp_2m NFE 10:
    the separately trained shipped classifier recognises the requested digit."""
    labels = jnp.tile(jnp.arange(10, dtype=jnp.int32), 3)
    plan = iia_jax.plan("dpmpp_2m", iia_jax.schedules.karras(10, 0.002, 80.0))
    D = iia_jax.models.guided(shipped, 3.0, 10)
    z = jax.random.normal(jax.random.PRNGKey(7), (30, 8, 8, 1))
    x = jax.jit(lambda z, y: iia_jax.sample(D, plan, 80.0 * z, cond=y))(z, labels)
    pred = np.argmax(np.asarray(pretrained.digits_classifier().logits(jnp.clip(x, -1, 1))), -1)
    assert np.mean(pred == np.asarray(labels)) >= 0.85, pred
