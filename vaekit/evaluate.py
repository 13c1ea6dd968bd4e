"""Honest metrics, the same for every model.

- ``nll``: -log p(x) in nats per example, averaged over the evaluated examples, with its
  standard error over examples. Exact for flows and mixtures; for VAEs the importance-
  sampled estimate with K samples from q(z|x) (Burda et al. 2015), which is a stochastic
  lower bound on log p(x), so the reported NLL is an upper bound in expectation.
- ``elbo``, ``rec`` (E_q log p(x|z)), ``kl`` (KL(q(z|x) || p(z))): one-sample terms with the
  analytic KL where it exists.
- ``bpd``: nll / (D ln 2), bits per data dimension (of the data as modelled: binary pixels
  for Bernoulli decoders), by the model's ``bits_per_dim``; densities of 8-bit data model their
  uniform dequantisation, whose nll already carries the bin width (``model.dequantize``); null
  where bits per dimension mean nothing (data that are neither binary nor 8-bit:
  ``GenerativeModel.data_levels``; a density at the data's values: ``GenerativeModel.density``).
- ``bic``: for maximum-likelihood fits (``has_bic``: mixtures), -2 log L + p log N over the N
  evaluated examples, p the model's free parameters (Schwarz 1978); lower is better.
- ``active_units``: latent dimensions u with Cov_x(E_q[z_u | x]) > 0.01 (Burda et al. 2015,
  Sec. 5.2); ``active_units_per_layer`` splits them by stochastic layer (``VAE.latent_layers``).
  The posterior mean is that of ``model.encode``: E_q[z|x] itself, for the upper layers of a
  hierarchical VAE estimated from fixed ancestral draws (``HierarchicalEncoder.moments``).

The examples are cut into chunks whose size does not depend on the number of processes;
chunk ``c`` draws its importance samples after
``torch.manual_seed(seeding.derive_seed(seed, seeding.EVAL_CHUNK, c))``, the chunks
are dealt round-robin over the processes and the per-example results (log mean importance
weight, ESS, ELBO terms, posterior means) are all-gathered in example order: the estimate is a
pure function of (model, x, k, seed), the same on one process or many.

A long evaluation is resumable (``journal_dir``; ``vaekit evaluate`` and ``vaekit score`` keep it
in a folder beside their output until the output is written): every finished chunk's rows are
appended to a :class:`~vaekit.journal.Journal` named by a digest of the model, the data, K, the
seed, the chunk size, the precision, the device and the versions of torch and vaekit, so the same
call after a kill computes only the missing chunks and returns the same numbers, bit for bit on
the same number of threads, as an uninterrupted run. An image decoder's K=5000 evaluation of a
full test set can take hours on a CPU; this lets it outlive the process that started it.

With ``amp`` (off by default here; ``vaekit evaluate`` takes the run's ``train.eval_amp`` unless
``--amp`` / ``--no-amp`` says otherwise, and the end-of-epoch evaluation takes it too; ``auto`` is
decided for the device evaluating, ``vaekit.nets.resolve_amp``) the hidden layers of the net bodies
compute in bf16 under autocast (``vaekit.nets.autocast``; dense decoders leave their streamed float32
kernel for the generic path), while their output layers (``vaekit.precision.OutputLayer``: the parameters
of the likelihood and the posterior) and every log-likelihood, log-weight and logsumexp stay in
float32 or float64 (``inference.importance_sampled_log_prob``): faster where oneDNN or CUDA has bf16
kernels (a PixelCNN likelihood rounds the operands of two kinds of product only, on a CPU), and a
different number from the float32 one by the hidden layers' rounding, which
``bench/arch_speed.py --eval-amp`` and ``bench/eval_pair.py`` measure on a trained model. The result
records ``amp``.
"""

from __future__ import annotations

import collections
import itertools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import __version__, distributed
from .errors import ConfigError
from .inference import chunk_sizes, decoder_numel, importance_sampled_log_prob, mean_and_stderr
from .journal import Journal, key_digest, module_digest, tensor_digest
from .models import model_device
from .models.base import check_data_levels
from .nets import AUTOCAST_DEVICES, autocast, resolve_amp
from .objectives import elbo_terms
from .precision import BF16_REVISION, OneDNNBF16Pass, OutputLayer, onednn_bf16_available, onednn_bf16_rounding
from .seeding import EVAL_CHUNK, derive_seed

ACTIVE_UNIT_THRESHOLD = 0.01
BF16_HIDDEN = "bf16 hidden layers"  # the precision of an amp evaluation, in results and journal keys
SPLIT_MIN_CHUNKS = 64  # evaluation cuts the examples into at least this many chunks
LOG_PX = 0  # the column of log p(x) in every per-example row (and journal row), for every model kind
# an importance-sampled row: these columns, then the posterior means (latent_dim columns)
SAMPLED_COLUMNS = ("log_px", "ess", "elbo", "rec", "kl")
JOURNAL_NAME = "eval-{digest}.partial.jsonl"  # an evaluation's journal in its folder, named by its key


class LogLines:
    """Progress for a log file, where a progress bar would write a line per redraw: one line on
    stderr every ``every`` seconds, with the examples done, the seconds per example computed in
    this process (resumed ones excluded) and the time the rest will take at that rate. Has the
    ``update(n)`` / ``close()`` of a tqdm bar.

    The rate is the median over this process's last ``window`` examples (and at least its last
    three updates), each example costing its update's seconds over its size, not the mean since
    the start: a process stopped for a while (``kill -STOP``) then continued puts its whole pause on
    one update, which would otherwise inflate every later estimate by the pause over the examples
    done. With one or two updates so far, a pause still shows.

    Args:
        total: examples this process evaluates (resumed ones included).
        initial: examples already done (read back from a journal).
        desc: what runs, e.g. ``"evaluate"``.
        every: seconds between lines (the first one ``every`` seconds after the start).
        clock: seconds, monotonic (a parameter for tests).
        window: examples the median looks back over (at least 1), so the rate follows a host that
            speeds up or slows down.
    """

    def __init__(self, total: int, initial: int, desc: str, every: float, clock=time.monotonic, window: int = 1000):
        if window < 1:
            raise ValueError(f"window must be at least 1 example; got {window}")
        self.total, self.desc, self.every, self.clock, self.window = total, desc, every, clock, window
        self.done = initial
        self.last = self.tick = clock()
        self.recent: collections.deque[tuple[float, int]] = collections.deque()  # (s per example, examples)
        self.in_window = 0

    def update(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if n > 0:  # an empty update keeps its time for the next one
            self._record((now - self.tick) / n, n)
            self.tick = now
        if now - self.last < self.every or self.done >= self.total or not self.recent:
            return
        self.last = now
        each = self._median()
        print(
            f"vaekit: {self.desc}: {self.done:,} of {self.total:,} examples, {each:.3g} s each, "
            f"about {_duration((self.total - self.done) * each)} left",
            file=sys.stderr,
            flush=True,
        )

    def _record(self, each: float, n: int) -> None:
        self.recent.append((each, n))
        self.in_window += n
        while len(self.recent) > 3 and self.in_window - self.recent[0][1] >= self.window:
            self.in_window -= self.recent.popleft()[1]

    def _median(self) -> float:
        """The median of the per-example seconds in the window, each update weighing its size (the
        mean of the two middle examples when their count is even)."""
        middle = ((self.in_window - 1) // 2, self.in_window // 2)
        found, seen = [], 0
        for each, n in sorted(self.recent):
            seen += n
            while len(found) < 2 and middle[len(found)] < seen:
                found.append(each)
        return (found[0] + found[1]) / 2

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    """``seconds`` in the unit a reader wants: s under 90 s, min under 90 min, else h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@torch.no_grad()
def _per_example_split(
    model,
    x: Tensor,
    k: int,
    batch_size: int | None,
    seed: int,
    progress: bool,
    desc: str = "evaluate",
    amp: bool = False,
    journal_dir: str | Path | None = None,
    log_every: float | None = None,
) -> dict:
    """Per-example results in example order: this process's chunks, then an all-gather. With
    ``journal_dir``, finished chunks are read from and written to a :class:`~vaekit.journal.Journal`
    there (module docstring), which stays until the caller deletes it. ``progress``: a tqdm bar;
    else ``log_every``: a :class:`LogLines` line every that many seconds."""
    check_data_levels(model, x)
    N = x.shape[0]
    sampled = model.log_prob_kind == "importance-sampled"
    plan = _plan(model, x, k, batch_size, seed, amp)
    B, F = plan.B, plan.F
    n_chunks = math.ceil(N / B)
    W = distributed.world_size()
    r = distributed.rank() if W > 1 else 0  # a launched process outside a group does every chunk
    mine = list(range(r, n_chunks, W))
    if journal_dir is not None and W > 1:
        raise ConfigError("a resumable evaluation (a journal) runs on one process; drop the journal under torchrun")
    journal = None if journal_dir is None else Journal(*_journal_file_and_key(journal_dir, model, x, plan))
    done = {} if journal is None else journal.done
    resumed = {c for c in mine if c in done and done[c][0].shape == (min(B, N - c * B), F)}
    bar = None
    total, initial = sum(min(B, N - c * B) for c in mine), sum(min(B, N - c * B) for c in resumed)
    try:
        if progress and distributed.is_main():
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=initial, desc=desc, unit="ex", leave=False, dynamic_ncols=True)
        elif log_every is not None and distributed.is_main():
            bar = LogLines(total, initial, desc, log_every)
        rows = _chunk_rows(model, x, plan, mine, journal, resumed, bar)
    finally:
        if journal is not None:
            journal.close()  # released on a kill too; its finished chunks stay
        if bar:
            bar.close()
    local = torch.cat(rows) if rows else torch.zeros((0, F), dtype=torch.float64, device=x.device)
    parts = distributed.all_gather_rows(local)
    # rank q holds chunks q, q+W, ...: put every chunk back at its place
    table = torch.empty((N, F), dtype=torch.float64, device=x.device)
    for q, part in enumerate(parts):
        at = 0
        for c in range(q, n_chunks, W):
            n = min(B, N - c * B)
            table[c * B : c * B + n] = part[at : at + n]
            at += n
    extra = {"resumed": sum(min(B, N - c * B) for c in resumed)}
    if journal is not None:
        extra["journal_seconds"] = sum(done[c][1] for c in resumed)
    if not sampled:
        return {"log_px": table[:, LOG_PX], **extra}
    named = {name: table[:, i] for i, name in enumerate(SAMPLED_COLUMNS)}
    return {**extra, **named, "means": table[:, len(SAMPLED_COLUMNS) :]}


@dataclass(frozen=True)
class _Plan:
    """How an evaluation of x [N, ...] is cut and computed: K importance samples, the seed of the
    per-chunk noise, bf16 or not, B examples per chunk, the decoder's numbers per code (None for an
    exact log p(x)) and the F columns of each example's row."""

    k: int
    seed: int
    amp: bool
    B: int
    numel: int | None
    F: int


def _plan(model, x: Tensor, k: int, batch_size: int | None, seed: int, amp: bool) -> _Plan:
    """The plan of an evaluation of x [N, ...]: B from the memory budget of
    importance_sampled_log_prob (with its decoder activation factor), capped so that there are at
    least SPLIT_MIN_CHUNKS chunks."""
    sampled = model.log_prob_kind == "importance-sampled"
    numel = decoder_numel(model, x.shape[1:]) if sampled else None
    N = x.shape[0]
    B = batch_size or (chunk_sizes(N, k, numel)[0] if sampled else 1000)
    B = max(1, min(B, math.ceil(N / SPLIT_MIN_CHUNKS)))
    amp = resolve_amp(amp, x.device, "amp")
    return _Plan(k, seed, amp, B, numel, (len(SAMPLED_COLUMNS) + int(model.latent_dim)) if sampled else 1)


def _chunk_rows(model, x: Tensor, plan: _Plan, mine, journal, resumed, bar) -> list[Tensor]:
    """The rows [n_c, F] (float64) of this process's chunks ``mine``: read back from the journal for
    the ``resumed`` ones, computed (and journalled) for the others."""
    k, seed, amp, B, numel = plan.k, plan.seed, plan.amp, plan.B, plan.numel
    sampled = numel is not None
    done = {} if journal is None else journal.done
    rows = []
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # leave the caller's random state alone
        for c in mine:
            if c in resumed:
                rows.append(done[c][0].to(x.device))
                continue
            t0 = time.perf_counter()
            xc = x[c * B : (c + 1) * B]
            torch.manual_seed(derive_seed(seed, EVAL_CHUNK, c))
            if sampled:
                out = importance_sampled_log_prob(model, xc, k=k, batch_size=xc.shape[0], data_numel=numel, amp=amp)
                with autocast(x.device, amp, outputs_float32=True):  # hidden layers in bf16
                    t = elbo_terms(model, xc, 1)
                    means = model.encode(xc)[0]
                named = {"log_px": out["log_px"], "ess": out["ess"], "elbo": t["elbo"], "rec": t["rec"], "kl": t["kl"]}
                feats = torch.cat([torch.stack([named[c] for c in SAMPLED_COLUMNS], 1), means], 1)
            else:
                with autocast(x.device, amp, outputs_float32=True):
                    feats = model.log_prob(xc).unsqueeze(1)
            rows.append(feats.double())
            if journal is not None:
                journal.append(c, rows[-1], time.perf_counter() - t0)
            if bar:
                bar.update(xc.shape[0])
    return rows


def _onednn_pass(model, x: Tensor) -> bool:
    """Whether the model's evaluation on ``x``'s device opens oneDNN's bf16 math mode."""
    return x.device.type == "cpu" and any(isinstance(m, OneDNNBF16Pass) for m in model.modules())


def _journal_file_and_key(journal_dir, model, x: Tensor, plan: _Plan) -> tuple[Path, dict]:
    """The journal of an evaluation in ``journal_dir``, named by the digest of what its chunks are a
    function of: the model (modules, settings, weights), the data, K, the seed, the chunk size, the
    precision (under bf16 with ``precision.BF16_REVISION`` and, on a CPU, whether oneDNN has bf16
    kernels and, for a model with a :class:`~vaekit.precision.OneDNNBF16Pass` (the PixelCNN), which
    products its bf16 math mode rounds here: where none, that pass computes in float32), the device,
    and the versions of torch and vaekit. Models without such a pass key alike on the CPUs whose
    math modes differ, so their journals move between them."""
    key = {
        "what": "vaekit.evaluate per-example rows",
        "model": module_digest(model),
        "data": tensor_digest({"x": x}),
        "n": int(x.shape[0]),
        "k": int(plan.k),
        "seed": int(plan.seed),
        "chunk": int(plan.B),
        "amp": BF16_HIDDEN if plan.amp else False,  # True while output layers ran in bf16
        **({"bf16_revision": BF16_REVISION} if plan.amp else {}),  # float32 keys stay as they were
        **({"onednn_bf16": onednn_bf16_available()} if plan.amp and x.device.type == "cpu" else {}),
        **({"onednn_bf16_math": list(onednn_bf16_rounding())} if plan.amp and _onednn_pass(model, x) else {}),
        "device": torch.cuda.get_device_name(x.device) if x.device.type == "cuda" else x.device.type,
        "torch": torch.__version__,  # another build may round differently: no mixing of chunks
        "vaekit": __version__,
    }
    return Path(journal_dir) / JOURNAL_NAME.format(digest=key_digest(key)), key


def journals_in(journal_dir: str | Path) -> list[Path]:
    """Every evaluation journal in ``journal_dir`` (files named as :func:`journal_file` names them),
    sorted by name; none where the folder does not exist."""
    return sorted(Path(journal_dir).glob(JOURNAL_NAME.format(digest="*")))


def journal_file(
    journal_dir: str | Path,
    model,
    x: Tensor,
    k: int = 5000,
    batch_size: int | None = None,
    seed: int = 0,
    amp: bool = False,
) -> Path:
    """The journal file that :func:`evaluate` or :func:`per_example_log_prob` with these arguments
    keeps in ``journal_dir``: the one to delete once their result is safely kept (other evaluations'
    journals in the same folder are left alone)."""
    x = x.to(model_device(model))
    return _journal_file_and_key(journal_dir, model, x, _plan(model, x, k, batch_size, seed, amp))[0]


@torch.no_grad()
def per_example_log_prob(
    model,
    x: Tensor,
    k: int = 5000,
    batch_size: int | None = None,
    progress: bool = True,
    seed: int = 0,
    amp: bool = False,
    journal_dir: str | Path | None = None,
    log_every: float | None = None,
) -> Tensor:
    """log p(x) [N] (float64, nats) of each example of ``x`` [N, *data_shape], in example order:
    the numbers whose mean :func:`evaluate` reports as -``nll`` for the same (model, x, k, seed),
    with the same chunks and per-chunk seeds (module docstring). Exact for flows and mixtures,
    importance-sampled with ``k`` samples for VAEs; the model must have a density
    (``log_prob_kind`` not ``none``). The caller's random state is left alone. ``amp``: the nets'
    hidden layers under bf16 autocast, as in :func:`evaluate`; ``journal_dir``: resumable, and
    ``log_every``: progress lines for a log, as there."""
    model.eval()
    x = x.to(model_device(model))
    return _per_example_split(model, x, k, batch_size, seed, progress, "score", amp, journal_dir, log_every)["log_px"]


def _reconstruction_only(model, x: Tensor, batch_size: int, amp: bool) -> dict:
    """Models without a density (autoencoders): the reconstruction term log p(x|z=f(x)) alone."""
    t0 = time.perf_counter()
    with autocast(x.device, amp, outputs_float32=True):
        rec = torch.cat([model.loss(x[i : i + batch_size])["rec"] for i in range(0, x.shape[0], batch_size)])
    res = {"log_prob_kind": "none", "n": x.shape[0], "k": None, "amp": amp, "precision": precision(model, amp)}
    res["resumed"] = 0
    res.update({key: None for key in ("nll", "nll_stderr", "elbo", "kl", "bpd", "active_units")})
    res["rec"], res["rec_stderr"] = mean_and_stderr(rec)
    res["seconds"] = time.perf_counter() - t0
    return res


@torch.no_grad()
def evaluate(
    model,
    x: Tensor,
    k: int = 5000,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "evaluate",
    seed: int = 0,
    amp: bool = False,
    journal_dir: str | Path | None = None,
    log_every: float | None = None,
) -> dict:
    """Metrics of ``model`` on data ``x`` [N, *data_shape]; keys as in ``eval.json``.

    Args:
        k: importance samples per example (VAEs); ignored by exact models.
        batch_size: examples per pass (default: chosen to bound memory).
        seed: seeds the noise per chunk of examples (module docstring): the numbers are a pure
            function of (model, x, k, seed), the same on one process or many (under torchrun the
            examples are split over the processes), and the caller's random state is left alone.
        amp: true, false or ``auto`` (:func:`vaekit.nets.resolve_amp` on x's device): the hidden layers
            of the net bodies under bf16 autocast (module docstring); output layers, log-likelihoods,
            log-weights and logsumexps stay float32 or wider. Default off; recorded as a bool,
            ``amp``, in the result.
        journal_dir: make the evaluation resumable: every finished chunk is appended to a journal
            in this folder (``vaekit.journal``; one process only), named by a digest of the model
            (its modules, settings and weights), the data, ``k``, ``seed``, the chunk size,
            ``amp``, the device and the versions of torch and vaekit. The same call after a kill computes only
            the missing chunks and returns the same numbers as an uninterrupted run. The journal
            stays until the caller deletes it (:func:`journal_file` names it) once the result is
            safely kept; a call before that reads every chunk back at once. The result's ``resumed`` counts the
            examples read back, and ``seconds`` includes the time they took then.
        progress: a tqdm progress bar (on the main process).
        log_every: without ``progress``, a line on stderr every ``log_every`` seconds with the
            examples done and the time left (:class:`LogLines`), for runs whose stderr is a log.
    """
    model.eval()
    x = x.to(model_device(model))
    amp = resolve_amp(amp, x.device, "amp")
    N = x.shape[0]
    if model.log_prob_kind == "none":
        return _reconstruction_only(model, x, batch_size or 1000, amp)
    t0 = time.perf_counter()
    per = _per_example_split(model, x, k, batch_size, seed, progress, desc, amp, journal_dir, log_every)
    t0 -= per.get("journal_seconds", 0.0)  # the seconds spent on the resumed chunks before
    res: dict = {"log_prob_kind": model.log_prob_kind, "n": N, "amp": amp, "precision": precision(model, amp)}
    res["resumed"] = per["resumed"]
    if model.log_prob_kind == "importance-sampled":
        res["k"] = k
        res["ess_mean"] = float(per["ess"].mean())
        for key in ("elbo", "rec", "kl"):
            res[key], res[f"{key}_stderr"] = mean_and_stderr(per[key])
        res["active_units"] = _active(per["means"], ACTIVE_UNIT_THRESHOLD)
        layers = per["means"].split(list(model.latent_layers), dim=1)
        res["active_units_per_layer"] = [_active(m, ACTIVE_UNIT_THRESHOLD) for m in layers]
        res["latent_dim"] = int(model.latent_dim)
    else:
        res["k"] = None
        for key in ("elbo", "rec", "kl", "active_units"):
            res[key] = None
    return _finish(model, res, per["log_px"], t0)


def _active(means: Tensor, threshold: float) -> int:
    """Active units from posterior means [N, D]: dimensions with Var_x(E_q[z_u|x]) > threshold."""
    if means.shape[0] < 2:
        return 0
    return int((unit_activity(means) > threshold).sum())


def unit_activity(means: Tensor) -> Tensor:
    """The active-units statistic per latent dimension: Var_x(E_q[z_u|x]) [D] (float64) over the
    posterior means [N, D] of N >= 2 examples (Burda et al. 2015, Sec. 5.2); a unit is active
    where it exceeds ``ACTIVE_UNIT_THRESHOLD``."""
    return means.double().var(0)


def _finish(model, res: dict, log_px: Tensor, t0: float) -> dict:
    mean_lp, se = mean_and_stderr(log_px)
    res["nll"], res["nll_stderr"] = -mean_lp, se
    bpd = model.bits_per_dim(res["nll"])
    res["bpd"] = None if bpd is None else float(bpd)
    if model.has_bic:
        n = log_px.numel()
        res["bic"] = -2 * log_px.double().sum().item() + model.n_parameters() * math.log(n)
    res["seconds"] = time.perf_counter() - t0
    return res


def precision(model, amp: bool) -> str:
    """How the nets computed, in words for results: ``bf16 hidden layers`` (output layers, log-densities
    and sums in float32 or wider) where ``amp`` switched autocast on for a float32 model with nets
    (``OutputLayer``), else the dtype of the model's parameters or floating buffers (autocast leaves
    float64 alone, and a model without nets, a mixture, computes its densities with autocast off)."""
    floats = (t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point())
    p = next(floats, None)  # a mixture keeps its parameters in buffers
    dtype = p.dtype if p is not None else torch.get_default_dtype()
    nets = any(isinstance(m, OutputLayer) for m in model.modules())
    if amp and nets and dtype == torch.float32 and model_device(model).type in AUTOCAST_DEVICES:
        return BF16_HIDDEN
    return str(dtype).removeprefix("torch.")


def format_table(res: dict) -> str:
    """A two-column text table of the metrics, with ± standard errors."""
    rows = []
    for key in (
        "dataset",
        "split",
        "n",
        "k",
        "log_prob_kind",
        "precision",
        "nll",
        "elbo",
        "rec",
        "kl",
        "bpd",
        "bic",
        "active_units",
        "ess_mean",
        "seconds",
    ):
        if key not in res or res[key] is None:
            continue
        v = res[key]
        if isinstance(v, float):
            se = res.get(f"{key}_stderr")
            s = f"{v:.3f}" + (f" ± {se:.3f}" if se is not None and not math.isnan(se) else "")
        else:
            s = str(v)
        if key == "active_units" and "latent_dim" in res:
            s += f" / {res['latent_dim']}"
        if key == "active_units" and len(res.get("active_units_per_layer") or []) > 1:
            s += " (per layer: " + ", ".join(map(str, res["active_units_per_layer"])) + ")"
        rows.append((key, s))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
