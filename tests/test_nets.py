"""Networks and EDM preconditioning: formulas, shapes, the untrained identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iia_jax.nets import (DigitsClassifier, EDMUNet, MLPDenoiser, bind, classifier_features,
                          classifier_logits, edm_coefficients, edm_precond)


@pytest.mark.parametrize("sigma_data", [0.5, 0.75])
def test_edm_coefficients_match_karras_table_1(sigma_data):
    sigma = np.array([0.002, 0.1, 1.0, 80.0])
    c = edm_coefficients(sigma, sigma_data)
    total = sigma**2 + sigma_data**2
    np.testing.assert_allclose(c.c_skip, sigma_data**2 / total, rtol=1e-6)
    np.testing.assert_allclose(c.c_out, sigma * sigma_data / np.sqrt(total), rtol=1e-6)
    np.testing.assert_allclose(c.c_in, 1 / np.sqrt(total), rtol=1e-6)
    np.testing.assert_allclose(c.c_noise, np.log(sigma) / 4, rtol=1e-6)
    # The EDM identities: c_skip + c_out^2 / s_d^2 = 1 (unit-variance target), c_in^2 * total = 1.
    np.testing.assert_allclose(c.c_skip + c.c_out**2 / sigma_data**2, 1.0, rtol=1e-6)


def test_precond_applies_formula_and_broadcasts_sigma():
    seen = {}

    def apply(params, x, c_noise):
        seen["c_noise"] = c_noise
        return params * x  # F(c_in x) = params * c_in * x

    denoise = edm_precond(apply, sigma_data=0.5)
    x = jnp.arange(2 * 3 * 3 * 1, dtype=jnp.float32).reshape(2, 3, 3, 1)
    sigma = jnp.array([0.3, 2.0])
    out = denoise(2.0, x, sigma)
    c = edm_coefficients(sigma, 0.5)
    expect = (c.c_skip + c.c_out * 2.0 * c.c_in)[:, None, None, None] * x
    np.testing.assert_allclose(out, expect, rtol=1e-6)
    assert seen["c_noise"].shape == (2,)
    # Scalar sigma equals a constant [B] vector; bind gives D(x, sigma).
    D = bind(denoise, 2.0)
    np.testing.assert_allclose(D(x, 0.7), denoise(2.0, x, jnp.full((2,), 0.7)), rtol=1e-6)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        denoise(2.0, x, jnp.ones(3))


def _random_params(net, *args, scale=0.1, zero=()):
    """Random params of the right shapes without compiling ``net.init``.

    (Compiling a Flax init is slow on CPU; ``eval_shape`` only traces it.) Leaves whose
    path contains one of ``zero`` are set to 0.
    """
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), *args)
    rng = np.random.default_rng(0)
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    values = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        if any(z in name for z in zero):
            values.append(jnp.zeros(leaf.shape, leaf.dtype))
        elif name.endswith("['scale']"):
            values.append(jnp.ones(leaf.shape, leaf.dtype))
        else:
            values.append(jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype))
    return jax.tree.unflatten(tree, values)


@pytest.fixture(scope="module")
def tiny_unet():
    net = EDMUNet(channels=8, channel_mults=(1, 2), num_res_blocks=1, dropout=0.1)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
    c = jnp.log(jnp.array([0.1, 1.0, 10.0])) / 4
    apply = jax.jit(net.apply, static_argnames="train")  # compiled once for the tests below
    return net, apply, x, c


def test_unet_shapes_and_noise_dependence(tiny_unet):
    net, apply, x, c = tiny_unet
    params = _random_params(net, x, c)
    y = apply(params, x, c)
    assert y.shape == x.shape and y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))
    # The noise embedding reaches the output; the batch elements are independent.
    y2 = apply(params, x, c[::-1])
    assert float(jnp.abs(y[0] - y2[0]).max()) > 1e-4
    np.testing.assert_allclose(y[1], y2[1], rtol=1e-5, atol=1e-6)
    # Training mode with dropout needs a dropout rng.
    out = jax.eval_shape(lambda: net.apply(params, x, c, train=True, rngs={"dropout": jax.random.PRNGKey(2)}))
    assert out.shape == x.shape


def test_unet_zero_output_layer_gives_c_skip_denoiser(tiny_unet):
    net, apply, x, c = tiny_unet
    # The final conv is zero-initialised by EDMUNet; with it zero the net outputs 0 and the
    # preconditioned denoiser is c_skip * x.
    last_conv = sorted((k for k in _random_params(net, x, c)["params"] if k.startswith("Conv_")),
                       key=lambda k: int(k.split("_")[1]))[-1]
    params = _random_params(net, x, c, zero=(f"['{last_conv}']",))
    np.testing.assert_array_equal(apply(params, x, c), 0.0)
    D = bind(edm_precond(lambda p, x, c: apply(p, x, c), 0.5), params)
    np.testing.assert_allclose(D(x, 1.0), x * 0.25 / 1.25, rtol=1e-6)


def test_unet_variants_and_bad_sizes():
    # Shapes only (traced, not compiled): Fourier embedding, 3 channels, 3 levels, no attention.
    net = EDMUNet(channels=8, channel_mults=(1, 2, 2), num_res_blocks=2, embedding="fourier", attention=False)
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    c = jax.ShapeDtypeStruct((2,), jnp.float32)
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, c)
    assert jax.eval_shape(net.apply, params, x, c).shape == (2, 8, 8, 3)
    big = EDMUNet(channels=32, channel_mults=(1, 2), num_res_blocks=1)
    n_params = sum(np.prod(l.shape) for l in jax.tree.leaves(
        jax.eval_shape(big.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32),
                       jnp.zeros(1))))
    assert 3e5 < n_params < 1.5e6  # the shipped size class
    with pytest.raises(ValueError, match="not divisible"):
        jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.ones((1, 6, 6, 1)), jnp.zeros(1))
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.ones((1, 8, 8)), jnp.zeros(1))
    with pytest.raises(ValueError, match="embedding"):
        jax.eval_shape(EDMUNet(embedding="sinusoid").init, jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 1)),
                       jnp.zeros(1))


def test_mlp_shapes():
    net = MLPDenoiser(hidden=16, depth=2)
    x = jnp.ones((5, 2))
    params = _random_params(net, x, jnp.zeros(5))
    D = jax.jit(bind(edm_precond(lambda p, x, c: net.apply(p, x, c), 1.0), params))
    out = D(x, jnp.linspace(0.1, 2.0, 5))
    assert out.shape == (5, 2) and bool(jnp.all(jnp.isfinite(out)))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        net.init(jax.random.PRNGKey(0), jnp.ones((5, 2, 1)), jnp.zeros(5))


def test_classifier_logits_and_features():
    net = DigitsClassifier(features_dim=12)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    params = _random_params(net, x)
    logits = jax.jit(lambda p, x: classifier_logits(net, p, x))(params, x)
    feats = jax.jit(lambda p, x: classifier_features(net, p, x))(params, x)
    assert logits.shape == (4, 10) and feats.shape == (4, 12)
    # logits are the head applied to the features.
    head = params["params"]["head"]
    np.testing.assert_allclose(logits, feats @ head["kernel"] + head["bias"], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- shipped weights


def test_shipped_digits_denoiser_beats_identity():
    from iia_jax import pretrained
    from iia_jax.data import data_hash, digits

    D = pretrained.digits()
    x0 = digits("test").images[:64]
    rng = np.random.default_rng(0)
    for sigma in (0.2, 0.5, 1.0, 3.0):
        x = x0 + sigma * rng.standard_normal(x0.shape).astype(np.float32)
        out = np.asarray(D(x, sigma))
        assert out.shape == x0.shape and np.all(np.isfinite(out))
        mse_model, mse_identity = np.mean((out - x0) ** 2), np.mean((x - x0) ** 2)
        assert mse_model < 0.5 * mse_identity, (sigma, mse_model, mse_identity)
    # Per-example sigma [B] works too.
    sig = np.linspace(0.1, 2.0, 64).astype(np.float32)
    assert D(x0 + sig[:, None, None, None] * 0.1, sig).shape == x0.shape
    record = pretrained.load("digits").record
    assert record["data_hash"] == data_hash(digits("train").images)
    assert record["steps"] == record["config"]["steps"] and np.isfinite(record["final_loss"])


def test_shipped_digits_classifier():
    from iia_jax import pretrained
    from iia_jax.data import digits

    clf = pretrained.digits_classifier()
    test = digits("test")
    acc = np.mean(np.argmax(np.asarray(clf.logits(test.images)), -1) == test.labels)
    assert acc > 0.95
    feats = np.asarray(clf.features(test.images[:5]))
    assert feats.shape == (5, clf.record["config"]["net_kwargs"]["features_dim"])
    np.testing.assert_allclose(
        np.asarray(classifier_features(clf.net, clf.variables, test.images[:5])), feats, rtol=1e-5, atol=1e-6
    )
