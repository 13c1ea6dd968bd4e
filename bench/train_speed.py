"""Training speed and quality: vaekit `dense-mnist` against the pytorch/examples VAE recipe.

Both sides train the same model (784-400-20-400-784 ReLU MLP, Bernoulli decoder, Adam 1e-3,
batch 128) for the same number of epochs on full MNIST (60,000 images, dynamically binarised
every batch), side by side in one run, on the same threads:

- vaekit: `vaekit.train.train` (the whole training set one tensor, batches are index slices,
  fused AdamW with weight decay 0, i.e. Adam);
- reference: the pytorch/examples `vae/main.py` recipe re-implemented here: its VAE class and
  loss (BCE summed + analytic KLD), fed by a per-item `Dataset` that, like torchvision's MNIST,
  turns each uint8 image into a PIL image and back into a float tensor, batched by a
  `DataLoader(shuffle=True)` (num_workers=0, as the recipe uses on CPU), and torch's default
  (per-tensor) Adam, as the recipe constructs it.

Reported: training images/s (ratio vaekit/reference) and test -ELBO (nats, one-sample ELBO
with analytic KL, averaged over the 10,000 test images statically binarised with one seed).

    python bench/train_speed.py --epochs 3

`--burda`: Burda et al.'s one-layer net (`iwae-1l`: 784-200-200-50 tanh, Bernoulli, Adam eps 1e-4)
against a bare eager PyTorch loop of the same net, at the paper's batch of 20 and at 100, on the same
full MNIST training tensor, in interleaved rounds (the median is reported; the machine is shared):

- bare loop: batches sliced from one tensor, `torch.bernoulli` binarisation, `nn.Linear`/`nn.Tanh`
  modules, analytic KL, autograd, `torch.optim.Adam(eps=1e-4)` as constructed by default; no
  DataLoader, no logging, no checkpoints;
- vaekit: `vaekit.train.train` with its bookkeeping (metric lines, a checkpoint at the end, NaN
  checks), the hand-derived gradient (`train.fused`, the default) and, for reference, autograd
  (`fused=false`).

    python bench/train_speed.py --burda --steps 3000 --rounds 3

`--burda --layers 2`: the same for the two-stochastic-layer net (`iwae-2l`, its ELBO with the
Monte-Carlo KL), against a bare eager loop of that net written the same way.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vaekit  # noqa: E402
from bench.common import Timer, data_dir, header, parser  # noqa: E402
from vaekit.config import build_config  # noqa: E402
from vaekit.data import binarize_dynamic, binarize_static, load_dataset  # noqa: E402
from vaekit.evaluate import evaluate  # noqa: E402
from vaekit.train import train  # noqa: E402

LOG_2PI = math.log(2 * math.pi)


class ReferenceVAE(nn.Module):
    """The pytorch/examples VAE: fc1 784-400, fc21/fc22 400-20, fc3 20-400, fc4 400-784."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def reference_loss(recon_x, x, mu, logvar, reduction="sum"):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="none").sum(1)
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), 1)
    per_example = bce + kld
    return per_example.sum() if reduction == "sum" else per_example


class TorchvisionStyleMNIST(Dataset):
    """Per-item access as torchvision.datasets.MNIST does: uint8 -> PIL image -> ToTensor."""

    def __init__(self, images_uint8: np.ndarray):
        self.images = images_uint8  # [N, 28, 28] uint8

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L")
        t = torch.from_numpy(np.array(img, dtype=np.uint8)).float().div(255).unsqueeze(0)
        return t, 0


def train_reference(images_uint8, epochs, seed):
    torch.manual_seed(seed)
    model = ReferenceVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TorchvisionStyleMNIST(images_uint8), batch_size=128, shuffle=True)
    model.train()
    for _ in range(epochs):
        for x, _ in loader:
            x = torch.bernoulli(x)  # dynamic binarisation, the same protocol as vaekit's
            opt.zero_grad()
            recon, mu, logvar = model(x)
            loss = reference_loss(recon, x, mu, logvar)
            loss.backward()
            opt.step()
    return model


@torch.no_grad()
def reference_test_nelbo(model, x_test):
    model.eval()
    torch.manual_seed(0)
    out = []
    for i in range(0, x_test.shape[0], 1000):
        xb = x_test[i : i + 1000]
        recon, mu, logvar = model(xb)
        out.append(reference_loss(recon.clamp(1e-7, 1 - 1e-7), xb, mu, logvar, reduction="none"))
    return torch.cat(out).mean().item()


def _bare_adam(nets: list[nn.Module], neg_elbo, x: torch.Tensor, batch: int, steps: int) -> float:
    """The bare eager loop: batches sliced from one tensor, ``torch.bernoulli`` binarisation, the
    mean of ``neg_elbo(xb)`` [B] by autograd, ``torch.optim.Adam(eps=1e-4)``; returns images/s."""
    opt = torch.optim.Adam([p for net in nets for p in net.parameters()], lr=1e-3, eps=1e-4)
    xf, n = x.view(x.shape[0], 784), x.shape[0]
    with Timer() as t:
        for s in range(steps):
            i = (s * batch) % (n - batch + 1)
            loss = neg_elbo(torch.bernoulli(xf[i : i + batch])).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return steps * batch / t.seconds


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_out)
    )


def _log_normal(z: torch.Tensor, mu: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(lv)) summed over the last dimension."""
    return -0.5 * (lv + (z - mu) ** 2 * torch.exp(-lv) + LOG_2PI).sum(-1)


def bare_loop(x: torch.Tensor, batch: int, steps: int, seed: int) -> float:
    """The bare eager loop of Burda et al.'s one-layer VAE (analytic KL); returns images/s."""
    torch.manual_seed(seed)
    enc, dec = _mlp(784, 200, 100), _mlp(50, 200, 784)

    def neg_elbo(xb):
        mu, logvar = enc(xb).chunk(2, -1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        rec = F.binary_cross_entropy_with_logits(dec(z), xb, reduction="none").sum(1)
        return rec - 0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)

    return _bare_adam([enc, dec], neg_elbo, x, batch, steps)


def two_layer_neg_elbo(enc: nn.Module, up: nn.Module, down: nn.Module, dec: nn.Module):
    """xb [B, 784] -> -ELBO [B] of the two-stochastic-layer VAE with these MLPs (q(z1|x), q(z2|z1),
    p(z1|z2), p(x|z1)): one reparameterised sample, the Monte-Carlo KL, as ``iwae-2l`` trains it."""

    def neg_elbo(xb):
        mu1, lv1 = enc(xb).chunk(2, -1)
        z1 = mu1 + torch.randn_like(mu1) * torch.exp(0.5 * lv1)
        m2, lq2 = up(z1).chunk(2, -1)
        z2 = m2 + torch.randn_like(m2) * torch.exp(0.5 * lq2)
        pm, plv = down(z2).chunk(2, -1)
        log_px = -F.binary_cross_entropy_with_logits(dec(z1), xb, reduction="none").sum(1)
        log_p = _log_normal(z1, pm, plv) - 0.5 * (z2 * z2 + LOG_2PI).sum(1)
        return -(log_px + log_p - _log_normal(z1, mu1, lv1) - _log_normal(z2, m2, lq2))

    return neg_elbo


def bare_loop_2l(x: torch.Tensor, batch: int, steps: int, seed: int) -> float:
    """The bare eager loop of Burda et al.'s two-stochastic-layer VAE (x -> 200 -> 200 -> z1 (100)
    -> 100 -> 100 -> z2 (50); z2 -> 100 -> 100 -> z1 -> 200 -> 200 -> x; tanh): ``two_layer_neg_elbo``;
    returns images/s."""
    torch.manual_seed(seed)
    nets = [_mlp(784, 200, 200), _mlp(100, 100, 100), _mlp(50, 100, 200), _mlp(100, 200, 784)]
    return _bare_adam(nets, two_layer_neg_elbo(*nets), x, batch, steps)


def vaekit_loop(
    x: torch.Tensor, batch: int, steps: int, seed: int, fused: bool, device: str, preset: str = "iwae-1l"
) -> float:
    """`vaekit.train.train` of ``preset`` (iwae-1l or iwae-2l) for ``steps`` steps; returns images/s."""
    over = {
        "batch_size": batch,
        "adam_eps": 1e-4,
        "seed": seed,
        "eval_k": 0,
        "tensorboard": False,
        "fused": fused,
        "ckpt_every": 10**9,
        "device": device,
    }
    cfg = build_config(preset, overrides=over)
    with tempfile.TemporaryDirectory() as tmp, Timer() as t:
        train(cfg, Path(tmp) / "run", x, None, transform=binarize_dynamic, progress=False, max_steps=steps)
    return steps * batch / t.seconds


def burda(args) -> None:
    net = {
        1: "iwae-1l (784-200-200-50 tanh, Bernoulli)",
        2: "iwae-2l (784-200-200-100 (z1), 100-100-50 (z2), tanh, Bernoulli; ELBO, Monte-Carlo KL)",
    }[args.layers]
    header(
        f"train_speed --burda: {net} vs a bare eager loop, full MNIST "
        f"(60,000 train images, dynamically binarised), {args.steps} steps per run, {args.rounds} interleaved rounds",
        args,
    )
    x = load_dataset("mnist", "train", data_dir=data_dir("mnist")).x
    preset, bare = ("iwae-1l", bare_loop) if args.layers == 1 else ("iwae-2l", bare_loop_2l)
    sides = {
        "bare eager loop (nn.Linear, autograd, Adam)": lambda b, n: bare(x, b, n, args.seed),
        "vaekit train, hand-derived gradient": lambda b, n: vaekit_loop(x, b, n, args.seed, True, args.device, preset),
        "vaekit train, autograd (fused=false)": lambda b, n: vaekit_loop(
            x, b, n, args.seed, False, args.device, preset
        ),
    }
    for batch in args.batch:
        for f in sides.values():  # warm-up: allocator, kernels, the first checkpoint write
            f(batch, max(1, args.steps // 10))
        got = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, f in sides.items():
                got[name].append(f(batch, args.steps))
        med = {name: statistics.median(v) for name, v in got.items()}
        ref = med["bare eager loop (nn.Linear, autograd, Adam)"]
        print(f"batch {batch}: images/s, median of {args.rounds} (all rounds)")
        for name, v in got.items():
            rounds = ", ".join(f"{r:.0f}" for r in v)
            print(f"  {name:<46} {med[name]:9.0f}  ({rounds})  {med[name] / ref:5.2f}x bare")
        target = 2.5 if batch <= 20 else 2.0
        print(
            f"  ratio vaekit (hand-derived) / bare loop: {med['vaekit train, hand-derived gradient'] / ref:.2f}x (goal {target}x)"
        )


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--burda", action="store_true", help="iwae-1l against a bare eager loop at small batches")
    p.add_argument("--batch", type=int, nargs="+", default=[20, 100], help="--burda: batch sizes")
    p.add_argument("--steps", type=int, default=3000, help="--burda: steps per run")
    p.add_argument("--rounds", type=int, default=3, help="--burda: interleaved rounds")
    p.add_argument(
        "--layers", type=int, choices=(1, 2), default=1, help="--burda: stochastic layers (iwae-1l or iwae-2l)"
    )
    args = p.parse_args()
    if args.burda:
        burda(args)
        return
    header(
        f"train_speed: dense-mnist, {args.epochs} epochs, batch 128, full MNIST "
        "(60,000 train dynamically binarised / 10,000 test statically binarised)",
        args,
    )
    ddir = data_dir("mnist")
    tr = load_dataset("mnist", "train", data_dir=ddir)
    te = load_dataset("mnist", "test", data_dir=ddir)
    x_test = binarize_static(te.x, seed=1234)
    n = tr.x.shape[0]

    cfg = build_config(
        "dense-mnist",
        overrides={"epochs": args.epochs, "eval_k": 0, "seed": args.seed, "tensorboard": False, "device": args.device},
    )
    with tempfile.TemporaryDirectory() as tmp, Timer() as tv:
        train(cfg, Path(tmp) / "run", tr.x, None, transform=binarize_dynamic, progress=False)
        model = vaekit.load(Path(tmp) / "run")
    torch.manual_seed(0)
    ours = evaluate(model, x_test, k=1, progress=False)["elbo"]

    images_uint8 = (tr.x.squeeze(1) * 255).round().to(torch.uint8).numpy()
    with Timer() as tr_:
        ref = train_reference(images_uint8, args.epochs, args.seed)
    theirs = reference_test_nelbo(ref, x_test.view(-1, 784))

    v_ips, r_ips = n * args.epochs / tv.seconds, n * args.epochs / tr_.seconds
    print(f"{'side':<44} {'train s':>8} {'images/s':>9} {'test -ELBO':>11}")
    print(f"{'vaekit (in-memory tensor, index slices)':<44} {tv.seconds:8.1f} {v_ips:9.0f} {-ours:11.2f}")
    print(f"{'pytorch/examples recipe (Dataset+DataLoader)':<44} {tr_.seconds:8.1f} {r_ips:9.0f} {theirs:11.2f}")
    print(
        f"ratio vaekit/reference images/s: {v_ips / r_ips:.2f}x (target >= 1.5); "
        f"test -ELBO difference vaekit - reference: {-ours - theirs:+.2f} nats (<= 0 is better)"
    )


if __name__ == "__main__":
    main()
