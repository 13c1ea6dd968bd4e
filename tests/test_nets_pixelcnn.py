"""The gated PixelCNN body: masks by gradients (mask A, mask B, the gated stacks), no blind spot,
conditioning; one image repeated shares the first layer's work and keeps the numbers."""

import itertools
import math

import pytest
import torch

from vaekit.config import ModelConfig
from vaekit.distributions import rsample_and_log_prob
from vaekit.inference import importance_sampled_log_prob
from vaekit.models.vae import build_vae
from vaekit.nets import autocast
from vaekit.nets.pixelcnn import GatedPixelCNN, MaskedConv2d
from vaekit.precision import onednn_bf16_rounding


def _input_grad(f, x: torch.Tensor, c: int, i: int, j: int) -> torch.Tensor:
    """d (sum of f(x)[:, :, c, i, j]) / dx, [C, H, W], for one example; f returns [1, n, C, H, W]."""
    x = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(x)[:, :, c, i, j].sum(), x)
    return g[0].abs()


def _allowed(C: int, H: int, W: int, c: int, i: int, j: int, strict: bool) -> torch.Tensor:
    """Inputs sub-pixel (c, i, j) may see: earlier pixels; at (i, j) channels < c (or <= c if not strict)."""
    ok = torch.zeros(C, H, W, dtype=torch.bool)
    for cc, ii, jj in itertools.product(range(C), range(H), range(W)):
        ok[cc, ii, jj] = (ii, jj) < (i, j) or ((ii, jj) == (i, j) and (cc < c if strict else cc <= c))
    return ok


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masked_conv_gradients(C, mask_type):
    torch.manual_seed(0)
    conv = MaskedConv2d(C, 2 * C, 5, mask_type, data_channels=C)
    H = W = 5
    x = torch.rand(1, C, H, W)
    f = lambda t: conv(t).view(1, 2, C, H, W)  # noqa: E731 - output channel k*C + c is in group c
    for c, i, j in itertools.product(range(C), range(H), range(W)):
        g = _input_grad(f, x, c, i, j)
        ok = _allowed(C, H, W, c, i, j, strict=mask_type == "A")
        assert (g[~ok] == 0).all(), (c, i, j)
        # the 5x5 kernel reaches 2 rows up and 2 columns either side: all of those are seen
        near = ok.clone()
        for ii, jj in itertools.product(range(H), range(W)):
            if abs(ii - i) > 2 or abs(jj - j) > 2 or ii > i:
                near[:, ii, jj] = False
        assert (g[near] > 0).all(), (c, i, j)


@pytest.mark.parametrize("C,size,layers", [(1, 5, 5), (3, 4, 4)])
def test_gated_stack_is_causal_without_blind_spot(C, size, layers):
    """Output at (c, i, j) has zero gradient w.r.t. every input at or after it in raster/colour
    order, and a nonzero one w.r.t. every input before it (no blind spot: up-right included)."""
    torch.manual_seed(0)
    net = GatedPixelCNN(C, n_out=2, channels=2 * C, layers=layers, kernel=3, cond_channels=2)
    H = W = size
    x = torch.rand(1, C, H, W)
    cond = torch.randn(1, 2, H, W)
    stacks = lambda t: net.features(t, cond).view(1, 2, C, H, W)  # noqa: E731 - feature k*C + c: colour c
    for c, i, j in itertools.product(range(C), range(H), range(W)):
        ok = _allowed(C, H, W, c, i, j, strict=True)
        g = _input_grad(stacks, x, c, i, j)  # the gated stacks (no ReLU head to hide gradients)
        assert (g[~ok] == 0).all(), (c, i, j)
        assert (g[ok] > 0).all(), (c, i, j)
        g = _input_grad(lambda t: net(t, cond), x, c, i, j)  # the whole network, head included
        assert (g[~ok] == 0).all(), (c, i, j)


def test_conditioning_reaches_every_output():
    torch.manual_seed(0)
    net = GatedPixelCNN(1, 1, channels=4, layers=2, kernel=3, cond_channels=3)
    cond = torch.randn(1, 3, 4, 4, requires_grad=True)
    out = net(torch.rand(1, 1, 4, 4), cond)
    (g,) = torch.autograd.grad(out[0, 0, 0, 3, 3], cond)
    assert g[0, :, 3, 3].abs().sum() > 0


@pytest.mark.parametrize("C, conditioned", [(1, True), (3, True), (1, False)])
def test_one_image_repeated_shares_the_first_layer_and_gives_the_same_numbers(C, conditioned):
    """x one image repeated (stride 0, the K codes of importance sampling): the first layer's
    convolutions of x run once, on one image, and the output equals that of the unshared batch."""
    torch.manual_seed(0)
    net = GatedPixelCNN(C, 2, channels=6, layers=3, kernel=3, cond_channels=4 if conditioned else 0)
    x1, n = torch.rand(1, C, 5, 5), 7
    cond = torch.randn(n, 4, 5, 5) if conditioned else None
    batches = []
    net.layers[0].v_conv.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    shared = net(x1.expand(n, C, 5, 5), cond)
    assert batches == [1]
    full = net(x1.expand(n, C, 5, 5).contiguous(), cond)
    assert batches == [1, n] and shared.shape == full.shape == (n, 2, C, 5, 5)
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-6)


def test_importance_sampling_of_a_pixelvae_is_unchanged_by_the_shared_first_layer():
    """K-sample log p(x) of a PixelVAE, same seed: the importance sampler (one image repeated over its
    K codes, so the first layer is shared) gives the estimate of the unshared path within 1e-4 nats."""
    cfg = ModelConfig(
        encoder="conv", decoder="conv", channels=[4], likelihood="pixelcnn", pixelcnn_layers=2, pixelcnn_channels=4,
        pixelcnn_cond=2, latent_dim=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_vae(cfg, (1, 8, 8)).eval()
    x, k = (torch.rand(1, 1, 8, 8) > 0.5).float(), 40
    torch.manual_seed(1)
    est = importance_sampled_log_prob(model, x, k=k, batch_size=1, sample_chunk=k)["log_px"]
    torch.manual_seed(1)
    with torch.no_grad():
        z, log_q = rsample_and_log_prob(model.encoder(x), (k,))  # the sampler's draws, in its order
        log_px = model.decoder(z[:, 0]).log_prob(x.expand(k, 1, 8, 8).contiguous())
        log_w = log_px + model.prior.log_prob(z[:, 0]) - log_q[:, 0]
    ref = torch.logsumexp(log_w.double(), 0) - math.log(k)
    assert abs(est.item() - ref.item()) < 1e-4


def _random_net(C: int, kernel: int, cond_channels: int, layers: int = 3) -> GatedPixelCNN:
    net = GatedPixelCNN(C, 5, channels=2 * C * 3, layers=layers, kernel=kernel, cond_channels=cond_channels).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)  # biases too: default zero biases would hide a misplaced one
    return net


@pytest.mark.parametrize(
    "C, kernel, cond_channels, shared",
    [(1, 3, 4, True), (1, 3, 4, False), (3, 5, 2, False), (3, 3, 0, True), (1, 5, 0, False), (3, 3, 3, True)],
)
def test_the_no_grad_channels_last_pass_is_the_same_function(C, kernel, cond_channels, shared):
    """Without autograd the net runs its NHWC form (matrix products over positions, folded
    conditioning and biases, halved gates): in float64 it equals the NCHW pass to rounding,
    for one image repeated (stride 0) and for distinct images, with and without conditioning."""
    torch.manual_seed(0)
    net, n = _random_net(C, kernel, cond_channels), 4
    x = torch.rand(1 if shared else n, C, 7, 6, dtype=torch.float64)
    x = x.expand(n, C, 7, 6) if shared else x
    cond = torch.randn(n, cond_channels, 7, 6, dtype=torch.float64) if cond_channels else None
    calls = []
    net.layers[0].v_conv.register_forward_hook(lambda *a: calls.append(1))
    ref = net(x, cond)  # autograd on: the NCHW pass
    assert len(calls) == 1
    with torch.no_grad():
        fast = net(x, cond)
    assert len(calls) == 1  # the NHWC pass reads the weights, it does not call the modules
    assert fast.shape == ref.shape == (n, 5, C, 7, 6)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)


def test_the_channels_last_pass_follows_weight_updates_and_batch_changes():
    """Its buffers are reused between calls: after an in-place update, a loaded state dict, and
    for batches of other sizes in turn, it still equals the NCHW pass."""
    torch.manual_seed(1)
    net = _random_net(1, 3, 2)

    def check(n: int):
        x, cond = torch.rand(n, 1, 5, 5, dtype=torch.float64), torch.randn(n, 2, 5, 5, dtype=torch.float64)
        with torch.no_grad():
            fast = net(x, cond)
        torch.testing.assert_close(fast, net(x, cond), rtol=0, atol=1e-12)

    check(3)
    with torch.no_grad():
        net.layers[1].v_conv.weight.add_(0.5)  # an optimiser step
        net.cond.bias.mul_(-1)
    check(3)
    check(1)
    check(3)
    net.load_state_dict({k: v + 0.1 for k, v in net.state_dict().items()})
    check(2)


def test_the_channels_last_pass_keeps_one_buffer_per_role_whatever_the_batch_sizes():
    """Batches of other sizes, shared and not, replace the work buffers instead of adding to
    them: this thread's set holds one tensor per role of the pass, never one per batch size."""
    torch.manual_seed(2)
    net = _random_net(1, 3, 2, layers=3)
    roles = {"v", "h", ("h_pre", 0), ("h_pre", 1), ("cols", 0), ("cols", 1), "v_cond", "h_cond", "weights"}
    for n, shared in [(3, False), (1, False), (5, True), (2, False), (4, True), (6, False)]:
        x = torch.rand(1 if shared else n, 1, 5, 5, dtype=torch.float64).expand(n, -1, -1, -1)
        c = torch.randn(n, 2, 5, 5, dtype=torch.float64)
        with torch.no_grad():
            fast = net(x, c)
        torch.testing.assert_close(fast, net(x, c), rtol=0, atol=1e-12)
        assert {"v", "h"} <= set(net._scratch.mine()) <= roles


@pytest.mark.parametrize("shared", [False, True])
def test_under_autocast_the_channels_last_pass_runs_in_bf16_close_to_the_rounded_nchw_pass(shared):
    """bf16 autocast keeps the channels-last pass: without ``float32_outputs`` its products,
    convolutions, gates and head in bf16; inside it (the evaluators') float32 with two kinds of product
    from bf16 operands. Both stay as close to the float32 function as the NCHW pass under autocast
    does, for one image repeated and for distinct images."""
    torch.manual_seed(0)
    net = _random_net(1, 3, 4, layers=3).float()
    n = 6
    x = torch.bernoulli(torch.full((1 if shared else n, 1, 8, 7), 0.3))
    x = x.expand(n, 1, 8, 7) if shared else x
    cond = torch.randn(n, 4, 8, 7)
    calls = []
    net.layers[0].v_conv.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        ref = net(x, cond)  # float32, channels-last
        with autocast("cpu", True, outputs_float32=True):
            fast = net(x, cond)
        assert calls == []  # still the channels-last pass
        with autocast("cpu", True):
            rounded_head = net(x, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nchw = net.head(net.features(x, cond)).float().view_as(ref)
    assert fast.dtype == torch.float32
    if onednn_bf16_rounding():  # elsewhere oneDNN's bf16 math mode computes in float32
        assert (fast != ref).any()  # bf16 really ran
    assert (fast != fast.bfloat16().float()).any()  # inside float32_outputs the head's outputs are not bf16 numbers
    assert (rounded_head == rounded_head.bfloat16().float()).all()  # outside, they are
    scale = ref.abs().max()
    assert (fast - ref).abs().max() <= 2 * max((nchw - ref).abs().max(), 2**-8 * scale)
    assert (rounded_head - ref).abs().max() <= 2 * max((nchw - ref).abs().max(), 2**-8 * scale)


def test_the_evaluators_bf16_rounds_only_the_vertical_convolutions_and_horizontal_products(monkeypatch):
    """Inside ``float32_outputs`` under autocast on a CPU, the channels-last pass keeps every tensor in
    float32 and opens oneDNN's bf16 products around exactly two kinds of operation: the vertical
    convolutions and the horizontal products. The conditioning's product into the vertical stack, the
    1x1 outputs and the head run with the setting the caller had, which is back after the pass."""
    import vaekit.nets.pixelcnn as P

    torch.manual_seed(0)
    net = _random_net(1, 3, 4, layers=3).float()
    x, cond = torch.bernoulli(torch.full((5, 1, 8, 7), 0.3)), torch.randn(5, 4, 8, 7)
    mk = torch.backends.mkldnn
    seen = []

    def spy(kind, fn, setting):
        def call(*a, **kw):
            seen.append((kind, setting()))
            return fn(*a, **kw)

        return call

    conv2d, mm, addmm, addmm_ = P.F.conv2d, torch.mm, torch.addmm, torch.Tensor.addmm_
    monkeypatch.setattr(P.F, "conv2d", spy("conv", conv2d, lambda: mk.conv.fp32_precision))
    monkeypatch.setattr(torch, "mm", spy("mm", mm, lambda: mk.matmul.fp32_precision))
    monkeypatch.setattr(torch, "addmm", spy("addmm", addmm, lambda: mk.matmul.fp32_precision))
    monkeypatch.setattr(torch.Tensor, "addmm_", spy("addmm_", addmm_, lambda: mk.matmul.fp32_precision))
    before = mk.conv.fp32_precision, mk.matmul.fp32_precision
    with torch.no_grad():
        with autocast("cpu", True, outputs_float32=True):
            fast = net(x, cond)
        monkeypatch.undo()
        ref = net(x, cond)
    assert (mk.conv.fp32_precision, mk.matmul.fp32_precision) == before
    assert fast.dtype == torch.float32
    assert [s for k, s in seen if k == "conv"] == ["bf16"] * 3  # one vertical convolution per layer
    assert [s for k, s in seen if k == "mm"] == ["bf16"] * 3  # the horizontal products (conditioning folded in)
    others = [(k, s) for k, s in seen if k in ("addmm", "addmm_")]
    assert len(others) >= 3 + 2 and all(s == before[1] for _, s in others)  # conditioning, 1x1 outputs, head
    scale = ref.abs().max()
    assert (fast - ref).abs().max() <= 2**-5 * scale  # bf16 operands, float32 sums


def test_under_float32_outputs_the_channels_last_head_is_the_float32_layer():
    """Inside ``float32_outputs`` the last head layer takes the bf16 features cast up and computes in
    float32 (its output is not a bf16 number); without it, the head's output is rounded to bf16."""
    import vaekit.nets.pixelcnn as P

    torch.manual_seed(0)
    net = _random_net(1, 3, 2, layers=2).float()
    x, cond = torch.bernoulli(torch.full((3, 1, 5, 5), 0.5)), torch.randn(3, 2, 5, 5)
    outs = {}
    with torch.no_grad():
        for full in (True, False):
            outs[full] = P.GatedPixelCNN._nhwc_pass(net, x, cond, torch.bfloat16, full)
    assert outs[False].dtype == torch.bfloat16 and outs[True].dtype == torch.float32
    assert (outs[True] != outs[True].bfloat16().float()).any()  # not bf16 numbers


def test_the_channels_last_pass_sees_every_optimiser_step():
    """Fused AdamW and ``.data`` writes change parameters without bumping their versions: the
    no-grad pass must still use the current weights (the epoch-end evaluation follows training
    steps in the same process)."""
    torch.manual_seed(0)
    net = GatedPixelCNN(1, 1, channels=8, layers=2, kernel=3, cond_channels=2)
    x, c = torch.rand(4, 1, 6, 6), torch.randn(4, 2, 6, 6)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, fused=True)
    for _ in range(3):
        with torch.no_grad():
            fast = net(x, c)
        ref = net(x, c)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
        ref.square().mean().backward()
        opt.step()
        opt.zero_grad()
    net.layers[0].v_conv.weight.data.add_(1.0)
    with torch.no_grad():
        fast = net(x, c)
    torch.testing.assert_close(fast, net(x, c), rtol=1e-5, atol=1e-5)


def test_the_channels_last_pass_edge_cases():
    """Narrow images under wide kernels, a conditioning map of batch 1 broadcast over the batch,
    a call under inference mode followed by one under no_grad, another thread, and copies of the
    module, which start without the original's buffers."""
    torch.manual_seed(0)
    for kernel, (H, W) in [(9, (4, 3)), (13, (3, 4)), (5, (1, 1))]:
        net = _random_net(1, kernel, 2, layers=2)
        x, c = torch.rand(2, 1, H, W, dtype=torch.float64), torch.randn(2, 2, H, W, dtype=torch.float64)
        with torch.no_grad():
            fast = net(x, c)
        torch.testing.assert_close(fast, net(x, c), rtol=0, atol=1e-12)
    net = _random_net(1, 3, 2)
    x, c1 = torch.rand(3, 1, 5, 5, dtype=torch.float64), torch.randn(1, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        fast = net(x, c1)
    torch.testing.assert_close(fast, net(x, c1), rtol=0, atol=1e-12)
    c = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    with torch.inference_mode():
        first = net(x, c)
    with torch.no_grad():
        second = net(x, c)
        copy_ = __import__("copy").deepcopy(net)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert len(copy_._scratch) == 0


def test_threads_running_the_channels_last_pass_at_once_never_share_a_buffer():
    """Two threads evaluate the same net at once, each on its own inputs (grad mode is per
    thread, so each disables it itself): every output equals its own reference."""
    import threading

    torch.manual_seed(0)
    net = GatedPixelCNN(1, 1, channels=8, layers=4, kernel=3, cond_channels=2).double()
    inputs = [
        (torch.rand(3, 1, 6, 6, dtype=torch.float64), torch.randn(3, 2, 6, 6, dtype=torch.float64)) for _ in range(2)
    ]
    refs = [net(x, c).detach() for x, c in inputs]  # the NCHW pass
    wrong = []

    def work(i: int):
        x, c = inputs[i]
        with torch.no_grad():
            for _ in range(300):
                if not torch.allclose(net(x, c), refs[i], rtol=0, atol=1e-12):
                    wrong.append(i)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert wrong == [] and len(net._scratch) <= 2
    with torch.no_grad():
        net(*inputs[0])
    assert list(net._scratch) == [threading.get_ident()]  # a new thread's first call drops the others' sets


def test_prepared_weights_live_for_one_fixed_parameters_scope(monkeypatch):
    """Inside ``fixed_parameters()`` (the importance sampler's promise that no weight changes) the
    channels-last pass prepares its weights once; outside it, on every call; a new scope after an
    update sees the new weights. The scope belongs to the thread that opened it."""
    import threading

    import vaekit.nets.pixelcnn as P
    from vaekit.nets import fixed_parameters

    built = []
    real = P._half_gate_weights
    monkeypatch.setattr(P, "_half_gate_weights", lambda *a, **k: built.append(1) or real(*a, **k))
    torch.manual_seed(0)
    net = _random_net(1, 3, 2, layers=2)
    x, c = torch.rand(3, 1, 5, 5, dtype=torch.float64), torch.randn(3, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        net(x, c), net(x, c)
        assert len(built) == 4  # 2 layers x 2 calls
        with fixed_parameters():
            with fixed_parameters():  # nested: the same scope
                net(x, c)
            net(x, c)
            seen = []
            worker = threading.Thread(target=lambda: seen.append(P.fixed_parameters_scope()))
            worker.start()
            worker.join()
            assert seen == [None]
        assert len(built) == 6
        net.layers[0].v_conv.weight.data.add_(0.5)  # no version bump
        with fixed_parameters():
            fast = net(x, c)
    assert len(built) == 8
    torch.testing.assert_close(fast, net(x, c), rtol=0, atol=1e-12)
