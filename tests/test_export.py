"""`vaekit export`: the folder loads back to the same model, every verb takes it, its files hold only
tensors and plain JSON, and the ONNX graphs compute what PyTorch computes."""

import json
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vaekit
from tests.helpers import digits
from vaekit import checkpoint as ckpt
from vaekit.cli import main
from vaekit.config import Config, build_config
from vaekit.export import onnx_refusal, write_onnx
from vaekit.models import build_model

QUIET = ["--no-progress", "--set", "tensorboard=false", "--set", "eval_n=20", "--set", "epochs=1"]
TRAIN = ["train", "--preset", "dense-digits", "--max-steps", "4", "--set", "hidden=[8]", "--set", "latent_dim=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny dense VAE with EMA weights, evaluated on 30 test digits."""
    out = tmp_path_factory.mktemp("export") / "run"
    assert main([*TRAIN, "--out", str(out), "--set", "ema=0.5", *QUIET]) == 0
    assert main(["evaluate", str(out), "--k", "5", "--n", "30", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def exported(run):
    out = run.parent / "exported"
    assert main(["export", str(run), "-o", str(out), "--onnx"]) == 0
    return out


def test_export_folder_holds_weights_config_card_evaluations_and_graphs(exported):
    names = {p.name for p in exported.iterdir()}
    assert names == {"model.safetensors", "config.json", "README.md", "eval-test.json", "encoder.onnx", "decoder.onnx"}
    assert ckpt.is_export(exported)


def test_loaded_export_gives_the_same_log_prob_exactly(run, exported):
    original, loaded = vaekit.load(run), vaekit.load(exported)
    x = digits(n=10)
    torch.manual_seed(3)
    a = original.log_prob(x, k=7)
    torch.manual_seed(3)
    b = loaded.log_prob(x, k=7)
    assert torch.equal(a, b)
    for k, v in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_weights_are_the_ema_weights(run, exported):
    state = ckpt.latest_checkpoint(run)[1]
    weights = load_file(exported / "model.safetensors")
    assert weights.keys() == state["ema"].keys()
    assert all(torch.equal(weights[k], state["ema"][k]) for k in weights)
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in weights)  # EMA differs from the raw
    assert json.loads((exported / "config.json").read_text())["weights"] == "ema"


def test_safetensors_file_is_a_json_header_and_raw_tensor_bytes(exported):
    """The format has no room for code: an 8-byte length, a JSON header of names, dtypes, shapes and
    byte ranges, then exactly the tensors' bytes."""
    data = (exported / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__")
    ends = sorted(h["data_offsets"][1] for h in header.values())
    assert 8 + n + ends[-1] == len(data)
    itemsize = {"F32": 4, "F64": 8, "I64": 8, "BOOL": 1}
    assert sum(int(np.prod(h["shape"])) * itemsize[h["dtype"]] for h in header.values()) == ends[-1]


def test_config_json_is_plain_json_with_what_load_needs(exported):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    doc = json.loads((exported / "config.json").read_text(), parse_constant=refuse)
    assert doc["format"] == ckpt.EXPORT_FORMAT and doc["vaekit_version"] == vaekit.__version__
    assert doc["data_shape"] == [1, 8, 8] and doc["step"] == 4
    assert Config.from_dict(doc["config"]).model.latent_dim == 2
    assert "optimizer" not in doc["state"] and "log_window" not in doc["state"]
    assert doc["onnx"]["encoder"]["outputs"] == {"mean": ["batch", 2], "log_var": ["batch", 2]}


def test_model_card_names_data_preset_evaluation_and_command(run, exported):
    card = (exported / "README.md").read_text()
    ev = json.loads((run / "eval-test.json").read_text())
    command = (run / "command.txt").read_text().splitlines()[0]
    assert command.startswith("vaekit train --preset dense-digits --max-steps 4")
    assert command in card and "dense-digits" in card and "`digits`" in card
    assert f"| eval-test.json | test | 30 | 5 | {ev['nll']:.2f} ± {ev['nll_stderr']:.2f} |" in card
    assert "## ONNX" in card and "z ~ N(0, I)" in card


def test_cli_verbs_accept_the_export_folder(run, exported, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(exported, folder)
    assert main(["sample", str(folder), "-n", "4", "-o", str(tmp_path / "s.npy")]) == 0
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "r.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "s.npy"), np.load(tmp_path / "r.npy"))
    assert main(["evaluate", str(folder), "--k", "5", "--n", "30", "--no-progress"]) == 0
    mine, theirs = (json.loads((d / "eval-test.json").read_text()) for d in (folder, run))
    assert mine["nll"] == theirs["nll"] and mine["step"] == theirs["step"] == 4
    assert main(["reconstruct", str(folder), "-n", "2", "-o", str(tmp_path / "r.png")]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(folder)]) == 2
    assert "an exported model" in capsys.readouterr().err


def test_an_evaluation_journal_of_the_run_resumes_from_its_export(run, exported, tmp_path, capsys, monkeypatch):
    """The export's weights give the checkpoint's model digest: an evaluation of the run folder
    and one of its export, with the same arguments and output, keep one journal, and the second
    reads every example back from the first's rows instead of computing them."""
    import vaekit.evaluate

    out = tmp_path / "eval.json"
    argv = ["--n", "4", "--k", "3", "--no-progress", "--keep-journal", "-o", str(out)]
    assert main(["evaluate", str(run), *argv]) == 0
    first = json.loads(out.read_text())
    (journal,) = (tmp_path / "eval.json.journal").iterdir()
    monkeypatch.setattr(vaekit.evaluate, "importance_sampled_log_prob", lambda *a, **kw: pytest.fail("recomputed"))
    assert main(["evaluate", str(exported), *argv]) == 0
    again = json.loads(out.read_text())
    assert [p.name for p in (tmp_path / "eval.json.journal").iterdir()] == [journal.name]
    assert again["resumed"] == 4 and again["nll"] == first["nll"] and again["elbo"] == first["elbo"]


def test_an_export_can_be_exported_again(exported, tmp_path):
    again = tmp_path / "again"
    assert main(["export", str(exported), "-o", str(again)]) == 0
    assert (again / "README.md").read_text().count("vaekit train --preset dense-digits") == 1
    a, b = load_file(exported / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def onnx_outputs(folder, x, z):
    import onnxruntime as ort

    enc = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
    mean, log_var = enc.run(["mean", "log_var"], {"x": x.numpy()})
    (params,) = dec.run(["params"], {"z": z.numpy()})
    return torch.from_numpy(mean), torch.from_numpy(log_var), torch.from_numpy(params)


def assert_graphs_match(model, folder):
    x = digits(n=5)  # another batch size than the traced example's
    z = torch.randn(7, model.latent_dim)
    mean, log_var, params = onnx_outputs(folder, x, z)
    with torch.no_grad():
        for got, want in zip((mean, log_var, params), (*model.encoder.variational_params(x), model.decoder.body(z))):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        q = model.encoder(x)  # the distributions the graphs' outputs define are the model's
        torch.testing.assert_close(mean, q.mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(log_var, 2 * q.stddev.log(), atol=1e-5, rtol=0)
        p_torch, p_onnx = model.decoder(z), model.decoder.likelihood(params)
        torch.testing.assert_close(p_onnx.mean, p_torch.mean, atol=1e-5, rtol=0)
        xs = (torch.rand(7, *model.data_shape) > 0.5).float()
        torch.manual_seed(1)  # a dequantised likelihood draws its u in log_prob: the same u for both
        lp_onnx = p_onnx.log_prob(xs)
        torch.manual_seed(1)
        torch.testing.assert_close(lp_onnx, p_torch.log_prob(xs), atol=1e-4, rtol=1e-6)


def test_onnx_graphs_of_a_dense_vae_match_pytorch(exported):
    assert_graphs_match(vaekit.load(exported), exported)


def test_onnx_graphs_of_a_conv_vae_with_a_gaussian_decoder_match_pytorch(tmp_path):
    cfg = build_config("conv-mnist", overrides=["channels=[4,8]", "latent_dim=3", "likelihood=gaussian"])
    torch.manual_seed(1)
    model = build_model(cfg, (1, 8, 8)).eval()
    with torch.no_grad():
        model.decoder.likelihood.log_std.fill_(-0.7)
    doc = write_onnx(model, tmp_path)
    assert_graphs_match(model, tmp_path)
    state = ckpt.from_plain_json(doc["decoder"]["likelihood_state"])
    assert torch.equal(state["log_std"], torch.tensor(-0.7))  # the learned global log std rides in config.json
    assert "255 x + u" in doc["decoder"]["likelihood_dequantize"]  # 8-bit data: the card says how log p reads x
    (tmp_path / "bern").mkdir()
    bern = build_model(build_config("dense-digits", overrides=["hidden=[8]", "latent_dim=2"]), (1, 8, 8))
    assert write_onnx(bern, tmp_path / "bern")["decoder"]["likelihood_dequantize"] is None


REFUSED = {
    "flow posterior": ("dense-digits", ["hidden=[8]", "latent_dim=2", "posterior_flow=planar"], "flow posterior"),
    "pixelcnn": (
        "pixelvae-mnist",
        ["channels=[4,8]", "latent_dim=2", "pixelcnn_channels=4", "pixelcnn_layers=1", "pixelcnn_cond=2"],
        "PixelCNN",
    ),
    "mixture": ("gmm-digits", ["components=2"], "needs a VAE"),
    "flow": ("realnvp-mnist", ["flow_hidden=8", "flow_levels=1", "flow_steps=2"], "needs a VAE"),
}


def saved_run(folder, preset, sets):
    """A run folder holding the step-0 checkpoint of an untrained model on 8x8 images."""
    cfg = build_config(preset, overrides=sets)
    model = build_model(cfg, (1, 8, 8))
    ckpt.save_checkpoint(folder, ckpt.training_state(0, model, cfg, (1, 8, 8)))
    return model, cfg


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_onnx_refuses_models_without_a_gaussian_encoder_decoder_pair(case, tmp_path, capsys):
    preset, sets, fragment = REFUSED[case]
    model, cfg = saved_run(tmp_path / "run", preset, sets)
    assert fragment in onnx_refusal(model, cfg.model.kind)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "out"), "--onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "export without --onnx" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_mixture_exports_without_onnx_and_its_exact_log_prob_round_trips(tmp_path):
    model, cfg = saved_run(tmp_path / "run", "gmm-digits", ["components=2", "em_max_iter=3", "em_restarts=1"])
    model.fit(digits(binary=False, n=200), progress=False)  # float64 parameters, a fitted flag
    ckpt.save_checkpoint(tmp_path / "run", ckpt.training_state(1, model, cfg, (1, 8, 8)))
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "out")]) == 0
    x = digits(binary=False, n=6)
    exported, saved = vaekit.load(tmp_path / "out"), vaekit.load(tmp_path / "run")
    assert exported.dequantize and saved.dequantize  # 8-bit data: log p at dequantised levels, seeded alike
    torch.manual_seed(0)
    lp = exported.log_prob(x)
    torch.manual_seed(0)
    assert torch.equal(lp, saved.log_prob(x))


def test_an_existing_output_is_refused(run, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine\n")
    (tmp_path / "file").write_text("x\n")
    for out in (busy, tmp_path / "file", tmp_path / "file" / "under"):
        capsys.readouterr()
        assert main(["export", str(run), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vaekit: error: cannot write the export folder")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
