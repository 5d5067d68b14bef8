"""End to end on real (randomly initialised) `diffusers` checkpoints: save, convert, sample, IIA.

Every network here is a ``diffusers.UNet2DModel`` written with ``save_pretrained`` and loaded
with :func:`iia_jax.models.from_diffusers`, the path a user takes with a downloaded model.

* Parity, on the block layout of ``google/ddpm-cifar10-32`` (Down, AttnDown, Down, Down /
  Up, Up, AttnUp, Up; sinusoid without flip, freq shift 1, no downsample padding) at small
  widths and 8x8 images, saved beside a ``scheduler_config.json`` as that model folder is laid
  out: the ``euler`` sampler (deterministic DDIM in sigma-space) on the converted model against
  ``diffusers.DDIMScheduler`` (eta = 0, ``set_alpha_to_one=True``, no clipping) stepping the
  *torch* model on the same DDIM timesteps from the same noise.  Both run in float32; tolerance
  ``max |ours - torch| <= 1e-5 * max |torch|`` (measured on CPU, jax 0.10.2, torch 2.13.0, 5 and
  10 steps: 4.3e-7 to 5.5e-7 relative, max |error| 4.6e-5 to 1.4e-4 at sample scales of 100 to
  250 -- an untrained network's x0 estimates are far outside [-1, 1]).
* IIA-DDIM on a converted one-level network (pipeline layout: ``scheduler/`` subfolder):
  ``fit`` on the time-uniform VP grid (whose large final step IIA corrects), then
  ``jax.jit(iia_sample)`` gives finite samples of the right shape and, with zero coefficients,
  reproduces ``jax.jit(sample)`` (measured: bit-identical; tolerance 1e-6 relative, room for
  XLA fusion choices).
* Classifier-free guidance over two differently initialised converted networks: the fitted
  coefficients carry the guidance scale, denoisers of another scale (or none) are refused, and
  the scale survives ``save_coefficients`` / ``load_coefficients``.

Compilation dominates the run time: every copy of a U-Net in an XLA program costs seconds on
CPU (about 5 CPU-seconds for the CIFAR-like network, 1 for the one-level one; a fit holds five
copies, a sampler two).  So the CIFAR-like network is used only where its layout matters (the
parity check), the IIA tests use one-level networks and fit settings that compile one program,
and one jitted ``sample`` / ``iia_sample`` is shared (plans and coefficients are traced).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import iia_jax  # noqa: E402
from iia_jax import schedules  # noqa: E402
from iia_jax.models import cfg, from_diffusers  # noqa: E402
from iia_jax.models.diffusers_io import alphas_cumprod_from_scheduler_config  # noqa: E402

PARITY_REL_TOL = 1e-5
ZERO_COEFF_REL_TOL = 1e-6
BATCH, SIZE, STEPS = 8, 8, 5

# google/ddpm-cifar10-32's config.json with channels (128, 256, 256, 256) -> (16, 32, 32, 32),
# 32 -> 8 groups, two -> one layer per block, 32x32 -> 8x8.
CIFAR_LIKE = dict(
    sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32, 32),
    norm_num_groups=8, norm_eps=1e-6, layers_per_block=1, attention_head_dim=None,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, act_fn="silu",
    mid_block_scale_factor=1, center_input_sample=False,
)
# One level, no mid block: the cheapest UNet2DModel to compile (the guided fit holds two).
ONE_LEVEL = dict(
    sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(8,), norm_num_groups=4,
    layers_per_block=1, down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
    mid_block_type=None,
)


def _save(path, layout, seed, scheduler_layout):
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**layout).eval()
    model.save_pretrained(path)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                    beta_schedule="linear")
    # "flat": scheduler_config.json beside config.json (the google/ddpm-* folders);
    # "pipeline": a scheduler/ subfolder (what DDPMPipeline.save_pretrained writes).
    sched.save_pretrained(path if scheduler_layout == "flat" else path / "scheduler")
    return model


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddpm_cifar10_like")
    model = _save(path, CIFAR_LIKE, seed=0, scheduler_layout="flat")
    denoiser, module, params = from_diffusers(path)
    config = diffusers.DDPMScheduler.load_config(path)
    return dict(path=path, torch_model=model, denoiser=denoiser,
                alphas_cumprod=alphas_cumprod_from_scheduler_config(config))


@pytest.fixture(scope="module")
def jitted():
    """One compiled program each, reused across plans (sigmas are traced) and coefficients."""
    return dict(sample=jax.jit(iia_jax.sample),
                iia_sample=jax.jit(iia_jax.iia_sample))


def _torch_ddim(model, scheduler_dir, x_vp_T_nhwc, num_steps):
    # The local scheduler folder written by the test (config only; nothing is downloaded).
    config = diffusers.DDIMScheduler.load_config(scheduler_dir)
    sched = diffusers.DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(num_steps)
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(x_vp_T_nhwc, (0, 3, 1, 2))))
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x, t).sample, t, x, eta=0.0).prev_sample
    return np.transpose(x.numpy(), (0, 2, 3, 1)), sched.timesteps.numpy()


def _max_rel(a, ref):
    return float(np.max(np.abs(np.asarray(a) - ref)) / np.max(np.abs(ref)))


def test_euler_equals_diffusers_ddim_on_converted_unet(cifar, jitted):
    abar = cifar["alphas_cumprod"]
    plan = iia_jax.plan("euler", schedules.ddim(abar, STEPS))
    x_T = iia_jax.initial_noise(jax.random.PRNGKey(0), plan, (BATCH, SIZE, SIZE, 3), vp=True)
    ours = np.asarray(jitted["sample"](cifar["denoiser"], plan, x_T))

    # The same x_vp_T ~ N(0, I) that initial_noise scaled by sqrt(1 + sigma_max^2).
    x_vp_T = np.asarray(x_T / jnp.sqrt(1.0 + plan.sigmas[0] ** 2))
    ref, timesteps = _torch_ddim(cifar["torch_model"], cifar["path"], x_vp_T, STEPS)
    np.testing.assert_array_equal(timesteps, [800, 600, 400, 200, 0])
    assert ours.shape == ref.shape == (BATCH, SIZE, SIZE, 3)
    assert np.all(np.isfinite(ours))
    assert _max_rel(ours, ref) <= PARITY_REL_TOL


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Two differently initialised one-level networks in the pipeline layout (unet/, scheduler/)."""
    root = tmp_path_factory.mktemp("small")
    dens = []
    for seed, name in enumerate(("a", "b")):
        _save(root / name, ONE_LEVEL, seed=10 + seed, scheduler_layout="pipeline")
        dens.append(from_diffusers(root / name)[0])
    return dens


def _vp_plan(num_steps):
    abar = schedules.ddpm_alphas_cumprod("linear", 1e-4, 0.02, 1000)
    return iia_jax.plan("euler", schedules.time_uniform(schedules.vp_discrete(abar), num_steps))


def test_iia_ddim_end_to_end(small, jitted):
    denoiser = small[0]
    plan = _vp_plan(STEPS)
    x_T = iia_jax.initial_noise(jax.random.PRNGKey(1), plan, (BATCH, SIZE, SIZE, 3), vp=True)
    # Sequential fit (the default mode) in two chunks, local target, no hold-out: one compiled
    # program.  The trajectory target and the never-worse check would add two more; the IIA unit
    # tests cover them on cheap denoisers.
    res = iia_jax.fit(denoiser, plan, x_T, fine_steps=4, mode="sequential", target="local",
                      holdout=0.0, chunk_size=BATCH // 2, fingerprint="tiny-a", progress=False)
    coeffs, report = res.coeffs, res.report
    assert (coeffs.solver, coeffs.preset, coeffs.guidance_scale) == ("euler", "iia-ddim", None)
    assert coeffs.fingerprint == "tiny-a"
    assert coeffs.values.shape == (STEPS, 4)  # D_j and eps_j for j = i, i - 1
    assert np.all(np.isfinite(np.asarray(coeffs.values)))
    assert report.train_size == BATCH
    # The least-squares correction can only lower each step's local error on the fitted batch.
    assert np.all(report.mse_after <= report.mse_before * (1 + 1e-4))

    x_T2 = iia_jax.initial_noise(jax.random.PRNGKey(3), plan, (BATCH, SIZE, SIZE, 3), vp=True)
    out = np.asarray(jitted["iia_sample"](denoiser, plan, coeffs, x_T2))
    assert out.shape == x_T2.shape and np.all(np.isfinite(out))

    zero = dataclasses.replace(coeffs, values=jnp.zeros_like(coeffs.values))
    plain = np.asarray(jitted["iia_sample"](denoiser, plan, zero, x_T2))
    ref = np.asarray(jitted["sample"](denoiser, plan, x_T2))
    assert _max_rel(plain, ref) <= ZERO_COEFF_REL_TOL


def test_guided_fit_keeps_the_scale(small, tmp_path):
    d_cond, d_uncond = small
    scale = 2.5
    guided = cfg(d_cond, d_uncond, scale)
    plan = _vp_plan(3)
    x_T = iia_jax.initial_noise(jax.random.PRNGKey(4), plan, (BATCH, SIZE, SIZE, 3), vp=True)
    # Teacher-forced, no hold-out: one compiled program (with both networks in it).
    res = iia_jax.fit(guided, plan, x_T, fine_steps=2, mode="teacher_forced", holdout=0.0,
                      progress=False)
    assert res.coeffs.guidance_scale == scale
    assert np.all(np.isfinite(np.asarray(res.coeffs.values)))

    with pytest.raises(ValueError, match="guidance_scale"):
        iia_jax.iia_sample(cfg(d_cond, d_uncond, 4.0), plan, res.coeffs, x_T)
    with pytest.raises(ValueError, match="guidance_scale"):
        iia_jax.iia_sample(d_cond, plan, res.coeffs, x_T)  # unguided: scale None

    path = iia_jax.save_coefficients(tmp_path / "coeffs", res.coeffs)
    loaded = iia_jax.load_coefficients(path, plan=plan)
    assert loaded.guidance_scale == scale
    np.testing.assert_array_equal(np.asarray(loaded.values), np.asarray(res.coeffs.values))
    with pytest.raises(ValueError, match="guidance_scale"):
        iia_jax.iia_sample(cfg(d_cond, d_uncond, 1.0), plan, loaded, x_T)
    # A new guided denoiser of the same scale is accepted (traced only: nothing to compile).
    same = cfg(d_cond, d_uncond, scale)
    out = jax.eval_shape(lambda x: iia_jax.iia_sample(same, plan, loaded, x), x_T)
    assert out.shape == x_T.shape
