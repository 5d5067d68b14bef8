"""Flax UNet2D and the diffusers checkpoint loader against torch ``diffusers.UNet2DModel``.

Tolerance: float32 on both sides; the Flax output must match the torch ``.sample``
(transposed to NHWC) with max |error| <= 1e-4 * max |torch output|. Measured on CPU
(jax 0.10.2, torch 2.13.0): 1e-6 to 2e-6 relative, i.e. max |error| 5e-6 to 1.6e-5 at
output scales of 5 to 8, for the three layouts below.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from iia_jax.models.diffusers_io import from_diffusers, load_unet2d  # noqa: E402
from iia_jax.nets.unet2d import UNet2D, UNet2DConfig  # noqa: E402

REL_TOL = 1e-4
WEIGHTS = "diffusion_pytorch_model.safetensors"

# The google/ddpm-cifar10-32 layout with narrower channels and one layer per block
# (ALL_ATTN has two, as the real model does).
CIFAR_LIKE = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64, 64),
    norm_num_groups=8, norm_eps=1e-6, layers_per_block=1, attention_head_dim=None,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, act_fn="silu",
)
# Every block with multi-head attention, two layers per block, scale-shift time
# conditioning (the mid-block attention then has no group norm), a mid-block scale
# factor, input centering.
ALL_ATTN = dict(
    sample_size=8, in_channels=1, out_channels=2, block_out_channels=(16, 32),
    norm_num_groups=4, layers_per_block=2, attention_head_dim=8,
    down_block_types=("AttnDownBlock2D",) * 2, up_block_types=("AttnUpBlock2D",) * 2,
    flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
    resnet_time_scale_shift="scale_shift", mid_block_scale_factor=2 ** 0.5,
    center_input_sample=True,
)
# No mid block, odd sinusoid width, custom time-embedding width, mish, "UNetRes" prefix.
PLAIN = dict(
    sample_size=8, in_channels=3, out_channels=3, block_out_channels=(9, 18),
    norm_num_groups=3, layers_per_block=1, mid_block_type=None, time_embedding_dim=20,
    act_fn="mish", down_block_types=("UNetResDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UNetResUpBlock2D"),
)


def _save_random_unet(path, seed=0, **kwargs):
    """A diffusers UNet2DModel with every parameter randomised (norm scales too), saved."""
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):  # group-norm scales around 1
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def _torch_eps(model, x_nhwc, t):
    with torch.no_grad():
        out = model(torch.from_numpy(np.transpose(x_nhwc, (0, 3, 1, 2))),
                    torch.from_numpy(np.asarray(t, np.float32))).sample
    return np.transpose(out.numpy(), (0, 2, 3, 1))


def _rel_err(out, ref):
    return float(np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    path = tmp_path_factory.mktemp("cifar_like")
    model = _save_random_unet(path, **CIFAR_LIKE)
    module, params, config = load_unet2d(path)
    return path, model, module, params, config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("plain")
    model = _save_random_unet(path, seed=2, **PLAIN)
    module, params, config = load_unet2d(path)
    return path, model, module, params, config


@pytest.mark.parametrize("layout", ["cifar_like", "all_attn", "plain"])
def test_matches_torch_forward(layout, cifar, tiny, tmp_path):
    if layout == "cifar_like":
        _, model, module, params, config = cifar
    elif layout == "plain":
        _, model, module, params, config = tiny
    else:
        model = _save_random_unet(tmp_path, seed=1, **ALL_ATTN)
        module, params, config = load_unet2d(tmp_path)
    assert isinstance(module, UNet2D) and config["block_out_channels"] == list(
        model.config.block_out_channels)
    size, ch = model.config.sample_size, model.config.in_channels
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, size, size, ch)).astype(np.float32)
    t = np.array([0.0, 7.5, 333.25, 999.0], np.float32)  # integer and fractional steps
    out = jax.jit(module.apply)(params, jnp.asarray(x), jnp.asarray(t))
    ref = _torch_eps(model, x, t)
    assert out.shape == ref.shape == (4, size, size, model.config.out_channels)
    assert _rel_err(out, ref) < REL_TOL


def test_scalar_timestep_broadcasts(tiny):
    _, _, module, params, _ = tiny
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    out = jax.eval_shape(module.apply, params, x, 12.5)
    assert out.shape == (2, 8, 8, 3) and out.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        module.apply(params, jnp.zeros((2, 3, 8, 8)), jnp.zeros(2))
    with pytest.raises(ValueError, match="multiples of 2"):
        module.apply(params, jnp.zeros((2, 7, 8, 3)), jnp.zeros(2))


def test_legacy_attention_names(cifar, tmp_path):
    """Pre-0.14 checkpoints name attention weights query/key/value/proj_attn."""
    path, _, module, params, _ = cifar
    shutil.copy(os.path.join(path, "config.json"), tmp_path)
    state = safetensors_numpy.load_file(os.path.join(path, WEIGHTS))
    legacy = {}
    for name, value in state.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"),
                         ("to_out.0", "proj_attn")):
            name = name.replace(f".{new}.", f".{old}.")
        legacy[name] = value
    assert any(".proj_attn." in n for n in legacy)
    safetensors_numpy.save_file(legacy, os.path.join(tmp_path, WEIGHTS))
    _, legacy_params, _ = load_unet2d(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, legacy_params, params)


def _copy_model(src, dst):
    os.makedirs(dst, exist_ok=True)
    for f in ("config.json", WEIGHTS):
        shutil.copy(os.path.join(src, f), dst)
    return dst


def test_missing_paths_are_named(cifar, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_unet2d(missing)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_unet2d(tmp_path)
    d = _copy_model(cifar[0], tmp_path / "no_weights")
    os.remove(os.path.join(d, WEIGHTS))
    (d / "diffusion_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"safetensors.*pickled"):
        load_unet2d(d)


@pytest.mark.parametrize("key,value,pattern", [
    ("down_block_types", ["CrossAttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                          "DownBlock2D"], "CrossAttnDownBlock2D"),
    ("up_block_types", ["UpBlock2D", "SkipUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
     "SkipUpBlock2D"),
    ("time_embedding_type", "fourier", "time_embedding_type='fourier'"),
    ("class_embed_type", "timestep", "class_embed_type='timestep'"),
    ("num_class_embeds", 10, "num_class_embeds=10"),
    ("mid_block_type", "UNetMidBlock2DCrossAttn", "mid_block_type"),
    ("_class_name", "UNet2DConditionModel", "UNet2DConditionModel"),
])
def test_unsupported_config_is_named(cifar, tmp_path, key, value, pattern):
    d = _copy_model(cifar[0], tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=pattern):
        load_unet2d(d)
    with pytest.raises(ValueError, match=pattern):
        UNet2D.from_config(cfg)


def _rewrite_weights(src, dst, edit):
    d = _copy_model(src, dst)
    state = dict(safetensors_numpy.load_file(os.path.join(d, WEIGHTS)))
    edit(state)
    safetensors_numpy.save_file(state, os.path.join(d, WEIGHTS))
    return d


def test_bad_weights_are_named(cifar, tmp_path):
    src = cifar[0]
    bad = "down_blocks.1.attentions.0.to_k.weight"

    def wrong_shape(s):
        s[bad] = np.zeros((64, 32), np.float32)

    d = _rewrite_weights(src, tmp_path / "shape", wrong_shape)
    with pytest.raises(ValueError, match=rf"{bad}.*\(64, 32\).*\(64, 64\)"):
        load_unet2d(d)

    gone = "up_blocks.2.resnets.1.conv_shortcut.bias"
    assert gone in safetensors_numpy.load_file(os.path.join(src, WEIGHTS))
    d = _rewrite_weights(src, tmp_path / "missing", lambda s: s.pop(gone))
    with pytest.raises(ValueError, match=rf"missing parameter '{gone}'"):
        load_unet2d(d)

    def extra(s):
        s["mid_block.attentions.1.to_q.weight"] = np.zeros((64, 64), np.float32)

    d = _rewrite_weights(src, tmp_path / "extra", extra)
    with pytest.raises(ValueError, match=r"unexpected parameter 'mid_block.attentions.1.to_q"):
        load_unet2d(d)


# google/ddpm-cifar10-32 config.json as published (diffusers 0.0.4: no attention_head_dim,
# so diffusers' default 8 applies, as it does here).
DDPM_CIFAR10 = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu",
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}


def test_full_size_cifar10_layout():
    """Every tensor of the real 35.7M-parameter model maps onto a Flax parameter of the
    same size (shapes only: the torch model is built on the meta device)."""
    from iia_jax.models.diffusers_io import _expected_shapes, _flax_path, _to_flax_layout

    with torch.device("meta"):
        model = diffusers.UNet2DModel.from_config(DDPM_CIFAR10)
    expected = _expected_shapes(UNet2D.from_config(DDPM_CIFAR10))
    got = {}
    for name, tensor in model.state_dict().items():
        shape = _to_flax_layout(np.empty(tuple(tensor.shape), np.bool_)).shape
        got[_flax_path(name, tensor.ndim)] = tuple(shape)
    assert got == expected
    assert sum(int(np.prod(s)) for s in expected.values()) == 35_746_307


def test_config_defaults_are_diffusers_defaults():
    import dataclasses
    import inspect

    sig = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    for field in dataclasses.fields(UNet2DConfig):
        assert sig[field.name].default == field.default, field.name


def test_config_object_roundtrip():
    cfg = UNet2DConfig.from_dict(dict(CIFAR_LIKE))
    assert cfg.block_out_channels == (32, 64, 64, 64) and cfg.temb_dim == 128
    with pytest.warns(UserWarning, match="not_a_key"):
        UNet2DConfig.from_dict({**CIFAR_LIKE, "not_a_key": 1})


def _sigma(alphas_cumprod, n):
    return float(np.sqrt((1 - alphas_cumprod[n]) / alphas_cumprod[n]))


def test_from_diffusers_denoiser(tiny, tmp_path):
    """D(x, sigma_n) = x - sigma_n * eps_torch(x / sqrt(1 + sigma_n^2), n) on grid sigmas."""
    from diffusers import DDPMScheduler

    from iia_jax.schedules import ddpm_alphas_cumprod

    src, model = tiny[0], tiny[1]
    root = tmp_path / "pipeline"
    _copy_model(src, root / "unet")
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    sched.save_config(root / "scheduler")  # pipeline layout: <root>/unet, <root>/scheduler
    denoiser, module, params = from_diffusers(root / "unet")
    abar = ddpm_alphas_cumprod("linear", 1e-4, 0.02, 1000)
    np.testing.assert_allclose(abar, sched.alphas_cumprod.numpy(), rtol=1e-5)

    x = np.random.default_rng(2).standard_normal((2, 8, 8, 3)).astype(np.float32)
    apply = jax.jit(lambda d, x, s: d(x, s))
    for n in (10, 400, 900):  # one scalar sigma per call, as the solvers use it
        sigma = np.float32(_sigma(abar, n))
        out = np.asarray(apply(denoiser, jnp.asarray(x), jnp.asarray(sigma)))
        x_vp = (x / np.sqrt(1.0 + np.float64(sigma) ** 2)).astype(np.float32)
        ref = x - sigma * _torch_eps(model, x_vp, np.full((2,), n, np.float32))
        assert _rel_err(out, ref) < REL_TOL, n

    # The same pipeline from the root folder, and an explicit dict config.
    d2, _, _ = from_diffusers(root, scheduler_config=dict(sched.config))
    leaves, leaves2 = jax.tree.leaves(denoiser), jax.tree.leaves(d2)
    assert len(leaves) == len(leaves2)
    for a, b in zip(leaves, leaves2):
        np.testing.assert_array_equal(a, b)


def test_from_diffusers_scheduler_errors(tiny, tmp_path):
    d = _copy_model(tiny[0], tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        from_diffusers(d)
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        from_diffusers(d, scheduler_config={"prediction_type": "sample"})
    with pytest.raises(ValueError, match="beta_schedule='sigmoid'"):
        from_diffusers(d, scheduler_config={"beta_schedule": "sigmoid"})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        from_diffusers(d, scheduler_config=tmp_path / "missing.json")
