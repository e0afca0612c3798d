"""Starting points x_0 for sampling (PAPER.md section 4), fitted per class on training images.

A `StartFit` holds, per class y: the mean mu_y, an orthonormal basis U_y (rows) of the centred class data with the
per-component standard deviations std_y (so Sigma_y = U_y^T diag(std_y^2) U_y exactly, of rank min(n-1, D)), a few
real images (for the `data` start) and the class's mean training energy E(x, y) (for early stopping).

PCA scaling, as the paper: x_0 = mu_y + sum_i s_i a_i U_i, a_i ~ N(0, sigma_pca^2), with s_i the singular values of
the centred matrix of the class's n_y images, s_i = sqrt(n_y - 1) std_i. Fits use every training image of the class
by default (5,000 per CIFAR-10 class: with sigma_pca = 0.005 the start is mu_y plus 0.35 times a draw from the class's
PCA Gaussian, a blurred, noisy class image); a class of 500 images (CIFAR-100, Tiny-ImageNet) gets its own, smaller
spread. Fits of format robgen-starts/1 (no per-class counts) were scaled as n_y = LEGACY_N = 5000 and still are.

Fits are cached under utils.cache_dir("starts") keyed by a hash of what produced them, and can be exported to a
safetensors file shipped beside a checkpoint (`<checkpoint stem>.starts.safetensors`).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..errors import RobgenError
from ..registry import Registry
from ..seeds import class_seed
from ..utils import atomic_path, cache_dir, read_safetensors

FORMAT = "robgen-starts/2"  # /2 adds the per-class image counts
READABLE_FORMATS = ("robgen-starts/1", FORMAT)
SUFFIX = ".starts.safetensors"
LEGACY_N = 5000  # the class size robgen-starts/1 fits scaled their PCA singular values to
GAUSSIAN_JITTER = 1e-4  # Sigma_y + 1e-4 I (PAPER.md)
# per_class None: every training image of the class (the paper's fit).
DEFAULTS = {"init": "pca", "per_class": None, "split": "train", "retained": 0.95, "sigma_pca": 0.005,
            "data_noise": 0.2, "images_kept": 100, "seed": 0}


@dataclass
class StartFit:
    """Class-wise statistics of training images (flattened to D = C*H*W values in [0, 1])."""

    input_shape: tuple[int, int, int]
    mean: Tensor  # (K, D) float32
    basis: list[Tensor]  # per class (r_y, D), orthonormal rows, leading components first
    std: list[Tensor]  # per class (r_y,), standard deviation along each component
    variance: Tensor  # (K,) total variance of each class (so a truncated fit still knows its retained share)
    energy: Tensor  # (K,) mean E(x, y) of the class's training images under the fitting model; NaN if unknown
    count: Tensor  # (K,) images each class was fitted on (LEGACY_N for robgen-starts/1 fits)
    images: list[Tensor] = field(default_factory=list)  # per class (m_y, D) uint8, for the `data` start
    info: dict = field(default_factory=dict)  # dataset, split, per_class, seed, retained, checkpoint_sha256, ...

    @property
    def num_classes(self) -> int:
        return self.mean.shape[0]

    def singular_values(self, y: int, k: int) -> Tensor:
        """The leading k singular values of class y's centred image matrix, sqrt(n_y - 1) std_i."""
        return math.sqrt(float(self.count[y]) - 1) * self.std[y][:k]

    def components(self, y: int, retained: float) -> int:
        """How many leading components keep `retained` of class y's variance."""
        share = torch.cumsum(self.std[y].double() ** 2, 0) / self.variance[y].double()
        k = int(torch.searchsorted(share, torch.tensor(retained, dtype=torch.float64) - 1e-9)) + 1
        if k > len(share):
            raise RobgenError(
                f"the start fit keeps only {float(share[-1]):.3f} of class {y}'s variance, less than the "
                f"{retained} asked; lower --retained or refit with --data"
            )
        return k

    def truncated(self, retained: float) -> "StartFit":
        """The leading components up to `retained` variance, without images: what a shipped PCA fit holds."""
        ks = [self.components(y, retained) for y in range(self.num_classes)]
        return StartFit(
            self.input_shape, self.mean, [b[:k] for b, k in zip(self.basis, ks)], [s[:k] for s, k in zip(self.std, ks)],
            self.variance, self.energy, self.count, [], {**self.info, "retained": retained},
        )


def save_fit(fit: StartFit, path: str | Path) -> Path:
    """Write a fit as safetensors (basis in float16: unit vectors lose nothing visible), atomically."""
    tensors = {"mean": fit.mean.float().contiguous(), "variance": fit.variance.float(), "energy": fit.energy.float(),
               "count": fit.count.float()}
    for y in range(fit.num_classes):
        tensors[f"basis.{y}"] = fit.basis[y].half().contiguous()
        tensors[f"std.{y}"] = fit.std[y].float().contiguous()
        if fit.images:
            tensors[f"images.{y}"] = fit.images[y].contiguous()
    info = {**fit.info, "input_shape": list(fit.input_shape)}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "info": json.dumps(info, sort_keys=True)})
    return path


def load_fit(path: str | Path) -> StartFit:
    path = Path(path)
    if not path.is_file():
        raise RobgenError(f"no start fit {str(path)!r}; make one with `robgen fit-start --data DATASET --out FILE`")
    tensors, header = read_safetensors(path, "start fit")
    if header.get("format") not in READABLE_FORMATS:
        raise RobgenError(f"{path} is not a robgen start fit (format {header.get('format')!r}, expected {FORMAT})")
    try:
        info = json.loads(header["info"])
        k = tensors["mean"].shape[0]
        legacy = header["format"] == READABLE_FORMATS[0]
        count = torch.full((k,), float(LEGACY_N)) if legacy else tensors["count"]
        return StartFit(
            tuple(info.pop("input_shape")), tensors["mean"], [tensors[f"basis.{y}"].float() for y in range(k)],
            [tensors[f"std.{y}"] for y in range(k)], tensors["variance"], tensors["energy"], count,
            [tensors[f"images.{y}"] for y in range(k)] if "images.0" in tensors else [], info,
        )
    except (KeyError, json.JSONDecodeError) as err:
        raise RobgenError(f"{path} is an incomplete start fit (missing {err}); make it again with `robgen fit-start`") from None


def shipped_fit_path(ckpt_path: str | Path) -> Path:
    """Where a checkpoint's shipped start fit lives: beside it, `<stem>.starts.safetensors`."""
    ckpt_path = Path(ckpt_path)
    return ckpt_path.with_name(ckpt_path.name.removesuffix(ckpt_path.suffix) + SUFFIX)


def fit_key(dataset: str, split: str, per_class: int | None, seed: int, input_shape, checkpoint_sha256: str | None) -> str:
    """Hash of everything that determines a fit; names its cache file."""
    text = json.dumps([dataset, split, per_class, seed, list(input_shape), checkpoint_sha256, FORMAT])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cached_fit_path(key: str) -> Path:
    return cache_dir("starts") / f"{key}{SUFFIX}"


def _class_images(dataset, labels: Tensor, y: int, per_class: int | None, seed: int) -> Tensor:
    """Up to per_class images of class y (a seeded random choice; None: all), flattened, float32 in [0, 1]."""
    indices = torch.nonzero(labels == y).flatten()
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(class_seed(seed, y)))
    chosen = indices[order[:per_class]].tolist()
    batches = [x.flatten(1) for x, _ in DataLoader(Subset(dataset, chosen), batch_size=256, num_workers=0)]
    return torch.cat(batches).float()


def _principal(centred: Tensor) -> tuple[Tensor, Tensor]:
    """Per-component std and orthonormal basis (rows, leading first) of centred data (n, D), via the smaller Gram
    matrix's eigendecomposition (several times faster than an SVD for n << D); null directions are dropped."""
    n, _ = centred.shape
    c = centred.double()
    small_n = n <= c.shape[1]
    w, v = torch.linalg.eigh(c @ c.T if small_n else c.T @ c)
    w, v = w.flip(0), v.flip(1)
    keep = w > max(float(w[0]), 1e-30) * 1e-10
    w, v = w[keep], v[:, keep]
    basis = (v.T @ c) / w.sqrt()[:, None] if small_n else v.T
    return (w / (n - 1)).sqrt().float(), basis.float()


def fit_starts(
    dataset_name: str,
    *,
    model: torch.nn.Module | None = None,
    checkpoint_sha256: str | None = None,
    per_class: int | None = DEFAULTS["per_class"],
    split: str = DEFAULTS["split"],
    seed: int = DEFAULTS["seed"],
    root: str | Path | None = None,
    download: bool = False,
    progress: bool = True,
) -> StartFit:
    """Fit every class of a dataset: mean, SVD of the centred class matrix, kept images, mean E(x, y) under `model`."""
    from .. import energy
    from ..data import labels_of, load_split, portable_name

    if per_class is not None and per_class < 2:
        raise RobgenError(f"fitting a start needs at least 2 images per class, got --fit-images {per_class}")
    data, spec = load_split(dataset_name, split, root=root, download=download)
    if getattr(model, "meta", None) is not None:  # a fit on other data could not serve the model
        model.meta.check_fits(spec)
    labels = labels_of(data)
    means, bases, stds, variances, energies, kept, counts = [], [], [], [], [], [], []
    for y in tqdm(range(spec.num_classes), desc="fit starts", unit="class", disable=not progress, leave=False):
        x = _class_images(data, labels, y, per_class, seed)
        if len(x) < 2:
            raise RobgenError(f"class {y} of {dataset_name} {split} has {len(x)} image(s); a start fit needs 2 or more")
        mu = x.mean(0)
        centred = x - mu
        std, basis = _principal(centred)
        means.append(mu)
        bases.append(basis)
        stds.append(std)
        variances.append(centred.pow(2).sum() / (len(x) - 1))
        kept.append((x[: DEFAULTS["images_kept"]] * 255).round().to(torch.uint8))
        counts.append(float(len(x)))
        if model is not None:
            device = next(model.parameters()).device
            with torch.no_grad():
                logits = torch.cat([model(b.view(-1, *spec.input_shape).to(device)).float().cpu()
                                    for b in x.split(256)])
            energies.append(energy.joint_energy(logits, torch.full((len(x),), y)).mean())
        else:
            energies.append(torch.tensor(float("nan")))
    info = {"dataset": portable_name(dataset_name), "split": split, "per_class": per_class, "seed": seed, "retained": None,
            "checkpoint_sha256": checkpoint_sha256, "class_names": list(spec.class_names or [])}
    return StartFit(tuple(spec.input_shape), torch.stack(means), bases, stds, torch.stack(variances),
                    torch.stack(energies), torch.tensor(counts), kept, info)


# ---- the starts: each maps (fit, labels, generator, options) to images (N, C, H, W) in [0, 1] on the CPU ----
StartFn = Callable[[StartFit | None, Tensor, tuple, torch.Generator, dict], Tensor]
# Each start is registered with what it `needs`: "nothing", "fit" (class statistics) or "images" (real images).
STARTS: Registry[StartFn] = Registry("start")


def _per_class(y: Tensor, shape: tuple, draw: Callable[[int, int], Tensor]) -> Tensor:
    """Fill rows class by class, in increasing class order, so a chunk's draws are fixed by its labels alone."""
    out = torch.empty(len(y), math.prod(shape))
    for c in torch.unique(y).tolist():
        rows = torch.nonzero(y == c).flatten()
        out[rows] = draw(c, len(rows))
    return out.view(len(y), *shape).clamp_(0.0, 1.0)


@STARTS.register("uniform", needs="nothing")
def uniform_start(fit, y, shape, generator, opts):
    """U[0, 1] noise (JEM's start)."""
    return torch.rand((len(y), *shape), generator=generator)


@STARTS.register("gaussian", needs="fit")
def gaussian_start(fit, y, shape, generator, opts):
    """N(mu_y, Sigma_y + 1e-4 I) with the full covariance, sampled through its factor U^T diag(std)."""
    def draw(c: int, m: int) -> Tensor:
        z = torch.randn((m, len(fit.std[c])), generator=generator)
        jitter = math.sqrt(GAUSSIAN_JITTER) * torch.randn((m, fit.mean.shape[1]), generator=generator)
        return fit.mean[c] + (z * fit.std[c]) @ fit.basis[c] + jitter

    return _per_class(y, shape, draw)


@STARTS.register("pca", needs="fit")
def pca_start(fit, y, shape, generator, opts):
    """mu_y + sum_i s_i a_i U_i, a_i ~ N(0, sigma_pca^2), over the components keeping `retained` variance."""
    def draw(c: int, m: int) -> Tensor:
        k = fit.components(c, opts["retained"])
        singular = fit.singular_values(c, k)
        a = opts["sigma_pca"] * torch.randn((m, k), generator=generator)
        return fit.mean[c] + (a * singular) @ fit.basis[c][:k]

    return _per_class(y, shape, draw)


@STARTS.register("mix", needs="fit")
def mix_start(fit, y, shape, generator, opts):
    """Each image from the gaussian or the pca start with probability 1/2."""
    use_pca = torch.rand(len(y), generator=generator) < 0.5
    gaussian, pca = gaussian_start(fit, y, shape, generator, opts), pca_start(fit, y, shape, generator, opts)
    return torch.where(use_pca.view(-1, 1, 1, 1), pca, gaussian)


@STARTS.register("data", needs="images")
def data_start(fit, y, shape, generator, opts):
    """A real training image of class y plus Gaussian noise of std `data_noise`."""
    def draw(c: int, m: int) -> Tensor:
        pick = torch.randint(0, len(fit.images[c]), (m,), generator=generator)
        noise = opts["data_noise"] * torch.randn((m, fit.mean.shape[1]), generator=generator)
        return fit.images[c][pick].float() / 255 + noise

    return _per_class(y, shape, draw)


def draw_starts(name: str, fit: StartFit | None, y: Tensor, shape: tuple, generator: torch.Generator,
                opts: dict | None = None) -> Tensor:
    """x_0 for labels y from start `name` (options: retained, sigma_pca, data_noise)."""
    fn = STARTS.get(name)
    opts = {**{k: DEFAULTS[k] for k in ("retained", "sigma_pca", "data_noise")}, **(opts or {})}
    if fit is not None and (problem := _unfit(fit, name, None)):
        raise RobgenError(f"{problem}; pass --data to fit it on training images")
    return fn(fit, y.cpu(), tuple(shape), generator, opts)


def fit_digest(fit: StartFit) -> str:
    """A short hash of a fit's contents, recorded in manifests so two runs from different fits never mix."""
    digest = hashlib.sha256(json.dumps(fit.info, sort_keys=True).encode())
    for t in (fit.mean, fit.energy, *fit.std):
        digest.update(np.ascontiguousarray(t.float().numpy()).tobytes())
    return digest.hexdigest()[:16]


def _unfit(fit: StartFit, init: str, energy_for: str | None) -> str | None:
    """Why `fit` cannot serve start `init` (and, if energy_for is a checkpoint sha, early stopping); None if it can."""
    needs = STARTS.get(init).needs
    if init in ("gaussian", "mix") and fit.info.get("retained") is not None:
        return (f"the {init} start needs the full class covariance, but this fit is a {fit.info['retained']} "
                "PCA truncation")
    if needs == "images" and not fit.images:
        return f"the {init} start needs real training images, which this fit does not hold"
    if energy_for is not None and (fit.info.get("checkpoint_sha256") != energy_for or not fit.energy.isfinite().all()):
        return "early stopping needs the class energies of this checkpoint, which this fit does not hold"
    return None


def resolve_fit(
    init: str,
    *,
    model: torch.nn.Module,
    ckpt_path: str | Path,
    checkpoint_sha256: str,
    start_stats: str | Path | None = None,
    data: str | None = None,
    root: str | Path | None = None,
    download: bool = False,
    per_class: int | None = DEFAULTS["per_class"],
    early_stop: bool = False,
    progress: bool = True,
) -> tuple[StartFit | None, str]:
    """The fit a start needs and where it came from, trying in order: --start-stats FILE, the fit shipped beside the
    checkpoint, the cache, a new fit on --data (or the checkpoint's dataset), which is then cached."""
    energy_for = checkpoint_sha256 if early_stop else None
    if STARTS.get(init).needs == "nothing" and not early_stop:
        return None, "none"
    if start_stats is not None:
        fit = load_fit(start_stats)
        if problem := _unfit(fit, init, energy_for):
            raise RobgenError(f"{start_stats}: {problem}; pass --data to fit one on training images")
        return _checked(fit, model, str(start_stats)), str(start_stats)
    shipped = shipped_fit_path(ckpt_path)
    if shipped.is_file() and not _unfit(fit := load_fit(shipped), init, energy_for):
        return _checked(fit, model, str(shipped)), str(shipped)
    dataset = data or model.meta.dataset
    if not dataset:
        raise RobgenError(f"the {init} start needs class statistics fitted on training images, and the checkpoint "
                          "names no dataset: pass --data DATASET (or --start-stats FILE from `robgen fit-start`)")
    shape = tuple(model.meta.input_shape)
    cached = cached_fit_path(fit_key(dataset, DEFAULTS["split"], per_class, DEFAULTS["seed"], shape, checkpoint_sha256))
    if cached.is_file():
        return _checked(load_fit(cached), model, str(cached)), str(cached)
    try:
        fit = fit_starts(dataset, model=model, checkpoint_sha256=checkpoint_sha256, per_class=per_class, root=root,
                         download=download, progress=progress)
    except RobgenError as err:
        raise RobgenError(f"the {init} start needs training images to fit on: {err}; "
                          "or pass --start-stats FILE from `robgen fit-start`") from None
    save_fit(_checked(fit, model, dataset), cached)
    # Use the fit as stored (float16 basis), so this run and every later one from the cache draw the same starts.
    images = "every image" if per_class is None else f"{per_class} images"
    return load_fit(cached), f"fitted on {dataset} ({images} per class), cached at {cached}"


def _checked(fit: StartFit, model: torch.nn.Module, source: str) -> StartFit:
    meta = model.meta
    if tuple(fit.input_shape) != tuple(meta.input_shape) or fit.num_classes != meta.num_classes:
        raise RobgenError(
            f"start fit {source} is for {fit.num_classes} classes of shape {tuple(fit.input_shape)}, but the model "
            f"takes {meta.num_classes} classes of shape {tuple(meta.input_shape)}; "
            "pass a matching --data or --start-stats"
        )
    return fit


def export_fit(ckpt, out: str | Path, *, init: str = DEFAULTS["init"], data: str | None = None,
               retained: float = DEFAULTS["retained"], per_class: int | None = DEFAULTS["per_class"],
               overwrite: bool = False, root: str | Path | None = None, download: bool = False,
               device: str | None = "auto", progress: bool = True) -> dict:
    """`robgen fit-start`: fit the checkpoint's class-wise start statistics on `data` (default: its dataset) and write
    what `init` needs to `out`: pca a truncated fit (small), gaussian and mix the full one, data the full one with
    its images. Returns what was written."""
    from ..models.checkpoint import checkpoint_id, load_classifier
    from ..outputs import claim
    from ..utils import resolve_device

    claim([out], overwrite)
    STARTS.get(init)
    model = load_classifier(ckpt, resolve_device("cpu" if device == "auto" else device))  # a fit is one CPU pass
    data = model.meta.dataset_or(data)
    fit = fit_starts(data, model=model, checkpoint_sha256=checkpoint_id(ckpt)["sha256"], per_class=per_class,
                     root=root, download=download, progress=progress)
    if init == "pca":
        fit = fit.truncated(retained)
    elif init != "data":
        fit.images = []
    save_fit(fit, out)
    return {"out": str(out), "init": init, "data": data, "per_class": per_class, "classes": fit.num_classes,
            "components": [len(s) for s in fit.std], "bytes": Path(out).stat().st_size}
