"""Hostile input (issue 14): two runs never mix in one folder, no command replaces a file it did not make, numbers
are validated where the API receives them, damaged files and malformed data are one line, and a resumed training
run is byte-identical to an uninterrupted one."""
from __future__ import annotations

import hashlib
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
from safetensors.torch import save_file

from conftest import make_ckpt, write_image_folder
from robgen import outputs
from robgen.attacks import AttackSpec
from robgen.cli import main
from robgen.errors import RobgenError
from robgen.sample import generate, sample
from robgen.train import loop

FAST = dict(n=3, steps=3, batch_size=4, progress=False)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *needles):
    """The CLI failed with one `Error:` line, its last (progress bars on stderr may precede it), holding every needle."""
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and lines[-1] == errors[0], result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def npz_images(out):
    with np.load(Path(out) / "samples.npz") as f:
        return f["images"]


# ---------------------------------------------------------------- 1. one run per sample folder


def test_a_second_run_cannot_take_a_folder_in_use_even_with_overwrite(ckpt, tmp_path, monkeypatch):
    """The probe's case: seed 0 running into D, seed 1 --overwrite started into D. The second is refused; the first
    finishes with exactly the images of an undisturbed seed-0 run."""
    sample(ckpt, out=tmp_path / "clean", seed=0, **FAST)
    real, refusals = generate._make_chunk, []

    def second_run_starts_midway(*args):
        if args[-1] == 1:  # run A has written chunk 0; run B starts now
            with pytest.raises(RobgenError) as err:
                sample(ckpt, out=tmp_path / "D", seed=1, overwrite=True, **FAST)
            refusals.append(str(err.value))
        return real(*args)

    monkeypatch.setattr(generate, "_make_chunk", second_run_starts_midway)
    a = sample(ckpt, out=tmp_path / "D", seed=0, **FAST)
    assert len(refusals) == 1 and "being written by another sample run" in refusals[0]
    assert f"pid {os.getpid()}" in refusals[0] and "--overwrite does not take a folder in use" in refusals[0]
    assert a["chunks_computed"] == 3 and json.loads((tmp_path / "D/manifest.json").read_text())["settings"]["seed"] == 0
    assert np.array_equal(npz_images(tmp_path / "D"), npz_images(tmp_path / "clean"))


def test_a_folder_held_by_another_process_is_refused_in_one_line(ckpt, tmp_path):
    out = tmp_path / "D"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
         "time.sleep(60)", str(out / outputs.LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = cli("sample", "--ckpt", ckpt, "-n", 3, "--steps", 3, "--batch-size", 4, "--out", out, "--overwrite")
        one_line_error(r, "being written by another sample run", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert sample(ckpt, out=out, **FAST)["chunks_computed"] == 3  # the kernel dropped the dead holder's lock


def test_foreign_or_damaged_chunks_are_made_again_not_merged(ckpt, tmp_path):
    sample(ckpt, out=tmp_path / "seed0", seed=0, **FAST)
    sample(ckpt, out=tmp_path / "seed1", seed=1, **FAST)
    chunks = tmp_path / "seed0" / "chunks"
    shutil.copy(tmp_path / "seed1/chunks/chunk_000001.npz", chunks / "chunk_000001.npz")  # another run's chunk
    damaged = (chunks / "chunk_000002.npz").read_bytes()
    (chunks / "chunk_000002.npz").write_bytes(damaged[: len(damaged) // 2])  # cut short
    (tmp_path / "seed0/samples.npz").unlink()
    again = sample(ckpt, out=tmp_path / "seed0", seed=0, **FAST)
    assert (again["chunks_computed"], again["chunks_reused"], again["chunks_replaced"]) == (2, 1, 2)
    sample(ckpt, out=tmp_path / "fresh", seed=0, **FAST)
    assert np.array_equal(npz_images(tmp_path / "seed0"), npz_images(tmp_path / "fresh"))


# ---------------------------------------------------------------- 2. no file replaced that a command did not make


@pytest.fixture
def run_dir(tmp_path):
    """A training run folder as `robgen train` leaves it (config and per-epoch metrics)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"loss": "trades"}))
    lines = [{"epoch": e, "train_dE": 0.01 * e, "val_robust_acc": 30.0 + e, "loss": "trades"} for e in range(1, 7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return run


def test_outputs_never_land_on_a_run_or_sample_folder_file(ckpt, run_dir, tmp_path):
    config = (run_dir / "config.json").read_bytes()
    # The probe's case: the report beside --out RUN/config.png would be RUN/config.json.
    for flags in ([], ["--overwrite"]):
        one_line_error(cli("phases", run_dir, "--out", run_dir / "config.png", *flags),
                       "config.json is a file of a training run", "never writes over it")
    assert (run_dir / "config.json").read_bytes() == config and not (run_dir / "config.pdf").exists()
    s = tmp_path / "s"
    sample(ckpt, out=s, **FAST)
    manifest = (s / "manifest.json").read_bytes()
    one_line_error(cli("survey", "--ckpts", ckpt, "--out", s / "manifest.png", "--overwrite"), "file of a sample run")
    one_line_error(cli("grid", s, "--out", s / "images/00_class0/x.png", "--overwrite"), "file of a sample run")
    one_line_error(cli("stats", "--ref", "folder:x", "--out", s / "samples.npz", "--overwrite"), "file of a sample run")
    one_line_error(cli("weights", "--ckpt", ckpt, "--out", s / "chunks", "--overwrite"), "file of a sample run")
    assert (s / "manifest.json").read_bytes() == manifest
    assert cli("phases", run_dir).exit_code == 0  # the default RUN/phases.png is no file of the run


def test_existing_outputs_need_overwrite_in_every_command(ckpt, folder, run_dir, tmp_path):
    mine = b"a file robgen did not make"
    cases = {
        "grid": (["grid", folder / "test", "--out", tmp_path / "g.png"], tmp_path / "g.pdf"),
        "phases": (["phases", run_dir], run_dir / "phases.json"),
        "survey": (["survey", "--ckpts", ckpt, "--out", tmp_path / "v.png"], tmp_path / "v.png"),
        "energy": (["energy", "--ckpt", ckpt, "--out", tmp_path / "e"], tmp_path / "e/energy_summary.csv"),
        "weights": (["weights", "--ckpt", ckpt, "--out", tmp_path / "w"], tmp_path / "w/weights.json"),
        "stats": (["stats", "--ref", f"folder:{folder}", "--out", tmp_path / "r.npz"], tmp_path / "r.npz"),
        "fit-start": (["fit-start", "--ckpt", ckpt, "--out", tmp_path / "f.safetensors"], tmp_path / "f.safetensors"),
    }
    for name, (args, existing) in cases.items():
        existing.parent.mkdir(exist_ok=True)
        existing.write_bytes(mine)
        one_line_error(cli(*args), f"{existing} already exists; pass --overwrite")
        assert existing.read_bytes() == mine, name
    r = cli("grid", folder / "test", "--out", tmp_path / "g.png", "--overwrite")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.pdf").read_bytes().startswith(b"%PDF")


def test_an_unwritable_out_is_one_line(ckpt, tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(cli("grid", tmp_path, "--out", tmp_path / "file/g.png"), "is a file, not a folder")
    one_line_error(cli("sample", "--ckpt", ckpt, "-n", 1, "--steps", 1, "--out", tmp_path / "file/s"),
                   str(tmp_path / "file"), "choose another --out")


# ---------------------------------------------------------------- 3. numbers checked at the API boundary


@pytest.mark.parametrize("args, message", [
    (["--step-size", "-0.1"], "--step-size must be a finite number in (0, inf], got -0.1"),
    (["--steps", "0"], "--steps must be a whole number, positive; got 0"),
    (["--steps", "-5"], "--steps must be a whole number, positive; got -5"),
    (["--eps", "nan"], "--eps must be a finite number"),
    (["--attack", "autoattack", "--step-size", "0.1"], "'autoattack' does not read --step-size"),
    (["--attack", "none", "--steps", "3"], "'none' does not read --steps"),
    (["--batch-size", "0"], "--batch-size must be a whole number, positive; got 0"),
    (["--seed", "-1"], "--seed must be a whole number in [0, 2**63), got -1"),
    (["--device", "tpu9"], "unknown device 'tpu9'"),
    (["--device", "cuda:99"], "--device cuda:99"),
])
def test_eval_refuses_numbers_that_would_mislead(ckpt, args, message):
    one_line_error(cli("eval", "--ckpt", ckpt, "--n", 4, *args), message)


def test_the_python_api_applies_the_same_rules(ckpt, folder, tmp_path):
    from robgen.analysis import phases
    from robgen.data import load_split
    from robgen.evaluate import evaluate
    from robgen.metrics import score
    from robgen.models.checkpoint import load_classifier

    with pytest.raises(RobgenError, match="--step-size must be"):
        AttackSpec("pgd", step_size=-0.1)
    model, (data, _) = load_classifier(ckpt), load_split(f"folder:{folder}", "test", n=4)
    with pytest.raises(RobgenError, match="--workers must be a whole number, at least 0; got -1"):
        evaluate(model, data, "pgd10", workers=-1)
    for option, value in (("n", -4), ("ref_n", -50), ("batch_size", 0), ("seed", -3)):
        with pytest.raises(RobgenError, match=f"--{option.replace('_', '-')} must be a whole number"):
            score(tmp_path, ref=f"folder:{folder}", **{option: value})
    with pytest.raises(RobgenError, match="--seed must be"):
        sample(ckpt, out=tmp_path / "x", seed=-1, **FAST)
    with pytest.raises(RobgenError, match="--seed must be"):
        loop.make_config(data=f"folder:{folder}", seed=-2)
    with pytest.raises(RobgenError, match="--workers must be"):
        loop.train(loop.make_config(data=f"folder:{folder}"), tmp_path / "t", workers=-1)
    with pytest.raises(RobgenError, match="--smooth must be a whole number, positive; got -3"):
        phases([tmp_path], smooth=-3)  # once clamped to 1 silently
    assert not (tmp_path / "x").exists() and not (tmp_path / "t").exists()


def test_sampler_options_that_change_nothing_are_refused(ckpt, tmp_path):
    for kwargs, message in ((dict(eps=0.1), "sgld sampler does not read --eps"),
                            (dict(sampler="pgd", momentum=0.5), "pgd sampler does not read --momentum"),
                            (dict(init="uniform", retained=0.5), "--retained and --sigma-pca shape the pca"),
                            (dict(noise=float("nan")), "--noise must be >= 0, got nan")):
        with pytest.raises(RobgenError, match=message):
            sample(ckpt, out=tmp_path / "x", **{**FAST, **kwargs})
    assert "another batch size gives other images" in cli("sample", "--help").output.replace("\n", " ").replace(
        "  ", " ")


# ---------------------------------------------------------------- 4. damaged images


@pytest.fixture
def broken_folder(tmp_path):
    root = write_image_folder(tmp_path / "broken", per_class=2)
    bad = root / "test" / "class1" / "0001.png"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated mid-image
    return root, bad


def test_a_truncated_image_is_one_line_naming_it(ckpt, broken_folder, tmp_path):
    root, bad = broken_folder
    # eval reads through DataLoader worker processes (default --workers 2): their error comes back as one line too.
    one_line_error(cli("eval", "--ckpt", ckpt, "--data", f"folder:{root}", "--attack", "none", "--n", 6),
                   f"{bad} is not a readable image", "the command stops")
    one_line_error(cli("grid", root / "test", "--out", tmp_path / "g.png"), f"{bad} is not a readable image")
    one_line_error(cli("score", "--samples", root / "test", "--ref", f"folder:{root / 'train'}"),
                   f"{bad} is not a readable image")


# ---------------------------------------------------------------- 5. data checked against the model


def test_fit_start_refuses_data_the_model_cannot_take(ckpt, tmp_path):
    small = write_image_folder(tmp_path / "small", per_class=2, size=16)
    out = tmp_path / "f.safetensors"
    one_line_error(cli("fit-start", "--ckpt", ckpt, "--data", f"folder:{small}", "--out", out),
                   "checkpoint expects 3 classes of shape (3, 32, 32), but dataset ")
    assert not out.exists()


def test_grid_refuses_images_and_labels_it_would_draw_wrong(tmp_path):
    def npz(name, images, labels):
        np.savez(tmp_path / name, images=images, labels=labels)
        return tmp_path / name

    floats = npz("f.npz", np.random.rand(4, 8, 8, 3).astype(np.float32), np.arange(4) % 2)
    one_line_error(cli("grid", floats, "--out", tmp_path / "a.png"), "images are float32", "uint8")
    negative = npz("n.npz", np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, -1, 0]))
    one_line_error(cli("grid", negative, "--out", tmp_path / "b.png"), "label -1 is not a class")
    flat = npz("l.npz", np.zeros((4, 8), np.uint8), np.arange(4))
    one_line_error(cli("grid", flat, "--out", tmp_path / "c.png"), "uint8 N x H x W x C")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    one_line_error(cli("grid", tmp_path / "junk.npz", "--out", tmp_path / "d.png"), "not a readable .npz")
    mixed = write_image_folder(tmp_path / "mixed", {"a": (1, 2, 3)}, per_class=2, size=8) / "train"
    shutil.copy(write_image_folder(tmp_path / "big", {"a": (1, 2, 3)}, per_class=1, size=12) / "train/a/0000.png",
                mixed / "a/0009.png")
    one_line_error(cli("grid", mixed, "--out", tmp_path / "e.png"), "images differ in size")
    one_line_error(cli("grid", mixed, "--out", tmp_path / "e.png", "--pad", -5), "--pad must be a whole number")


# ---------------------------------------------------------------- 6. one line instead of a traceback


def test_malformed_checkpoint_metadata_is_one_line(tmp_path):
    good = {"arch": "cnn-tiny", "num_classes": 3, "input_shape": [3, 32, 32]}
    cases = {"not json": "{arch: cnn", "a list": json.dumps([1, 2]), "no arch": json.dumps({"num_classes": 3}),
             "2-element shape": json.dumps({**good, "input_shape": [32, 32]}),
             "zero std": json.dumps({**good, "mean": [0, 0, 0], "std": [0, 1, 1]})}
    expected = {"not json": "not JSON", "a list": "a JSON list", "no arch": "lacks arch",
                "2-element shape": "input_shape must be 3 positive", "zero std": "std must be positive"}
    for name, meta in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "robgen-classifier/1", "robgen": meta})
        one_line_error(cli("info", "--ckpt", path), str(path), expected[name])


def test_more_tracebacks_now_one_line(ckpt, tmp_path):
    import pickle

    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps({"w": [1, 2]}))
    one_line_error(cli("import", tmp_path / "evil.safetensors", "--arch", "cnn-tiny", "--out", tmp_path / "o.st"),
                   "is not a readable PyTorch checkpoint")
    one_line_error(cli("survey", "--ckpts", ","), "names no checkpoint")
    one_line_error(cli("train", "--out", tmp_path / "nothing", "--resume"), "holds no run to resume")
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run/config.json").write_text("[1, 2]")
    one_line_error(cli("train", "--out", tmp_path / "run", "--resume"), "not a robgen training config")
    if not torch.cuda.is_available():
        one_line_error(cli("sample", "--ckpt", ckpt, "--device", "cuda", "--out", tmp_path / "s"), "no CUDA GPU")
        one_line_error(cli("fit-start", "--ckpt", ckpt, "--device", "cuda", "--out", tmp_path / "f"), "no CUDA GPU")
    nan = make_ckpt(tmp_path / "nan.safetensors", "", nan=True)
    with pytest.raises(RobgenError, match="has NaN/inf weights"):
        sample(nan, init="uniform", out=tmp_path / "n", **FAST)


# ---------------------------------------------------------------- 7. bytes, not only tensors


def test_a_resumed_training_run_has_the_bytes_of_an_uninterrupted_one(tmp_path):
    data = write_image_folder(tmp_path / "data", {"r": (200, 40, 40), "g": (40, 200, 40)}, 8, 2, size=8)
    config = loop.make_config(data=f"folder:{data}", arch="cnn-tiny", epochs=2, batch_size=4, val_n=4,
                              val_attack_steps=1, attack_steps=1)
    quiet = dict(device="cpu", workers=0, progress=False, log=lambda line: None)
    loop.train(config, tmp_path / "whole", **quiet)
    loop.train(config, tmp_path / "split", stop_after=1, **quiet)  # what a kill after epoch 1's commit leaves
    loop.train(config, tmp_path / "split", resume=True, **quiet)

    def sha(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    for name in ("last.safetensors", "best.safetensors", "state.pt", "config.json"):
        assert sha(tmp_path / "whole" / name) == sha(tmp_path / "split" / name), name
    timing = ("epoch_seconds", "images_per_s", "eval_seconds")
    whole, split = ([{k: v for k, v in json.loads(ln).items() if k not in timing}
                     for ln in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("whole", "split"))
    assert whole == split


def test_checkpoint_headers_are_sorted_json(ckpt, tmp_path):
    """safetensors writes its metadata map in a random order (per map, per process); robgen's header is sorted, so
    the same weights always give the same bytes."""
    from robgen.models.checkpoint import load_classifier, save_classifier

    path = save_classifier(load_classifier(ckpt), tmp_path / "c.safetensors")
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8: 8 + n].rstrip(b" ")
    assert header == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":")).encode() and n % 8 == 0
    assert load_classifier(path).meta == load_classifier(ckpt).meta


def test_run_and_sample_folders_are_known_by_their_owners_marker_files(tmp_path):
    run, samples = tmp_path / "run", tmp_path / "s"
    (samples / "images").mkdir(parents=True)
    run.mkdir()
    for path in (run / "config.json", run / "metrics.jsonl", samples / "manifest.json"):
        path.write_text("{}")
    assert (outputs.folder_kind(run), outputs.folder_kind(samples), outputs.folder_kind(tmp_path)) == (
        "a training run", "a sample run", None)
    assert outputs.owner_of(run / "best.safetensors") == (run, "a training run")
    assert outputs.owner_of(samples / "grid.png") == (samples, "a sample run")
    assert outputs.owner_of(run / "phases.png") is None
