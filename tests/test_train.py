"""The trainer: loss formulas, learning, exact resume, DDP, and the errors users see for bad input."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import write_image_folder
from robgen import energy
from robgen.cli import main
from robgen.errors import RobgenError
from robgen.models import ModelMeta, build_classifier
from robgen.train import LOSSES, METRIC_KEYS, batch_loss, make_config, train

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200), "grey": (128, 128, 128)}


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> str:
    """40 train / 20 test 16x16 PNGs, four classes told apart by colour: learnable in a few steps."""
    root = write_image_folder(tmp_path_factory.mktemp("colours"), COLOURS, 10, 5, size=16, noise=20)
    return f"folder:{root}"


def tiny(data: str, **overrides) -> dict:
    base = {"data": data, "arch": "cnn-tiny", "epochs": 2, "batch_size": 8, "val_n": 8, "lr": 0.05}
    return make_config(**{**base, **overrides})


def run(config: dict, out: Path, **kwargs) -> dict:
    return train(config, out, device="cpu", workers=0, progress=False, log=lambda line: None, **kwargs)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_classifier(ModelMeta("cnn-tiny", 4, input_shape=(3, 16, 16), mean=(0.5,) * 3, std=(0.25,) * 3))


def test_weat_step_matches_hand_computation():
    model = tiny_model()
    reference = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 16, 16, generator=gen)
    x_adv = (x + 0.03 * torch.rand(x.shape, generator=gen).sign()).clamp(0, 1)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    beta, lr = 6.0, 0.1

    value, weights = batch_loss(LOSSES.get("weat-adv"), model, x, x_adv, y, beta)
    model.zero_grad()
    value.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad

    # By hand (PAPER.md section 3): w = 1 / log(1 + exp(|E(x)|)) from the clean logits, detached; sum over B.
    reference.train()
    clean, adv = reference(x), reference(x_adv)
    e_x = -torch.logsumexp(clean, 1).detach()
    w = 1 / torch.log1p(torch.exp(e_x.abs()))
    kl = (F.softmax(clean, 1) * (F.log_softmax(clean, 1) - F.log_softmax(adv, 1))).sum(1)
    hand = (w * (F.cross_entropy(adv, y, reduction="none") + beta * kl)).sum() / len(y)
    grads = torch.autograd.grad(hand, list(reference.parameters()))

    assert torch.allclose(value, hand, atol=1e-6)
    assert torch.allclose(weights, w, atol=1e-6)
    for p, p0, g in zip(model.parameters(), reference.parameters(), grads):
        assert torch.allclose(p, p0 - lr * g, atol=1e-6)


def test_trades_is_weat_nat_with_unit_weights(monkeypatch):
    model = tiny_model()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    x_adv = (x + 0.03).clamp(0, 1)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    trades, _ = batch_loss(LOSSES.get("trades"), model, x, x_adv, y, 6.0)
    weighted, _ = batch_loss(LOSSES.get("weat-nat"), model, x, x_adv, y, 6.0)
    assert not torch.allclose(trades, weighted)  # the weights matter...
    monkeypatch.setattr(energy, "weat_weight", lambda logits: torch.ones(len(logits)))
    unit, _ = batch_loss(LOSSES.get("weat-nat"), model, x, x_adv, y, 6.0)
    assert torch.allclose(trades, unit, atol=1e-6)  # ...and with all w = 1 WEAT_nat is TRADES


def test_training_improves_accuracy_and_writes_the_telemetry_contract(colours, tmp_path):
    out = tmp_path / "run"
    result = run(tiny(colours, epochs=4, lr=0.2), out)
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]
    assert all(set(METRIC_KEYS) <= set(m) for m in lines)
    assert lines[0]["weight_mean"] is not None and lines[0]["weight_min"] <= lines[0]["weight_max"]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[0]["val_clean_acc"] < lines[-1]["val_clean_acc"] >= 90.0  # chance is 25% on four classes
    assert result["last"]["val_clean_acc"] == lines[-1]["val_clean_acc"]
    from robgen.models.checkpoint import load_classifier

    model = load_classifier(out / "best.safetensors")
    assert model.meta.recipe["loss"] == "weat-adv" and model.meta.class_names == sorted(COLOURS)
    # The recipe records what ran and no machine path; config.json keeps the path that --resume needs.
    folder = colours.removeprefix("folder:")
    assert model.meta.recipe["data"] == f"folder:{Path(folder).name}" and folder not in json.dumps(model.meta.recipe)
    assert (model.meta.recipe["device"], model.meta.recipe["precision"]) == ("cpu", "fp32")
    assert json.loads((out / "config.json").read_text())["data"] == colours
    assert model.meta.metrics["val_robust_acc"] == max(m["val_robust_acc"] for m in lines)
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 4 and {"optimizer", "scheduler", "scaler"} <= set(state)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_trains_and_reports_weights_only_when_weighted(colours, tmp_path, name):
    run(tiny(colours, loss=name, epochs=1), tmp_path / name)
    (line,) = [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert line["loss"] == name and np.isfinite(line["train_loss"])
    assert (line["weight_mean"] is not None) == name.startswith("weat")


def test_resume_after_a_kill_equals_an_uninterrupted_run(colours, tmp_path):
    config = tiny(colours, loss="trades")
    run(config, tmp_path / "whole")
    run(config, tmp_path / "split", stop_after=1)
    # A kill between writing metrics and committing state.pt leaves a line for an epoch that must be redone.
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "stale": True}) + "\n")
    run(config, tmp_path / "split", resume=True)
    whole, split = load_file(tmp_path / "whole" / "last.safetensors"), load_file(tmp_path / "split" / "last.safetensors")
    assert whole.keys() == split.keys()
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    lines = [json.loads(ln) for ln in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and "stale" not in lines[1]


def test_ddp_two_processes_with_gloo_write_one_run(colours, tmp_path):
    """weat-adv (a clean and an adversarial forward before one backward) under torch < 2.12's DDP buffer broadcast,
    which made that backward fail."""
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "ddp_before_2_12.py"),
        "train", "--data", colours, "--arch", "cnn-tiny", "--epochs", "1", "--batch-size", "8", "--val-n", "8",
        "--workers", "0", "--device", "cpu", "--out", str(out), "--json",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)  # one JSON document: only rank 0 reports
    assert result["epochs_done"] == 1
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["train_images"] == 32  # both ranks' halves counted
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "metrics.jsonl", "state.pt", "last.safetensors", "best.safetensors"]
    )


def test_ddp_ranks_share_rank_0s_batchnorm_statistics_after_each_epoch(colours, tmp_path):
    """Each rank updates its own BatchNorm running statistics on its half of the data (broadcast_buffers=False); at
    every epoch end they become rank 0's on every rank, which is what rank 0 saves and evaluates."""
    buffers = tmp_path / "buffers"
    buffers.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ROBGEN_TEST_BUFFERS": str(buffers)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "ddp_buffers.py"), "train", "--data", colours, "--arch", "cnn-tiny", "--loss", "sat",
        "--epochs", "1", "--batch-size", "8", "--val-n", "8", "--workers", "0", "--device", "cpu",
        "--out", str(tmp_path / "ddp"), "--json",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    rank0, rank1 = (torch.load(buffers / f"epoch1_rank{r}.pt") for r in (0, 1))
    means = [k for k in rank0 if k.endswith("running_mean")]
    assert means and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = load_file(tmp_path / "ddp" / "last.safetensors")
    assert all(torch.equal(saved[k.removeprefix("net.")].float(), rank0[k].float()) for k in means)
    assert not torch.equal(rank0[means[0]], torch.zeros_like(rank0[means[0]]))  # trained, not the initial zeros


def cli(*args: str):
    return CliRunner().invoke(main, ["train", "--workers", "0", "--device", "cpu", *args])


@pytest.mark.parametrize("args, message", [
    (["--loss", "fancy"], "unknown loss 'fancy'; known: mart, sat, standard, trades, weat-adv, weat-nat"),
    (["--eps", "0"], "linf eps must be in (0, 1]"),
    (["--eps", "2"], "linf eps must be in (0, 1]"),
    (["--norm", "l2", "--eps", "300"], "l2 eps must be in (0, 27.71] for images in [0, 1] of shape (3, 16, 16)"),
    (["--norm", "l1"], "unknown norm 'l1'; use linf or l2"),
    (["--step-size", "1.5"], "step-size must be in (0, 2.5 eps]"),
    (["--val-n", "40"], "a validation split of 40 images leaves nothing to train on (40 training images)"),
    (["--val-n", "0"], "val-n must be at least 1"),
    (["--batch-size", "64"], "batch size 64 is larger than the training set (32 images)"),
])
def test_bad_options_give_one_line_errors(colours, tmp_path, args, message):
    result = cli("--data", colours, "--arch", "cnn-tiny", "--val-n", "8", "--out", str(tmp_path / "r"), *args)
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "state.pt").exists()


def test_existing_run_is_never_overwritten_and_resume_checks_the_recipe(colours, tmp_path):
    out = str(tmp_path / "r")
    base = ["--data", colours, "--arch", "cnn-tiny", "--epochs", "1", "--batch-size", "8", "--val-n", "8", "--out", out]
    assert cli(*base).exit_code == 0
    before = (tmp_path / "r" / "last.safetensors").read_bytes()

    again = cli(*base)
    assert again.exit_code == 1 and "already holds a run" in again.output and "--overwrite" in again.output
    other = cli(*base, "--resume", "--lr", "0.3")
    assert other.exit_code == 1 and "holds a run with lr=0.1, not 0.3" in other.output
    assert (tmp_path / "r" / "last.safetensors").read_bytes() == before
    state = (tmp_path / "r" / "state.pt").read_bytes()
    (tmp_path / "r" / "state.pt").write_bytes(state[: len(state) // 2])
    damaged = cli(*base, "--resume")
    assert damaged.exit_code == 1 and damaged.output.count("\n") == 1 and "state.pt is damaged" in damaged.output
    (tmp_path / "r" / "state.pt").write_bytes(state)

    finished = cli("--out", out, "--resume")  # the saved recipe fills every option left out
    assert finished.exit_code == 0 and "nothing to do" in finished.output
    assert cli(*base, "--overwrite", "--seed", "1").exit_code == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["seed"] == 1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(colours, tmp_path, monkeypatch):
    out = tmp_path / "r"
    config = tiny(colours, epochs=2)
    run(config, out, stop_after=1)
    good = (out / "last.safetensors").read_bytes()
    monkeypatch.setattr(energy, "trades_kl", lambda clean, adv: adv.sum(1) * float("nan"))
    with pytest.raises(RobgenError, match=r"loss became nan at epoch 2, batch 1; stopped, the last good checkpoint \(epoch 1\)"):
        run(config, out, resume=True)
    assert (out / "last.safetensors").read_bytes() == good
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 1


def test_recorded_recipe_names_the_precision_that_ran():
    from robgen.train.loop import recorded_recipe

    config = make_config(data="folder:/some/machine/c10")
    assert recorded_recipe(config, torch.device("cuda"))["precision"] == "bf16"
    assert recorded_recipe({**config, "amp": "off"}, torch.device("cuda"))["precision"] == "fp32"
    on_cpu = recorded_recipe(config, torch.device("cpu"))
    assert (on_cpu["data"], on_cpu["device"], on_cpu["precision"]) == ("folder:c10", "cpu", "fp32")
    assert recorded_recipe(make_config(), torch.device("cpu"))["data"] == "cifar10"


def test_a_standard_run_keeps_its_best_clean_epoch_and_adversarial_runs_their_best_robust_one(colours, tmp_path):
    """Standard training has no robustness to choose by (its PGD accuracy is near 0 at every epoch): its
    best.safetensors is the epoch of the best clean validation accuracy; every adversarial loss keeps choosing by PGD."""
    from robgen.models.checkpoint import load_classifier
    from robgen.train import selection_key

    assert [selection_key({"loss": loss}) for loss in ("standard", "trades", "weat-adv")] == [
        "val_clean_acc", "val_robust_acc", "val_robust_acc"]
    out = tmp_path / "standard"
    result = run(tiny(colours, loss="standard", epochs=3, lr=0.2), out)
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    chosen = max(lines, key=lambda m: (m["val_clean_acc"], -m["epoch"]))  # the first epoch of the best accuracy
    assert result["best"] == {"epoch": chosen["epoch"], "value": chosen["val_clean_acc"]}
    assert load_classifier(out / "best.safetensors").meta.metrics["epoch"] == chosen["epoch"]
    state = torch.load(out / "state.pt", weights_only=True)
    assert (state["best_epoch"], state["best_value"]) == (chosen["epoch"], chosen["val_clean_acc"])
