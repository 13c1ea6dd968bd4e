"""vaekit.precision: output layers compute in float32 inside float32_outputs under autocast, and
are the layers they extend everywhere else."""

import threading

import torch

from vaekit.nets.mlp import activation
from vaekit.precision import FeedsOutput, OutputConv2d, OutputLinear, float32_outputs, float32_outputs_active


def test_inside_float32_outputs_the_output_layer_computes_float32_from_its_bf16_input():
    """Autocast alone rounds every layer; with ``float32_outputs`` the output layer runs with autocast
    off on its input cast up, exactly the float32 layer applied to the hidden layers' bf16 output."""
    torch.manual_seed(0)
    layer = OutputLinear(16, 3)
    h = torch.randn(5, 16).bfloat16()  # a hidden layer's output under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = layer(h)
        with float32_outputs():
            full = layer(h)
    assert rounded.dtype == torch.bfloat16 and full.dtype == torch.float32
    torch.testing.assert_close(full, torch.nn.functional.linear(h.float(), layer.weight, layer.bias), rtol=0, atol=0)
    with float32_outputs():  # without autocast it is the plain layer, float64 included
        x64 = torch.randn(2, 16, dtype=torch.float64)
        assert layer.double()(x64).dtype == torch.float64


def test_an_output_conv_is_the_float32_conv_of_its_bf16_input_and_keeps_the_keys_of_nn_conv2d():
    torch.manual_seed(0)
    conv = OutputConv2d(4, 3, 3, padding=1)
    h = torch.randn(2, 4, 5, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16), float32_outputs():
        out = conv(h)
    want = torch.nn.functional.conv2d(h.float(), conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert list(conv.state_dict()) == list(torch.nn.Conv2d(4, 3, 3).state_dict())


def test_the_activation_feeding_an_output_layer_casts_its_input_instead_and_gives_the_same_numbers():
    """Inside float32_outputs under autocast, FeedsOutput(ReLU) returns float32 equal to the bf16 ReLU
    cast up (bit for bit), so the output layer gets the same input without a cast of its own;
    elsewhere it is the activation. Only ReLU is wrapped by ``activation(..., feeds_output=True)``."""
    torch.manual_seed(0)
    h = torch.randn(3, 8, 5, 5).bfloat16().contiguous(memory_format=torch.channels_last)
    act = activation("relu", inplace=True, feeds_output=True)
    assert isinstance(act, FeedsOutput) and list(act.parameters()) == [] and list(act.state_dict()) == []
    read = []
    act.act.register_forward_pre_hook(lambda m, args: read.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with float32_outputs():
            full = act(h.clone())
        rounded = act(h.clone())  # autocast alone: the bf16 activation
    assert read == [torch.float32, torch.bfloat16]  # the cast comes before the ReLU, not after it
    assert full.dtype == torch.float32 and full.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(full, torch.relu(h).float()) and torch.equal(rounded, torch.relu(h))
    with float32_outputs():  # without autocast, the plain (in-place) activation in the input's dtype
        x = torch.randn(4, dtype=torch.float64)
        assert act(x) is x and (x >= 0).all()
    for name in ("elu", "tanh", "leaky_relu"):  # their float32 values would differ from bf16 ones cast up
        assert not isinstance(activation(name, inplace=True, feeds_output=True), FeedsOutput)


def test_float32_outputs_is_per_thread_nests_and_ends_with_its_block_even_on_an_error():
    seen = []
    with float32_outputs():
        with float32_outputs():
            assert float32_outputs_active()
        assert float32_outputs_active()
        worker = threading.Thread(target=lambda: seen.append(float32_outputs_active()))
        worker.start()
        worker.join()
    assert seen == [False] and not float32_outputs_active()
    try:
        with float32_outputs():
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert not float32_outputs_active()


def _last_called_layer(module, *inputs):
    """The last Linear / Conv2d module ``module``'s forward calls (in a float32 pass with autograd)."""
    calls = []
    hooks = [
        m.register_forward_hook(lambda m, a, out: calls.append(m))
        for m in module.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d))
    ]
    module(*inputs)
    for h in hooks:
        h.remove()
    return calls[-1]


def test_every_net_that_parameterises_a_density_ends_in_an_output_layer():
    """The layer whose outputs are a density's parameters is the last one the net calls, and it is an
    OutputLayer: the encoder and decoder bodies, MADE (IAF, MAF), the coupling conditioners (dense
    and conv) and the planar flow's hypernetwork."""
    from vaekit.flows.autoregressive import MADE
    from vaekit.flows.coupling import ConvConditioner, MLPConditioner
    from vaekit.flows.planar import Planar
    from vaekit.nets import DECODERS, ENCODERS, NetSpec
    from vaekit.nets.pixelcnn import GatedPixelCNN
    from vaekit.precision import OutputLayer

    spec = NetSpec(hidden=(4,), channels=(2,), resnet_blocks=1)
    nets = [(make((1, 4, 4), 3, spec), (torch.rand(2, 1, 4, 4),)) for make in ENCODERS.values()]
    nets += [(make(3, (2, 4, 4), spec), (torch.randn(2, 3),)) for make in DECODERS.values()]
    nets += [
        (GatedPixelCNN(1, 2, 4, 2, 3, 2), (torch.rand(2, 1, 4, 4), torch.randn(2, 2, 4, 4))),
        (MADE(4, [8], context_dim=3), (torch.randn(2, 4), torch.randn(2, 3))),
        (MLPConditioner(2, 4, 8, context_dim=3), (torch.randn(2, 2), torch.randn(2, 3))),
        (ConvConditioner(2, 4, 8, blocks=1), (torch.randn(2, 2, 4, 4),)),
    ]
    for net, inputs in nets:
        assert isinstance(_last_called_layer(net, *inputs), OutputLayer), type(net).__name__
    planar = Planar(4, context_dim=3)
    assert isinstance(planar.hyper, OutputLayer)  # its only layer: the flow's (u, w, b) per context


def test_onednn_bf16_products_rounds_the_operands_not_the_result_and_restores_the_setting():
    """Inside the block a float32 CPU product computes from bf16-rounded operands with a float32
    result (where oneDNN honours its bf16 math mode: elsewhere it computes float32); the caller's setting is
    back after the block, also after an error; disabled, the block changes nothing."""
    from vaekit.precision import onednn_bf16_products, onednn_bf16_rounding

    mk = torch.backends.mkldnn
    torch.manual_seed(0)
    a, b = torch.randn(64, 96), torch.randn(96, 32)
    exact = a @ b
    before = mk.conv.fp32_precision, mk.matmul.fp32_precision
    with onednn_bf16_products(False):
        assert (mk.conv.fp32_precision, mk.matmul.fp32_precision) == before
        torch.testing.assert_close(a @ b, exact, rtol=0, atol=0)
    with onednn_bf16_products():
        assert mk.conv.fp32_precision == mk.matmul.fp32_precision == "bf16"
        fast = a @ b
    assert fast.dtype == torch.float32
    if "matmul" in onednn_bf16_rounding():
        rounded = a.bfloat16().double() @ b.bfloat16().double()  # bf16 operands, sums in full precision
        assert (fast != exact).any()
        assert (fast.double() - rounded).abs().max() < (exact.double() - rounded).abs().max()
        assert (fast != fast.bfloat16().float()).any()  # the result itself is not rounded to bf16
    try:
        with onednn_bf16_products():
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert (mk.conv.fp32_precision, mk.matmul.fp32_precision) == before


def _reset_fp32_precision_tree() -> None:
    """Every node of torch's fp32_precision tree back to "none", the default: global, oneDNN, and
    its conv and matmul leaves (``torch.backends.mkldnn.fp32_precision = v`` would set the global)."""
    torch.backends.fp32_precision = "none"
    torch._C._set_fp32_precision_setter("mkldnn", "all", "none")
    mk = torch.backends.mkldnn
    mk.conv.fp32_precision = mk.matmul.fp32_precision = "none"


def test_onednn_bf16_products_leaves_an_inherited_setting_inherited():
    """A block opened while the oneDNN leaves follow their parents (the global setting, or oneDNN's
    own) leaves them following: a later change of the parent still reaches convolutions and
    products. A leaf with a setting of its own, other than its parent's, gets it back."""
    from vaekit.precision import onednn_bf16_products

    b, mk = torch.backends, torch.backends.mkldnn
    leaves = lambda: (mk.conv.fp32_precision, mk.matmul.fp32_precision)  # noqa: E731
    assert b.fp32_precision == mk.fp32_precision == "none" and leaves() == ("none", "none")  # the defaults
    try:
        b.fp32_precision = "tf32"  # the global only: the leaves follow it
        with onednn_bf16_products():
            assert leaves() == ("bf16", "bf16")
        assert leaves() == ("tf32", "tf32")
        b.fp32_precision = "ieee"
        assert leaves() == ("ieee", "ieee")  # not pinned at tf32
        torch._C._set_fp32_precision_setter("mkldnn", "all", "tf32")  # oneDNN's own, unlike the global
        with onednn_bf16_products():
            pass
        torch._C._set_fp32_precision_setter("mkldnn", "all", "none")
        assert leaves() == ("ieee", "ieee")  # they followed oneDNN's setting, and now the global again
        mk.matmul.fp32_precision = "tf32"  # a leaf's own setting, unlike its parent's
        with onednn_bf16_products():
            pass
        b.fp32_precision = "none"
        assert leaves() == ("none", "tf32")
    finally:
        _reset_fp32_precision_tree()


def test_onednn_bf16_rounding_says_which_products_the_math_mode_rounds_here():
    """The probe's answer is what the block does to other operands: a channels-last convolution and
    a matrix product of numbers that bf16 cannot hold give the result of their bf16-rounded operands
    where it names the kind, and the float32 result (to float32 rounding) where it does not; no kind
    is named where oneDNN has no bf16 kernels."""
    from vaekit.precision import onednn_bf16_available, onednn_bf16_products, onednn_bf16_rounding

    kinds = onednn_bf16_rounding()
    assert set(kinds) <= {"conv", "matmul"} and (onednn_bf16_available() or kinds == ())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's autocast does not change the answer
        assert onednn_bf16_rounding() == kinds
    torch.backends.mkldnn.enabled = False  # without oneDNN nothing rounds, for now only
    try:
        assert onednn_bf16_rounding() == ()
    finally:
        torch.backends.mkldnn.enabled = True
    assert onednn_bf16_rounding() == kinds
    torch.manual_seed(1)
    a, b = torch.randn(48, 80), torch.randn(80, 40)
    x = torch.randn(2, 24, 9, 11).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 24, 2, 3).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.functional.conv2d
    with onednn_bf16_products():
        got = {"matmul": a @ b, "conv": conv(x, w)}
    exact = {"matmul": (a.double() @ b.double()), "conv": conv(x.double(), w.double())}
    rounded = {
        "matmul": a.bfloat16().double() @ b.bfloat16().double(),
        "conv": conv(x.bfloat16().double(), w.bfloat16().double()),
    }
    for kind in ("matmul", "conv"):
        want = rounded[kind] if kind in kinds else exact[kind]
        other = exact[kind] if kind in kinds else rounded[kind]
        err, miss = (got[kind].double() - want).abs().max(), (got[kind].double() - other).abs().max()
        assert err < 1e-4 < miss, (kind, kinds, err, miss)
