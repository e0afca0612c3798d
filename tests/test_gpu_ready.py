"""What GPUs and torchrun rely on, checked on the CPU: a failing rank ends the job, each rank takes its own GPU,
persistent loader workers change no bytes, precision is recorded, attacks freeze parameters, the GPU check runs."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from conftest import make_ckpt, write_image_folder
from robgen import distributed
from robgen.attacks import pgd
from robgen.errors import RobgenError
from robgen.models import ModelMeta, build_classifier
from robgen.train import make_config, train
from robgen.train import loop

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200), "grey": (128, 128, 128)}


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> str:
    return "folder:" + str(write_image_folder(tmp_path_factory.mktemp("colours"), COLOURS, 10, 5, size=16, noise=20))


def tiny_run(data: str, out: Path, **kwargs) -> dict:
    config = make_config(data=data, arch="cnn-tiny", epochs=2, batch_size=8, val_n=8, lr=0.05)
    return train(config, out, device="cpu", workers=0, progress=False, log=lambda line: None, **kwargs)


def test_an_error_on_rank_0_only_ends_the_torchrun_job_promptly(colours, tmp_path):
    out = tmp_path / "run"
    tiny_run(colours, out, stop_after=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [  # a second run into the same folder: only rank 0 judges it, and refuses
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "robgen.cli",
        "train", "--data", colours, "--arch", "cnn-tiny", "--epochs", "2", "--batch-size", "8", "--val-n", "8",
        "--workers", "0", "--device", "cpu", "--out", str(out),
    ]
    began = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)  # it hung for the 1 h timeout
    assert done.returncode != 0 and time.perf_counter() - began < 120
    assert "Error: " in done.stdout + done.stderr and "already holds a run" in done.stdout + done.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_each_torchrun_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    calls = {}
    monkeypatch.setattr(distributed, "_owned", False)  # restored at the end: the mocked group is never ended
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: calls.setdefault("current", dev))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: "backend" in calls)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, timeout: calls.update(backend=backend))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    for device in ("cuda", "auto"):  # auto is cuda here: the mocked GPUs stand in for available ones
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert distributed.setup(device) == (1, 2, torch.device("cuda", 1))
    assert calls == {"current": torch.device("cuda", 1), "backend": "nccl"}


@pytest.mark.parametrize("device, local_rank, message", [
    ("cuda:1", "0", "each process takes the GPU of its LOCAL_RANK; pass --device cuda or auto, not cuda:1"),
    ("cuda", "3", "process LOCAL_RANK=3 has no GPU: 2 visible"),
])
def test_torchrun_device_errors(monkeypatch, device, local_rank, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # two mocked GPUs
    with pytest.raises(RobgenError, match=message):
        distributed.setup(device)


class Noisy(Dataset):
    """Items drawn from torch's, Python's and NumPy's global generators, as augmentations do."""

    def __len__(self):
        return 24

    def __getitem__(self, i):
        return torch.tensor([i, torch.rand(()).item(), random.random(), np.random.rand()], dtype=torch.float64)


def test_persistent_workers_give_the_batches_of_loaders_rebuilt_every_epoch():
    sampler = DistributedSampler(Noisy(), num_replicas=1, rank=0, seed=0)
    indices = loop._EpochIndices(sampler)
    kept = DataLoader(loop._Seeded(Noisy()), batch_size=4, sampler=indices, num_workers=2, persistent_workers=True,
                      generator=torch.Generator())
    for epoch in (1, 2, 3):
        seed = loop.epoch_seed(0, epoch, 0)
        sampler.set_epoch(epoch)
        indices.base_seed = loop.worker_base_seed(seed)
        fresh = DataLoader(Noisy(), batch_size=4, sampler=sampler, num_workers=2,
                           generator=torch.Generator().manual_seed(seed))
        got, want = list(kept), list(fresh)
        assert len(got) == len(want) == 6 and all(torch.equal(a, b) for a, b in zip(got, want))
        assert len({float(b[0, 1]) for b in got}) == 6  # the draws differ from batch to batch


def test_an_fp16_resume_of_a_run_that_had_no_scaler_starts_a_fresh_scale():
    saved = torch.amp.GradScaler("cuda", enabled=False).state_dict()  # what a CPU or bf16 run writes
    assert saved == {}
    lines = []
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    loop._load_scaler(scaler, saved, lines.append)
    assert scaler.get_scale() == 65536.0 and "no fp16 loss-scaler state" in lines[0]
    with pytest.raises(RuntimeError):  # what torch does without the check
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict(saved)


def test_training_records_its_precision_per_session_outside_the_recipe(colours, tmp_path):
    out = tmp_path / "run"
    tiny_run(colours, out, stop_after=1)
    config = json.loads((out / "config.json").read_text())
    expected = {"from_epoch": 1, "device": "cpu", "autocast": "off", "torch": torch.__version__,
                "attacks": "fp32 (autocast off)", "cudnn_benchmark": False}
    assert config["precision"] == [expected]
    config["precision"][0]["device"] = "cuda"  # as if epoch 1 had run on a GPU
    (out / "config.json").write_text(json.dumps(config))
    assert tiny_run(colours, out, resume=True)["epochs_done"] == 2  # precision is no part of the run's identity
    sessions = json.loads((out / "config.json").read_text())["precision"]
    assert [s["from_epoch"] for s in sessions] == [1, 2] and sessions[1] == {**expected, "from_epoch": 2}


def test_samples_and_reference_features_record_their_precision(tmp_path):
    import test_score
    from robgen import metrics
    from robgen.sample import sample

    ckpt = make_ckpt(tmp_path / "tiny.safetensors", "folder:unused", num_classes=2, shape=(3, 16, 16))
    r = sample(ckpt, n=2, steps=2, init="uniform", bf16=True, out=tmp_path / "s", device="cpu", progress=False)
    manifest = json.loads((Path(r["out"]) / "manifest.json").read_text())
    assert manifest["precision"] == {"device": "cpu", "autocast": "bf16", "torch": torch.__version__}
    samples = test_score.write_npz(tmp_path / "s.npz", test_score.images(8, 1), np.arange(8) % 2)
    ref = "folder:" + str(test_score.write_tree(tmp_path / "ref", test_score.images(8, 2), np.arange(8) % 2))
    protocol = metrics.score(samples, ref=ref, **test_score.tiny())["protocol"]
    cpu = {"device": "cpu", "autocast": "off", "torch": torch.__version__}
    assert protocol["precision"] == protocol["reference_precision"] == cpu


def test_the_score_extractor_runs_on_the_requested_device(monkeypatch):
    import test_score
    from robgen import metrics

    # torch-fidelity's cuda=True means cuda:0; the "meta" device stands in for a second GPU here
    monkeypatch.setattr(metrics.engines, "resolve_device", lambda name: torch.device(name))
    extractor = metrics.build_extractor(metrics.ScoreConfig(**test_score.tiny(device="meta")), logits=False)
    assert {b.device.type for b in extractor.module.buffers()} == {"meta"}


def test_attacks_freeze_parameters_only_while_they_run():
    torch.manual_seed(0)
    model = build_classifier(ModelMeta("cnn-tiny", 4, (3, 16, 16))).eval()
    next(model.parameters()).requires_grad_(False)  # a parameter the caller froze stays frozen
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(any(p.requires_grad for p in m.parameters())))
    x, y = torch.rand(4, 3, 16, 16), torch.arange(4)
    pgd(model, x, y, steps=2, generator=torch.Generator().manual_seed(0))
    assert seen == [False, False]  # a compiled backward then builds no parameter gradients
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * (len(list(model.parameters())) - 1)
    assert all(p.grad is None for p in model.parameters())


def test_the_gpu_check_dry_run_reports_every_section(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # ddp is left out: test_train runs the same 2-rank weat-adv training under the old buffer broadcast
    sections = "env,syncs,attack,determinism,ranks,train,sgld,sample,eval,compile"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--device", "cpu",
                           "--out", str(tmp_path), "--sections", sections], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert not [name for name in sections.split(",") if "error" in report[name]], report
    assert report["ranks"]["same_images"] and all(report["determinism"].values())
    first = report["attack"]["first_step"]
    assert report["attack"]["fp32"] == {k: v for k, v in report["attack"]["bf16"].items() if "attack_in" not in k}
    assert first["fp32"]["sign_agrees_with_fp32"] == 1.0
    assert report["eval"]["cpu"]["pred_adv_agrees_with_cpu"] == 1.0
    assert report["train"]["bf16"]["images_per_s"] > 0 and report["sample"]["projected_50k_minutes"] > 0
    assert "training images/s" in (tmp_path / "summary.txt").read_text()
