"""Conv encoder/decoder bodies: shapes from the data, registry, config errors, training, speed switches."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_in_place_activations_change_nothing, digits, trains_on_digits
from vaekit.config import ModelConfig, get_preset
from vaekit.errors import ConfigError
from vaekit.models.vae import build_vae
from vaekit.nets import NetSpec, build_decoder, build_encoder
from vaekit.nets.conv import TAP_SUM_MAX_OUT, ConvEncoder, OutputConv, conv3x3_tap_sum, stage_sizes

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (2, 7, 9)]


def test_stage_sizes_round_up():
    assert stage_sizes(28, 3) == [28, 14, 7, 4]
    assert stage_sizes(32, 3) == [32, 16, 8, 4]
    assert stage_sizes(8, 3) == [8, 4, 2, 1]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("upsample", ["transpose", "nearest"])
def test_shapes_follow_the_data(shape, upsample):
    spec = NetSpec(channels=(4, 8, 8), upsample=upsample)
    enc = build_encoder("conv", shape, 10, spec)
    dec = build_decoder("conv", 5, (6,) + shape[1:], spec)
    assert enc(torch.rand(3, *shape)).shape == (3, 10)
    assert dec(torch.randn(3, 5)).shape == (3, 6) + shape[1:]


@pytest.mark.parametrize("norm", ["none", "batch", "weight"])
def test_norms_and_vae_contract(norm):
    cfg = ModelConfig(encoder="conv", decoder="conv", channels=[4, 8], norm=norm, latent_dim=3)
    model = build_vae(cfg, (1, 28, 28))
    x = (torch.rand(4, 1, 28, 28) > 0.5).float()
    out = model.loss(x)
    assert out["loss"].shape == (4,) and torch.isfinite(out["loss"]).all()
    assert model.sample(2).shape == (2, 1, 28, 28)
    clone = build_vae(cfg, (1, 28, 28))
    clone.load_state_dict(model.state_dict())  # weight norm / batch norm state round-trips


def test_config_errors_are_one_line():
    for bad in (dict(norm="layer"), dict(upsample="bilinear"), dict(channels=[])):
        cfg = ModelConfig(encoder="conv", decoder="conv", **bad)
        with pytest.raises(ConfigError) as e:
            build_vae(cfg, (1, 8, 8))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        ConvEncoder((64,), 4, [8])


def test_conv_vae_trains_on_digits():
    cfg = ModelConfig(encoder="conv", decoder="conv", channels=[8, 16], latent_dim=4)
    before, after = trains_on_digits(cfg, digits(n=64))
    assert after < 0.95 * before, (before, after)


def test_presets_resolve_to_conv_nets():
    cfg = get_preset("conv-mnist")
    assert (cfg.model.encoder, cfg.model.decoder, cfg.model.likelihood) == ("conv", "conv", "bernoulli")
    assert get_preset("resnet-cifar").model.likelihood == "logistic_mixture"
    assert get_preset("pixelvae-cifar").model.pixelcnn_output == "logistic_mixture"


@pytest.mark.parametrize("P", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(28, 28), (5, 3), (1, 1)])
def test_the_tap_sum_is_the_convolution_and_its_gradient(P, channels_last, size):
    """Summing the nine shifted tap maps reassociates the convolution's sums: same values and the
    same gradients for x, weight and bias (float64), in either memory format, at any image size."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(P, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(P, dtype=torch.float64, requires_grad=True)
    xi = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    got, want = conv3x3_tap_sum(xi, w, b), F.conv2d(x, w, b, padding=1)
    assert got.is_contiguous() and torch.allclose(got, want, atol=1e-12)
    g_got = torch.autograd.grad(got.sin().sum(), (x, w, b))
    g_want = torch.autograd.grad(want.sin().sum(), (x, w, b))
    for a, c in zip(g_got, g_want):
        assert torch.allclose(a, c, atol=1e-11)
    assert torch.allclose(conv3x3_tap_sum(xi, w, None), F.conv2d(x, w, None, padding=1), atol=1e-12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 products, float32 sums
        low = conv3x3_tap_sum(xi.float(), w.float(), None)
    assert low.dtype == torch.float32 and torch.allclose(low.double(), want - b.view(1, P, 1, 1), atol=0.1, rtol=0.05)


def test_the_output_layer_is_a_conv2d_whatever_path_it_takes():
    """OutputConv keeps nn.Conv2d's parameters and keys (old checkpoints load) and gives the
    convolution's output with few channels (tap sum) and many (the direct kernel); under bf16
    autocast it returns the convolution to bf16 accuracy."""
    torch.manual_seed(0)
    for C, P in ((20, 1), (20, TAP_SUM_MAX_OUT), (20, TAP_SUM_MAX_OUT + 1), (4, 1)):  # the last: taps wider than x
        x = torch.randn(3, C, 10, 10)
        layer = OutputConv(C, P)
        plain = torch.nn.Conv2d(C, P, 3, padding=1)
        plain.load_state_dict(layer.state_dict())
        assert list(layer.state_dict()) == ["weight", "bias"]
        with torch.no_grad():
            assert torch.allclose(layer(x), plain(x), atol=1e-5)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = layer(x).float()
            assert torch.allclose(low, plain(x), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("body", ["conv", "resnet"])
def test_the_decoders_give_the_evaluators_bf16_numbers_with_the_cast_before_their_last_relu(body):
    """Under the evaluators' bf16 (autocast with float32 output layers) a decoder whose last
    activation is a ReLU casts that ReLU's input up instead of leaving the cast of its output to the
    output layer: the ReLU itself reads float32, and the decoder's output is the same to the last
    bit as with the cast after it. 32 channels feed the output layer, so that it takes the tap sum
    that conv-mnist's evaluation takes."""
    from vaekit.nets import autocast
    from vaekit.nets.conv import TAP_SUM_MAX_OUT, ConvDecoder
    from vaekit.nets.resnet import ResNetDecoder
    from vaekit.precision import FeedsOutput

    torch.manual_seed(0)
    dec = (ConvDecoder if body == "conv" else ResNetDecoder)(8, (1, 28, 28), [32, 16], act="relu")  # tap-sum output
    dec.to(memory_format=torch.channels_last)
    wrapped = [m for m in dec.modules() if isinstance(m, FeedsOutput)]
    assert len(wrapped) == 1 and dec.features[-1] is wrapped[0]
    assert dec.out.out_channels <= TAP_SUM_MAX_OUT and 9 * dec.out.out_channels <= dec.out.in_channels  # the tap sum
    z = torch.randn(30, 8)
    seen, relu_read = [], []
    dec.features[-1].register_forward_hook(lambda m, args, y: seen.append((args[0].dtype, y.dtype)))
    wrapped[0].act.register_forward_pre_hook(lambda m, args: relu_read.append(args[0].dtype))
    with torch.no_grad(), autocast("cpu", True, outputs_float32=True):
        out = dec(z)
        wrapped[0].forward = lambda x: wrapped[0].act(x)  # the cast left to the output layer
        before = dec(z)
    assert seen[0] == (torch.bfloat16, torch.float32)  # the wrapper reads bf16 and hands the output layer float32
    assert seen[1] == (torch.bfloat16, torch.bfloat16)
    assert relu_read == [torch.float32, torch.bfloat16]  # the cast up runs before the ReLU
    assert out.dtype == torch.float32 and torch.equal(out, before)


def test_the_output_layer_sums_taps_only_where_no_gradient_is_recorded(monkeypatch):
    """Evaluation and sampling (no gradient) take the tap sum; a training step (weights that want
    gradients) and a step on the input alone (per-datapoint SVI through the decoder) take the direct
    kernel, whose backward is cheaper; both give the convolution and its gradients."""
    import vaekit.nets.conv as conv

    calls = []
    real = conv.conv3x3_tap_sum
    monkeypatch.setattr(conv, "conv3x3_tap_sum", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    layer = OutputConv(20, 1).double()
    plain = torch.nn.Conv2d(20, 1, 3, padding=1).double()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(3, 20, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(layer(x), plain(x), atol=1e-12) and len(calls) == 1
    layer(x).square().sum().backward()  # training: the weights want gradients
    plain(x).square().sum().backward()
    assert len(calls) == 1 and torch.allclose(layer.weight.grad, plain.weight.grad, atol=1e-10)
    layer.requires_grad_(False)
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()  # gradients for the input only
    assert len(calls) == 1 and xg.grad is not None
    layer(x)  # nothing wants a gradient, even with grad mode on
    assert len(calls) == 2


@pytest.mark.parametrize("act", ["relu", "elu", "tanh"])
@pytest.mark.parametrize("norm", ["none", "batch", "weight"])
@pytest.mark.parametrize("body", ["conv", "resnet"])
def test_activations_that_overwrite_their_input_change_no_value_or_gradient(act, norm, body):
    """The conv and ResNet bodies' activations run in place where their input is a fresh output that
    nothing else reads; the same nets with every activation out of place give the same outputs and
    the same parameter gradients (float64)."""
    torch.manual_seed(0)
    spec = NetSpec(channels=(4, 8), activation=act, norm=norm, resnet_blocks=2)
    encoder = build_encoder(body, (1, 12, 12), 6, spec).double()
    decoder = build_decoder(body, 3, (1, 12, 12), spec).double()
    for net, x in ((encoder, torch.rand(5, 1, 12, 12)), (decoder, torch.randn(5, 3))):
        assert_in_place_activations_change_nothing(net, x.double(), expect_in_place=act != "tanh")


@pytest.mark.parametrize("transposed", [False, True])
def test_weight_norm_is_torchs_and_keeps_a_channels_last_model_channels_last(transposed):
    """vaekit's weight norm has torch.nn.utils.parametrizations.weight_norm's parameters, state_dict
    keys, weight and gradients to the bit; after .to(memory_format=channels_last) its weight is
    channels-last too, so a weight-normalised convolution (and through it a whole body) computes in
    the layout the model asks for, where torch's fused kernel had handed every conv an NCHW weight."""
    from vaekit.nets.conv import TransposeUp, WeightNorm, conv3x3

    torch.manual_seed(0)
    if transposed:
        ours = TransposeUp(6, 5, (7, 7), (14, 14), "weight").conv
        plain = torch.nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1, output_padding=1)
    else:
        ours, plain = conv3x3(6, 5, "weight"), torch.nn.Conv2d(6, 5, 3, padding=1)
    ref = torch.nn.utils.parametrizations.weight_norm(plain)
    assert isinstance(ours.parametrizations.weight[0], WeightNorm)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    assert torch.equal(ours.weight, ref.weight)
    x = torch.randn(3, 6, 7, 7)
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a.grad, b.grad)

    ours.to(memory_format=torch.channels_last)
    assert ours.weight.is_contiguous(memory_format=torch.channels_last) and not ours.weight.is_contiguous()
    assert torch.equal(ours.weight, ref.weight)
    assert ref.to(memory_format=torch.channels_last).weight.is_contiguous()  # torch's: NCHW again
    for m in (ours, ref):
        m.zero_grad()
    y = ours(x)  # an NCHW input: the channels-last weight sets the output's layout
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    y_ref = ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for a, b in zip(ours.parameters(), ref.parameters()):  # the same gradients, summed in another order
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    whole = torch.nn.Conv2d(6, 5, 3)
    v = whole.weight.detach().clone()
    torch.nn.utils.parametrize.register_parametrization(whole, "weight", WeightNorm(dim=None), unsafe=True)
    torch.testing.assert_close(whole.weight, v)  # g = ||v|| over the whole tensor at the start
    assert whole.parametrizations.weight.original0.shape == ()

    spec = NetSpec(channels=(4, 8), norm="weight", resnet_blocks=1, activation="elu")
    decoder = build_decoder("resnet", 3, (1, 12, 12), spec).to(memory_format=torch.channels_last)
    maps = []
    hook = lambda m, i, o: maps.append(o)  # noqa: E731
    for m in decoder.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and not isinstance(m, OutputConv):
            m.register_forward_hook(hook)
    with torch.no_grad():
        decoder(torch.randn(2, 3))
    assert maps and all(o.is_contiguous(memory_format=torch.channels_last) and not o.is_contiguous() for o in maps)
