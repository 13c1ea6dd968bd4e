"""Typed configuration: dataclasses, named presets, overrides.

A :class:`Config` has three sections, ``data``, ``model`` and ``train``. Presets are
named, inherit from one another (``parent``) and only state what differs. Overrides
come as ``key=value`` strings (``--set`` on the command line), where ``key`` is either
``section.field`` or a bare field name that is unique across sections (``k=50``,
``objective=iwae``); values are parsed as YAML and type-checked against the field.
A YAML file may be given instead of a preset: ``{preset: NAME, data: {...}, ...}``
or flat ``field: value`` pairs.

The resolved config is saved in every checkpoint (``Config.to_dict``), so a run can
be resumed or evaluated from the checkpoint alone. Fields that were removed from the
config stay readable in old checkpoints: ``REMOVED_KEYS`` lists each with the value it
always had in effect, and :meth:`Config.from_dict` drops it when it holds that value.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .checks import lookup, shown
from .errors import ConfigError


@dataclass
class DataConfig:
    name: str = "mnist5k"  # dataset name (see `vaekit.data.DATASETS`) or a path (.npz/.npy/PNG folder)
    data_dir: str | None = None  # folder with IDX/CIFAR files; default $VAEKIT_DATA
    download: bool = False  # fetch missing standard files (sha256-checked) into data_dir
    binarize: str = "dynamic"  # dynamic (fresh Bernoulli draw per batch) | static (fixed seed) | none (grey levels)
    binarize_seed: int = 1234  # seed of the fixed stochastic binarisation of test (and static train) data
    # values per data dimension the model sees, recorded by `vaekit train` from the data unless set
    # (e.g. 256 for 8-bit images stored as floats): 256 (8-bit), 2 (binary), null (continuous);
    # bits/dim are reported for 2 and 256 only
    levels: int | None = 256
    label_column: str | None = None  # .csv: the column of labels, not a feature (default: label, target or class)
    # per-feature x' = (x - mean) / std with the training split's statistics, inverted on every output:
    # auto (on for vector data that are not binary, unless the likelihood is) | true | false;
    # `vaekit train` records what auto resolved to
    standardize: bool | str = "auto"
    feature_mean: list[float] | None = None  # per-feature mean of the training split, recorded by `vaekit train`
    feature_std: list[float] | None = None  # per-feature std (ddof 0; 1 for a constant feature), recorded with it
    # a table's feature names in order (e.g. a CSV header), recorded by `vaekit train`: data given to
    # the run later (evaluate, score, encode, ...) must name the same features in the same order
    columns: list[str] | None = None
    # data_fingerprint of both splits as read (before binarisation and standardisation), recorded by
    # `vaekit train`: a resume reads the data again (from data_dir, which --resume --data-dir may move)
    # and refuses data that differ
    fingerprint: str | None = None


@dataclass
class ModelConfig:
    kind: str = "vae"  # model registry: vae | flow | mixture | autoencoder
    encoder: str = "mlp"  # encoder body (nets registry)
    decoder: str = "mlp"  # decoder body (nets registry)
    hidden: list[int] = field(default_factory=lambda: [400])  # MLP widths, encoder side; decoder mirrors them
    activation: str = "relu"  # relu | tanh | elu | gelu | softplus | silu | leaky_relu
    latent_dim: int = 20  # dimension of z
    likelihood: str = "bernoulli"  # p(x|z): bernoulli | gaussian | logistic_mixture | categorical (8-bit) | pixelcnn
    variance: str = "global"  # gaussian p(x|z) variance: fixed | global (one learned) | pixel (decoder output)
    fixed_std: float = 1.0  # std of the gaussian likelihood when variance=fixed (data units)
    # densities of 8-bit data (likelihood=gaussian VAEs, mixtures): model the uniformly dequantised
    # levels y = (255 x + u) / 256, so that nats and bits/dim bound the levels' probability (true), or
    # the density at the levels, which has no bits/dim (false); auto: true for 8-bit data (data.levels
    # 256) that are not standardised. `vaekit train` records what auto resolved to. Flows: flow_dequantize
    dequantize: bool | str = "auto"
    prior: str = "normal"  # p(z): normal (standard)
    # sizes (D_1, ..., D_L) of stacked Gaussian layers z = (z_1, ..., z_L), bottom first (Burda et al.
    # 2015: [100, 50]); latent_dim must be their sum; []: one layer of latent_dim (the plain VAE)
    stochastic_layers: list[int] = field(default_factory=list)
    layer_hidden: list[int] = field(default_factory=lambda: [100, 100])  # MLP widths of q(z_l+1|z_l); p mirrors them
    # zero | data_mean: decoder output logits := logit of the training-set mean pixel (clamped to
    # [1e-3, 1 - 1e-3]), set once when a run starts; needs likelihood=bernoulli and decoder=mlp
    decoder_bias_init: str = "zero"
    # --- conv / resnet / pixelcnn fields ---
    channels: list[int] = field(
        default_factory=lambda: [32, 64]
    )  # conv/resnet stage widths, full resolution first; each stage halves H, W (rounding up); decoders mirror them
    resnet_blocks: int = 2  # pre-activation residual blocks per resnet stage
    norm: str = "none"  # conv/resnet normalisation: none | batch | weight (weight normalisation)
    upsample: str = "transpose"  # decoder up-sampling: transpose (stride-2 transposed conv) | nearest (resize + 3x3)
    n_mix: int = 10  # discretised logistic mixture components (likelihood or pixelcnn_output logistic_mixture)
    pixelcnn_output: str = (
        "bernoulli"  # head of likelihood=pixelcnn: bernoulli (binary data) | logistic_mixture | categorical (8-bit)
    )
    pixelcnn_layers: int = 6  # gated PixelCNN layers (vertical + horizontal stacks)
    pixelcnn_channels: int = 32  # feature maps per PixelCNN stack; a multiple of the data channels
    pixelcnn_kernel: int = 3  # odd k: vertical kernel (k//2+1) x k, horizontal 1 x (k//2+1)
    pixelcnn_cond: int = 16  # channels of the conditioning map c(z) [cond, H, W] the decoder body outputs (PixelVAE)
    channels_last: bool = False  # NHWC memory format; on where bench/arch_speed.py --compare measured a gain
    compile: bool = False  # torch.compile the net bodies; off: a small gain for the compile time
    # --- flow fields ---
    flow_arch: str = "realnvp"  # kind=flow architecture: nice | realnvp | glow | maf (1-D data: dense versions)
    flow_levels: int = 2  # realnvp / glow scales; each squeezes 2x2 and factors out half the channels
    flow_steps: int = 4  # nice: couplings; realnvp: couplings per half-level; glow: steps K per level; maf: layers
    flow_hidden: int = 64  # width of every flow's conditioner nets: conv channels or MLP / MADE units
    flow_blocks: int = 2  # realnvp: residual blocks per coupling net; MLP / MADE conditioners: hidden layers
    flow_scale: str = "tanh"  # affine log-scale: tanh (soft clamp at +-2) | sigmoid (Glow's sigmoid(s + 2))
    flow_preprocess: str = "logit"  # logit (RealNVP, with flow_alpha) | unit (x - 1/2, Glow) | none
    flow_alpha: float = 0.05  # logit(alpha + (1 - 2 alpha) x), in (0, 0.5)
    flow_dequantize: str = "uniform"  # uniform (8-bit data: (255 x + u) / 256, bpd with -log 256) | none (continuous)
    flow_base: str = "normal"  # base density of kind=flow: normal | logistic (NICE)
    posterior_flow: str | None = None  # VAE q(z|x) = flow(q0(z|x)): planar | iaf | realnvp; null: diagonal Gaussian
    posterior_flow_layers: int = 4  # layers of the posterior flow
    posterior_flow_context: int = 32  # encoder features h(x) conditioning the posterior flow (0: one flow for all x)
    prior_flow: str = "realnvp"  # with prior=flow, p(z) = flow(N(0, I)): realnvp | maf | planar
    prior_flow_layers: int = 4  # layers of the prior flow
    # --- mixture / autoencoder fields ---
    components: int = 10  # mixture components K (model.kind=mixture, prior=mixture) or VampPrior pseudo-inputs
    covariance: str = "full"  # mixture covariance: full | diag | spherical
    reg_covar: float = 1e-6  # added to every mixture covariance diagonal (as scikit-learn)
    em_tol: float = 1e-3  # EM stops when the mean log-likelihood changes less than this (nats)
    em_max_iter: int = 100  # EM iterations per restart
    em_restarts: int = 1  # EM restarts (k-means++ seeds differ); the best log-likelihood is kept
    em_init: str = "kmeans"  # kmeans (k-means++ then Lloyd) | kmeans++ (seeds only) | random
    em_init_samples: int = 0  # rows k-means sees (random subset; 0: all)
    em_chunk: int = 0  # rows per E-step chunk (0: from a memory budget); bounds memory on big data
    mixture_dtype: str = "float32"  # float32 | float64 arithmetic of the mixture (float64 to match scikit-learn)
    ae_noise: float = 0.0  # denoising autoencoder corruption level (0: plain deterministic autoencoder)
    ae_noise_type: str = "gaussian"  # gaussian (x + noise*eps) | mask (each pixel zeroed with prob. noise)


@dataclass
class TrainConfig:
    objective: str = "elbo"  # elbo (L samples, analytic KL when available) | iwae (k-sample bound)
    k: int = 1  # samples per example: L for elbo, k for iwae
    beta: float = 1.0  # weight of the KL term (beta-VAE); 1 is the true ELBO
    warmup_steps: int = 0  # linear KL warm-up from 0 to beta over this many steps (0: off)
    free_bits: float = 0.0  # minimum KL in nats per latent dimension (Kingma et al. 2016; 0: off)
    epochs: int = 10  # passes over the training set
    batch_size: int = 128  # examples per step
    lr: float = 1e-3  # peak Adam learning rate
    schedule: str = "constant"  # lr schedule after warm-up: constant | cosine | linear | burda (burda_stage_epochs)
    schedule_scale: float = 1.0  # schedule=burda: every stage's epochs times this, in (0, 1]; epochs follow
    adam_eps: float = 1e-8  # Adam epsilon (Burda et al. 2015: 1e-4)
    # gradient estimator: reparam | stl (sticking the landing, Roeder et al. 2017; objective=elbo) |
    # dreg (doubly reparameterised, Tucker et al. 2018; objective=iwae)
    gradient: str = "reparam"
    # dense Gaussian VAEs with a Bernoulli decoder: the hand-derived gradient (models.dense_step), same
    # numbers without autograd's per-operation cost; false: autograd, as every other model
    fused: bool = True
    lr_warmup_steps: int = 0  # linear lr warm-up steps
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 0.0  # clip global gradient norm at this value (0: off)
    ema: float = 0.0  # EMA decay of weights used for evaluation (0: off; e.g. 0.999)
    seed: int = 0  # seed of weights, data order, binarisation and sampling
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 50  # steps between metric lines / TensorBoard scalars
    ckpt_every: int = 500  # steps between checkpoints (and one at every epoch end)
    max_bad_steps: int = 50  # consecutive NaN/inf steps before the run stops
    eval_k: int = (
        100  # importance samples of the quick end-of-epoch test NLL (0: skip); `vaekit evaluate` is the full one
    )
    eval_n: int = 500  # test examples in the end-of-epoch evaluation
    # importance sampling (end-of-epoch, and `vaekit evaluate` / `score` unless --amp / --no-amp) with the
    # nets' hidden layers under bf16 autocast; output layers, log-weights and logsumexps stay float32.
    # auto: on where the device evaluating has bf16 hardware (as train.amp), decided per evaluation.
    eval_amp: bool | str = False
    tensorboard: bool = True  # write TensorBoard event files in the run folder
    # bf16 autocast of the nets (CUDA and CPU); likelihoods, log-dets and losses stay float32. auto: on
    # where the device has bf16 hardware (NVIDIA compute capability 8+, a CPU with AMX or AVX512-BF16;
    # nets.native_bf16); `vaekit train` records what auto resolved to, and a resume keeps it.
    amp: bool | str = False
    # with amp on, the nets' output layers (a likelihood's logits, a posterior's parameters, a flow
    # conditioner's shift and log-scale) compute in float32 in training too, as the evaluators run them:
    # only the hidden layers, and the gradients inside them, round to bf16.
    amp_outputs_float32: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "base"  # the preset this config was resolved from (informational)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The config saved by :meth:`to_dict`, also by an older vaekit (see ``REMOVED_KEYS`` and
        ``ADDED_KEYS``)."""
        cfg = cls()
        for key, value in ADDED_KEYS.items():  # a saved config lacks them only if it predates them
            name, field_name = key.split(".")
            if field_name not in (d.get(name) or {}):
                _set_field(cfg, name, field_name, value)
        for name in ("data", "model", "train"):
            for key, value in (d.get(name) or {}).items():
                if not _removed(f"{name}.{key}", value):
                    _set_field(cfg, name, key, value)
        if "preset" in d:
            cfg.preset = str(d["preset"])
        return cfg


SECTIONS = ("data", "model", "train")

# Fields that are gone, with the value that meant "off": old checkpoints still carry them.
# data.valid_size held examples out of the training set for a validation split nothing read.
REMOVED_KEYS: dict[str, Any] = {"data.valid_size": 0}

# Fields added later, with the value a saved config that lacks them had in effect, so that an old
# run keeps computing what it computed. model.dequantize: densities of 8-bit data were evaluated at
# the levels themselves.
ADDED_KEYS: dict[str, Any] = {"model.dequantize": False}


def _removed(key: str, value: Any) -> bool:
    """True when ``key`` is a removed field holding its old default (skip it); a removed field
    holding anything else is a ConfigError, since the saved run depended on what it did."""
    if key not in REMOVED_KEYS:
        return False
    if value == REMOVED_KEYS[key] and type(value) is type(REMOVED_KEYS[key]):
        return True
    raise ConfigError(
        f"config key '{key}' was removed from vaekit and only its default {REMOVED_KEYS[key]!r} can be read; "
        f"this config sets it to {shown(repr(value))}"
    )


# A preset: (parent, {"section.field" or "field": value}). Presets only state what differs.
PRESETS: dict[str, tuple[str | None, dict[str, Any], str]] = {
    "base": (None, {}, "defaults: dense 784-400-20 Bernoulli VAE, Adam 1e-3"),
    "dense-mnist": (
        "base",
        {
            "hidden": [400],
            "latent_dim": 20,
            "activation": "relu",
            "likelihood": "bernoulli",
            "batch_size": 128,
            "lr": 1e-3,
            "epochs": 10,
        },
        "pytorch/examples VAE: 784-400-20 ReLU MLP, Bernoulli decoder, batch 128, Adam 1e-3",
    ),
    "dense-mnist-2d": (
        "dense-mnist",
        {"hidden": [512, 256], "latent_dim": 2},
        "dense VAE with a 2-D latent space, for latent maps (Kingma & Welling 2014, Fig. 4)",
    ),
    "iwae-1l": (
        "base",
        {
            "hidden": [200, 200],
            "activation": "tanh",
            "latent_dim": 50,
            "likelihood": "bernoulli",
            "batch_size": 20,
            "lr": 1e-3,
            "epochs": 100,
        },
        "Burda et al. 2015, one stochastic layer: 784-200-200-50 tanh, Bernoulli; try --set objective=iwae --set k=50",
    ),
    "iwae-2l": (
        "iwae-1l",
        {"latent_dim": 150, "stochastic_layers": [100, 50], "layer_hidden": [100, 100]},
        "Burda et al. 2015, two stochastic layers: 784-200-200-100 (z1), 100-100-50 (z2) tanh, Bernoulli",
    ),
    "dense-frey": (
        "base",
        {
            "name": "frey",
            "binarize": "none",
            "hidden": [200],
            "activation": "tanh",
            "latent_dim": 10,
            "likelihood": "gaussian",
            "variance": "pixel",
            "batch_size": 100,
            "lr": 1e-3,
        },
        "Kingma & Welling 2014 Frey Faces: Gaussian decoder with per-pixel variance, 10 latents",
    ),
    "dense-digits": (
        "base",
        {"name": "digits", "hidden": [128], "latent_dim": 8, "batch_size": 64, "epochs": 30},
        "small dense VAE for scikit-learn's 8x8 digits (seconds on a CPU)",
    ),
    "dense-tabular": (
        "base",
        {
            "binarize": "none",
            "likelihood": "gaussian",
            "variance": "pixel",
            "hidden": [64],
            "latent_dim": 4,
            "batch_size": 32,
            "epochs": 300,
        },
        "dense VAE for tables of features (.csv, [N, D] arrays): standardised, Gaussian p(x|z) with a "
        "learned variance per feature, 64-4 MLP",
    ),
    "dense-wine": (
        "dense-tabular",
        {"name": "wine"},
        "dense-tabular on scikit-learn's wine data (178 wines x 13 features, 3 cultivars); seconds on a CPU",
    ),
    # --- conv / resnet / pixelcnn presets ---
    "conv-mnist": (
        "dense-mnist",
        {
            "encoder": "conv",
            "decoder": "conv",
            "channels": [32, 64],
            "latent_dim": 32,
            "channels_last": True,
            "amp": "auto",
            "eval_amp": "auto",
        },
        "conv VAE, binarised MNIST: stride-2 3x3 convs 32-64, transposed-conv decoder, Bernoulli, 32 latents; "
        "nets in bf16 where the device has bf16 hardware (train.amp=auto; train.eval_amp=auto: hidden "
        "layers only)",
    ),
    "resnet-mnist": (
        "conv-mnist",
        {
            "encoder": "resnet",
            "decoder": "resnet",
            "channels": [32, 64],
            "resnet_blocks": 2,
            "norm": "weight",
            "activation": "elu",
            "amp": False,
            "eval_amp": "auto",
        },
        "ResNet VAE, binarised MNIST: 2 pre-activation blocks per stage (32, 64), weight norm, ELU; trained in "
        "float32, evaluated with bf16 hidden layers where the device has bf16 hardware (train.eval_amp=auto)",
    ),
    "pixelvae-mnist": (
        "conv-mnist",
        {
            "likelihood": "pixelcnn",
            "pixelcnn_output": "bernoulli",
            "pixelcnn_layers": 6,
            "pixelcnn_channels": 32,
            "pixelcnn_kernel": 3,
            "pixelcnn_cond": 16,
            "channels_last": False,
            "amp": False,
            "eval_amp": "auto",
        },
        "PixelVAE (Gulrajani et al. 2017), binarised MNIST: conv nets, z -> 16x28x28 map, 6 gated layers, Bernoulli; "
        "evaluated with bf16 hidden layers where the device has bf16 hardware (train.eval_amp=auto; its PixelCNN "
        "rounds only the operands of its vertical convolutions and horizontal products, on a CPU)",
    ),
    "resnet-cifar": (
        "base",
        {
            "name": "cifar10",
            "binarize": "none",
            "encoder": "resnet",
            "decoder": "resnet",
            "channels": [64, 128, 256],
            "resnet_blocks": 2,
            "norm": "weight",
            "activation": "elu",
            "latent_dim": 128,
            "likelihood": "logistic_mixture",
            "n_mix": 10,
            "batch_size": 64,
            "lr": 1e-3,
            "grad_clip": 200.0,
            "epochs": 100,
            "eval_k": 1000,
        },
        "ResNet VAE, CIFAR-10 8-bit: stages 64-128-256, weight norm, 128 latents, coupled 10-way logistic mixture",
    ),
    "pixelvae-cifar": (
        "resnet-cifar",
        {
            "likelihood": "pixelcnn",
            "pixelcnn_output": "logistic_mixture",
            "n_mix": 5,
            "pixelcnn_layers": 8,
            "pixelcnn_channels": 96,
            "pixelcnn_kernel": 3,
            "pixelcnn_cond": 32,
        },
        "PixelVAE, CIFAR-10 8-bit: ResNet nets, z -> 32x32x32 map, 8 gated layers of 96, 5-way logistic mixture",
    ),
    # --- flow presets ---
    "nice-mnist": (
        "base",
        {
            "data.name": "mnist",
            "data.binarize": "none",
            "model.kind": "flow",
            "flow_arch": "nice",
            "flow_steps": 4,
            "flow_hidden": 1000,
            "flow_blocks": 5,
            "flow_preprocess": "unit",
            "flow_base": "logistic",
            "batch_size": 128,
            "lr": 1e-3,
            "epochs": 100,
            "amp": "auto",
            "amp_outputs_float32": True,
        },
        "Dinh et al. 2014: 4 additive couplings (5x1000 ReLU MLPs), diagonal scaling, logistic base; dequantised "
        "MNIST; hidden layers in bf16 where the device has bf16 hardware (train.amp=auto, train.amp_outputs_float32)",
    ),
    "realnvp-mnist": (
        "base",
        {
            "data.name": "mnist",
            "data.binarize": "none",
            "model.kind": "flow",
            "flow_arch": "realnvp",
            "flow_levels": 2,
            "flow_steps": 3,
            "flow_hidden": 64,
            "flow_blocks": 4,
            "flow_preprocess": "logit",
            "flow_alpha": 0.05,
            "channels_last": True,
            "batch_size": 64,
            "lr": 1e-3,
            "grad_clip": 100.0,
            "epochs": 100,
        },
        "Dinh et al. 2016: checkerboard/channel affine couplings, 2 scales, logit(0.05) input; dequantised MNIST",
    ),
    "glow-mnist": (
        "base",
        {
            "data.name": "mnist",
            "data.binarize": "none",
            "model.kind": "flow",
            "flow_arch": "glow",
            "flow_levels": 2,
            "flow_steps": 8,
            "flow_hidden": 128,
            "flow_scale": "sigmoid",
            "flow_preprocess": "unit",
            "channels_last": True,
            "batch_size": 64,
            "lr": 1e-3,
            "lr_warmup_steps": 500,
            "grad_clip": 100.0,
            "epochs": 100,
        },
        "Kingma & Dhariwal 2018: ActNorm, 1x1 conv, affine couplings, L=2 K=8, x - 1/2 input; dequantised MNIST",
    ),
    "realnvp-cifar": (
        "realnvp-mnist",
        {"data.name": "cifar10", "flow_levels": 3, "flow_blocks": 8, "channels_last": False},
        "Dinh et al. 2016 on CIFAR-10: 3 scales, 8 residual blocks of 64 channels per coupling",
    ),
    "glow-cifar": (
        "glow-mnist",
        {"data.name": "cifar10", "flow_levels": 3, "flow_steps": 32, "flow_hidden": 512, "channels_last": False},
        "Kingma & Dhariwal 2018 on CIFAR-10: L=3, K=32, 512-channel coupling nets",
    ),
    # --- mixture / autoencoder presets ---
    "gmm-mnist": (
        "base",
        {"kind": "mixture", "binarize": "none", "components": 10, "covariance": "diag", "em_max_iter": 100},
        "Gaussian mixture by EM on grey-level MNIST: 10 diagonal components, k-means++ init",
    ),
    "gmm-digits": (
        "base",
        {
            "kind": "mixture",
            "name": "digits",
            "binarize": "none",
            "components": 10,
            "covariance": "full",
            "reg_covar": 1e-3,
            "em_restarts": 3,
        },
        "Gaussian mixture on scikit-learn's 8x8 digits: 10 full covariances, 3 restarts (seconds)",
    ),
    "ae-mnist": (
        "dense-mnist",
        {"kind": "autoencoder", "eval_k": 0},
        "deterministic autoencoder with the dense-mnist nets (784-400-20, Bernoulli reconstruction); no NLL",
    ),
    "dae-mnist": (
        "ae-mnist",
        {"ae_noise": 0.3, "ae_noise_type": "mask"},
        "denoising autoencoder (Vincent et al. 2008): 30% masking noise, same nets as ae-mnist",
    ),
    "mog-prior-mnist": (
        "dense-mnist",
        {"prior": "mixture", "components": 10},
        "dense-mnist VAE with a learnable 10-component diagonal Gaussian mixture prior",
    ),
}


def _fields(section: str) -> dict[str, dataclasses.Field]:
    cls = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}[section]
    return {f.name: f for f in dataclasses.fields(cls)}


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s in SECTIONS for k in _fields(s)]


def resolve_key(key: str) -> tuple[str, str]:
    """Map ``section.field`` or a unique bare ``field`` to ``(section, field)``."""
    if "." in key:
        section, name = key.split(".", 1)
        if section in SECTIONS and name in _fields(section):
            return section, name
    else:
        owners = [s for s in SECTIONS if key in _fields(s)]
        if len(owners) == 1:
            return owners[0], key
        if len(owners) > 1:
            raise ConfigError(
                f"config key '{key}' is ambiguous; write one of " + ", ".join(f"{s}.{key}" for s in owners)
            )
    names = _all_keys() + [k.split(".", 1)[1] for k in _all_keys()]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown config key '{shown(key)}'{hint}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotated type ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' wants a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' wants true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' wants a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' wants an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' wants a string, got {value!r}")
    return value


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The field types of a config section, read once (``typing.get_type_hints`` parses the annotations
    anew on every call, and every checkpoint write reads a few configs field by field)."""
    return typing.get_type_hints(cls)


def _set_field(cfg: Config, section: str, name: str, value: Any) -> None:
    if name not in _fields(section):
        resolve_key(f"{section}.{name}")  # raises with a suggestion
    hints = _type_hints(type(getattr(cfg, section)))
    setattr(getattr(cfg, section), name, _coerce(value, hints[name], f"{section}.{name}"))


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Set each ``key: value`` (keys as in :func:`resolve_key`) on ``cfg``, in place."""
    for key, value in overrides.items():
        if key in SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                _set_field(cfg, key, k, v)
            continue
        section, name = resolve_key(key)
        _set_field(cfg, section, name, value)
    return cfg


def parse_set(items: list[str]) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` (YAML values) into an ordered dict."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set wants key=value, got '{shown(item)}'")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {shown(key)}: cannot parse value '{shown(raw)}'") from None
    return out


def preset_chain(name: str) -> list[str]:
    """``name`` and its ancestors, root (``base``) first."""
    chain = []
    while name is not None:
        chain.append(name)
        name = lookup(PRESETS, name, "preset")[0]
    return chain[::-1]


def get_preset(name: str) -> Config:
    """The resolved config of preset ``name`` (parents applied first)."""
    cfg = Config()
    for p in preset_chain(name):
        apply_overrides(cfg, PRESETS[p][1])
    cfg.preset = name
    return cfg


def load_yaml(path: str | Path) -> Config:
    """A config from a YAML file: an optional ``preset`` then sections or flat keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) and doc is not None:
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
    if not doc:  # an empty file would silently train the base preset
        raise ConfigError(f"{path}: the config file sets nothing; give at least a preset (preset: NAME) or one key")
    doc = dict(doc)
    preset = doc.pop("preset", "base")
    cfg = get_preset(str(preset))
    apply_overrides(cfg, doc)
    return cfg


def build_config(
    preset: str | None = None, config_file: str | None = None, overrides: list[str] | dict | None = None
) -> Config:
    """Resolve preset (or YAML file), then overrides; the single entry point for the CLI.

    With ``schedule=burda`` the epochs follow from the protocol: ``train.epochs`` is set to
    ``sum(burda_stage_epochs(schedule_scale))`` unless the overrides set it or the YAML file changed it
    from its preset's value; epochs set that way must equal it (:func:`validate` says so)."""
    if preset and config_file:
        raise ConfigError("give either --preset or --config, not both")
    cfg = load_yaml(config_file) if config_file else get_preset(preset or "base")
    preset_epochs = get_preset(cfg.preset).train.epochs
    parsed = (parse_set(overrides) if isinstance(overrides, list) else dict(overrides)) if overrides else {}
    apply_overrides(cfg, parsed)
    tc = cfg.train
    if (
        tc.schedule == "burda"
        and 0 < tc.schedule_scale <= 1
        and tc.epochs == preset_epochs
        and not _sets_epochs(parsed)
    ):
        tc.epochs = sum(burda_stage_epochs(tc.schedule_scale))
    validate(cfg)
    return cfg


def named_keys(config_file: str | None = None, overrides: list[str] | dict | None = None) -> set[str]:
    """The ``section.field`` keys a YAML config file and the overrides name themselves, not those a
    preset or the defaults supply: what the user asked for explicitly (call after
    :func:`build_config` accepted the same arguments)."""
    items: dict[str, Any] = {}
    if config_file:
        doc = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
        items.update({k: v for k, v in (doc if isinstance(doc, dict) else {}).items() if k != "preset"})
    if overrides:
        items.update(parse_set(overrides) if isinstance(overrides, list) else overrides)
    keys = set()
    for key, value in items.items():
        if key in SECTIONS and isinstance(value, dict):
            keys.update(f"{key}.{name}" for name in value)
        else:
            keys.add(".".join(resolve_key(key)))
    return keys


def _sets_epochs(overrides: dict[str, Any]) -> bool:
    """Whether ``overrides`` (as for :func:`apply_overrides`) set ``train.epochs``."""
    for key, value in overrides.items():
        if key == "train" and isinstance(value, dict) and "epochs" in value:
            return True
        if key not in SECTIONS and resolve_key(key) == ("train", "epochs"):
            return True
    return False


# Burda et al. (2015, Sec. 5): Adam at lr 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7: 3,280 epochs
BURDA_STAGES = 8


def burda_stage_epochs(scale: float = 1.0) -> list[int]:
    """Epochs of the 8 stages of Burda et al.'s protocol, 3^i for i = 0..7 (3,280 in all), each
    multiplied by ``scale`` in (0, 1] and rounded half up, but at least 1, so that a shortened run
    still visits every stage's learning rate (the scaled total is therefore at least 8)."""
    return [max(1, math.floor(3**i * scale + 0.5)) for i in range(BURDA_STAGES)]


CHOICES = {
    "data.binarize": ("dynamic", "static", "none"),
    "model.variance": ("fixed", "global", "pixel"),
    "train.objective": ("elbo", "iwae"),
    "train.schedule": ("constant", "cosine", "linear", "burda"),
    "train.gradient": ("reparam", "stl", "dreg"),
    "model.decoder_bias_init": ("zero", "data_mean"),
}


# Numeric fields where a value <= 0 (POSITIVE_FIELDS) or < 0 (NON_NEGATIVE_FIELDS) means nothing;
# a list field bounds each entry. Upper bounds and bounds that depend on other fields stay
# with the builders that read them (e.g. flow_alpha < 0.5, odd pixelcnn_kernel).
POSITIVE_FIELDS = (
    "model.latent_dim",
    "train.k",
    "train.epochs",
    "train.batch_size",
    "train.lr",
    "train.log_every",
    "train.ckpt_every",
    "model.fixed_std",
    "model.channels",
    "model.n_mix",
    "model.pixelcnn_layers",
    "model.pixelcnn_channels",
    "model.pixelcnn_kernel",
    "model.pixelcnn_cond",
    "model.flow_levels",
    "model.flow_steps",
    "model.flow_hidden",
    "model.flow_alpha",
    "model.posterior_flow_layers",
    "model.prior_flow_layers",
    "model.components",
    "model.em_max_iter",
    "model.em_restarts",
    "train.max_bad_steps",
    "train.eval_n",
)
NON_NEGATIVE_FIELDS = (
    "model.resnet_blocks",
    "model.flow_blocks",
    "model.posterior_flow_context",
    "model.reg_covar",
    "model.em_tol",
    "model.em_init_samples",
    "model.em_chunk",
    "model.ae_noise",
    "train.beta",
    "train.warmup_steps",
    "train.free_bits",
    "train.lr_warmup_steps",
    "train.weight_decay",
    "train.grad_clip",
    "train.eval_k",
)


def _check_signs(cfg: Config) -> None:
    """One line for the first field of ``POSITIVE_FIELDS`` / ``NON_NEGATIVE_FIELDS`` out of bounds."""
    for keys, bad, need in (
        (POSITIVE_FIELDS, lambda v: v <= 0, "positive"),
        (NON_NEGATIVE_FIELDS, lambda v: v < 0, ">= 0"),
    ):
        for key in keys:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            if any(bad(v) for v in (value if isinstance(value, list) else [value])):
                raise ConfigError(f"{key}{' entries' if isinstance(value, list) else ''} must be {need}; got {value}")


def validate(cfg: Config, new_run: bool = True) -> None:
    """Value checks that types alone cannot express; one line per problem.

    ``new_run=False`` (a resumed run) skips the checks added after runs could be trained without
    them (``_check_new_run``): such a run was trained with those settings ignored, and goes on so."""
    for section in SECTIONS:  # NaN / inf are floats to YAML (.nan, .inf) but never a sane setting
        for name in _fields(section):
            value = getattr(getattr(cfg, section), name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{name} must be a finite number; got {value}")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        lookup(dict.fromkeys(allowed), value, key)
    _check_signs(cfg)
    if any(h <= 0 for h in cfg.model.hidden):
        raise ConfigError(f"model.hidden widths must be positive; got {cfg.model.hidden}")
    if not 0.0 <= cfg.train.ema < 1.0:
        raise ConfigError(f"train.ema must be in [0, 1); got {cfg.train.ema}")
    _validate_layers(cfg.model)
    _validate_protocol(cfg)
    if new_run:
        _check_new_run(cfg)
    _validate_standardization(cfg.data)
    auto_or_bool(cfg.model.dequantize, "model.dequantize")
    auto_or_bool(cfg.train.amp, "train.amp")
    auto_or_bool(cfg.train.eval_amp, "train.eval_amp")


def auto_or_bool(value: Any, name: str) -> bool | str:
    """``value`` of the setting ``name`` (``train.amp``, ``train.eval_amp``, ``model.dequantize``) as
    given when it is auto, true or false, compared by identity (1 == True, yet is no bool: checks
    written ``value is True`` would pass it by), else a one-line ``ConfigError``; what auto means is
    decided where the setting is used (``vaekit.nets.resolve_amp``, ``models.resolve_dequantize``)."""
    if value == "auto" or value is True or value is False:
        return value
    raise ConfigError(f"{name} must be auto, true or false; got '{value}'")


def _validate_standardization(dc: DataConfig) -> None:
    """``standardize`` is auto, true or false; recorded statistics come in pairs of finite lists, std > 0."""
    if dc.standardize not in ("auto", True, False):
        raise ConfigError(f"data.standardize must be auto, true or false; got '{dc.standardize}'")
    mean, std = dc.feature_mean, dc.feature_std
    if mean is None and std is None:
        return
    if mean is None or std is None or len(mean) != len(std) or not mean:
        raise ConfigError("data.feature_mean and data.feature_std must be given together, as lists of one length")
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ConfigError("data.feature_mean must be finite and data.feature_std finite and positive")


def _validate_layers(mc: ModelConfig) -> None:
    """Stochastic layers and the decoder-bias initialisation: what the VAE builder can build."""
    layers = mc.stochastic_layers
    if any(d <= 0 for d in layers) or any(h <= 0 for h in mc.layer_hidden):
        raise ConfigError(
            f"model.stochastic_layers and model.layer_hidden must be positive; got {layers}, {mc.layer_hidden}"
        )
    if layers and sum(layers) != mc.latent_dim:
        raise ConfigError(
            f"model.latent_dim must be the sum of model.stochastic_layers {layers} = {sum(layers)}; got {mc.latent_dim}"
        )
    if len(layers) > 1:
        if mc.kind != "vae" or mc.posterior_flow not in (None, "none") or mc.prior != "normal":
            raise ConfigError("several model.stochastic_layers need kind=vae, prior=normal and no posterior_flow")
    if mc.decoder_bias_init == "data_mean" and (
        mc.kind != "vae" or mc.likelihood != "bernoulli" or mc.decoder != "mlp"
    ):
        raise ConfigError("model.decoder_bias_init=data_mean needs a VAE with likelihood=bernoulli and decoder=mlp")


def _validate_protocol(cfg: Config) -> None:
    """The gradient estimator against the objective, and Burda et al.'s schedule against the epochs."""
    tc, mc = cfg.train, cfg.model
    if tc.gradient != "reparam":
        needs = {"stl": "elbo", "dreg": "iwae"}[tc.gradient]
        if tc.objective != needs or mc.kind != "vae" or mc.posterior_flow not in (None, "none"):
            raise ConfigError(
                f"train.gradient={tc.gradient} needs objective={needs} and a VAE whose q(z|x) has a density "
                "at any z (a Gaussian or hierarchical encoder, no posterior_flow)"
            )
    if tc.adam_eps <= 0:
        raise ConfigError(f"train.adam_eps must be positive; got {tc.adam_eps}")
    if not 0.0 < tc.schedule_scale <= 1.0:
        raise ConfigError(f"train.schedule_scale must be in (0, 1]; got {tc.schedule_scale}")
    if tc.schedule == "burda" and tc.epochs != sum(burda_stage_epochs(tc.schedule_scale)):
        total = sum(burda_stage_epochs(tc.schedule_scale))
        raise ConfigError(
            f"train.epochs must be {total} with schedule=burda at schedule_scale={tc.schedule_scale} "
            f"(stages {burda_stage_epochs(tc.schedule_scale)}); got {tc.epochs}"
        )


def _check_new_run(cfg: Config) -> None:
    """Settings that older vaekit accepted and then ignored or applied differently: refused for a new
    run, left alone for a resumed one (``validate``'s ``new_run``)."""
    tc, mc = cfg.train, cfg.model
    shaping = [f"{k}={v}" for k, v, off in (("beta", tc.beta, 1.0), ("warmup_steps", tc.warmup_steps, 0)) if v != off]
    shaping += [f"free_bits={tc.free_bits}"] if tc.free_bits > 0 else []
    if tc.objective == "iwae" and shaping:
        raise ConfigError(
            f"train.{shaping[0]} weights the ELBO's KL term, which objective=iwae does not have; "
            "use objective=elbo or leave it at its default"
        )
    factorised = mc.posterior_flow in (None, "none") and mc.prior == "normal" and len(mc.stochastic_layers) <= 1
    if tc.free_bits > 0 and (tc.gradient != "reparam" or not factorised):
        raise ConfigError(
            "train.free_bits floors each latent dimension's analytic KL, which needs gradient=reparam, a Gaussian "
            "q(z|x) (no posterior_flow), prior=normal and one stochastic layer"
        )
    if mc.kind == "flow" and mc.flow_arch == "maf" and mc.flow_blocks < 1:  # older vaekit built [64, 64] then
        raise ConfigError(
            f"model.flow_blocks must be >= 1 for flow_arch=maf (its MADE's hidden layers); got {mc.flow_blocks}"
        )


def describe_presets() -> list[tuple[str, str, str]]:
    """``(name, parent, one-line description)`` for every preset."""
    return [(n, p or "", d) for n, (p, _, d) in PRESETS.items()]
