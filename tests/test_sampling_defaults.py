"""A checkpoint's own sampling defaults (ModelMeta.sampling): used where the caller sets nothing, never over what
the caller sets, dropped with the start or sampler they were tuned for, and listed in the manifest."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from robgen.cli import main
from robgen.errors import RobgenError
from robgen.models.checkpoint import load_classifier, save_classifier
from robgen.sample import sample
from robgen.sample.generate import SampleConfig

TINY = dict(n=2, batch_size=4, progress=False)
PREFERRED = {"steps": 3, "sigma_pca": 0.02, "momentum": 0.5}


@pytest.fixture
def tuned(ckpt, tmp_path) -> Path:
    model = load_classifier(ckpt)
    model.meta.sampling = dict(PREFERRED)
    return save_classifier(model, tmp_path / "tuned.safetensors")


def settings_of(out) -> tuple[dict, list[str]]:
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    return manifest["settings"], manifest["from_checkpoint"]


def test_unset_options_take_the_checkpoints_values(tuned, folder, tmp_path):
    s, applied = settings_of(sample(tuned, [0], out=tmp_path / "a", data=f"folder:{folder}", **TINY)["out"])
    assert (s["steps"], s["sigma_pca"], s["momentum"]) == (3, 0.02, 0.5)
    assert applied == ["momentum", "sigma_pca", "steps"]


def test_given_options_win_and_tied_options_go_with_their_start_or_sampler(tuned, folder, tmp_path):
    data = f"folder:{folder}"
    s, applied = settings_of(sample(tuned, [0], out=tmp_path / "a", data=data, steps=2, **TINY)["out"])
    assert (s["steps"], s["sigma_pca"], applied) == (2, 0.02, ["momentum", "sigma_pca"])
    # gaussian does not read sigma_pca: the checkpoint's value is dropped, not refused as an unread option
    s, applied = settings_of(sample(tuned, [0], out=tmp_path / "b", data=data, init="gaussian", **TINY)["out"])
    assert (s["init"], s["sigma_pca"], applied) == ("gaussian", SampleConfig.sigma_pca, ["momentum", "steps"])
    # pgd: the sgld-tuned steps and momentum go with their sampler
    s, applied = settings_of(sample(tuned, [0], out=tmp_path / "c", data=data, sampler="pgd", **TINY)["out"])
    assert (s["steps"], s["momentum"], applied) == (SampleConfig.steps, 0.0, ["sigma_pca"])


def test_an_explicit_config_is_taken_whole(tuned, folder, tmp_path):
    config = SampleConfig(n=2, batch_size=4)
    s, applied = settings_of(sample(tuned, [0], config=config, out=tmp_path / "a", data=f"folder:{folder}",
                                    progress=False)["out"])
    assert (s["steps"], s["sigma_pca"], applied) == (SampleConfig.steps, SampleConfig.sigma_pca, [])


def test_the_cli_passes_only_what_the_user_typed(tuned, folder, tmp_path):
    base = ["sample", "--ckpt", str(tuned), "--class", "0", "-n", "2", "--batch-size", "4",
            "--data", f"folder:{folder}", "--json"]
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert settings_of(tmp_path / "a")[0]["steps"] == 3
    # typing the global default is a choice too: it wins over the checkpoint's 3
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "b"), "--steps", str(SampleConfig.steps)])
    assert r.exit_code == 0, r.output
    s, applied = settings_of(tmp_path / "b")
    assert (s["steps"], applied) == (SampleConfig.steps, ["momentum", "sigma_pca"])


def test_an_unknown_preferred_option_is_a_one_line_error(ckpt, tmp_path):
    model = load_classifier(ckpt)
    model.meta.sampling = {"stepz": 3}
    bad = save_classifier(model, tmp_path / "bad.safetensors")
    with pytest.raises(RobgenError, match="unknown option 'stepz'"):
        sample(bad, [0], out=tmp_path / "a", **TINY)


def test_a_checkpoint_without_preferences_keeps_its_bytes(ckpt, tmp_path):
    again = save_classifier(load_classifier(ckpt), tmp_path / "again.safetensors")
    assert again.read_bytes() == Path(ckpt).read_bytes()
