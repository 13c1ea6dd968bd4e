"""Speed switches of the net bodies: compile, channels-last and autocast keep numbers and state-dict keys;
bf16 autocast is active on the CPU and models train under it with float32 losses."""

import contextlib
import json
import math

import pytest
import torch

import vaekit.train
from tests.helpers import digits
from vaekit import checkpoint as ckpt
from vaekit.config import ModelConfig, build_config
from vaekit.models import build_model, compile_model
from vaekit.models.vae import build_vae
from vaekit.nets.conv import ConvDecoder
from vaekit.nets.speed import autocast, channels_last_input, maybe_compile, to_channels_last
from vaekit.train import train


def test_speed_switches_keep_the_numbers():
    torch.manual_seed(0)
    dec = ConvDecoder(3, (2, 8, 8), [4, 8])
    z = torch.randn(2, 3)
    ref = dec(z)
    assert maybe_compile(dec, False, (ConvDecoder,)) is dec
    to_channels_last(dec)
    assert torch.allclose(dec(z), ref, atol=1e-5)
    x = channels_last_input(torch.rand(2, 1, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with autocast("cpu"):  # bf16 inside the body; the body returns float32
        assert dec(z).dtype == torch.float32


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch when dynamo loads
def test_compile_model_targets_the_net_bodies_and_the_flow_conditioners():
    """The model is driven through loss/log_prob/sample, so the tensor-to-tensor bodies are what
    gets compiled (lazily: nothing is compiled until a body is first called): a VAE's net bodies, a
    flow's coupling conditioners; a model with neither is refused in one line, not left as it was."""
    from vaekit.errors import ConfigError
    from vaekit.flows.coupling import Conditioner

    cfg = ModelConfig(
        encoder="conv",
        decoder="conv",
        channels=[4],
        likelihood="pixelcnn",
        pixelcnn_layers=1,
        pixelcnn_channels=2,
        pixelcnn_cond=2,
    )
    model = build_vae(cfg, (1, 8, 8))
    keys = list(model.state_dict())
    compile_model(model, True)
    compiled = [n for n, m in model.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert compiled == ["encoder.body", "decoder.body", "decoder.likelihood.net"]
    assert list(model.state_dict()) == keys

    flow = build_model(build_config("glow-mnist", overrides={"flow_hidden": 4, "flow_steps": 1}), (1, 8, 8))
    compile_model(flow, True)
    conditioners = [m for m in flow.modules() if isinstance(m, Conditioner)]
    assert conditioners and all(m._compiled_call_impl is not None for m in conditioners)

    mixture = build_model(build_config("gmm-mnist"), (1, 8, 8))
    with pytest.raises(ConfigError, match="model.compile=true compiles net bodies and flow conditioners"):
        compile_model(mixture, True)
    assert compile_model(mixture, False) is mixture


def test_autocast_is_bf16_on_the_cpu_and_off_when_disabled():
    with autocast("cpu", True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("cpu", False):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("meta", True):  # devices without autocast: nothing happens
        assert not torch.is_autocast_enabled("cpu")


@pytest.fixture
def autocast_seen(monkeypatch) -> list:
    """Whether CPU autocast was on, once per training step (``vaekit.train.autocast`` spied on)."""
    seen = []
    real = vaekit.train.autocast

    @contextlib.contextmanager
    def spy(device, enabled=True, **kw):
        with real(device, enabled, **kw):
            seen.append(torch.is_autocast_enabled("cpu"))
            yield

    monkeypatch.setattr(vaekit.train, "autocast", spy)
    return seen


TINY_VAE = ("dense-digits", {"encoder": "conv", "decoder": "conv", "channels": [4, 8], "hidden": [16]})
TINY_FLOW = ("glow-mnist", {"flow_hidden": 8, "flow_blocks": 1, "flow_steps": 1})


@pytest.mark.parametrize("preset, sets", [TINY_VAE, TINY_FLOW], ids=["conv-vae", "glow"])
def test_amp_losses_and_gradients_are_float32_and_close_to_float32_training(preset, sets):
    """Every per-example term of the loss is float32 under CPU autocast and within bf16 rounding of the
    float32 loss (same noise); the gradients reach float32 weights."""
    binary = preset == "dense-digits"
    x = digits(binary, 32)
    torch.manual_seed(0)
    model = build_model(build_config(preset, overrides=sets), (1, 8, 8))
    model.loss(x)  # data-dependent initialisation (ActNorm) outside autocast, as the first step does
    torch.manual_seed(1)
    ref = model.loss(x)
    torch.manual_seed(1)
    with autocast("cpu", True):
        out = model.loss(x)
    terms = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    assert terms and all(v.dtype == torch.float32 for v in terms.values())
    torch.testing.assert_close(out["loss"], ref["loss"], rtol=0.01, atol=0.5)
    out["loss"].mean().backward()
    assert all(
        p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
    )


@pytest.mark.parametrize("preset, sets", [TINY_VAE, TINY_FLOW], ids=["conv-vae", "glow"])
def test_amp_training_on_the_cpu_runs_under_autocast_and_gives_finite_float32_losses(
    tmp_path, autocast_seen, preset, sets
):
    """``--set amp=true`` trains a tiny VAE and a tiny flow under CPU bf16 autocast: every step's forward
    runs with autocast on, the logged losses and the saved weights are finite float32."""
    binary = preset == "dense-digits"
    x = digits(binary, 160)
    over = {"epochs": 1, "batch_size": 32, "log_every": 1, "eval_k": 5, "eval_n": 32, "tensorboard": False}
    cfg = build_config(preset, overrides={**sets, **over, "amp": True})
    train(cfg, tmp_path / "r", x[:128], x[128:], progress=False, max_steps=4)
    assert len(autocast_seen) == 4 and all(autocast_seen)
    logged = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert all(math.isfinite(r["test_nll"]) for r in logged if "test_nll" in r)
    _, state = ckpt.latest_checkpoint(tmp_path / "r")
    weights = [v for v in state["model"].values() if v.is_floating_point()]
    assert weights and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)


def test_resolve_amp_turns_auto_on_exactly_where_the_device_has_bf16_hardware(bf16_cpu):
    """``auto`` follows ``native_bf16`` (AMX-BF16 or AVX512-BF16 on a CPU, bf16 support on CUDA); true and
    false are themselves on any device; devices without bf16 units, and the meta device, resolve auto to off."""
    import vaekit.nets.speed as speed

    assert speed.native_bf16("cpu") == (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    assert set(speed.cpu_bf16_units()) <= {"AMX-BF16", "AVX512-BF16"}
    assert speed.native_bf16("meta") is False
    for has in (True, False):
        bf16_cpu(has)
        assert speed.native_bf16("cpu") is has and speed.resolve_amp("auto", "cpu") is has
        with speed.autocast("cpu", "auto"):  # autocast resolves an unresolved auto the same way
            assert torch.is_autocast_enabled("cpu") is has
        assert speed.resolve_amp(True, "cpu") is True and speed.resolve_amp(False, "cpu") is False
    assert speed.resolve_amp("auto", "meta") is False


@pytest.mark.parametrize("native", [True, False])
def test_train_records_what_amp_auto_resolved_to_and_a_resume_keeps_it(tmp_path, bf16_cpu, autocast_seen, native):
    """A fresh run with ``train.amp: auto`` trains under autocast exactly where the CPU has bf16 units and
    records the resolved bool in config.yaml and its checkpoints; resumed on a machine that resolves
    auto the other way, given auto again, the run continues in its own precision."""
    bf16_cpu(native)
    preset, sets = TINY_VAE
    x = digits(True, 96)
    over = {"epochs": 2, "batch_size": 32, "eval_k": 0, "tensorboard": False, "amp": "auto"}
    train(build_config(preset, overrides={**sets, **over}), tmp_path / "r", x, progress=False, max_steps=2)
    assert autocast_seen == [native, native]
    assert f"amp: {str(native).lower()}" in (tmp_path / "r" / "config.yaml").read_text()
    _, state = ckpt.latest_checkpoint(tmp_path / "r")
    assert state["config"]["train"]["amp"] is native

    bf16_cpu(not native)  # another machine
    autocast_seen.clear()
    train(build_config(preset, overrides={**sets, **over}), tmp_path / "r", x, progress=False, resume=True)
    assert len(autocast_seen) == 4 and set(autocast_seen) == {native}


def test_native_bf16_on_cuda_asks_for_compute_capability_8_and_resolve_amp_refuses_other_values(monkeypatch):
    """Older GPUs only emulate bf16 (``torch.cuda.is_bf16_supported`` says yes there), so auto asks for
    compute capability 8.0 or later, of the device given; ROCm is not counted. A value other than auto,
    true or false is refused instead of being read by its truth (the string "false" is true)."""
    import vaekit.nets.speed as speed
    from vaekit.errors import ConfigError

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    for major, want in ((7, False), (8, True), (9, True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d, m=major: asked.append(d) or (m, 0))
        assert speed.native_bf16("cuda:1") is want and speed.resolve_amp("auto", "cuda:1") is want
    assert asked[0] == torch.device("cuda:1")
    monkeypatch.setattr(torch.version, "hip", "6.0")
    assert speed.native_bf16("cuda") is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "hip", None)
    assert speed.native_bf16("cuda") is False
    for bad in ("false", "on", 1, None):
        with pytest.raises(ConfigError, match="train.amp must be auto, true or false"):
            speed.resolve_amp(bad, "cpu")


def test_a_resume_of_a_checkpoint_that_saved_amp_unresolved_decides_it_once(bf16_cpu):
    """A checkpoint written through the low-level API may hold amp: auto; the resume resolves it to a
    bool on its own device instead of carrying the string into the run."""
    from vaekit.train import _with_auto_resolved

    bf16_cpu(True)
    cfg = build_config("dense-digits", overrides={"amp": "auto"})
    got = _with_auto_resolved(cfg, {"config": cfg.to_dict()}, torch.device("cpu"))
    assert got.train.amp is True and cfg.train.amp == "auto"
    saved = build_config("dense-digits", overrides={"amp": False}).to_dict()
    assert _with_auto_resolved(cfg, {"config": saved}, torch.device("cpu")).train.amp is False


@pytest.mark.parametrize("bad", ["false", 1])
def test_train_refuses_an_amp_that_is_not_auto_true_or_false_before_the_run_folder_exists(tmp_path, bad):
    """From Python, train() is handed configs that validate never saw: amp "false" (true by its truth)
    and 1 (equal to True, yet no bool) are refused in one line, and no run folder is left behind."""
    from vaekit.errors import ConfigError

    preset, sets = TINY_VAE
    cfg = build_config(preset, overrides={**sets, "epochs": 1, "eval_k": 0, "tensorboard": False})
    cfg.train.amp = bad
    with pytest.raises(ConfigError, match="train.amp must be auto, true or false") as e:
        train(cfg, tmp_path / "r", digits(True, 64), progress=False, max_steps=1)
    assert "\n" not in str(e.value) and not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="train.amp must be auto, true or false"):
        build_config(preset, overrides={**sets, "amp": 1})
