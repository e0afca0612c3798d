"""The shipped default checkpoint: the README's first command (`robgen sample --class 3`) must keep working."""
from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner

from robgen.cli import main
from robgen.models.checkpoint import DEFAULT_CHECKPOINT, checkpoint_id, load_classifier, resolve_checkpoint
from robgen.sample.starts import load_fit, shipped_fit_path


def test_the_readme_first_command_samples_from_the_shipped_default(tmp_path, monkeypatch):
    # The README's command with 4 images instead of 64: no --ckpt, no --data (the shipped PCA fit serves the start),
    # no --out (the README says it writes samples/weat_c10/), the checkpoint's own sampling defaults (its card: sgld-rand,
    # 10 steps, sigma_pca 0.014, step spread 1).
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["sample", "--class", "3", "-n", "4", "--json"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "samples" / DEFAULT_CHECKPOINT
    assert {"grid.png", "images", "manifest.json", "samples.npz"} <= {p.name for p in out.iterdir()}
    result = json.loads(r.stdout)
    ckpt = resolve_checkpoint(None)
    assert ckpt.name == f"{DEFAULT_CHECKPOINT}.safetensors"
    assert result["start_source"] == str(shipped_fit_path(ckpt))
    manifest = json.loads((out / "manifest.json").read_text())
    preferred = load_classifier(None).meta.sampling
    assert preferred == {"init": "pca", "sampler": "sgld-rand", "sigma_pca": 0.014, "step_spread": 1.0, "steps": 10}
    assert result["from_checkpoint"] == sorted(preferred)
    assert {k: result["settings"][k] for k in preferred} == preferred
    assert manifest["checkpoint"]["sha256"] == checkpoint_id(None)["sha256"]
    assert [c["name"] for c in manifest["classes"]] == ["cat"]
    with np.load(out / "samples.npz") as f:
        images, labels = f["images"], f["labels"]
    assert images.shape == (4, 32, 32, 3) and labels.tolist() == [3] * 4
    assert sorted(p.name for p in (out / "images" / "03_cat").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    # Samples of class 3, not noise: the model calls (nearly) all of them cats.
    model = load_classifier(None)
    with torch.no_grad():
        pred = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1)
    assert (pred == 3).sum() >= 3, pred.tolist()


def test_the_shipped_fit_matches_the_shipped_model():
    model = load_classifier(None)
    fit = load_fit(shipped_fit_path(resolve_checkpoint(None)))
    assert fit.info["checkpoint_sha256"] == checkpoint_id(None)["sha256"]  # its energies are this model's
    assert (fit.num_classes, tuple(fit.input_shape)) == (model.meta.num_classes, tuple(model.meta.input_shape))
    assert model.meta.class_names[3] == "cat" and fit.energy.isfinite().all()
