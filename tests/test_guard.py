"""The refactor guard: fixed tiny train, sample and score runs give the same bytes as when they were recorded.

Runs in flight (experiments/c10-fast) resume across sessions with whatever code is on main then, so a change that
alters what training, sampling or scoring computes must be deliberate: it fails here and the hashes below are then
re-recorded (`python tests/test_guard.py` prints them) with the reason in the commit message. Float results depend
on the torch build and the CPU's vector unit, so the hashes hold for the recorded pair and the test skips elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_ckpt, write_image_folder  # noqa: E402

RECORDED = {
    "platform": {"torch": "2.14.1+cu130", "cpu_capability": "AVX512"},
    "train_weat_adv_linf_airnet": "1652e787e46147323cff011105041174f6e9825c3b6f352759b924f5e32d1208",
    "train_weat_adv_l2": "f944c808e570ae53172338f9f8530dbf8d31f8857d1142a24f69c474ea1313b3",
    "train_standard": "8191cb28a24ddbbe7ec14c141add17fa4320b52b23eef3aa1de36b67fbe3e64a",
    "sample_sgld_pca": "442abedef0701d0bbd3f05da799fea91b4b983e9dff5e3b8606bce0b827d4e9c",
    "score_fid_kid": "12bf7813f53e0c12867b199f94f375af6676d149a879325c5f988a36772ca82a",
}
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200), "grey": (128, 128, 128)}


def platform() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def train_hash(root: Path, name: str, **overrides) -> str:
    from robgen.train import make_config, train

    config = make_config("fast", data=f"folder:{root}", epochs=2, batch_size=8, val_n=8, select_from=1, **overrides)
    out = root.parent / name
    train(config, out, device="cpu", workers=0, progress=False, log=lambda line: None)
    weights = load_file(out / "last.safetensors")
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    telemetry = [[m[k] for k in ("train_loss", "train_dE", "val_clean_acc", "val_robust_acc")] for m in lines]
    return digest(*(weights[k].numpy().tobytes() for k in sorted(weights)), json.dumps(telemetry).encode())


def sample_hash(root: Path) -> str:
    from robgen.sample import sample

    ckpt = make_ckpt(root.parent / "tiny.safetensors", f"folder:{root}", num_classes=4, shape=(3, 16, 16))
    result = sample(ckpt, classes=[0, 2], n=3, steps=4, batch_size=4, out=root.parent / "samples", progress=False)
    with np.load(Path(result["out"]) / "samples.npz") as npz:
        return digest(npz["images"].tobytes(), npz["labels"].tobytes())


def score_hash(root: Path) -> str:
    import test_score  # registers the tiny stand-in extractor
    from robgen import metrics

    samples = test_score.write_npz(root.parent / "s.npz", test_score.images(24, 1), np.arange(24) % 2)
    ref = "folder:" + str(test_score.write_tree(root.parent / "ref", test_score.images(40, 2), np.arange(40) % 2))
    out = metrics.score(samples, ref=ref, fid=True, kid=True, **test_score.tiny(kid_subset_size=10))
    # 8 significant digits: FID's matrix square root moves in the last digits with the scipy/BLAS build (an
    # unpinned install changed them between sessions), while any change to what is scored moves far more.
    return digest(repr([f"{out[k]:.8g}" for k in ("fid", "kid", "kid_std")]).encode())


def compute_all(tmp: Path) -> dict:
    torch.set_num_threads(1)
    root = write_image_folder(tmp / "data", COLOURS, 10, 5, size=16, noise=20)
    return {
        "train_weat_adv_linf_airnet": train_hash(root, "linf", loss="weat-adv"),
        "train_weat_adv_l2": train_hash(root, "l2", loss="weat-adv", norm="l2", arch="cnn-tiny"),
        "train_standard": train_hash(root, "standard", loss="standard", arch="cnn-tiny"),
        "sample_sgld_pca": sample_hash(root),
        "score_fid_kid": score_hash(root),
    }


def test_fixed_runs_give_the_recorded_bytes(tmp_path):
    if platform() != RECORDED["platform"]:
        pytest.skip(f"hashes recorded on {RECORDED['platform']}, this is {platform()}")
    got = compute_all(tmp_path)
    assert got == {k: v for k, v in RECORDED.items() if k != "platform"}


if __name__ == "__main__":  # print the hashes to record
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps({"platform": platform(), **compute_all(Path(tmp))}, indent=4))
