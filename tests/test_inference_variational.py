"""Per-datapoint SVI, semi-amortised SVI, the gap decomposition, the posterior stand-in model and the
masked decoder (vaekit.inference.variational), and the VAE mixture priors."""

import pytest
import torch

from tests.helpers import tiny_digits_vae_args
from vaekit.config import build_config
from vaekit.distributions import MixturePrior, VampPrior
from vaekit.errors import ConfigError, VaekitError
from vaekit.inference import (
    SVI_INITS,
    MaskedDecoder,
    MaskedLikelihood,
    PosteriorModel,
    format_gap_table,
    gap_decomposition,
    importance_sampled_log_prob,
    posterior_log_prob,
    svi,
)
from vaekit.models.vae import build_vae
from vaekit.objectives import elbo_terms


def binary_patterns(n=48, seed=0):
    """Noisy binary 1x4x4 images from four prototypes (cheap, learnable structure)."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(4, 1, 4, 4, generator=g) > 0.5).float()
    x = protos[torch.randint(4, (n,), generator=g)]
    flip = torch.rand(x.shape, generator=g) < 0.05
    return torch.where(flip, 1 - x, x)


def tiny_vae(steps=150, prior="normal", x=None):
    cfg = build_config(overrides={"hidden": [32], "latent_dim": 2, "prior": prior, "components": 3})
    vae = build_vae(cfg.model, (1, 4, 4), cfg.train)
    if prior == "vamp":
        vae.prior_module.bind(vae.encoder, (1, 4, 4))
    x = binary_patterns() if x is None else x
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for step in range(steps):
        opt.zero_grad()
        vae.loss(x, step)["loss"].mean().backward()
        opt.step()
    return vae, x


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return tiny_vae()


def test_semi_amortised_svi_starts_at_amortised_elbo_and_climbs(trained):
    vae, x = trained
    before = [p.detach().clone() for p in vae.parameters()]
    torch.manual_seed(1)
    res = svi(vae, x, steps=100, lr=5e-2, samples=4, init="encoder")
    # the decoder (and encoder) are untouched and left trainable
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert all(p.requires_grad for p in vae.parameters())
    with torch.no_grad():
        amort = torch.stack([elbo_terms(vae, x, 50)["elbo"] for _ in range(4)]).mean(0)
        optd = posterior_log_prob(vae, x, res["mean"], res["log_var"], k=200)
    # it starts at the amortised ELBO (same q, a different Monte-Carlo draw) ...
    assert res["history"][0].item() == pytest.approx(amort.mean().item(), abs=0.5)
    # ... and climbs: the optimised ELBO is at least the amortised one, on average and per example
    assert optd["elbo"].mean() >= amort.mean()
    assert (optd["elbo"] >= amort - 0.3).float().mean() > 0.9
    assert res["history"][-10:].mean() > res["history"][:10].mean()
    assert res["mean"].shape == (48, 2) and res["log_var"].shape == (48, 2)


def test_svi_from_prior_reaches_the_amortised_elbo(trained):
    vae, x = trained
    torch.manual_seed(2)
    res = svi(vae, x, steps=200, lr=5e-2, samples=2, init="prior")
    with torch.no_grad():
        amort = elbo_terms(vae, x, 100)["elbo"].mean()
        optd = posterior_log_prob(vae, x, res["mean"], res["log_var"], k=200)["elbo"].mean()
    assert res["history"][0] < amort  # the prior is a poor posterior
    assert optd >= amort - 0.2
    # batching over examples is only a memory bound: the same optimisation per example
    torch.manual_seed(3)
    a = svi(vae, x[:6], steps=3, lr=1e-2, init="encoder")
    torch.manual_seed(3)
    b = svi(vae, x[:6], steps=3, lr=1e-2, init="encoder", batch_size=6)
    torch.testing.assert_close(a["mean"], b["mean"])


def test_gap_parts_non_negative_within_stderr(trained):
    vae, x = trained
    torch.manual_seed(4)
    res = gap_decomposition(vae, x, k=200, svi_steps=100, svi_lr=5e-2, svi_samples=4)
    for key in ("approximation_gap", "amortisation_gap", "inference_gap"):
        assert res[key]["mean"] >= -2 * res[key]["stderr"], (key, res[key])
    # the parts add up, example by example
    per = res["per_example"]
    torch.testing.assert_close(per["approximation_gap"] + per["amortisation_gap"], per["inference_gap"])
    # log p(x) with q* as proposal is at least its ELBO for every example (same samples)
    assert (per["log_px"] >= per["elbo_svi"] - 1e-4).all()
    assert res["log_px"]["mean"] == pytest.approx(res["log_px_amortised_proposal"]["mean"], abs=1.0)
    assert res["log_px"]["mean"] >= res["log_px_amortised_proposal"]["mean"]  # the better proposal per example
    table = format_gap_table({"test": res})
    assert "approx. gap" in table and "test" in table


def test_masked_svi_ignores_unobserved_pixels(trained):
    vae, x = trained
    mask = torch.zeros(1, 4, 4)
    mask[:, :2] = 1  # observe the top half
    x2 = x.clone()
    x2[:, :, 2:] = 1 - x2[:, :, 2:]  # change only the unobserved half
    torch.manual_seed(5)
    a = svi(vae, x, steps=5, lr=1e-2, init="prior", mask=mask)
    torch.manual_seed(5)
    b = svi(vae, x2, steps=5, lr=1e-2, init="prior", mask=mask)
    torch.testing.assert_close(a["mean"], b["mean"])
    torch.testing.assert_close(a["history"], b["history"])


def test_importance_sampling_with_svi_posterior_is_consistent(trained):
    vae, x = trained
    torch.manual_seed(6)
    with torch.no_grad():
        mu, log_var = vae.encode(x)
        a = posterior_log_prob(vae, x, mu, log_var, k=2000)["log_px"]
        b = importance_sampled_log_prob(vae, x, k=2000)["log_px"]
    # the same proposal through both paths: the same estimate up to Monte-Carlo noise
    assert (a - b).mean().abs() < 0.1
    assert (a - b).abs().max() < 1.0


def test_svi_bad_arguments(trained):
    vae, x = trained
    with pytest.raises(VaekitError):
        svi(vae, x, steps=1, init="nowhere")
    with pytest.raises(VaekitError):
        svi(vae, x, steps=1, mask=torch.ones(3, 3))


@pytest.mark.parametrize("prior", ["mixture", "vamp"])
def test_mixture_priors_train_and_sample(prior):
    torch.manual_seed(7)
    vae, x = tiny_vae(steps=20, prior=prior)
    p = vae.prior
    z = torch.randn(5, 3, 2)
    lp = p.log_prob(z)
    assert lp.shape == (5, 3) and torch.isfinite(lp).all()
    # the mixture density by hand: logsumexp_k log pi_k + log N(z; mu_k, sigma_k)
    comps = torch.distributions.Independent(torch.distributions.Normal(p.means, 1 / p.prec_chol), 1)
    manual = torch.logsumexp(comps.log_prob(z.unsqueeze(-2)) + p.log_weights, -1)
    torch.testing.assert_close(lp, manual)
    assert vae.sample(4).shape == (4, 1, 4, 4)
    terms = vae.loss(x)
    assert torch.isfinite(terms["elbo"]).all()
    # prior parameters receive gradients
    vae.zero_grad()
    terms["loss"].mean().backward()
    owner = vae.prior_module
    g = owner.means.grad if prior == "mixture" else owner.pseudo_inputs.grad
    assert g is not None and g.abs().sum() > 0
    # state dict round trip (the VampPrior stores its pseudo-inputs, not a second encoder)
    keys = vae.state_dict().keys()
    assert not any(k.startswith("prior_module.encoder") or k.startswith("prior_module._encoder") for k in keys)


def test_vamp_prior_unbound_is_a_clear_error():
    with pytest.raises(VaekitError, match="bound"):
        VampPrior(2, 3)()
    assert isinstance(MixturePrior(2, 3)().sample((4,)), torch.Tensor)


def test_cli_gap_writes_json(tmp_path, capsys):
    import json

    from vaekit.cli import main

    run = tmp_path / "vae"
    assert main(tiny_digits_vae_args(run)) == 0
    assert main(["gap", str(run), "--k", "20", "--n", "8", "--svi-steps", "5"]) == 0
    doc = json.loads((run / "gap.json").read_text())
    assert set(doc["splits"]) == {"test", "train"}
    for split in doc["splits"].values():
        for key in ("log_px", "elbo_svi", "elbo_amortised", "approximation_gap", "amortisation_gap"):
            assert set(split[key]) == {"mean", "stderr"}
    assert "approx. gap" in capsys.readouterr().out
    assert main(["gap", str(run), "--splits", "valid"]) == 2


def test_posterior_model_with_the_encoder_is_the_model(trained):
    """Given q = the encoder's q(z|x), the stand-in gives the same estimates as the model itself."""
    vae, x = trained
    post = PosteriorModel(vae, vae.encoder)
    assert post.has_latents and not post.has_codes
    assert post.decoder.body is vae.decoder.body and post.decoder.likelihood is vae.decoder.likelihood
    with torch.no_grad():
        torch.manual_seed(8)
        a = importance_sampled_log_prob(post, x, k=50)
        torch.manual_seed(8)
        b = importance_sampled_log_prob(vae, x, k=50)
        torch.manual_seed(9)
        e1 = elbo_terms(post, x, 3)
        torch.manual_seed(9)
        e2 = elbo_terms(vae, x, 3)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    for key in ("rec", "kl", "elbo"):
        torch.testing.assert_close(e1[key], e2[key], rtol=0, atol=0)


def test_masked_decoder_counts_observed_dimensions_only(trained):
    vae, x = trained
    z = torch.randn(3 * x.shape[0], 2)  # 3 sample copies of every example (importance_terms layout)
    xr = x.repeat(3, 1, 1, 1)
    mask = (torch.rand(x.shape) < 0.5).float()
    with torch.no_grad():
        full = vae.decoder(z).base_dist.log_prob(xr)  # per pixel
        masked = MaskedDecoder(vae.decoder, mask).log_likelihood(z, xr)
        unmasked = MaskedDecoder(vae.decoder).log_likelihood(z, xr)
        ones = MaskedDecoder(vae.decoder, torch.ones_like(x)).log_likelihood(z, xr)
    torch.testing.assert_close(masked, (full * mask.repeat(3, 1, 1, 1)).flatten(1).sum(-1))
    torch.testing.assert_close(unmasked, vae.decoder.log_likelihood(z, xr))
    torch.testing.assert_close(ones, unmasked, rtol=1e-5, atol=1e-4)
    with pytest.raises(VaekitError, match="divide"):
        MaskedDecoder(vae.decoder, mask[:5]).log_likelihood(z, xr)
    with pytest.raises(VaekitError, match="factorised"):
        MaskedLikelihood(torch.distributions.Normal(torch.zeros(3), 1.0), mask)


def test_svi_inits(trained):
    vae, x = trained
    assert set(SVI_INITS) == {"encoder", "prior"}
    mu, log_var = SVI_INITS["prior"](vae, x[:5])
    assert torch.equal(mu, torch.zeros(5, 2)) and torch.equal(log_var, torch.zeros(5, 2))  # N(0, I) prior
    with torch.no_grad():
        enc_mu, enc_lv = vae.encode(x[:5])
    mu, log_var = SVI_INITS["encoder"](vae, x[:5])
    torch.testing.assert_close(mu, enc_mu)
    torch.testing.assert_close(log_var, enc_lv)
    with pytest.raises(ConfigError, match="unknown SVI init 'encodr' \\(did you mean 'encoder'\\?\\)"):
        svi(vae, x, steps=1, init="encodr")
    # zero steps: the result is the starting point, and its ELBO is both the first and the last
    torch.manual_seed(10)
    res = svi(vae, x[:5], steps=0, init="encoder")
    torch.testing.assert_close(res["mean"], enc_mu)
    torch.testing.assert_close(res["elbo_init"], res["elbo_final"])
    assert res["history"].shape == (1,)


def test_svi_reports_progress_per_step(trained):
    vae, x = trained
    seen = []
    torch.manual_seed(11)
    res = svi(vae, x, steps=4, batch_size=20, progress=lambda step, elbo: seen.append((step, elbo)))
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    # reported once, from the last batch, as the mean over all examples
    assert [e for _, e in seen] == pytest.approx(res["history"][:4].tolist())


def test_svi_gap_and_proposals_follow_a_float64_model(trained):
    """SVI from the prior, the gap split and the Gaussian-proposal estimator run in the model's dtype."""
    import copy

    vae, x = trained
    vae64, x64 = copy.deepcopy(vae).double(), x[:6].double()
    torch.manual_seed(12)
    res = svi(vae64, x64, steps=3, lr=1e-2, init="prior")
    assert res["mean"].dtype == res["log_var"].dtype == res["elbo_final"].dtype == torch.float64
    for init in ("encoder", "prior"):
        assert all(p.dtype == torch.float64 for p in SVI_INITS[init](vae64, x64))
    with torch.no_grad():
        est = posterior_log_prob(vae64, x64, res["mean"], res["log_var"], k=10)
    assert est["log_px"].dtype == torch.float64
    gap = gap_decomposition(vae64, x64, k=10, svi_steps=2, svi_init="prior")
    assert gap["per_example"]["log_px"].dtype == torch.float64
    # a q* from the prior after 2 steps is a poor proposal: log p(x) keeps the encoder's estimate
    assert gap["log_px"]["mean"] >= gap["log_px_amortised_proposal"]["mean"] - 1e-9


def _iaf_vae(steps=150):
    torch.manual_seed(0)
    cfg = build_config(
        overrides={
            "hidden": [32],
            "latent_dim": 2,
            "posterior_flow": "iaf",
            "posterior_flow_layers": 2,
            "flow_hidden": 16,
            "flow_blocks": 1,
            "posterior_flow_context": 4,
        }
    )
    vae = build_vae(cfg.model, (1, 4, 4), cfg.train)
    with torch.no_grad():  # a flow well away from its near-identity initialisation
        for p in vae.encoder.flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return _fit(vae, steps)


def _fit(vae, steps):
    x = binary_patterns()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for step in range(steps):
        opt.zero_grad()
        vae.loss(x, step)["loss"].mean().backward()
        opt.step()
    return vae, x


@pytest.fixture(scope="module")
def trained_iaf():
    return _iaf_vae()


def test_svi_optimises_in_the_flow_posteriors_own_family(trained_iaf):
    """For a flow posterior phi = (mu, log sigma^2, h) per example: SVI from the encoder starts at
    the amortised q(z|x) itself, and its moments are those of that q."""
    vae, x = trained_iaf
    xs = x[:6]
    with torch.no_grad():
        phi = vae.encoder.variational_params(xs)
    start = SVI_INITS["encoder"](vae, xs)
    assert len(start) == 3 and all(torch.equal(a, b) for a, b in zip(start, phi))
    res = svi(vae, xs, steps=0, init="encoder")
    assert all(torch.equal(a, b) for a, b in zip(res["params"], phi))
    with torch.no_grad():
        mean, log_var = vae.encode(xs)
    torch.testing.assert_close(res["mean"], mean)
    torch.testing.assert_close(res["log_var"], log_var)


def test_gap_with_a_flow_posterior_follows_cremer_et_al(trained_iaf):
    """q* in the encoder's own family: with no SVI step q* is the amortised q(z|x), so the
    amortisation gap is zero; optimised, both gaps are non-negative (Cremer et al. 2018)."""
    vae, x = trained_iaf
    torch.manual_seed(13)
    res = gap_decomposition(vae, x, k=500, svi_steps=0)
    amort = res["amortisation_gap"]
    assert abs(amort["mean"]) <= 3 * amort["stderr"] + 1e-3, amort
    assert res["per_example"]["amortisation_gap"].abs().max() < 0.5
    torch.manual_seed(14)
    res = gap_decomposition(vae, x, k=200, svi_steps=100, svi_lr=5e-2, svi_samples=4)
    for key in ("approximation_gap", "amortisation_gap", "inference_gap"):
        assert res[key]["mean"] >= -2 * res[key]["stderr"], (key, res[key])
    assert (res["per_example"]["log_px"] >= res["per_example"]["elbo_svi"] - 1e-4).all()


def test_svi_and_the_gap_need_no_special_case_for_two_stochastic_layers():
    """A Gaussian q*(z_1, z_2) per example, scored against the hierarchical prior by its Monte-Carlo KL."""
    torch.manual_seed(0)
    cfg = build_config(overrides={"hidden": [32], "latent_dim": 4, "stochastic_layers": [2, 2], "layer_hidden": [8]})
    vae = build_vae(cfg.model, (1, 4, 4), cfg.train)
    x = binary_patterns(16)
    torch.manual_seed(1)
    res = svi(vae, x, steps=60, lr=5e-2, samples=4, init="encoder")
    assert res["mean"].shape == (16, 4)
    assert res["history"][-10:].mean() > res["history"][:10].mean()
    gaps = gap_decomposition(vae, x, k=50, svi_steps=20)
    assert gaps["log_px"]["mean"] >= gaps["elbo_svi"]["mean"] - 3 * gaps["approximation_gap"]["stderr"]


def test_gap_decomposition_and_completion_run_in_eval_mode_and_restore_the_callers_mode(trained):
    from vaekit.completion import complete

    vae, x = trained
    was, seen = vae.training, []
    hook = vae.encoder.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    try:
        vae.train()  # as a caller in the middle of training leaves it: batch norm would use batch statistics
        gap_decomposition(vae, x[:4], k=3, svi_steps=2)
        complete(vae, x[:2], torch.ones(1, 4, 4).index_fill_(1, torch.tensor([2, 3]), 0), n_completions=2, k=3)
        assert seen and not any(seen) and vae.training
        assert all(p.requires_grad for p in vae.parameters())
    finally:
        hook.remove()
        vae.train(was)
