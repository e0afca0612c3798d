import json

import torch
from click.testing import CliRunner

from robgen.cli import main
from robgen.models.checkpoint import load_classifier


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_eval_reports_accuracy_and_energies(ckpt, folder):
    result = run("eval", "--ckpt", ckpt, "--attack", "pgd10", "--n", 12, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 12 and report["attack"]["steps"] == 10
    assert 0 <= report["robust_acc"] <= report["clean_acc"] + 1e-9 <= 100
    assert abs(report["dE"] - (report["E_clean"] - report["E_adv"])) < 1e-4


def test_eval_accepts_fractions_and_prints_lines(ckpt):
    result = run("eval", "--ckpt", ckpt, "--attack", "fgsm", "--eps", "4/255", "--n", 6, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "eps 0.0157" in result.output and "robust accuracy" in result.output
    assert "channels_last" not in result.output
    layout = run("eval", "--ckpt", ckpt, "--attack", "fgsm", "--n", 6, "--device", "cpu", "--channels-last")
    assert layout.exit_code == 0 and "seed 0, channels_last\n" in layout.output, layout.output


def test_eval_on_mismatched_data_is_one_line(ckpt, tmp_path):
    from conftest import write_image_folder

    other = write_image_folder(tmp_path / "d", per_class=1, size=16)
    result = run("eval", "--ckpt", ckpt, "--data", f"folder:{other}")
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "expects 3 classes of shape (3, 32, 32)" in result.output


def test_info_checks_weights(ckpt, tmp_path):
    result = run("info", "--ckpt", ckpt, "--json")
    info = json.loads(result.stdout)
    model = load_classifier(ckpt)
    assert info["arch"] == "cnn-tiny" and info["weights_match_architecture"]
    assert info["parameters"] == sum(p.numel() for p in model.net.parameters())
    # Weights of a 5-class head under metadata that says 3 classes: info refuses them, naming the tensor.
    from safetensors import safe_open
    from safetensors.torch import save_file

    from robgen.models import ModelMeta, build_classifier

    wrong = build_classifier(ModelMeta("cnn-tiny", 5)).net.state_dict()
    with safe_open(str(ckpt), framework="pt") as f:
        header = f.metadata()
    save_file({k: v.contiguous() for k, v in wrong.items()}, str(tmp_path / "bad.safetensors"), metadata=header)
    bad = run("info", "--ckpt", tmp_path / "bad.safetensors", "--json")
    assert bad.exit_code == 1 and bad.output.count("\n") == 1
    assert "'linear.weight' has shape (5, 16), expected (3, 16)" in bad.output


def test_eval_reports_the_robust_accuracy_of_the_adversarial_predictions(monkeypatch):
    # A model and data with a known outcome (test_pins): every image is classified right, and PGD-20 flips all.
    from test_pins import brightness_data, mean_pixel_model

    monkeypatch.setattr("robgen.evaluate.load_model_and_data", lambda *a: (mean_pixel_model(), brightness_data(0.01), "toy"))
    report = json.loads(run("eval", "--attack", "pgd20", "--device", "cpu", "--json").stdout)
    assert (report["clean_acc"], report["robust_acc"], report["n"]) == (100.0, 0.0, 8)
    text = run("eval", "--attack", "pgd20", "--device", "cpu").output
    assert "clean accuracy   100.00%" in text and "robust accuracy  0.00%" in text


def test_import_converts_and_refuses_to_overwrite(ckpt, tmp_path):
    model = load_classifier(ckpt)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.net.state_dict().items()}}, tmp_path / "rb.pt")
    out = tmp_path / "imported.safetensors"
    result = run("import", tmp_path / "rb.pt", "--arch", "cnn-tiny", "--data", f"folder:{model.meta.dataset[7:]}",
                 "--out", out)
    assert result.exit_code == 0, result.output
    imported = load_classifier(out)
    assert imported.meta.mean == (0.0, 0.0, 0.0)  # RobustBench convention: raw [0, 1] inputs
    before = out.read_bytes()
    again = run("import", tmp_path / "rb.pt", "--arch", "cnn-tiny", "--out", out)
    assert again.exit_code == 1 and "exists; pass --overwrite" in again.output
    assert out.read_bytes() == before


def test_bad_checkpoint_is_one_line_error(tmp_path):
    page = tmp_path / "page.safetensors"
    page.write_text("<html></html>")
    result = run("info", "--ckpt", page)
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1
