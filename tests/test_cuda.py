"""vaekit on a CUDA device: training, bf16 autocast, channels-last, checkpoints across devices, IS evaluation.

Marked ``cuda`` (``pytest -m cuda``, which ``bench/gpu.sh`` runs); every test skips where torch sees
no GPU. The comparisons with the CPU run with TF32 off (``exact_float32``), so that float32 on the
GPU means float32 and the tolerances are those of float rounding and of Monte-Carlo noise.
"""

import copy
import json
import math

import pytest
import torch
from sklearn.datasets import load_digits

from vaekit import checkpoint as ckpt
from vaekit.config import build_config, get_preset
from vaekit.evaluate import evaluate
from vaekit.inference import importance_sampled_log_prob
from vaekit.models import build_model
from vaekit.models.dense_step import dense_vae_step
from vaekit.nets import autocast, channels_last_input, to_channels_last
from vaekit.train import train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.fixture
def exact_float32():
    """TF32 off for matmuls and cuDNN convolutions while the test runs (restored afterwards)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def digits():
    """scikit-learn's 8x8 digits as grey levels in [0, 1]: (train [1500, 1, 8, 8], test [297, 1, 8, 8])."""
    x = torch.tensor(load_digits().data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return x[:1500], x[1500:]


def binarize(x, g):
    return torch.bernoulli(x, generator=g)


def cfg_for(**over):
    """The small dense digits preset on CUDA, for a few steps."""
    sets = {
        "device": "cuda",
        "epochs": 1,
        "batch_size": 50,
        "log_every": 2,
        "eval_k": 20,
        "eval_n": 50,
        "tensorboard": False,
    }
    sets.update(over)
    return build_config("dense-digits", overrides=sets)


CONV = dict(encoder="conv", decoder="conv", channels=[8, 16], hidden=[32])


def conv_model(**over):
    """A small conv VAE for 8x8 images, seeded."""
    torch.manual_seed(0)
    return build_model(cfg_for(**CONV, **over), (1, 8, 8))


def test_training_on_cuda_gives_finite_losses(tmp_path):
    tr, te = digits()
    summary = train(cfg_for(), tmp_path / "r", tr, te, transform=binarize, progress=False, max_steps=10)
    logged = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)
    assert summary is None or all(v is None or math.isfinite(v) for v in summary.values() if isinstance(v, float))


def test_bf16_autocast_keeps_float32_weights_and_likelihood(exact_float32):
    """Under autocast the nets run in bf16, the likelihood's log-probabilities and the weights stay
    float32, and the loss is the float32 loss to bf16 rounding."""
    model = conv_model().cuda()
    x = (digits()[0][:64] > 0.5).float().cuda()
    torch.manual_seed(1)
    ref = model.loss(x)["loss"]
    torch.manual_seed(1)
    with autocast("cuda", True):
        out = model.loss(x)["loss"]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.5)
    out.mean().backward()
    assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())


def test_amp_training_on_cuda_gives_finite_weights(tmp_path):
    tr, te = digits()
    train(cfg_for(**CONV, amp=True), tmp_path / "r", tr, te, transform=binarize, progress=False, max_steps=5)
    _, state = ckpt.latest_checkpoint(tmp_path / "r")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_channels_last_on_cuda_gives_the_default_layouts_numbers(exact_float32):
    a = conv_model().cuda()
    b = to_channels_last(copy.deepcopy(a))
    x = (digits()[0][:64] > 0.5).float().cuda()
    torch.manual_seed(1)
    la = a.loss(x)["loss"]
    torch.manual_seed(1)
    lb = b.loss(channels_last_input(x))["loss"]
    torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-4)
    la.mean().backward()
    lb.mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad.contiguous(), pa.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_checkpoint_written_on_cuda_loads_on_cpu(tmp_path, exact_float32):
    """A run trained on the GPU is rebuilt on the CPU with the same weights and the same decoder."""
    tr, te = digits()
    train(cfg_for(**CONV), tmp_path / "r", tr, te, transform=binarize, progress=False, max_steps=5)
    on_cpu, _, state = ckpt.load_model(tmp_path / "r", device="cpu")
    on_gpu, _, _ = ckpt.load_model(tmp_path / "r", device="cuda")
    assert all(t.device.type == "cpu" for t in on_cpu.state_dict().values())
    z = torch.randn(16, on_cpu.latent_dim)
    with torch.no_grad():
        p_cpu = on_cpu.decoder(z).log_prob(torch.ones(16, 1, 8, 8))
        p_gpu = on_gpu.decoder(z.cuda()).log_prob(torch.ones(16, 1, 8, 8, device="cuda"))
    torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=1e-4, atol=1e-3)


def test_importance_sampling_on_cuda_matches_cpu_within_monte_carlo_error(exact_float32):
    """Same model, same data, same seed: the CPU and CUDA generators draw different z, so the
    per-example estimates differ by Monte-Carlo noise only; their mean difference is within
    5 standard errors of 0, and so is the evaluator's NLL (which adds nothing device-specific)."""
    torch.manual_seed(0)
    cpu = build_model(cfg_for(), (1, 8, 8)).eval()
    gpu = copy.deepcopy(cpu).cuda()
    x = (digits()[1][:128] > 0.5).float()
    torch.manual_seed(0)
    a = importance_sampled_log_prob(cpu, x, k=200)
    torch.manual_seed(0)
    b = importance_sampled_log_prob(gpu, x.cuda(), k=200)
    d = a["log_px"].double() - b["log_px"].cpu().double()
    se = d.std().item() / math.sqrt(d.numel())
    assert abs(d.mean().item()) < 5 * se + 1e-4
    assert torch.isfinite(b["ess"]).all() and (b["ess"] >= 1 - 1e-4).all()
    ea, eb = evaluate(cpu, x, k=200, progress=False, seed=0), evaluate(gpu, x.cuda(), k=200, progress=False, seed=0)
    assert abs(ea["nll"] - eb["nll"]) < 5 * se + 1e-4


def test_flow_density_on_cuda_equals_cpu(exact_float32):
    """A Glow (ActNorm, invertible 1x1 convolutions with their log-determinants, affine couplings)
    gives the same exact log-density on both devices, to float32 rounding."""
    cfg = get_preset("glow-mnist")
    cfg.model.flow_steps, cfg.model.flow_hidden = 2, 16
    torch.manual_seed(0)
    cpu = build_model(cfg, (1, 8, 8))
    y = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        cpu.distribution().log_prob(y)  # ActNorm's data-dependent initialisation, then the same weights on both
        gpu = copy.deepcopy(cpu).cuda()
        lp_cpu = cpu.distribution().log_prob(y)
        lp_gpu = gpu.distribution().log_prob(y.cuda())
    assert torch.isfinite(lp_gpu).all()
    torch.testing.assert_close(lp_gpu.cpu(), lp_cpu, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("objective, gradient, k", [("elbo", "reparam", 1), ("iwae", "dreg", 4)])
def test_hand_derived_step_on_cuda_equals_autograd(exact_float32, objective, gradient, k):
    over = {"hidden": [32, 16], "latent_dim": 4, "activation": "tanh", "objective": objective, "gradient": gradient}
    torch.manual_seed(0)
    model = build_model(build_config("dense-digits", overrides={**over, "k": k}), (1, 8, 8)).cuda()
    x = torch.bernoulli(digits()[0][:16]).cuda()
    torch.cuda.manual_seed(3)
    out = model.loss(x, step=0)
    (out["loss"].sum() / 16).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.cuda.manual_seed(3)  # the same noise
    got = dense_vae_step(model)(x, 0, 1 / 16)
    torch.testing.assert_close(got["loss"], out["loss"].detach(), rtol=1e-5, atol=1e-4)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6, msg=n)
