"""The training gradient of a dense Gaussian-encoder, Bernoulli-decoder VAE, derived by hand.

The model of Kingma & Welling (2014) and Burda et al. (2015, one stochastic layer):
q(z|x) = N(mu(x), diag exp(lv(x))) from an MLP, p(z) = N(0, I), p(x|z) = Bernoulli(sigmoid(l(z)))
from an MLP, z = mu + s * eps with s = exp(lv / 2). At the paper's batch of 20 a step is a few
dozen small matrix products, and autograd's per-operation bookkeeping costs about as much as the
arithmetic. :class:`DenseVAEStep` computes the same loss terms and writes the same gradients into
``p.grad`` in one hand-written forward and backward pass (about 50 tensor operations, no graph).
The gradients, for the per-example loss summed over the batch and multiplied by ``scale``, with
c = scale, k samples z_j, a_j = d log p(x|z_j) / d z_j (the decoder's backward pass from
d log p(x|z) / d l = x - sigmoid(l)):

- ELBO with analytic KL (``elbo``, ``reparam``), loss = -(mean_j log p(x|z_j) - w KL), w the KL
  weight (beta and warm-up): dL/dz_j = -(c/k) a_j, dL/dmu = sum_j dL/dz_j + c w mu,
  dL/dlv = sum_j dL/dz_j eps_j s/2 + c w (s^2 - 1)/2.
- Sticking the landing (``elbo``, ``stl``; Roeder et al. 2017), Monte-Carlo KL with q's parameters
  held fixed: dL/dz_j = -(c/k) (a_j - w z_j + w eps_j / s), no direct term in mu, lv.
- IWAE (``iwae``, ``reparam``; Burda et al. 2015), omega = softmax_j(log w_j): the decoder's rows are
  weighted by omega_j, dL/dz_j = -c omega_j (a_j - z_j), dL/dlv gains -c/2 (log q's -lv/2 per dimension).
- DReG (``iwae``, ``dreg``; Tucker et al. 2018): decoder as IWAE; the encoder's
  dL/dz_j = -c omega_j^2 (a_j - z_j + eps_j / s).

and dL/dmu = sum_j dL/dz_j, dL/dlv = sum_j dL/dz_j eps_j s / 2 plus the direct terms above.

Two stochastic layers (Burda et al. 2015, Sec. 5; :class:`DenseTwoLayerStep`): q(z1|x) q(z2|z1),
p(z2) p(z1|z2) with p(z2) = N(0, I), the decoder reading z1, every factor a diagonal Gaussian from an
MLP: z1 = mu1 + s1 e1, (m2, lq2) = g(z1), z2 = m2 + t2 e2 with t2 = exp(lq2 / 2), (pm, plv) = h(z2),
ps = exp(plv / 2), u = (z1 - pm) / ps. At fixed noise
log w = log p(x|z1) - u^2/2 - plv/2 - z2^2/2 + e1^2/2 + lv1/2 + e2^2/2 + lq2/2 (summed over
dimensions, constants dropped), so with the loss L = -sum_j (rho_j log p(x|z1_j) + kappa_j
log [p(z_j) / q(z_j|x)]), rho_j = kappa_j = c omega_j for the IWAE (``iwae``, ``reparam``) and
rho_j = c/k, kappa_j = c w/k for the ELBO with its Monte-Carlo KL (``elbo``, ``reparam``):

- p(z1|z2)'s net: dL/dpm = -kappa u / ps, dL/dplv = kappa (1 - u^2) / 2;
- dL/dz2 = (h's backward of those) + kappa z2;
- q(z2|z1)'s net: dL/dm2 = dL/dz2, dL/dlq2 = dL/dz2 e2 t2 / 2 - kappa / 2;
- dL/dz1 = (the decoder's backward of rho (sigmoid(l) - x)) + kappa u / ps + (g's backward of
  (dL/dm2, dL/dlq2)): every path of z1, through the decoder, p(z1|z2)'s density and q(z2|z1)'s net;
- the encoder: dL/dmu1 = sum_j dL/dz1_j, dL/dlv1 = sum_j dL/dz1_j e1_j s1 / 2 - sum_j kappa_j / 2.

The noise is drawn as the chain's ``rsample`` draws it (e1 [k, B, D1], then e2 [k, B, D2]), so the
terms equal ``model.loss``'s for the same seed. STL, DReG and free bits have no two-layer kernel.
``tests/test_models_dense_step.py`` checks every case against autograd on the model's own
``loss``. Free bits, other activations, likelihoods, priors and encoders have no kernel here:
:func:`dense_vae_step` returns ``None`` and training keeps autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributions import BernoulliLikelihood
from ..distributions.hierarchy import ConditionalGaussian, HierarchicalEncoder, HierarchicalPrior
from ..distributions.priors import StandardNormalPrior
from ..nets.mlp import dense_layers
from ..objectives import kl_weight
from .vae import VAE, Decoder, GaussianEncoder

LOG_2PI = math.log(2 * math.pi)

# activation -> its backward from the layer's output y: dL/du = ACT_BACKWARD(dL/dy, y)
ACT_BACKWARD = {
    nn.Tanh: lambda g, y: torch.ops.aten.tanh_backward(g, y),
    nn.ReLU: lambda g, y: torch.ops.aten.threshold_backward(g, y, 0),
}

# (objective, gradient estimator) pairs with a kernel
SUPPORTED = {("elbo", "reparam"), ("elbo", "stl"), ("iwae", "reparam"), ("iwae", "dreg")}
# the pairs with a kernel for two stochastic layers
SUPPORTED_2L = {("elbo", "reparam"), ("iwae", "reparam")}


def _layers(body: nn.Module) -> list[tuple[nn.Linear, nn.Module | None]] | None:
    """The body's [(linear, activation)] when every activation has a backward in ACT_BACKWARD."""
    layers = dense_layers(body)
    if layers is None or any(act is not None and type(act) not in ACT_BACKWARD for _, act in layers):
        return None
    return layers


def dense_vae_step(model: nn.Module) -> DenseVAEStep | None:
    """The hand-derived step for ``model``, or ``None`` when it is not a dense VAE with a Bernoulli
    decoder and either one Gaussian layer under a standard-normal prior or Burda et al.'s two
    stochastic layers, with a supported objective (module docstring).

    Exact types, not isinstance: a subclass may change what the kernel re-implements."""
    if type(model) is not VAE or type(model.decoder) is not Decoder or model.objective["free_bits"] > 0:
        return None
    obj = model.objective
    if type(model.decoder.likelihood) is not BernoulliLikelihood:
        return None
    if len(model.latent_layers) == 2:
        return _two_layer_step(model, obj)
    if (obj["objective"], obj["gradient"]) not in SUPPORTED or type(model.encoder) is not GaussianEncoder:
        return None
    if type(model.prior_module) is not StandardNormalPrior:
        return None
    if model.decoder.reads is not None or len(model.latent_layers) != 1:
        return None
    enc, dec = _layers(model.encoder.body), _layers(model.decoder.body)
    if enc is None or dec is None:
        return None
    return DenseVAEStep(enc, dec, model.latent_dim, obj)


def _two_layer_step(model: VAE, obj: dict) -> DenseTwoLayerStep | None:
    """The two-stochastic-layer kernel when every net is a dense MLP and p(z_2) = N(0, I), else None."""
    enc, prior, sizes = model.encoder, model.prior_module, tuple(model.latent_layers)
    if (obj["objective"], obj["gradient"]) not in SUPPORTED_2L or type(enc) is not HierarchicalEncoder:
        return None
    if type(prior) is not HierarchicalPrior or enc.sizes != sizes or prior.sizes != sizes:
        return None
    if model.decoder.reads != sizes[0] or len(enc.layers) != 1 or len(prior.layers) != 1:
        return None
    up, down = enc.layers[0], prior.layers[0]
    if type(up) is not ConditionalGaussian or type(down) is not ConditionalGaussian:
        return None
    if not (bool((prior.loc == 0).all()) and bool((prior.scale == 1).all())):
        return None  # the kernel's top density is N(0, I)
    nets = [_layers(enc.body), _layers(up.body), _layers(down.body), _layers(model.decoder.body)]
    if any(n is None for n in nets):
        return None
    return DenseTwoLayerStep(*nets, sizes, obj)


def _forward(layers, h: Tensor) -> list[Tensor]:
    """[input, output of layer 1, ..., output of the last layer] of the MLP ``layers`` on h [N, in]."""
    hs = [h]
    for lin, act in layers:
        u = torch.addmm(lin.bias, hs[-1], lin.weight.t())
        hs.append(u if act is None else act(u))
    return hs


def _backward(layers, hs: list[Tensor], g: Tensor, input_grad: bool) -> Tensor | None:
    """Write dL/dW, dL/db of every layer into their ``.grad`` (which exist) from g = dL/d(last output) [N, out];
    returns dL/d(input) [N, in] when ``input_grad``, else None."""
    for i in range(len(layers) - 1, -1, -1):
        lin, act = layers[i]
        if act is not None:
            g = ACT_BACKWARD[type(act)](g, hs[i + 1])
        torch.mm(g.t(), hs[i], out=lin.weight.grad)
        torch.sum(g, 0, out=lin.bias.grad)
        if i > 0 or input_grad:
            g = torch.mm(g, lin.weight)
    return g if input_grad else None


class DenseVAEStep:
    """Loss terms and gradients of a dense Gaussian/Bernoulli VAE in one hand-written pass.

    Args:
        encoder, decoder: the MLP bodies as [(linear, activation or None)]; the encoder outputs
            [B, 2 D] = (mu, lv), the decoder D -> the data's logits.
        latent_dim: D.
        objective: the VAE's ``objective`` dict (objective, k, beta, warmup_steps, gradient).
    """

    def __init__(self, encoder, decoder, latent_dim: int, objective: dict):
        self.encoder, self.decoder, self.D = encoder, decoder, latent_dim
        self._own_grads(encoder + decoder)
        self.objective, self.k, self.gradient = objective["objective"], objective["k"], objective["gradient"]
        self.beta, self.warmup_steps = objective["beta"], objective["warmup_steps"]

    @torch.no_grad()  # the gradient is written by hand: no graph
    def __call__(self, x: Tensor, step: int, scale: float) -> dict[str, Tensor]:
        """Per-example ``loss``, ``elbo``, ``rec``, ``kl`` (and ``iwae``) [B] in nats, as the model's
        ``loss(x, step)``, and ``p.grad`` := d (scale * sum_b loss_b) / d p for every weight.

        Args:
            x: a batch [B, *data_shape] with values in [0, 1].
            step: the global step (the KL warm-up).
            scale: the factor of the summed loss (1 / global batch for a mean).
        """
        self._attach_grads()
        k, B, D = self.k, x.shape[0], self.D
        xf = x.reshape(B, -1)
        he = _forward(self.encoder, xf)
        mu, lv = he[-1][:, :D], he[-1][:, D:]
        s = torch.exp(0.5 * lv)
        eps = torch.empty(k, B, D, dtype=x.dtype, device=x.device).normal_()  # what q.rsample((k,)) draws
        z = torch.addcmul(mu, eps, s)  # [k, B, D]
        hd = _forward(self.decoder, z.view(k * B, D))
        logits = hd[-1]
        xr = xf if k == 1 else xf.repeat(k, 1)  # rows sample-major: row j B + b is example b
        log_px = -F.binary_cross_entropy_with_logits(logits, xr, reduction="none").sum(1).view(k, B)
        if self.objective == "elbo":
            out, up = self._elbo(log_px, mu, lv, s, z, eps, step, scale)
        else:
            out, up = self._iwae(log_px, lv, s, z, eps, scale)
        rows = up.rows if isinstance(up.rows, float) else up.rows.reshape(k * B, 1)
        gl = torch.sigmoid(logits).sub_(xr).mul_(rows)
        gz = _backward(self.decoder, hd, gl, input_grad=True).view(k, B, D)
        if up.z_scale is not None:
            gz = gz * up.z_scale.unsqueeze(-1)
        if up.z_extra is not None:
            gz = gz + up.z_extra
        g_mu, g_lv = gz.sum(0), (gz * eps).sum(0).mul_(0.5 * s)
        if up.mu is not None:
            g_mu = g_mu + up.mu
        if up.lv is not None:
            g_lv = g_lv + up.lv
        _backward(self.encoder, he, torch.cat([g_mu, g_lv], 1), input_grad=False)
        return out

    def _own_grads(self, layers) -> None:
        """``params``: the weights and biases of ``layers``; ``grads``: their gradients, views of ``flat_grad``."""
        self.params = [p for lin, _ in layers for p in (lin.weight, lin.bias)]
        # every .grad is a view of one buffer: the global norm is one reduction, not one per tensor
        sizes = [p.numel() for p in self.params]
        self.flat_grad = torch.zeros(sum(sizes), dtype=self.params[0].dtype, device=self.params[0].device)
        self.grads = [g.view_as(p) for g, p in zip(self.flat_grad.split(sizes), self.params)]

    def _attach_grads(self) -> None:
        """Point every ``p.grad`` at its view of ``flat_grad``."""
        for p, g in zip(self.params, self.grads):
            if p.grad is not g:  # e.g. set to None after a skipped step
                p.grad = g

    def grad_norm(self) -> Tensor:
        """The Euclidean norm of all the gradients the last call wrote (a 0-d tensor)."""
        return torch.dot(self.flat_grad, self.flat_grad).sqrt()  # BLAS: faster than vector_norm here

    def _elbo(self, log_px, mu, lv, s, z, eps, step, c) -> tuple[dict[str, Tensor], Upstream]:
        """The ELBO's terms and what its gradient sends upstream (module docstring)."""
        k, w = self.k, kl_weight(step, self.beta, self.warmup_steps)
        rec = log_px.mean(0)
        rows = c / k  # every decoder row alike
        if self.gradient == "stl":  # Monte-Carlo KL: log q(z|x) - log p(z) = sum 0.5 (z^2 - eps^2) - lv / 2
            kl = (0.5 * (z * z - eps * eps)).sum(-1).mean(0) - 0.5 * lv.sum(-1)
            up = Upstream(rows, z_extra=(z - eps / s).mul_(w * c / k))
        else:
            kl = 0.5 * (mu * mu + s * s - 1 - lv).sum(-1)
            up = Upstream(rows, mu=mu * (w * c), lv=(s * s - 1).mul_(0.5 * w * c))
        return {"loss": -(rec - w * kl), "elbo": rec - kl, "rec": rec, "kl": kl}, up

    def _iwae(self, log_px, lv, s, z, eps, c) -> tuple[dict[str, Tensor], Upstream]:
        """The IWAE bound's terms and what its gradient sends upstream (module docstring)."""
        k, D = self.k, self.D
        log_q = (-0.5 * eps * eps).sum(-1) - 0.5 * lv.sum(-1) - 0.5 * D * LOG_2PI  # [k, B]
        log_pz = (-0.5 * z * z).sum(-1) - 0.5 * D * LOG_2PI
        log_w = log_px + log_pz - log_q
        bound = torch.logsumexp(log_w, 0) - math.log(k)
        omega = torch.softmax(log_w, 0)  # [k, B], the normalised weights
        rec, kl = log_px.mean(0), (log_q - log_pz).mean(0)
        out = {"loss": -bound, "iwae": bound, "elbo": rec - kl, "rec": rec, "kl": kl}
        if self.gradient == "dreg":
            extra = (z - eps / s).mul_((omega * omega * c).unsqueeze(-1))
            return out, Upstream(omega * c, z_scale=omega, z_extra=extra)
        return out, Upstream(omega * c, z_extra=z * (omega * c).unsqueeze(-1), lv=torch.full_like(lv, -0.5 * c))


class DenseTwoLayerStep(DenseVAEStep):
    """Loss terms and gradients of Burda et al.'s two-stochastic-layer VAE in one hand-written pass.

    Args:
        encoder: q(z_1|x)'s MLP as [(linear, activation or None)], x -> [B, 2 D_1] = (mu_1, lv_1).
        up: q(z_2|z_1)'s MLP, z_1 -> [N, 2 D_2] = (m_2, lq_2).
        down: p(z_1|z_2)'s MLP, z_2 -> [N, 2 D_1] = (pm, plv).
        decoder: p(x|z_1)'s MLP, z_1 -> the data's logits.
        sizes: (D_1, D_2).
        objective: the VAE's ``objective`` dict; (objective, gradient) in ``SUPPORTED_2L``.
    """

    def __init__(self, encoder, up, down, decoder, sizes: tuple[int, int], objective: dict):
        super().__init__(encoder, decoder, sizes[0], objective)
        self.up, self.down, self.D2 = up, down, sizes[1]
        self._own_grads(encoder + up + down + decoder)  # all four nets' gradients in the one buffer

    @torch.no_grad()  # the gradient is written by hand: no graph
    def __call__(self, x: Tensor, step: int, scale: float) -> dict[str, Tensor]:
        """As :meth:`DenseVAEStep.__call__`: per-example terms [B] (nats) and ``p.grad`` of every weight."""
        self._attach_grads()
        f = self._sample(x)
        k, B = self.k, x.shape[0]
        log_pz, log_q = (f["log_p1"] + f["log_p2"]).view(k, B), f["log_q1"] + f["log_q2"].view(k, B)
        rec, kl = f["log_px"].mean(0), (log_q - log_pz).mean(0)
        if self.objective == "elbo":
            w = kl_weight(step, self.beta, self.warmup_steps)
            out = {"loss": -(rec - w * kl), "elbo": rec - kl, "rec": rec, "kl": kl}
            rho, kappa = scale / k, scale * w / k  # every row alike
        else:
            log_w = f["log_px"] + log_pz - log_q
            bound = torch.logsumexp(log_w, 0) - math.log(k)
            out = {"loss": -bound, "iwae": bound, "elbo": rec - kl, "rec": rec, "kl": kl}
            rho = kappa = torch.softmax(log_w, 0).mul_(scale).view(k * B, 1)
        self._backprop(f, rho, kappa)
        return out

    def _sample(self, x: Tensor) -> dict[str, Tensor]:
        """The forward pass: the nets' activations and noise, z_1, z_2 [k B, D_l] (rows sample-major) and
        the log-densities log p(x|z_1), log q(z_1|x) [k, B], log q(z_2|z_1), log p(z_1|z_2), log p(z_2) [k B].
        The noise is drawn as ``q.rsample((k,))`` draws it: eps_1 [k, B, D_1], then eps_2 [k, B, D_2]."""
        k, B, D1, D2 = self.k, x.shape[0], self.D, self.D2
        xf = x.reshape(B, -1)
        he = _forward(self.encoder, xf)
        mu1, lv1 = he[-1][:, :D1], he[-1][:, D1:]
        s1 = torch.exp(0.5 * lv1)
        e1 = torch.empty(k, B, D1, dtype=x.dtype, device=x.device).normal_()
        z1 = torch.addcmul(mu1, e1, s1).view(k * B, D1)
        hq = _forward(self.up, z1)
        lq2 = hq[-1][:, D2:]
        t2 = torch.exp(0.5 * lq2)
        e2 = torch.empty(k * B, D2, dtype=x.dtype, device=x.device).normal_()
        z2 = torch.addcmul(hq[-1][:, :D2], e2, t2)
        hp = _forward(self.down, z2)
        plv = hp[-1][:, D1:]
        pinv = torch.exp(-0.5 * plv)  # 1 / ps
        u = (z1 - hp[-1][:, :D1]).mul_(pinv)  # (z_1 - pm) / ps
        hd = _forward(self.decoder, z1)
        xr = xf if k == 1 else xf.repeat(k, 1)  # row j B + b is example b
        log_px = -F.binary_cross_entropy_with_logits(hd[-1], xr, reduction="none").sum(1).view(k, B)
        c1, c2 = 0.5 * D1 * LOG_2PI, 0.5 * D2 * LOG_2PI
        return dict(
            he=he,
            hq=hq,
            hp=hp,
            hd=hd,
            xr=xr,
            s1=s1,
            e1=e1,
            t2=t2,
            e2=e2,
            z2=z2,
            u=u,
            pinv=pinv,
            log_px=log_px,
            log_q1=(-0.5 * e1 * e1).sum(-1) - 0.5 * lv1.sum(-1) - c1,
            log_q2=(-0.5 * e2 * e2 - 0.5 * lq2).sum(1) - c2,
            log_p1=(-0.5 * u * u - 0.5 * plv).sum(1) - c1,
            log_p2=(-0.5 * z2 * z2).sum(1) - c2,
        )

    def _backprop(self, f: dict[str, Tensor], rho: Tensor | float, kappa: Tensor | float) -> None:
        """Write every net's gradient of L = -sum_rows (rho log p(x|z_1) + kappa log [p(z)/q(z|x)])
        (``rho``, ``kappa``: [k B, 1] or one number for all rows), the paths of the module docstring."""
        k, D1 = self.k, self.D
        B = f["he"][0].shape[0]
        gl = torch.sigmoid(f["hd"][-1]).sub_(f["xr"]).mul_(rho)
        gz1 = _backward(self.decoder, f["hd"], gl, input_grad=True)
        u, pinv = f["u"], f["pinv"]
        # log p(z_1|z_2): d/dpm = u / ps, d/dplv = (u^2 - 1) / 2, d/dz_1 = -u / ps
        g_pm = (u * pinv).mul_(kappa)
        gz1 = gz1 + g_pm
        gz2 = _backward(self.down, f["hp"], torch.cat([-g_pm, (1 - u * u).mul_(0.5 * kappa)], 1), input_grad=True)
        gz2 = gz2 + f["z2"] * kappa  # log p(z_2) = -z_2^2 / 2
        # z_2 = m_2 + t_2 eps_2; -log q(z_2|z_1) = eps_2^2 / 2 + lq_2 / 2 at fixed noise
        g_lq2 = (gz2 * f["e2"]).mul_(0.5 * f["t2"]).sub_(0.5 * kappa)
        gz1 = gz1 + _backward(self.up, f["hq"], torch.cat([gz2, g_lq2], 1), input_grad=True)
        gz1 = gz1.view(k, B, D1)
        # z_1 = mu_1 + s_1 eps_1; -log q(z_1|x) = eps_1^2 / 2 + lv_1 / 2 at fixed noise
        g_lv1 = (gz1 * f["e1"]).sum(0).mul_(0.5 * f["s1"])
        g_lv1 = g_lv1 - 0.5 * (kappa.view(k, B, 1).sum(0) if isinstance(kappa, Tensor) else k * kappa)
        _backward(self.encoder, f["he"], torch.cat([gz1.sum(0), g_lv1], 1), input_grad=False)


@dataclass
class Upstream:
    """What a bound's gradient sends into the networks: ``rows`` [k, B] (or one number for all), the
    weight of each decoder row's d log p(x|z) / d l (times -1); the decoder's dL/dz [k, B, D] is then multiplied by
    ``z_scale`` [k, B] and ``z_extra`` [k, B, D] added; ``mu``, ``lv`` [B, D]: the direct terms
    of dL/dmu and dL/dlv. ``None``: nothing."""

    rows: Tensor | float
    z_scale: Tensor | None = None
    z_extra: Tensor | None = None
    mu: Tensor | None = None
    lv: Tensor | None = None


__all__ = [
    "ACT_BACKWARD",
    "SUPPORTED",
    "SUPPORTED_2L",
    "DenseTwoLayerStep",
    "DenseVAEStep",
    "Upstream",
    "dense_vae_step",
]
