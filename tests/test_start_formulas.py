"""robgen.sample.starts against its formulas: the fit's statistics (mean, principal components, variance, counts,
energies, kept images), the draws of every start, the file format, and the checks that name what is missing."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from robgen import RobgenError, energy
from robgen.data import labels_of, load_split
from robgen.sample import starts as S
from robgen.seeds import class_seed

from conftest import Recorder, make_ckpt, write_image_folder


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def toy_fit(classes: int = 2, d: int = 12, n: int = 5) -> S.StartFit:
    """A fit from random class matrices, through the same _principal as fit_starts."""
    means, bases, stds, variances = [], [], [], []
    for c in range(classes):
        x = torch.rand(n, d, generator=gen(10 + c))
        mu, centred = x.mean(0), x - x.mean(0)
        std, basis = S._principal(centred)
        means.append(mu), bases.append(basis), stds.append(std), variances.append(centred.pow(2).sum() / (n - 1))
    images = [(torch.rand(4, d, generator=gen(20 + c)) * 255).round().to(torch.uint8) for c in range(classes)]
    return S.StartFit((3, 2, 2), torch.stack(means), bases, stds, torch.stack(variances), torch.tensor([-1.0, -2.0]),
                      torch.full((classes,), float(n)), images, {"retained": None, "checkpoint_sha256": "abc"})


@pytest.mark.parametrize("n, d", [(6, 20), (20, 6)])  # the Gram-matrix branch and the covariance branch
def test_principal_components_are_the_svd_of_the_centred_data(n, d):
    x = torch.randn(n, d, generator=gen(0), dtype=torch.float64)
    centred = x - x.mean(0)
    std, basis = S._principal(centred.float())
    _, s, vh = torch.linalg.svd(centred)
    rank = min(n - 1, d)  # centring removes one direction
    assert len(std) == rank and basis.shape == (rank, d)
    torch.testing.assert_close(std.double(), s[:rank] / math.sqrt(n - 1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close((basis.double() @ vh[:rank].T).abs(), torch.eye(rank, dtype=torch.float64),
                               rtol=0, atol=1e-4)  # the same directions, up to sign, leading first
    torch.testing.assert_close(basis @ basis.T, torch.eye(rank), rtol=0, atol=1e-4)


def test_fit_starts_holds_each_classs_statistics(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=7, size=4, noise=40)
    model = __import__("robgen").load_classifier(make_ckpt(tmp_path / "m.safetensors", f"folder:{root}", shape=(3, 4, 4)))
    fit = S.fit_starts(f"folder:{root}", model=model, checkpoint_sha256="sha", per_class=5, seed=3, progress=False)
    data, spec = load_split(f"folder:{root}", "train")
    labels = labels_of(data)
    for c in range(3):
        indices = torch.nonzero(labels == c).flatten()
        order = torch.randperm(len(indices), generator=gen(class_seed(3, c)))
        x = torch.stack([data[i][0].flatten() for i in indices[order[:5]].tolist()])
        mu = x.mean(0)
        torch.testing.assert_close(fit.mean[c], mu)
        torch.testing.assert_close(fit.variance[c], (x - mu).pow(2).sum() / 4)
        torch.testing.assert_close((fit.std[c] ** 2).sum(), fit.variance[c], rtol=1e-4, atol=0)  # all components kept
        assert fit.images[c].dtype == torch.uint8 and torch.equal(fit.images[c], (x * 255).round().to(torch.uint8))
        assert fit.count[c] == 5
        with torch.no_grad():
            e = energy.joint_energy(model(x.view(-1, 3, 4, 4)), torch.full((5,), c)).mean()
        torch.testing.assert_close(fit.energy[c], e)
    assert fit.info == {"dataset": "folder:d", "split": "train", "per_class": 5, "seed": 3, "retained": None,
                        "checkpoint_sha256": "sha", "class_names": ["class0", "class1", "class2"]}
    assert fit.input_shape == (3, 4, 4)
    assert S.fit_starts(f"folder:{root}", progress=False).energy.isnan().all()  # no model: energies unknown
    with pytest.raises(RobgenError, match="^fitting a start needs at least 2 images per class, got --fit-images 1$"):
        S.fit_starts(f"folder:{root}", per_class=1, progress=False)


def test_fit_starts_refuses_what_cannot_serve_the_model(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=3, size=4)
    model = __import__("robgen").load_classifier(make_ckpt(tmp_path / "m.safetensors", "x", shape=(3, 8, 8)))
    with pytest.raises(RobgenError, match=r"expects 3 classes of shape \(3, 8, 8\), but dataset folder:.* has 3 "
                                          r"classes of shape \(3, 4, 4\); pass a matching --data"):
        S.fit_starts(f"folder:{root}", model=model, progress=False)
    assert S.fit_starts(f"folder:{root}", per_class=2, progress=False).count.tolist() == [2.0] * 3  # 2 is enough
    one = write_image_folder(tmp_path / "one", per_class=1, size=4)
    with pytest.raises(RobgenError, match=r"^class 0 of folder:.* train has 1 image\(s\); a start fit needs 2 or more$"):
        S.fit_starts(f"folder:{one}", progress=False)


def test_components_singular_values_and_truncation():
    fit = toy_fit()
    share = torch.cumsum(fit.std[0].double() ** 2, 0) / fit.variance[0].double()
    for retained in (0.3, 0.6, 0.9, 1.0):
        k = fit.components(0, retained)
        assert share[k - 1] >= retained - 1e-6 and (k == 1 or share[k - 2] < retained)
    assert fit.components(0, float(share[1])) == 2  # exactly reaching the share needs no more components
    torch.testing.assert_close(fit.singular_values(1, 2), math.sqrt(4) * fit.std[1][:2])
    short = fit.truncated(0.6)
    assert [len(s) for s in short.std] == [fit.components(c, 0.6) for c in range(2)] and short.images == []
    assert short.info["retained"] == 0.6 and torch.equal(short.basis[0], fit.basis[0][: len(short.std[0])])
    assert torch.equal(short.variance, fit.variance) and torch.equal(short.count, fit.count)
    assert short.input_shape == fit.input_shape and short.mean is fit.mean and short.energy is fit.energy
    three = fit.truncated(0.9)  # 3 of class 0's 4 components: the message gives the share all 3 keep
    kept = float((three.std[0].double() ** 2).sum() / fit.variance[0].double())
    with pytest.raises(RobgenError, match=rf"^the start fit keeps only {kept:.3f} of class 0's variance, less than the "
                                          r"0.999 asked; lower --retained or refit with --data$"):
        three.components(0, 0.999)


def test_every_start_is_its_formula():
    fit, y = toy_fit(), torch.tensor([1, 0, 1, 1])
    shape = (3, 2, 2)
    opts = {"retained": 0.9, "sigma_pca": 0.05, "data_noise": 0.1}

    def rows(draw):  # class by class in increasing order, clipped to [0, 1]
        out = torch.empty(4, 12)
        for c in (0, 1):
            idx = torch.nonzero(y == c).flatten()
            out[idx] = draw(c, len(idx))
        return out.view(4, *shape).clamp(0, 1)

    g = gen(1)
    torch.testing.assert_close(S.uniform_start(fit, y, shape, gen(1), opts), torch.rand((4, *shape), generator=g))
    g = gen(1)
    want = rows(lambda c, m: fit.mean[c] + (torch.randn((m, len(fit.std[c])), generator=g) * fit.std[c]) @ fit.basis[c]
                + 0.01 * torch.randn((m, 12), generator=g))
    torch.testing.assert_close(S.gaussian_start(fit, y, shape, gen(1), opts), want)
    g = gen(1)

    def pca(c, m):
        k = fit.components(c, 0.9)
        return fit.mean[c] + (0.05 * torch.randn((m, k), generator=g) * fit.singular_values(c, k)) @ fit.basis[c][:k]

    torch.testing.assert_close(S.pca_start(fit, y, shape, gen(1), opts), want_pca := rows(pca))
    g = gen(1)

    def data(c, m):
        pick = torch.randint(0, 4, (m,), generator=g)
        return fit.images[c][pick].float() / 255 + 0.1 * torch.randn((m, 12), generator=g)

    torch.testing.assert_close(S.data_start(fit, y, shape, gen(1), opts), rows(data))
    g = gen(1)
    use_pca = torch.rand(4, generator=g) < 0.5
    mixed = S.mix_start(fit, y, shape, gen(1), opts)
    gaussian, pca_part = S.gaussian_start(fit, y, shape, g, opts), S.pca_start(fit, y, shape, g, opts)
    torch.testing.assert_close(mixed, torch.where(use_pca.view(-1, 1, 1, 1), pca_part, gaussian))
    assert want_pca.shape == (4, *shape)


def test_draw_starts_fills_the_documented_defaults_and_refuses_an_unfit_fit():
    fit = toy_fit()
    y = torch.tensor([0, 1])
    want = S.pca_start(fit, y, (3, 2, 2), gen(2), {"retained": 0.95, "sigma_pca": 0.005, "data_noise": 0.2})
    torch.testing.assert_close(S.draw_starts("pca", fit, y, (3, 2, 2), gen(2)), want)
    assert (S.DEFAULTS["retained"], S.DEFAULTS["sigma_pca"], S.DEFAULTS["data_noise"]) == (0.95, 0.005, 0.2)
    with pytest.raises(RobgenError, match="^the gaussian start needs the full class covariance, but this fit is a 0.5 "
                                          "PCA truncation; pass --data to fit it on training images$"):
        S.draw_starts("gaussian", fit.truncated(0.5), y, (3, 2, 2), gen(2))


def test_what_a_fit_cannot_serve():
    fit = toy_fit()
    assert S._unfit(fit, "gaussian", None) is None and S._unfit(fit, "data", "abc") is None
    assert S._unfit(fit.truncated(0.9), "mix", None) == ("the mix start needs the full class covariance, but this fit "
                                                         "is a 0.9 PCA truncation")
    assert S._unfit(fit.truncated(0.9), "pca", None) is None
    assert S._unfit(fit.truncated(0.9), "data", None) == ("the data start needs real training images, which this fit "
                                                          "does not hold")
    needs = "early stopping needs the class energies of this checkpoint, which this fit does not hold"
    assert S._unfit(fit, "pca", "other") == needs
    fit.energy[1] = float("nan")
    assert S._unfit(fit, "pca", "abc") == needs


def test_a_saved_fit_loads_as_it_was(tmp_path):
    fit = toy_fit()
    path = S.save_fit(fit, tmp_path / "f.starts.safetensors")
    back = S.load_fit(path)
    assert back.input_shape == (3, 2, 2) and back.info == fit.info
    for a, b in [(back.mean, fit.mean), (back.variance, fit.variance), (back.energy, fit.energy),
                 (back.count, fit.count), *zip(back.std, fit.std), *zip(back.images, fit.images)]:
        assert torch.equal(a, b)
    for a, b in zip(back.basis, fit.basis):
        assert a.dtype == torch.float32 and torch.equal(a, b.half().float())  # stored in float16
    with pytest.raises(RobgenError, match="^no start fit .*; make one with `robgen fit-start --data DATASET --out FILE`$"):
        S.load_fit(tmp_path / "missing.safetensors")
    save_file({"mean": fit.mean}, str(tmp_path / "other.safetensors"), metadata={"format": "robgen-classifier/1"})
    with pytest.raises(RobgenError, match=r"is not a robgen start fit \(format 'robgen-classifier/1', expected "
                                          r"robgen-starts/2\)$"):
        S.load_fit(tmp_path / "other.safetensors")
    save_file({"mean": fit.mean}, str(tmp_path / "part.safetensors"),
              metadata={"format": S.FORMAT, "info": json.dumps({"input_shape": [3, 2, 2]})})
    with pytest.raises(RobgenError, match=r"is an incomplete start fit \(missing 'count'\); make it again"):
        S.load_fit(tmp_path / "part.safetensors")
    assert S.shipped_fit_path(tmp_path / "m.safetensors") == tmp_path / "m.starts.safetensors"
    assert S.cached_fit_path("k").name == "k.starts.safetensors"


def test_the_cache_key_and_digest_follow_every_input():
    args = ["cifar10", "train", None, 0, (3, 32, 32), "sha"]
    key = S.fit_key(*args)
    assert len(key) == 20 and S.fit_key(*args) == key
    for i, other in enumerate(["svhn", "test", 100, 1, (3, 16, 16), "sha2"]):
        assert S.fit_key(*args[:i], other, *args[i + 1:]) != key, i
    fit = toy_fit()
    digest = S.fit_digest(fit)
    assert len(digest) == 16 and S.fit_digest(toy_fit()) == digest
    for change in (lambda f: f.info.update(seed=1), lambda f: f.mean.add_(1e-3), lambda f: f.energy.add_(1.0),
                   lambda f: f.std[1].mul_(2)):
        other = toy_fit()
        change(other)
        assert S.fit_digest(other) != digest


def test_principal_components_do_not_depend_on_the_datas_scale():
    """Null directions are dropped relative to the largest eigenvalue, so tiny-valued data keeps its components."""
    x = torch.rand(6, 20, generator=gen(5))
    centred = x - x.mean(0)
    std, basis = S._principal(centred)
    small_std, small_basis = S._principal(centred * 1e-6)
    assert len(small_std) == len(std) == 5  # n - 1 directions carry variance
    torch.testing.assert_close(small_std, std * 1e-6)
    torch.testing.assert_close(small_basis.abs(), basis.abs(), atol=1e-4, rtol=0)


def test_a_fits_digest_survives_saving_and_loading(tmp_path):
    """Manifests compare digests of a fit made now and of one read from the cache: they must agree."""
    fit = toy_fit()
    fit.info = {"seed": 0, "checkpoint_sha256": "abc", "retained": None, "dataset": "d"}  # not in sorted order
    back = S.load_fit(S.save_fit(fit, tmp_path / "f.starts.safetensors"))
    assert S.fit_digest(back) == S.fit_digest(fit)
    assert len(back.images) == len(fit.images) == 2 and all(torch.equal(a, b) for a, b in zip(back.images, fit.images))
    fit.images = []
    assert S.load_fit(S.save_fit(fit, tmp_path / "g.starts.safetensors")).images == []


def test_load_fit_names_the_file_it_cannot_read(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(RobgenError, match=f"^no start fit '{missing}'; make one with"):
        S.load_fit(missing)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RobgenError, match=f"^{tmp_path / 'junk.safetensors'} is not a readable start fit \\("):
        S.load_fit(tmp_path / "junk.safetensors")


@pytest.fixture
def tiny(tmp_path):
    """A 4x4 three-class folder and a checkpoint trained on nothing that names it as its dataset."""
    root = write_image_folder(tmp_path / "d", per_class=4, size=4)
    path = make_ckpt(tmp_path / "m" / "m.safetensors", f"folder:{root}", shape=(3, 4, 4))
    return root, path, __import__("robgen").load_classifier(path)


def resolver(model, path):
    """resolve_fit for the tiny checkpoint (sha "sha"), the start and options given per call."""
    return lambda init="pca", **kw: S.resolve_fit(init, model=model, ckpt_path=path, checkpoint_sha256="sha", **kw)


def test_resolve_fit_tries_each_source_in_order_and_says_which(tiny, tmp_path, monkeypatch):
    root, path, model = tiny
    dataset = f"folder:{root}"
    resolve = resolver(model, path)

    assert resolve("uniform") == (None, "none")  # a start that needs no fit
    fitting = Recorder(S.fit_starts)
    monkeypatch.setattr(S, "fit_starts", fitting)
    fit, source = resolve("uniform", early_stop=True)  # ... but early stopping needs the class energies
    cached = S.cached_fit_path(S.fit_key(dataset, "train", None, 0, (3, 4, 4), "sha"))
    assert source == f"fitted on {dataset} (every image per class), cached at {cached}" and cached.is_file()
    assert fitting.calls == [((dataset,), dict(model=model, checkpoint_sha256="sha", per_class=None, root=None,
                                               download=False, progress=True))]
    assert fit.energy.isfinite().all() and fit.info["checkpoint_sha256"] == "sha"
    again, source = resolve("pca")
    assert source == str(cached) and len(fitting.calls) == 1 and S.fit_digest(again) == S.fit_digest(fit)

    fit, source = resolve("pca", per_class=2, root=tmp_path / "r", progress=False)
    cached = S.cached_fit_path(S.fit_key(dataset, "train", 2, 0, (3, 4, 4), "sha"))
    assert source == f"fitted on {dataset} (2 images per class), cached at {cached}"
    assert fitting.calls[-1][1] == dict(model=model, checkpoint_sha256="sha", per_class=2, root=tmp_path / "r",
                                        download=False, progress=False)
    assert fit.count.tolist() == [2.0] * 3

    with pytest.raises(RobgenError, match=r"^the pca start needs training images to fit on: .*; or pass "
                                          r"--start-stats FILE from `robgen fit-start`$"):
        resolve(data=f"folder:{tmp_path / 'nowhere'}")


def test_resolve_fit_reads_start_stats_then_the_shipped_fit(tiny, tmp_path):
    root, path, model = tiny
    resolve = resolver(model, path)

    fit = S.fit_starts(f"folder:{root}", model=model, checkpoint_sha256="other", progress=False)
    stats = S.save_fit(fit, tmp_path / "stats.starts.safetensors")
    got, source = resolve(start_stats=stats)
    assert source == str(stats) and S.fit_digest(got) == S.fit_digest(S.load_fit(stats))
    with pytest.raises(RobgenError, match=f"^{stats}: early stopping needs the class energies of this checkpoint, "
                                          "which this fit does not hold; pass --data to fit one on training images$"):
        resolve(start_stats=stats, early_stop=True)
    wrong = S.save_fit(toy_fit(), tmp_path / "wrong.starts.safetensors")
    with pytest.raises(RobgenError, match=rf"^start fit {wrong} is for 2 classes of shape \(3, 2, 2\), but the model "
                                          r"takes 3 classes of shape \(3, 4, 4\); pass a matching --data or "
                                          r"--start-stats$"):
        resolve(start_stats=wrong)

    shipped = S.save_fit(fit, S.shipped_fit_path(path))
    assert resolve()[1] == str(shipped)
    # Early stopping needs this checkpoint's energies, which the shipped fit (made for "other") lacks: a new fit.
    assert resolve(early_stop=True)[1].startswith(f"fitted on folder:{root} (every image per class)")
    S.save_fit(toy_fit(), shipped)
    with pytest.raises(RobgenError, match=rf"^start fit {shipped} is for 2 classes"):
        resolve()


def test_resolve_fit_without_a_dataset_says_what_to_pass(tmp_path):
    model = __import__("robgen").load_classifier(make_ckpt(tmp_path / "m.safetensors", "", shape=(3, 4, 4)))
    with pytest.raises(RobgenError, match=r"^the gaussian start needs class statistics fitted on training images, and "
                                          r"the checkpoint names no dataset: pass --data DATASET \(or --start-stats "
                                          r"FILE from `robgen fit-start`\)$"):
        S.resolve_fit("gaussian", model=model, ckpt_path=tmp_path / "m.safetensors", checkpoint_sha256="sha")


@pytest.mark.parametrize("init", ["pca", "gaussian", "data"])
def test_export_fit_writes_what_its_start_needs(tiny, tmp_path, monkeypatch, init):
    from robgen.models.checkpoint import checkpoint_id

    root, path, model = tiny
    fitting = Recorder(S.fit_starts)
    monkeypatch.setattr(S, "fit_starts", fitting)
    out = tmp_path / f"{init}.starts.safetensors"
    report = S.export_fit(path, out, init=init, per_class=3, root=tmp_path / "r", progress=False)
    fit = S.load_fit(out)
    full = fitting.fn(f"folder:{root}", model=model, per_class=3, progress=False)
    kept = [len(s) for s in (full.truncated(0.95).std if init == "pca" else full.std)]
    assert report == {"out": str(out), "init": init, "data": f"folder:{root}", "per_class": 3, "classes": 3,
                      "components": kept, "bytes": out.stat().st_size}
    assert [len(s) for s in fit.std] == kept and fit.info["retained"] == (0.95 if init == "pca" else None)
    assert len(fit.images) == (3 if init == "data" else 0)
    assert fit.info["checkpoint_sha256"] == checkpoint_id(path)["sha256"]
    assert fitting.calls == [((f"folder:{root}",), dict(model=fitting.calls[0][1]["model"], checkpoint_sha256=checkpoint_id(path)["sha256"],
                                                         per_class=3, root=tmp_path / "r", download=False, progress=False))]
    assert next(fitting.calls[0][1]["model"].parameters()).device.type == "cpu"  # "auto" fits on the CPU
    with pytest.raises(RobgenError, match="exists"):
        S.export_fit(path, out, init=init)  # never replaced without overwrite=True


def test_fit_starts_reads_the_split_it_is_given_from_root(tmp_path, monkeypatch):
    from robgen import data as data_module

    root = write_image_folder(tmp_path / "d", per_class=2, size=4)
    loading = Recorder(data_module.load_split)
    monkeypatch.setattr(data_module, "load_split", loading)
    S.fit_starts(f"folder:{root}", root=tmp_path / "r", progress=False)
    S.fit_starts(f"folder:{root}", split="test", download=False, progress=False)
    assert loading.calls == [((f"folder:{root}", "train"), dict(root=tmp_path / "r", download=False)),
                             ((f"folder:{root}", "test"), dict(root=None, download=False))]
