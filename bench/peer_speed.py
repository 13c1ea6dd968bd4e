"""vaekit's flows and conv VAE against the same models built in peer libraries: training speed.

Side by side in ONE process, on the same CPU threads, batch size and real MNIST batches
(``../shared/datasets/mnist`` via ``bench.common.data_dir``), interleaved rounds (vaekit, peer,
vaekit, peer, ...) so that a busy shared machine slows both alike; each figure is the median over
the rounds of the mean step time within a round. A training step is a whole optimisation step:
forward, backward, gradient clipping where the preset clips, AdamW (fused, the same optimiser on
both sides). vaekit's step is ``vaekit.train.train_step``, the loop's own.

Comparisons (target: vaekit at least 1.5x the peer's images/s):

- ``realnvp``: ``realnvp-mnist`` (Dinh et al. 2016; 2 scales, 3 checkerboard + 3 channel couplings,
  4 checkerboard on the last scale, ResNet conditioners of 64 channels and 4 blocks, logit input)
  against normflows 1.7.3's ``MultiscaleFlow`` of ``MaskedAffineFlow`` (checkerboard) and
  ``AffineCouplingBlock`` (channel split) with the same conditioner nets (normflows ships no conv
  ResNet, so the conditioner is written out here as plain torch layers of the same shapes).
- ``glow``: ``glow-mnist`` (L=2, K=8, 128 hidden channels) against normflows' ``GlowBlock`` in a
  ``MultiscaleFlow``.
- ``nice``: ``nice-mnist`` (4 additive couplings with 5x1000 ReLU MLPs, diagonal scaling, logistic
  base) against normflows' shift-only ``AffineCouplingBlock`` on alternating halves with
  ``nets.MLP`` and ``AffineConstFlow`` (scale only).
- ``conv``: ``conv-mnist`` against Pythae 0.1.2's ``VAE`` with the MNIST conv nets it ships
  (``pythae.models.nn.benchmarks.mnist``: ``Encoder_Conv_VAE_MNIST``, ``Decoder_Conv_AE_MNIST``,
  4x4 convs of 128-1024 channels with batch norm: a far larger net, so FLOPs per image are printed
  too), and against Pythae's ``VAE`` wrapped around vaekit's own conv nets (equal nets: the
  framework's overhead alone).

Where the peer's model differs from vaekit's (parameter counts, a learned vs fixed base, the
conditioner of channel couplings seeing half the channels), the table's notes say so.

Each peer is set against vaekit in the same precision. Where a preset trains its nets in bf16 on
this CPU (``train.amp=auto`` on a CPU with AMX or AVX512-BF16: ``conv-mnist``), vaekit's bf16 side is timed too,
and an "as shipped" line sets it against the float32 peers: neither peer autocasts on a CPU
(Pythae's ``amp`` is ``torch.autocast("cuda")``; normflows has no such switch).

    .venv-peers/bin/python bench/peer_speed.py --threads 1              # all four, 3 rounds
    .venv-peers/bin/python bench/peer_speed.py --threads 1 --only glow nice
    .venv-peers/bin/python bench/peer_speed.py --threads 1 --channels-last  # vaekit in NHWC
    .venv-peers/bin/python bench/peer_speed.py --threads 1 --amp  # also both sides in bf16
    .venv-peers/bin/python bench/peer_speed.py --only nice --warmup 1000  # timed after 1,000 steps per side
    .venv-peers/bin/python bench/peer_speed.py --quick                  # seconds: smoke run
    python bench/peer_speed.py --quick --no-peers                       # vaekit's half only

The peers live in their own venv (``make peers``, pins in ``bench/peers.txt``); without them the
script says so in one line and exits 2 (``--no-peers`` times vaekit alone).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.common import cpu_name, data_dir  # noqa: E402
from vaekit.config import get_preset  # noqa: E402
from vaekit.data import binarize_dynamic, load_dataset  # noqa: E402
from vaekit.models import binary_data, build_model  # noqa: E402
from vaekit.nets import resolve_amp, to_channels_last  # noqa: E402
from vaekit.train import batch_preparer, build_learner, train_step  # noqa: E402

TARGET = 1.5
COMPARISONS = ("realnvp", "glow", "nice", "conv")
PRESET = {"realnvp": "realnvp-mnist", "glow": "glow-mnist", "nice": "nice-mnist", "conv": "conv-mnist"}


def _peers():
    """(normflows, pythae) or a one-line reason why not."""
    try:
        import normflows
        import pythae  # noqa: F401
    except ImportError as e:
        return (
            None,
            f"peer_speed: the peer libraries are not importable ({e}); run `make peers` and use .venv-peers/bin/python",
        )
    return (normflows, pythae), None


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --- the peer models -------------------------------------------------------------------------
class ResNetConditioner(nn.Module):
    """The conditioner of vaekit's RealNVP couplings as plain torch layers: conv3x3, residual blocks
    (ReLU, conv3x3, ReLU, conv3x3), ReLU, conv1x1, ReLU, zero-initialised conv3x3."""

    def __init__(self, c_in: int, c_out: int, hidden: int, blocks: int):
        super().__init__()
        self.first = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1)
            )
            for _ in range(blocks)
        )
        last = nn.Conv2d(hidden, c_out, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last)

    def forward(self, x):
        h = self.first(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


class _SharedST(nn.Module):
    """One conditioner net giving both (s, t) of normflows' ``MaskedAffineFlow``, which calls its
    ``s`` and ``t`` modules one after the other on the same masked input: the net runs once."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self._memo = net, None

    def half(self, x, i: int):
        if self._memo is None or self._memo[0] is not x:
            self._memo = (x, self.net(x).chunk(2, dim=1))
        out = self._memo[1][i]
        if i == 1:
            self._memo = None
        return out


class _Half(nn.Module):
    def __init__(self, shared: _SharedST, i: int):
        super().__init__()
        self.shared, self.i = shared, i

    def forward(self, x):
        return self.shared.half(x, self.i)


def _checkerboard(shape, parity: int) -> torch.Tensor:
    c, h, w = shape
    board = (torch.arange(h)[:, None] + torch.arange(w)[None, :] + parity) % 2 == 0
    return board.float().expand(c, h, w).clone()


def peer_realnvp(nf, shape=(1, 28, 28), steps=3, hidden=64, blocks=4, alpha=0.05):
    """RealNVP in normflows, layer for layer as vaekit's ``realnvp`` (lists in generative order)."""
    c, h, w = shape

    def masked(sh, parity):
        shared = _SharedST(ResNetConditioner(sh[0], 2 * sh[0], hidden, blocks))
        return nf.flows.MaskedAffineFlow(_checkerboard(sh, parity), t=_Half(shared, 1), s=_Half(shared, 0))

    def channel(ch, parity):
        net = ResNetConditioner(ch // 2, ch, hidden, blocks)
        return nf.flows.AffineCouplingBlock(
            net, scale=True, scale_map="exp", split_mode=("channel", "channel_inv")[parity]
        )

    deep_shape = (2 * c, h // 2, w // 2)
    deep = [masked(deep_shape, j % 2) for j in range(steps + 1)][::-1]
    top = [masked((c, h, w), j % 2) for j in range(steps)] + [nf.flows.Squeeze()]
    top += [channel(4 * c, j % 2) for j in range(steps)]
    q0 = [
        nf.distributions.DiagGaussian(deep_shape, trainable=False),
        nf.distributions.DiagGaussian(deep_shape, trainable=False),
    ]
    return nf.MultiscaleFlow(
        q0, [deep, top[::-1]], [nf.flows.Merge()], transform=nf.transforms.Logit(alpha), class_cond=False
    )


def peer_glow(nf, shape=(1, 28, 28), levels=2, steps=8, hidden=128):
    """Glow in normflows (its own multiscale recipe), L=levels, K=steps; N(0, I) on every level."""
    c, h, w = shape
    flows, merges, q0 = [], [], []
    for i in range(levels):
        ch = c * 2 ** (levels + 1 - i)
        blocks = [
            nf.flows.GlowBlock(ch, hidden, split_mode="channel", scale=True, scale_map="sigmoid") for _ in range(steps)
        ]
        flows.append(blocks + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2**levels, w // 2**levels)
        q0.append(nf.distributions.DiagGaussian(latent, trainable=False))
    return nf.MultiscaleFlow(q0, flows, merges, transform=nf.transforms.Shift(-0.5), class_cond=False)


def peer_nice(nf, dim=784, couplings=4, hidden=1000, n_hidden=5):
    """NICE in normflows: shift-only ``AffineCouplingBlock`` on its alternating ("checkerboard")
    split of the vector with ``nets.MLP`` (D/2 in, D/2 out, as vaekit's), a scale-only
    ``AffineConstFlow``, and a logistic base (normflows has none: written out here)."""

    class LogisticBase(nf.distributions.BaseDistribution):
        def __init__(self):
            super().__init__()

        def log_prob(self, z):
            return (-nn.functional.softplus(z) - nn.functional.softplus(-z)).sum(1)

    layers = [nf.flows.AffineConstFlow((dim,), scale=True, shift=False)]
    for i in reversed(range(couplings)):
        t = nf.nets.MLP([dim // 2] + [hidden] * n_hidden + [dim // 2], init_zeros=True)
        layers.append(
            nf.flows.AffineCouplingBlock(t, scale=False, split_mode=("checkerboard", "checkerboard_inv")[i % 2])
        )
    return nf.NormalizingFlow(LogisticBase(), layers)


def pythae_vae(pythae_mods, latent_dim: int, own_nets: bool):
    """Pythae's VAE with Bernoulli (BCE) reconstruction; its MNIST conv nets, or vaekit's conv nets."""
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.models.nn.benchmarks.mnist import Decoder_Conv_AE_MNIST, Encoder_Conv_VAE_MNIST

    from vaekit.nets.conv import ConvDecoder, ConvEncoder

    cfg = VAEConfig(input_dim=(1, 28, 28), latent_dim=latent_dim, reconstruction_loss="bce")
    if not own_nets:
        return VAE(cfg, encoder=Encoder_Conv_VAE_MNIST(cfg), decoder=Decoder_Conv_AE_MNIST(cfg))

    class Enc(BaseEncoder):
        def __init__(self):
            BaseEncoder.__init__(self)
            self.body = ConvEncoder((1, 28, 28), 2 * latent_dim, [32, 64])

        def forward(self, x):
            mu, log_var = self.body(x).chunk(2, dim=1)
            return ModelOutput(embedding=mu, log_covariance=log_var)

    class Dec(BaseDecoder):
        def __init__(self):
            BaseDecoder.__init__(self)
            self.body = ConvDecoder(latent_dim, (1, 28, 28), [32, 64])

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.body(z)))

    return VAE(cfg, encoder=Enc(), decoder=Dec())


# --- the sides of a comparison ---------------------------------------------------------------
@dataclass
class Side:
    """One model under test: ``step(x)`` runs one optimisation step on a batch of k/255 images."""

    name: str
    model: nn.Module
    step: Callable[[torch.Tensor], None]
    note: str = ""
    amp: bool = False  # bf16 autocast: its speed is set against vaekit's side of the same precision
    flops: float = float("nan")  # per image per step, FlopCounterMode (matmuls and convolutions)
    times: list[float] | None = None


def vaekit_side(preset: str, batch: int, channels_last: bool = False, amp: bool | None = None) -> Side:
    """The preset's model, trained by ``vaekit.train.train_step`` as ``vaekit train`` runs it;
    ``channels_last`` turns the preset's NHWC layout on (``--set channels_last=true``); ``amp`` sets
    its bf16 autocast (``--set amp=true|false``), None keeps the preset's, resolved on this CPU."""
    cfg = get_preset(preset)
    cfg.train.batch_size = batch
    cfg.model.channels_last = cfg.model.channels_last or channels_last
    device = torch.device("cpu")
    cfg.train.amp = resolve_amp(cfg.train.amp if amp is None else amp, device)
    model = build_model(cfg, (1, 28, 28))
    to_channels_last(model, cfg.model.channels_last)
    learner = build_learner(model, cfg.train, device)
    prepare = batch_preparer(binarize_dynamic if binary_data(cfg.model) else None, cfg.model.channels_last, device)
    count = [0]

    def step(x):
        train_step(learner, [(0, x)], x.shape[0], count[0], cfg.train.lr, cfg.train, prepare)
        count[0] += 1

    bf16 = "" if not cfg.train.amp else " bf16 hidden" if cfg.train.amp_outputs_float32 else " bf16"
    name = f"vaekit {preset}" + (" NHWC" if cfg.model.channels_last else "") + bf16
    return Side(name, model, step, amp=cfg.train.amp)


def shipped_amp(which: str) -> bool:
    """Whether comparison ``which``'s preset runs its nets in bf16 on this CPU (``train.amp`` resolved)."""
    return resolve_amp(get_preset(PRESET[which]).train.amp, "cpu")


def _optimiser(model: nn.Module, preset: str):
    tc = get_preset(preset).train
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, eps=tc.adam_eps, weight_decay=tc.weight_decay, fused=True)
    return opt, (tc.grad_clip if tc.grad_clip > 0 else None)


def flow_peer_side(
    name: str, model: nn.Module, log_prob: Callable, preset: str, prep: Callable, note: str, amp: bool = False
) -> Side:
    """A normflows model trained on dequantised batches: -mean log p(y), clip as the preset does, AdamW;
    with ``amp``, the forward under ``torch.autocast`` in bf16 (the peer's own ops, cast as torch casts them)."""
    opt, clip = _optimiser(model, preset)

    def step(x):
        y = prep((x * 255 + torch.rand_like(x)) / 256)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = -log_prob(y).float().mean()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    return Side(name + (" bf16 autocast" if amp else ""), model, step, note, amp)


def pythae_side(name: str, model: nn.Module, note: str, amp: bool = False) -> Side:
    """Pythae's VAE on dynamically binarised batches: its own loss (BCE + KL, batch mean), AdamW;
    with ``amp``, the forward under ``torch.autocast`` in bf16."""
    opt, _ = _optimiser(model, "conv-mnist")

    def step(x):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model({"data": binarize_dynamic(x)}).loss.float()
        loss.backward()
        opt.step()

    return Side(name + (" bf16 autocast" if amp else ""), model, step, note, amp)


def build_sides(which: str, batch: int, peers, channels_last: bool = False, amp: bool = False) -> list[Side]:
    """[vaekit's sides, the peer sides...] of one comparison (vaekit's alone when ``peers`` is None);
    with ``amp``, vaekit and each peer (but Pythae's own nets) twice: in float32 and in bf16, each
    timed against vaekit in the same precision. vaekit runs in bf16 too where its preset does here
    (:func:`shipped_amp`)."""
    sides = [vaekit_side(PRESET[which], batch, channels_last, amp=False)]
    if amp or shipped_amp(which):
        sides.append(vaekit_side(PRESET[which], batch, channels_last, amp=True))
    if peers is None:
        return sides
    nf, pythae_mods = peers
    for peer_amp in (False, True) if amp else (False,):
        if which == "realnvp":
            m = peer_realnvp(nf)
            note = "same layers and conditioner nets; normflows' exp scale is not soft-clamped"
            lp = lambda y, m=m: m.log_prob(y, None)  # noqa: E731
            sides.append(flow_peer_side("normflows RealNVP", m, lp, "realnvp-mnist", lambda y: y, note, peer_amp))
        elif which == "glow":
            m = peer_glow(nf)
            note = "GlowBlock with the same coupling nets (3x3, 1x1, 3x3); N(0, I) on both levels, as vaekit's"
            lp = lambda y, m=m: m.log_prob(y, None)  # noqa: E731
            sides.append(flow_peer_side("normflows Glow", m, lp, "glow-mnist", lambda y: y, note, peer_amp))
        elif which == "nice":
            m = peer_nice(nf)
            note = "MLPs from one half of the pixels (392) to the other, as vaekit's"
            prep = lambda y: y.flatten(1) - 0.5  # noqa: E731
            sides.append(flow_peer_side("normflows NICE", m, m.log_prob, "nice-mnist", prep, note, peer_amp))
    if which == "conv":
        latent = get_preset("conv-mnist").model.latent_dim
        note = "Pythae's MNIST benchmark nets: 4x4 convs 128-256-512-1024 + batch norm, transposed-conv decoder"
        sides.append(pythae_side("Pythae VAE, its MNIST conv nets", pythae_vae(pythae_mods, latent, False), note))
        note = "vaekit's conv nets (32, 64) inside Pythae's VAE: the same nets, Pythae's loss and layout"
        for peer_amp in (False, True) if amp else (False,):
            own = pythae_vae(pythae_mods, latent, True)
            sides.append(pythae_side("Pythae VAE, vaekit's conv nets", own, note, peer_amp))
    return sides


def flops_per_image(side: Side, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        side.step(x)
    return counter.get_total_flops() / x.shape[0]


def run_comparison(which: str, images: torch.Tensor, args, peers) -> list[Side]:
    """Interleaved rounds: every side runs ``steps`` steps per round, in turn; warm-up steps first
    (ActNorm's data-dependent initialisation, the allocator, oneDNN's kernel choice)."""
    torch.manual_seed(0)
    sides = build_sides(which, args.batch_size, peers, args.channels_last, args.amp)
    steps = args.steps or {"realnvp": 1, "glow": 2, "nice": 3, "conv": 3}[which]
    batches = images.split(args.batch_size)[: max(1, len(images) // args.batch_size)]
    k = 0
    for side in sides:
        side.flops = flops_per_image(side, batches[0])  # a real step: the first warm-up step
        for _ in range(args.warmup - 1):
            side.step(batches[k % len(batches)])
            k += 1
        side.times = []
    for _ in range(args.rounds):
        for side in sides:
            t0 = time.perf_counter()
            for _ in range(steps):
                side.step(batches[k % len(batches)])
                k += 1
            side.times.append((time.perf_counter() - t0) / steps)
    return sides


def report(which: str, sides: list[Side], batch: int) -> None:
    """The table of one comparison: each peer's step time over vaekit's in the same precision."""
    ours = {s.amp: statistics.median(s.times) for s in sides if s.name.startswith("vaekit")}
    print(f"\n## {which}: batch {batch}, {len(sides[0].times)} interleaved rounds, median")
    print(f"{'model':44s} {'params':>10s} {'MFLOP/img':>10s} {'ms/step':>9s} {'img/s':>8s} {'vaekit/peer':>12s}")
    peers = [s for s in sides if not s.name.startswith("vaekit")]
    for side in sides:
        ms = statistics.median(side.times)
        ratio = "" if side not in peers else f"{ms / ours[side.amp]:11.2f}x"
        print(
            f"{side.name:44s} {n_params(side.model):10,d} {side.flops / 1e6:10.1f} {ms * 1e3:9.1f} {batch / ms:8.1f} {ratio:>12s}"
        )
    for side in peers:
        verdict = "meets" if statistics.median(side.times) / ours[side.amp] >= TARGET else "below"
        precision = "bf16 against bf16" if side.amp else "float32 against float32"
        print(f"  {side.name}: {side.note}; {precision}: vaekit {verdict} the {TARGET}x target")
    if shipped_amp(which):  # the preset as `vaekit train` runs it here, against the peer as it runs on a CPU
        for side in (s for s in peers if not s.amp):
            ratio = statistics.median(side.times) / ours[True]
            verdict = "meets" if ratio >= TARGET else "below"
            what = "its hidden layers" if get_preset(PRESET[which]).train.amp_outputs_float32 else "its nets"
            print(
                f"  as shipped: {PRESET[which]} trains {what} in bf16 on this CPU (train.amp=auto), {side.name} in float32 "
                f"(no CPU autocast of its own): {ratio:.2f}x, vaekit {verdict} the {TARGET}x target"
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=COMPARISONS, default=list(COMPARISONS))
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads (both sides)")
    p.add_argument("--batch-size", type=int, default=None, help="default: each preset's own (64 or 128)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (>= 3 for a figure)")
    p.add_argument("--steps", type=int, default=None, help="steps per side per round (default: by model cost)")
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="warm-up training steps per side (the first counts FLOPs); 1000: the state a run spends its steps in",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: batch 4, one step per round")
    p.add_argument("--channels-last", action="store_true", help="vaekit's side with channels_last=true")
    p.add_argument(
        "--amp",
        action="store_true",
        help="also vaekit and each peer under bf16 autocast (vaekit keeps log-dets and likelihoods float32); "
        "each peer is set against vaekit in the same precision",
    )
    p.add_argument("--no-peers", action="store_true", help="time vaekit's side alone (no peer libraries needed)")
    args = p.parse_args(argv)
    peers = None
    if not args.no_peers:
        peers, why = _peers()
        if peers is None:
            print(why)
            return 2
    if args.quick:
        args.batch_size, args.steps, args.warmup = args.batch_size or 4, 1, 1
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="torch.lu is deprecated")  # inside normflows' 1x1 convolution
    images = load_dataset("mnist", "train", data_dir=data_dir("mnist")).x[:2048]
    print("# peer_speed: training steps, vaekit against peer libraries, in one process")
    print(f"# torch {torch.__version__}, {args.threads} CPU threads, {cpu_name()}, {time.strftime('%Y-%m-%d %H:%M')},"
          f" real MNIST (first {len(images)} training images)")  # fmt: skip
    for which in args.only:
        batch = args.batch_size or get_preset(PRESET[which]).train.batch_size
        args_b = argparse.Namespace(**{**vars(args), "batch_size": batch})
        report(which, run_comparison(which, images, args_b, peers), batch)
    print(f"\n# vaekit/peer = peer ms per step / vaekit ms per step (images/s ratio); target >= {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
