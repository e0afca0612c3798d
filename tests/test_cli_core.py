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


def test_eval_on_mismatched_data_is_one_line(ckpt, tmp_path):
    from conftest import write_image_folder

    other = write_image_folder(tmp_path / "d", per_class=1, size=16)
    result = run("eval", "--ckpt", ckpt, "--data", f"folder:{other}")
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "expects 3 classes of shape (3, 32, 32)" in result.output


def test_info_checks_weights(ckpt):
    result = run("info", "--ckpt", ckpt, "--json")
    info = json.loads(result.stdout)
    assert info["arch"] == "cnn-tiny" and info["weights_match_architecture"] and info["parameters"] > 0


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
