"""Sampling: starts, samplers, the batched generator (determinism, torchrun sharding, resume) and its errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import make_ckpt, write_image_folder
from robgen.cli import main
from robgen.errors import RobgenError
from robgen.models.checkpoint import load_classifier
from robgen.sample import SAMPLERS, SamplerConfig, descend, draw_starts, fit_starts, sample
from robgen.sample import generate
from robgen.sample.starts import load_fit, shipped_fit_path

FAST = dict(n=3, steps=3, batch_size=4, progress=False)


def images_of(out) -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(out) / "samples.npz") as f:
        return f["images"], f["labels"]


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_each_sampler_lowers_the_joint_energy(ckpt, name):
    model = load_classifier(ckpt).requires_grad_(False)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x0 = torch.rand((6, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    grad_fn = generate._energy_grad(model, lambda logits, y: -logits.gather(1, y[:, None]).squeeze(1), y, False)
    cfg = SamplerConfig(steps=10, step_size=SAMPLERS.get(name).default_step_size)
    x, track = descend(name, grad_fn, x0, cfg, torch.Generator().manual_seed(1))
    final, _ = grad_fn(x)
    assert final.mean() < track[0].mean() - 1e-3
    assert 0 <= x.min() and x.max() <= 1


def test_pca_start_is_the_class_mean_without_noise(folder):
    fit = fit_starts(f"folder:{folder}", progress=False)
    y = torch.tensor([2, 0, 2, 1])
    x0 = draw_starts("pca", fit, y, (3, 32, 32), torch.Generator().manual_seed(0), {"sigma_pca": 0.0})
    torch.testing.assert_close(x0.flatten(1), fit.mean[y].clamp(0, 1))
    noisy = draw_starts("pca", fit, y, (3, 32, 32), torch.Generator().manual_seed(0))
    assert 0.001 < (noisy.flatten(1) - fit.mean[y]).std() < 0.3  # a noisy class image, not noise


@pytest.mark.parametrize("init", ["uniform", "gaussian", "pca", "mix", "data"])
def test_every_start_gives_images_in_range(folder, init):
    fit = fit_starts(f"folder:{folder}", progress=False)
    x0 = draw_starts(init, fit, torch.tensor([0, 1, 2]), (3, 32, 32), torch.Generator().manual_seed(0))
    assert x0.shape == (3, 3, 32, 32) and 0 <= x0.min() and x0.max() <= 1


def test_same_seed_same_bytes_and_output_layout(ckpt, tmp_path):
    a = sample(ckpt, out=tmp_path / "a", seed=1, **FAST)
    sample(ckpt, out=tmp_path / "b", seed=1, **FAST)
    sample(ckpt, out=tmp_path / "c", seed=2, **FAST)
    assert (tmp_path / "a/samples.npz").read_bytes() == (tmp_path / "b/samples.npz").read_bytes()
    assert not np.array_equal(images_of(tmp_path / "a")[0], images_of(tmp_path / "c")[0])
    images, labels = images_of(tmp_path / "a")
    assert images.dtype == np.uint8 and images.shape == (9, 32, 32, 3)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    pngs = sorted(p.relative_to(tmp_path / "a/images").as_posix() for p in (tmp_path / "a/images").rglob("*.png"))
    assert pngs[:3] == ["00_class0/000000.png", "00_class0/000001.png", "00_class0/000002.png"] and len(pngs) == 9
    manifest = json.loads((tmp_path / "a/manifest.json").read_text())
    assert manifest["checkpoint"]["sha256"] and manifest["settings"]["seed"] == 1
    assert [c["n"] for c in manifest["classes"]] == [3, 3, 3]
    assert (tmp_path / "a/grid.png").is_file() and a["classes"][0]["energy_mean"] == manifest["classes"][0]["energy_mean"]


def test_torchrun_two_processes_make_the_same_images_as_one(ckpt, tmp_path):
    sample(ckpt, out=tmp_path / "one", **FAST)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "robgen.cli",
           "sample", "--ckpt", str(ckpt), "-n", "3", "--steps", "3", "--batch-size", "4", "--out",
           str(tmp_path / "two"), "--device", "cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "computed" in done.stdout and done.stdout.count("wrote npz") == 1  # rank 0 alone merges and reports
    one, two = images_of(tmp_path / "one"), images_of(tmp_path / "two")
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


def test_a_stopped_run_resumes_without_redoing_finished_chunks(ckpt, tmp_path, monkeypatch):
    full = sample(ckpt, out=tmp_path / "full", **FAST)
    assert full["chunks"] == 3 and full["chunks_computed"] == 3
    real = generate._make_chunk
    calls = []

    def stops_after_two(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(generate, "_make_chunk", stops_after_two)
    with pytest.raises(KeyboardInterrupt):
        sample(ckpt, out=tmp_path / "part", **FAST)
    monkeypatch.setattr(generate, "_make_chunk", real)
    resumed = sample(ckpt, out=tmp_path / "part", **FAST)
    assert (resumed["chunks_computed"], resumed["chunks_reused"]) == (1, 2)
    assert np.array_equal(images_of(tmp_path / "full")[0], images_of(tmp_path / "part")[0])


def test_a_run_is_identified_by_the_step_settings_its_sampler_reads(ckpt, tmp_path):
    """step_spread (sgld-rand's) came after sample folders existed: an sgld run's identity leaves it out, so folders
    made before it resume, while sgld-rand runs with another spread are different runs."""
    sample(ckpt, out=tmp_path / "sgld", **FAST)
    assert "step_spread" not in json.loads((tmp_path / "sgld" / "chunks" / "settings.json").read_text())
    sample(ckpt, out=tmp_path / "rand", sampler="sgld-rand", step_spread=0.5, **FAST)
    assert json.loads((tmp_path / "rand" / "chunks" / "settings.json").read_text())["step_spread"] == 0.5
    with pytest.raises(RobgenError, match="differs in step_spread"):
        sample(ckpt, out=tmp_path / "rand", sampler="sgld-rand", step_spread=1.0, **FAST)


def test_track_records_energy_per_step(ckpt, tmp_path):
    r = sample(ckpt, out=tmp_path / "t", track=True, classes=[1], **FAST)
    manifest = json.loads((tmp_path / "t/manifest.json").read_text())
    assert list(manifest["track"]) == ["class1"] and len(manifest["track"]["class1"]) == 3
    assert (tmp_path / "t/energy_track.png").is_file() and r["files"]["energy_track"]


def test_shipped_fit_serves_a_machine_without_data(folder, tmp_path):
    # A checkpoint whose dataset is gone: only the fit exported beside it can serve the pca start.
    ckpt = make_ckpt(tmp_path / "model.safetensors", f"folder:{tmp_path / 'missing'}")
    out = shipped_fit_path(ckpt)
    r = CliRunner().invoke(main, ["fit-start", "--ckpt", str(ckpt), "--data", f"folder:{folder}", "--out", str(out)])
    assert r.exit_code == 0, r.output
    fit = load_fit(out)
    assert fit.basis[0].dtype == torch.float32 and fit.info["retained"] == 0.95 and not fit.images
    result = sample(ckpt, out=tmp_path / "s", early_stop=True, **FAST)
    assert result["start_source"] == str(out) and result["n_images"] == 9
    out.unlink()
    with pytest.raises(RobgenError, match="--start-stats"):
        sample(ckpt, out=tmp_path / "s2", **FAST)


def test_grayscale_64px_inputs(tmp_path):
    data = write_image_folder(tmp_path / "gray", per_class=4, size=64, gray=True)
    ckpt = make_ckpt(tmp_path / "g.safetensors", f"folder:{data}", shape=(1, 64, 64))
    sample(ckpt, out=tmp_path / "s", init="mix", n=2, steps=2, progress=False)
    images, _ = images_of(tmp_path / "s")
    assert images.shape == (6, 64, 64, 1)


def test_bad_input_gives_one_line_errors(ckpt, tmp_path, monkeypatch):
    with pytest.raises(RobgenError, match=r"unknown class 5 for a 3-class model; valid: 0\.\.2"):
        sample(ckpt, classes=[5], out=tmp_path / "x", **FAST)
    with pytest.raises(RobgenError, match="--steps must be positive"):
        sample(ckpt, out=tmp_path / "x", **{**FAST, "steps": 0})
    with pytest.raises(RobgenError, match="--step-size must be positive"):
        sample(ckpt, out=tmp_path / "x", step_size=-0.1, **FAST)
    nameless = make_ckpt(tmp_path / "nameless.safetensors", "")
    with pytest.raises(RobgenError, match="pass --data"):
        sample(nameless, out=tmp_path / "x", **FAST)
    monkeypatch.setattr("robgen.models.checkpoint.DEFAULT_CHECKPOINT", "not_shipped_model")
    with pytest.raises(RobgenError, match="no default checkpoint.*--ckpt"):
        sample(None, out=tmp_path / "x", **FAST)
    nan = make_ckpt(tmp_path / "nan.safetensors", "", nan=True)
    with pytest.raises(RobgenError, match="has NaN/inf weights"):
        sample(nan, init="uniform", out=tmp_path / "nan", **FAST)
    assert not (tmp_path / "x").exists()


def test_an_output_folder_never_mixes_two_runs(ckpt, tmp_path):
    out = tmp_path / "out"
    sample(ckpt, out=out, **FAST)
    before = (out / "samples.npz").read_bytes()
    r = CliRunner().invoke(main, ["sample", "--ckpt", str(ckpt), "-n", "3", "--steps", "4", "--batch-size", "4", "--out", str(out)])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "differs in steps" in r.output and "--overwrite" in r.output
    assert (out / "samples.npz").read_bytes() == before
    again = sample(ckpt, out=out, **FAST)  # the same settings: a resume with nothing left to do
    assert again["chunks_computed"] == 0 and (out / "samples.npz").read_bytes() == before
    replaced = sample(ckpt, out=out, overwrite=True, **{**FAST, "steps": 4})
    assert replaced["chunks_computed"] == 3 and (out / "samples.npz").read_bytes() != before
    (out / "chunks" / "settings.json").write_text("{truncated")
    with pytest.raises(RobgenError, match="settings.json is damaged"):
        sample(ckpt, out=out, **FAST)
    shutil.rmtree(out / "chunks")
    with pytest.raises(RobgenError, match="not a robgen sample run"):
        sample(ckpt, out=out, **FAST)
