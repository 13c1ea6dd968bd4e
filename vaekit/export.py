"""A trained model as a folder to share: weights, config, a model card and, optionally, ONNX graphs.

``vaekit export RUN -o DIR`` writes

- ``model.safetensors``: the model's ``state_dict`` (the EMA weights when the run kept them, as
  every other verb uses), a flat map of named tensors that loading never executes;
- ``config.json``: plain JSON with the resolved config, the data shape, the step, the vaekit
  version and the rest of the checkpoint a model needs besides its weights
  (``vaekit.checkpoint.export_documents``); ``vaekit.load(DIR)`` and every verb on a trained
  model read the folder like a run folder (``vaekit.checkpoint.resolve``);
- ``README.md``: a model card (data, preset, the evaluations in the run's ``eval-*.json`` with
  their K, the ``vaekit train`` commands recorded in the run's ``command.txt``), and copies of
  those ``eval-*.json`` files;
- with ``onnx=True``, for a VAE with a diagonal Gaussian q(z|x): ``encoder.onnx``, x [B, *data_shape]
  -> (``mean``, ``log_var``) [B, D], the parameters of q(z|x) = N(mean, diag exp(log_var)), and
  ``decoder.onnx``, z [B, D] -> ``params`` [B, *param_shape], the decoder's output that the
  likelihood turns into p(x|z) (Bernoulli logits, Gaussian means and log standard deviations, ...).
  Sampling stays outside both graphs (z = mean + exp(log_var / 2) * eps, eps ~ N(0, I), and
  x ~ p(x|z)), since ONNX has no reparameterised sampler that matches torch's random stream.

What ONNX export refuses, with one line: models without an encoder and a decoder (flows and
Gaussian mixtures: their densities are not a pair of feed-forward maps), flow posteriors (q(z|x)
is a flow applied to a sample, so the sampling cannot be left outside), several stochastic layers
(q(z|x) is a chain of conditionals) and PixelCNN decoders (p(x|z) is autoregressive in x, so z alone
gives no parameters). A VAE whose prior is not N(0, I) (mixture, VampPrior, flow prior) is exported,
and its card says that sampling z from its prior needs vaekit. ``model.safetensors`` and
``config.json`` are written for every model.

References:
    Kingma & Welling, "Auto-encoding variational Bayes", ICLR 2014 (the reparameterisation
        z = mu + sigma * eps that is left outside the graphs).
    Mitchell et al., "Model cards for model reporting", FAT* 2019 (the README).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from . import __version__
from .checkpoint import (
    CKPT_DIR,
    COMMAND_FILE,
    EXPORT_CONFIG,
    create_run_dir,
    export_documents,
    is_export,
    model_from_state,
    plain_json,
    resolve,
    write_export_documents,
)
from .compare import LEGACY_EVAL_FILE
from .distributions import PixelCNNLikelihood
from .errors import VaekitError, one_line
from .models.vae import GaussianEncoder

ONNX_OPSET = 18  # the opset torch.onnx's dynamo exporter writes by default
ONNX_FILES = {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
EXAMPLE_BATCH = 2  # rows of the example input traced by the exporter; the batch axis stays dynamic


class EncoderGraph(nn.Module):
    """x [B, *data_shape] -> (mean, log_var) [B, D]: the parameters of the Gaussian q(z|x)."""

    def __init__(self, encoder: GaussianEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder.variational_params(x)


class DecoderGraph(nn.Module):
    """z [B, D] -> params [B, *param_shape]: what the decoder's likelihood turns into p(x|z)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.body = decoder.body

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


def onnx_refusal(model, kind: str) -> str | None:
    """Why ``model`` (of ``model.kind`` ``kind``) has no ONNX encoder/decoder pair, or None when it has."""
    if not model.has_latents:
        return f"ONNX export needs a VAE (an encoder and a decoder); this model is of kind {kind}"
    if len(model.latent_layers) > 1:
        return "ONNX export needs one stochastic layer; q(z|x) of this VAE is a chain of several"
    if not isinstance(model.encoder, GaussianEncoder):
        return "ONNX export needs a diagonal Gaussian q(z|x); a flow posterior's sampling is inside q"
    if isinstance(model.decoder.likelihood, PixelCNNLikelihood):
        return "ONNX export cannot write a PixelCNN decoder: p(x|z) is autoregressive in x, z alone gives no parameters"
    return None


def _check_onnx_installed() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise VaekitError("--onnx needs the onnx and onnxscript packages: pip install 'vaekit[onnx]'") from None


def run_folder(path: Path) -> Path:
    """The folder that holds what a checkpoint's run recorded (eval files, ``command.txt``): a run or
    export folder itself, the run of a checkpoint in its ``checkpoints/`` folder, else the file's folder."""
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == CKPT_DIR else path.parent


def evaluations(folder: Path) -> dict[str, dict]:
    """The readable ``eval-*.json`` (and an older ``eval.json``) of a run folder: file name -> document."""
    found = {}
    for p in sorted(folder.glob("eval-*.json")) + [folder / LEGACY_EVAL_FILE]:
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict):
            found[p.name] = doc
    return found


def training_commands(folder: Path, source: dict) -> list[str]:
    """The ``vaekit train`` commands run on the folder (``command.txt``), else those an export recorded."""
    try:
        lines = (folder / COMMAND_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = source.get("commands") or []
    return [line for line in lines if line.strip()]


def _check_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise VaekitError(f"cannot write the export folder {out}: a file of that name exists")
    if out.is_dir() and any(out.iterdir()):
        raise VaekitError(f"cannot write the export folder {out}: it exists and is not empty")
    blocking = [p for p in out.parents if p.exists() and not p.is_dir()]
    if blocking:
        raise VaekitError(f"cannot write the export folder {out}: {blocking[-1]} is a file, not a folder")


def export(run: str | os.PathLike, out: str | os.PathLike, onnx: bool = False) -> dict:
    """Write the export folder ``out`` of the run folder, checkpoint file or export folder ``run``.

    The folder appears complete or not at all (``vaekit.checkpoint.create_run_dir``); an ``out`` that
    exists and is not empty is refused, and so is ``onnx=True`` for a model :func:`onnx_refusal`
    refuses, before anything is written. Returns ``config.json``'s document.
    """
    out = Path(out)
    _check_output(out)
    path, state = resolve(run)
    model, cfg = model_from_state(state, "cpu")
    if onnx:
        why = onnx_refusal(model, cfg.model.kind)
        if why is not None:
            raise VaekitError(f"{why}; export without --onnx writes its weights and config")
        _check_onnx_installed()
    folder = run_folder(path)
    source = _source_doc(path)
    weights, doc = export_documents(state)
    doc.update(source=str(path), commands=training_commands(folder, source))
    evals = evaluations(folder)

    def populate(tmp: Path) -> None:
        if onnx:
            doc["onnx"] = write_onnx(model, tmp)
        write_export_documents(tmp, weights, doc)
        for name, ev in evals.items():
            (tmp / name).write_text(json.dumps(ev, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(doc, evals, model), encoding="utf-8")

    create_run_dir(out, populate)
    return doc


def _source_doc(path: Path) -> dict:
    """An export folder's own ``config.json`` (what it recorded about its run), else {}."""
    if not is_export(path):
        return {}
    try:
        doc = json.loads((path / EXPORT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


# --- ONNX ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress lines, warnings and log records (torchvision absent, ...)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_graph(module: nn.Module, example: Tensor, path: Path, input_name: str, output_names: list[str]) -> None:
    """``module`` as an ONNX graph at ``path`` (torch.onnx's dynamo exporter), its first axis dynamic."""
    batch = torch.export.Dim("batch")
    try:
        with _quiet():
            program = torch.onnx.export(
                module.eval(),
                (example,),
                dynamo=True,
                input_names=[input_name],
                output_names=output_names,
                dynamic_shapes=({0: batch},),
                opset_version=ONNX_OPSET,
                verbose=False,
            )
            program.save(str(path))
    except VaekitError:
        raise
    except Exception as e:  # the exporter raises many types for operators it cannot translate
        raise VaekitError(f"ONNX export of the {path.stem} failed ({one_line(e)[:200]})") from None


def write_onnx(model, folder: Path) -> dict:
    """``encoder.onnx`` and ``decoder.onnx`` of a VAE that :func:`onnx_refusal` accepts, in ``folder``;
    returns their description for ``config.json``: names and shapes of inputs and outputs, the
    likelihood that reads ``params``, and its own parameters (e.g. a learned global log std)."""
    model = model.cpu().eval()
    D = int(model.latent_dim)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((EXAMPLE_BATCH, *model.data_shape), generator=gen)
    z = torch.randn((EXAMPLE_BATCH, D), generator=gen)
    export_graph(EncoderGraph(model.encoder), x, folder / ONNX_FILES["encoder"], "x", ["mean", "log_var"])
    export_graph(DecoderGraph(model.decoder), z, folder / ONNX_FILES["decoder"], "z", ["params"])
    likelihood = model.decoder.likelihood
    shape = [*map(int, model.data_shape)]
    return {
        "opset": ONNX_OPSET,
        "encoder": {
            "file": ONNX_FILES["encoder"],
            "inputs": {"x": ["batch", *shape]},
            "outputs": {"mean": ["batch", D], "log_var": ["batch", D]},
        },
        "decoder": {
            "file": ONNX_FILES["decoder"],
            "inputs": {"z": ["batch", D]},
            "outputs": {"params": ["batch", *map(int, likelihood.param_shape)]},
            "likelihood": type(likelihood).__name__,
            "likelihood_doc": _first_paragraph(type(likelihood).__doc__),
            # log p(x|z) of a dequantised likelihood is not the density at x (Likelihood.dequantize)
            "likelihood_dequantize": DEQUANTIZED_DOC if likelihood.dequantize else None,
            "likelihood_state": plain_json(likelihood.state_dict()),
        },
    }


DEQUANTIZED_DOC = (
    "x holds 8-bit levels k/255: log p(x|z) = sum_d log N(y_d; mu_d, sigma_d^2) - D log 256 at "
    "y = (255 x + u) / 256, u ~ U[0, 1)^D drawn afresh, a bound on the log-probability of the levels"
)


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


# --- the model card -----------------------------------------------------------------------------


def _figure(ev: dict, key: str, digits: int = 2) -> str:
    v = ev.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return "—"
    se = ev.get(f"{key}_stderr")
    has_se = isinstance(se, (int, float)) and math.isfinite(se)
    return f"{v:.{digits}f}" + (f" ± {se:.{digits}f}" if has_se else "")


def _eval_table(evals: dict[str, dict], step: int) -> list[str]:
    if not evals:
        return ["No evaluation was recorded in the run folder (`vaekit evaluate RUN` writes one)."]
    lines = [
        "| file | split | n | K | NLL (nats) | ELBO | KL | bits/dim | active units | step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ev in evals.items():
        k = ev.get("k") if ev.get("k") is not None else ("exact" if ev.get("log_prob_kind") == "exact" else "—")
        au = ev.get("active_units")
        au = "—" if au is None else (f"{au} / {ev['latent_dim']}" if "latent_dim" in ev else str(au))
        cells = [name, ev.get("split", "test"), ev.get("n", "—"), k, _figure(ev, "nll"), _figure(ev, "elbo")]
        cells += [_figure(ev, "kl"), _figure(ev, "bpd", 4), au, ev.get("step", "—")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    lines.append(
        "NLL: -log p(x) per example, importance-sampled with K samples from q(z|x) (an upper bound in "
        "expectation) or exact; ± one standard error over the n examples."
    )
    stale = sorted({ev.get("step") for ev in evals.values() if ev.get("step") not in (None, step)})
    if stale:
        lines.append(f"Evaluated at step(s) {', '.join(map(str, stale))}; the exported weights are of step {step}.")
    return lines


def model_card(doc: dict, evals: dict[str, dict], model) -> str:
    """``README.md`` of an export folder: what the model is, what it was trained on, how well it does,
    how it was trained and how to use it."""
    cfg = doc["config"]
    data, m, t = cfg["data"], cfg["model"], cfg["train"]
    n_params = sum(p.numel() for p in model.parameters())
    commands = doc.get("commands") or []
    lines = [
        f"# {cfg['preset']} ({m['kind']}): a vaekit model",
        "",
        f"Exported by vaekit {__version__} from `{doc['source']}` at step {doc['step']} "
        f"({'EMA' if doc['weights'] == 'ema' else 'trained'} weights); {n_params:,} parameters.",
        "",
        "## Data",
        "",
        f"- dataset: `{data['name']}`; one example has shape {doc['data_shape']}",
        f"- binarisation: {data['binarize']}; values per dimension: {data.get('levels') or 'continuous'}",
        "",
        "## Model",
        "",
        f"- preset `{cfg['preset']}`, kind `{m['kind']}`"
        + (f", {m['latent_dim']} latent dimensions" if model.has_latents else ""),
        f"- likelihood `{m['likelihood']}`, encoder `{m['encoder']}`, decoder `{m['decoder']}`, prior `{m['prior']}`"
        if model.has_latents
        else f"- `{type(model).__name__}`",
        f"- {doc['step']} steps of batch {t['batch_size']} (the config asks for {t['epochs']} epochs), "
        f"learning rate {t['lr']}, seed {t['seed']}",
        "",
        "## Evaluation",
        "",
        *_eval_table(evals, doc["step"]),
        "",
        "## Training",
        "",
        *(["```", *commands, "```"] if commands else ["The command that trained it was not recorded."]),
        "",
        "The full resolved config is in `config.json` (`config`).",
        "",
        "## Use",
        "",
        "```python",
        "import vaekit",
        "",
        'model = vaekit.load("THIS_FOLDER")  # model.safetensors + config.json',
        "model.sample(16)",
        "```",
        "",
        "Every `vaekit` verb on a trained model takes this folder: `vaekit sample THIS_FOLDER -o samples.png`.",
        *_onnx_section(doc, m),
    ]
    return "\n".join(lines) + "\n"


def _shape(dims: list) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"


def _onnx_section(doc: dict, m: dict) -> list[str]:
    if "onnx" not in doc:
        return []
    dec = doc["onnx"]["decoder"]
    D = dec["inputs"]["z"][1]
    prior = (
        "z ~ N(0, I)"
        if m["prior"] == "normal"
        else f"z from the `{m['prior']}` prior, which the graphs do not hold (use vaekit's `model.prior.sample`)"
    )
    return [
        "",
        "## ONNX",
        "",
        f"- `encoder.onnx`: `x` {_shape(doc['onnx']['encoder']['inputs']['x'])} -> `mean`, `log_var` "
        f"[batch, {D}]: q(z|x) = N(mean, diag exp(log_var)).",
        f"- `decoder.onnx`: `z` [batch, {D}] -> `params` {_shape(dec['outputs']['params'])}, read by the "
        f"likelihood `{dec['likelihood']}`: {dec['likelihood_doc']}",
        "",
        "Sampling is left outside the graphs: a reconstruction draws z = mean + exp(log_var / 2) * eps, "
        f"eps ~ N(0, I); a sample draws {prior}; then x ~ p(x|z) from `params`. The likelihood's own "
        "parameters (e.g. a learned log standard deviation) are in `config.json`, "
        "`onnx.decoder.likelihood_state`.",
    ] + (
        [
            "",
            f"The likelihood models dequantised 8-bit data: {dec['likelihood_dequantize']}; a draw y maps to "
            "the level floor(256 y) / 255 (clamped to [0, 1]).",
        ]
        if dec.get("likelihood_dequantize")
        else []
    )
