"""RobustBench zoo models by name and any nn.Module as a classifier, offline: robustbench's download function is
replaced by one that writes weights made here for the zoo's own architectures (files laid out as the zoo's are)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robgen import RobgenError, zoo
from robgen.cli import main
from robgen.evaluate import evaluate
from robgen.models import Classifier
from robgen.models.checkpoint import load_classifier, save_classifier

sys.path.insert(0, str(Path(__file__).parent))
from conftest import write_image_folder  # noqa: E402

PREACT = "Andriushchenko2020Understanding"  # PreActResNet-18; its file keeps the weights under "last"
FAST = "Wong2020Fast"  # PreActResNet-18 normalising inside; a DataParallel file without the normalisation buffers
TEN = {f"c{k}": (25 * k, 255 - 25 * k, (90 * k) % 256) for k in range(10)}
HTML = b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    """The command failed with exactly one `Error:` line (no traceback) containing every fragment."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def zoo_weights(name: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return zoo.build_net(f"robustbench:{name}").state_dict()


class FakeDrive:
    """Serves the file contents registered for each Google Drive id and records the downloads asked for."""

    def __init__(self):
        self.files, self.calls = {}, []

    def serve(self, name: str, content) -> None:
        self.files[zoo._entry(name, "cifar10", "Linf")["gdrive_id"]] = content

    def download(self, gdrive_id, path):
        self.calls.append(gdrive_id)
        content = self.files[gdrive_id]
        if isinstance(content, Exception):
            raise content
        if isinstance(content, bytes):
            Path(path).write_bytes(content)
        else:
            torch.save(content, path)


@pytest.fixture
def drive(monkeypatch):
    try:
        robustbench = zoo._robustbench()
    except RobgenError as err:  # not installed, or installed without its requirements
        pytest.skip(str(err))
    fake = FakeDrive()
    monkeypatch.setattr(robustbench, "download_gdrive_new", fake.download)
    monkeypatch.setattr(zoo, "model_info", lambda model, dataset, threat: (
        {"name": "Understanding and Improving Fast Adversarial Training", "link": "https://arxiv.org/abs/2007.02617",
         "authors": "Maksym Andriushchenko, Nicolas Flammarion", "clean_acc": "79.84", "autoattack_acc": "43.93"}
        if model == PREACT else {}))
    return fake


def test_a_zoo_model_by_name_keeps_its_architecture_and_the_served_weights(drive):
    state = zoo_weights(PREACT, 1)
    drive.serve(PREACT, {"last": state, "best": zoo_weights(PREACT, 2)})
    model = load_classifier(f"robustbench:{PREACT}")
    reference = zoo.build_net(f"robustbench:{PREACT}")
    reference.load_state_dict(state)
    x = torch.rand(2, 3, 32, 32)
    assert type(model.net) is type(reference)
    assert torch.equal(model(x), reference.eval()(x))  # inputs in [0, 1], no normalisation added
    meta = model.meta
    assert meta.arch == f"robustbench:{PREACT}:cifar10:Linf" and meta.input_shape == (3, 32, 32)
    assert meta.class_names[3] == "cat" and meta.mean == (0.0, 0.0, 0.0) and meta.dataset == "cifar10"
    assert meta.recipe["paper"] == "Understanding and Improving Fast Adversarial Training"
    assert meta.recipe["threat_model"] == "Linf" and meta.recipe["model"] == PREACT
    assert meta.metrics == {"robustbench_clean_acc": "79.84", "robustbench_autoattack_acc": "43.93"}
    folder = zoo.zoo_dir("cifar10", "Linf")
    assert sorted(p.name for p in folder.iterdir()) == [f"{PREACT}.safetensors"]  # the download is converted
    again = load_classifier(f"robustbench:{PREACT}:CIFAR10:linf")  # cached: no second download
    assert drive.calls == [drive.calls[0]] and torch.equal(again(x), model(x))


def test_sample_survey_and_info_take_zoo_models(drive, tmp_path):
    drive.serve(PREACT, {"last": zoo_weights(PREACT, 1)})
    fast = {f"module.{k}": v for k, v in zoo_weights(FAST, 3).items() if k not in ("mu", "sigma")}
    drive.serve(FAST, {"state_dict": fast})
    r = invoke("sample", "--ckpt", f"robustbench:{PREACT}", "--class", "3", "-n", "2", "--steps", "2", "--init",
               "uniform", "--out", tmp_path / "s", "--json")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "grid.png").is_file() and len(list((tmp_path / "s").rglob("*.png"))) == 3
    data = write_image_folder(tmp_path / "data", TEN, per_class=1)
    r = invoke("survey", "--ckpts", f"robustbench:{PREACT}", f"robustbench:{FAST}", "--data", f"folder:{data}",
               "--n", "4", "--attack", "fgsm", "--out", tmp_path / "survey.png", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "survey.json").read_text())
    assert sorted(m["model"] for m in report["models"]) == sorted([PREACT, FAST])
    r = invoke("info", "--ckpt", f"robustbench:{FAST}", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["recipe"]["model"] == FAST


def test_import_converts_a_zoo_file_downloaded_by_hand(drive, tmp_path):
    state = zoo_weights(PREACT, 4)
    torch.save({"last": state}, tmp_path / "Andriushchenko2020Understanding.pt")
    r = invoke("import", tmp_path / "Andriushchenko2020Understanding.pt", "--arch", f"robustbench:{PREACT}",
               "--out", tmp_path / "a.safetensors")
    assert r.exit_code == 0, r.output
    model, reference = load_classifier(tmp_path / "a.safetensors"), zoo.build_net(f"robustbench:{PREACT}")
    reference.load_state_dict(state)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(model(x), reference.eval()(x)) and drive.calls == []


def test_without_robustbench_the_error_names_the_package_and_the_offline_way(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    one_line_error(invoke("info", "--ckpt", "robustbench:Standard"), "pip install 'robgen[zoo]'", "robgen import")


def test_a_failed_download_leaves_nothing_and_says_where_to_put_the_file(drive):
    import requests

    drive.serve(PREACT, requests.ConnectionError("Failed to resolve 'drive.google.com'"))
    folder = zoo.zoo_dir("cifar10", "Linf")
    one_line_error(invoke("eval", "--ckpt", f"robustbench:{PREACT}"), "downloading RobustBench model",
                   "Failed to resolve", "https://drive.google.com/uc?id=", str(folder / f"{PREACT}.pt"))
    assert list(folder.iterdir()) == []


def test_an_html_page_instead_of_weights_is_not_kept(drive):
    drive.serve(PREACT, HTML)
    one_line_error(invoke("energy", "--ckpt", f"robustbench:{PREACT}"), "HTML page", "#68", "browser")
    assert list(zoo.zoo_dir("cifar10", "Linf").iterdir()) == []


def test_a_cached_html_page_robustbench_issue_68_is_named_and_left_alone(drive):
    cached = zoo.zoo_dir("cifar10", "Linf") / f"{PREACT}.pt"
    cached.write_bytes(HTML)
    one_line_error(invoke("sample", "--ckpt", f"robustbench:{PREACT}"), str(cached), "#68", "delete it")
    assert cached.read_bytes() == HTML and drive.calls == []


def test_weights_that_need_arbitrary_code_are_refused(drive):
    drive.serve(PREACT, {"last": zoo_weights(PREACT, 1), "args": argparse.Namespace(lr=0.1)})
    one_line_error(invoke("info", "--ckpt", f"robustbench:{PREACT}"), "argparse.Namespace", "will not run it")
    assert list(zoo.zoo_dir("cifar10", "Linf").iterdir()) == []


def test_bad_zoo_names_are_one_line(drive):
    one_line_error(invoke("info", "--ckpt", "robustbench:Andriushchenko2020Understandin"), "did you mean", PREACT)
    one_line_error(invoke("info", "--ckpt", "robustbench:Standard:imagenet"), "cifar10, cifar100")
    one_line_error(invoke("info", "--ckpt", "robustbench:Standard:cifar10:L7"), "Linf, L2, corruptions")
    one_line_error(invoke("info", "--ckpt", "robustbench:"), "robustbench:MODEL[:DATASET[:THREAT]]")


class UserNet(torch.nn.Module):
    """A model robgen does not register, built with no arguments as a saved checkpoint requires."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean((2, 3)))


def test_any_module_is_a_classifier_that_saves_loads_and_evaluates(tmp_path, folder):
    from robgen.data import load_split

    torch.manual_seed(0)
    model = Classifier.wrap(UserNet(), classes=["class0", "class1", "class2"], mean=(0.5,) * 3, std=(0.25,) * 3)
    assert model.meta.arch == "test_zoo:UserNet" and model.meta.num_classes == 3
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), model.net((x - 0.5) / 0.25))
    loaded = load_classifier(save_classifier(model, tmp_path / "user.safetensors"))
    assert type(loaded.net) is UserNet and torch.equal(loaded(x), model(x))
    test, _ = load_split(f"folder:{folder}", "test", n=6)
    result = evaluate(loaded, test, "fgsm", workers=0, progress=False)
    images, labels = map(torch.stack, zip(*[(img, torch.tensor(label)) for img, label in test]))
    with torch.no_grad():
        assert result["clean_acc"] == pytest.approx(100 * (loaded(images).argmax(1) == labels).float().mean().item())
    with pytest.raises(RobgenError, match=r"returns \(1, 3\) for one \(3, 32, 32\) image, not 10 logits"):
        Classifier.wrap(UserNet(), classes=10)


def test_import_saves_a_users_module_as_a_robgen_checkpoint(tmp_path, folder):
    torch.manual_seed(0)
    net = UserNet()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "user.pt")
    r = invoke("import", tmp_path / "user.pt", "--arch", "test_zoo:UserNet", "--data", f"folder:{folder}",
               "--out", tmp_path / "user.safetensors")
    assert r.exit_code == 0, r.output
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(load_classifier(tmp_path / "user.safetensors")(x), net.eval()(x))
    for arch, why in (("robgen.zoo:parse", "is not an nn.Module class"), ("antigravity:Fly", "standard-library")):
        one_line_error(invoke("import", tmp_path / "user.pt", "--arch", arch, "--out", tmp_path / "o.safetensors"), why)
    missing = invoke("import", tmp_path / "user.pt", "--arch", "no_such_pkg:Net", "--out", tmp_path / "o.safetensors")
    one_line_error(missing, "cannot be imported")
