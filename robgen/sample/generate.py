"""The batched, sharded, resumable generator behind `robgen sample`.

Work is a list of (class, index) items cut into chunks of `batch_size` (many classes per batch, so memory is fixed
whatever n is). Chunk k draws all its randomness from a generator seeded by (seed, k): the images do not depend on
which process makes which chunk. Under torchrun each rank makes chunks k = rank, rank + world, ...; every chunk is
written atomically to OUT/chunks/ (a shared folder), and rank 0 merges them. A stopped run resumes from the chunks
on disk when its settings match.

The output layout (the contract with `robgen score` and `robgen grid`) is robgen.sample_folder's.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .. import checks, distributed
from ..config import with_options
from .. import energy as energies
from ..errors import RobgenError
from ..models import Classifier
from ..outputs import LOCK_NAME, FolderLock
from ..sample_folder import FILES, FORMAT, class_folder, write_manifest, write_npz
from ..seeds import chunk_seed
from ..utils import atomic_path, atomic_write_text, precision, read_json
from . import starts as st
from .samplers import SAMPLERS, SamplerConfig, descend


@dataclass(frozen=True)
class SampleConfig:
    """What a sample run makes and how: the single source of sample()'s and `robgen sample`'s defaults (DEFAULTS is
    this as a dict); `check` validates it."""

    n: int = 64  # images per class
    init: str = st.DEFAULTS["init"]  # the paper's best start
    sampler: str = "sgld"
    energy: str = "joint"  # E(x, y)
    steps: int = 40  # PAPER.md: 20-50
    step_size: float | None = None  # None: the sampler's default (SAMPLERS[sampler].default_step_size)
    momentum: float = 0.0  # zeta: the paper uses 0 or a tuned value
    noise: float = 0.001  # sigma
    alpha: float | None = None  # None: sqrt(2 eta)
    norm: str = "l2"  # pgd only
    eps: float | None = None  # pgd only: radius around the start
    step_spread: float = 1.0  # sgld-rand only: std of log(step size) across chains
    retained: float = st.DEFAULTS["retained"]
    sigma_pca: float = st.DEFAULTS["sigma_pca"]
    data_noise: float = st.DEFAULTS["data_noise"]
    fit_images: int | None = st.DEFAULTS["per_class"]
    early_stop: bool = False
    batch_size: int = 128
    seed: int = 0
    bf16: bool = False

    def check(self) -> SamplerConfig:
        """The sampler's step settings, once every option is valid (else a one-line RobgenError)."""
        for name, value in (("-n", self.n), ("--batch-size", self.batch_size)):
            if value <= 0:
                raise RobgenError(f"{name} must be positive, got {value}")
        checks.seed(self.seed)
        step_fn = SAMPLERS.get(self.sampler)
        _refuse_unread(self.sampler, getattr(step_fn, "reads", None), momentum=self.momentum, noise=self.noise,
                       alpha=self.alpha, norm=self.norm, eps=self.eps, step_spread=self.step_spread)
        if self.init not in ("pca", "mix") and (self.retained, self.sigma_pca) != (DEFAULTS["retained"], DEFAULTS["sigma_pca"]):
            raise RobgenError(f"--retained and --sigma-pca shape the pca and mix starts only, not --init {self.init}; "
                              "drop them")
        checks.number("--sigma-pca", self.sigma_pca, 0)
        checks.number("--data-noise", self.data_noise, 0)
        energies.TARGET_ENERGIES.get(self.energy)
        cfg = SamplerConfig(self.steps, self.step_size if self.step_size is not None else step_fn.default_step_size,
                            self.momentum, self.noise, self.alpha, self.norm, self.eps, self.step_spread)
        if self.init in ("pca", "mix") and not 0 < self.retained <= 1:
            raise RobgenError(f"--retained must be in (0, 1], got {self.retained}")
        return cfg


DEFAULTS = {**asdict(SampleConfig()), "grid_rows": 8}  # grid_rows: images per class in grid.png


def _rank0_first(fn: Callable, rank: int, world: int, others_too: bool = True):
    """Run fn on rank 0, then (if others_too) on the other ranks; a RobgenError on rank 0 is raised on every rank."""
    if world == 1:
        return fn()
    import torch.distributed as dist

    result, message = None, [None]
    if rank == 0:
        try:
            result = fn()
        except RobgenError as err:
            message = [str(err)]
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise RobgenError(message[0])
    if rank != 0 and others_too:
        result = fn()
    return result


# Locks on the output folders of the sample() call in progress; _releasing_locks drops them when it returns or fails.
_LOCKS: list[FolderLock] = []


def _releasing_locks(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            while _LOCKS:
                _LOCKS.pop().release()

    return call


def run_id(settings: dict) -> str:
    """The identity stamped into every chunk: a chunk is reused only by a run with exactly these settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _reusable(path: Path, settings: dict, labels: torch.Tensor) -> bool:
    """Whether `path` is a finished chunk of this run: readable, stamped with this run's id, holding `labels`.
    A damaged chunk (a disk error, a copy cut short) or another run's chunk is made again rather than merged."""
    if not path.is_file():
        return False
    try:
        with np.load(path) as f:
            chunk = {key: f[key] for key in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False
    return (str(chunk.get("run")) == run_id(settings) and "images" in chunk and "energy" in chunk
            and np.array_equal(chunk.get("labels"), labels.numpy()) and len(chunk["images"]) == len(labels))


def _prepare_out(out: Path, settings: dict, overwrite: bool) -> None:
    """Hold OUT's lock; check OUT holds nothing or this same run (resume); with overwrite, clear a different run's
    files. The lock keeps a second run (with --overwrite or not) from clearing or filling OUT while this one writes."""
    settings_path = out / "chunks" / "settings.json"
    _LOCKS.append(FolderLock(out, "sample run"))
    if any(p.name != LOCK_NAME for p in out.iterdir()):
        old = read_json(settings_path) if settings_path.is_file() else None
        if old != settings:
            if not overwrite:
                what = "files that are not a robgen sample run"
                if old is not None:
                    differ = sorted(k for k in settings.keys() | old.keys() if settings.get(k) != old.get(k))
                    what = f"a different sample run (differs in {', '.join(differ)})"
                raise RobgenError(f"{out} already holds {what}; pass --overwrite to replace it, or choose another --out")
            for name in FILES:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    atomic_write_text(settings_path, json.dumps(settings, indent=1, sort_keys=True))


def _refuse_unread(sampler: str, reads: tuple[str, ...] | None, **given) -> None:
    """An option the sampler never reads, set away from its default, is refused rather than recorded as used."""
    if reads is None:  # a sampler registered without `reads`: nothing to check against
        return
    unread = [k for k, v in given.items() if k not in reads and v != DEFAULTS[k]]
    if unread:
        options = ", ".join(f"--{k.replace('_', '-')}" for k in unread)
        raise RobgenError(f"the {sampler} sampler does not read {options} (it reads {', '.join(reads)}); drop "
                          f"{'it' if len(unread) == 1 else 'them'} or choose a sampler that uses "
                          f"{'it' if len(unread) == 1 else 'them'}")


def _energy_grad(model: Classifier, target: Callable, y: torch.Tensor, bf16: bool) -> Callable:
    """x -> (E(x, y), grad_x of the target energy); only the input gets a gradient."""
    def grad_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        logits = logits.float()
        (grad,) = torch.autograd.grad(target(logits, y).sum(), x)
        return energies.joint_energy(logits, y).detach(), grad

    return grad_fn


def _make_chunk(model, fit, labels, shape, settings, cfg, device, k) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(chunk_seed(settings["seed"], k))
    opts = {key: settings[key] for key in ("retained", "sigma_pca", "data_noise")}
    x0 = st.draw_starts(settings["init"], fit, labels, shape, generator, opts).to(device)
    y = labels.to(device)
    if device.type == "cpu":
        step_generator = generator
    else:  # a device generator seeded from the chunk's: no host-to-device copy of noise each step
        step_generator = torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    stop_at = fit.energy.to(device)[y] if settings["early_stop"] else None
    grad_fn = _energy_grad(model, energies.TARGET_ENERGIES.get(settings["energy"]), y, settings["bf16"])
    x, track = descend(settings["sampler"], grad_fn, x0, cfg, step_generator, stop_at)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings["bf16"]):
        final = energies.joint_energy(model(x).float(), y)
    images = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return {"images": images, "labels": labels.numpy().astype(np.int64), "energy": final.float().cpu().numpy(),
            "track": track.float().cpu().numpy()}


def _save_pngs(out: Path, chunk: dict, first_item: int, n: int, names: list[str]) -> None:
    for j, (img, label) in enumerate(zip(chunk["images"], chunk["labels"])):
        index = (first_item + j) % n  # items are class-major: class position * n + index
        path = out / "images" / class_folder(int(label), names[label]) / f"{index:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(tmp, format="PNG")


def _plot_track(path: Path, track: dict[str, list[float]]) -> None:
    from matplotlib.figure import Figure  # not pyplot: no global backend switch or figure registry (as plots.py)

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, values in track.items():
        ax.plot(range(len(values)), values, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("mean E(x, y)")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


START_OPTIONS = ("retained", "sigma_pca", "data_noise")  # shape a start, tuned with it
SAMPLER_OPTIONS = tuple(f.name for f in fields(SamplerConfig))  # step settings, tuned with their sampler


def sample_config(config: SampleConfig | None, options: dict[str, Any]) -> SampleConfig:
    """The SampleConfig a sample() call runs: `config` (default SampleConfig()) with `options` over it; an unknown
    option is a one-line RobgenError."""
    return with_options(SampleConfig, options, "sample", config)


def checkpoint_defaults(preferred: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The preferred settings a call keeps: all of them, except a start's (sampler's) options when the call chooses
    another start (sampler) than the preferred one, since they were tuned together."""
    unknown = sorted(set(preferred) - {f.name for f in fields(SampleConfig)})
    if unknown:
        raise RobgenError(f"the checkpoint's sampling defaults name an unknown option {unknown[0]!r}")
    dropped = set()
    for key, tied in (("init", START_OPTIONS), ("sampler", SAMPLER_OPTIONS)):
        if options.get(key, preferred.get(key, DEFAULTS[key])) != preferred.get(key, DEFAULTS[key]):
            dropped.update(tied)
    return {k: v for k, v in preferred.items() if k not in options and k not in dropped}


@distributed.ends_group
@_releasing_locks
def sample(
    ckpt: str | Path | None = None,
    classes: list[int | str] | None = None,
    *,
    config: SampleConfig | None = None,
    out: str | Path | None = None,
    start_stats: str | Path | None = None,
    data: str | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
    device: str | None = None,
    overwrite: bool = False,
    track: bool = False,
    progress: bool = True,
    **options: Any,
) -> dict:
    """Sample n images per class from a classifier's energy into robgen.sample_folder's layout; return a result dict
    (out, files, n_images, per-class mean E(x, y), chunks_computed / chunks_reused, seconds, ...).

    What is made and how is `config` (default SampleConfig()) with `options`, SampleConfig's fields, over it.
    Without `config`, the checkpoint's own sampling defaults (ModelMeta.sampling, found by a sweep) fill what
    `options` leave unset (see checkpoint_defaults); the manifest lists them under from_checkpoint."""
    from ..models.checkpoint import read_meta

    began = time.perf_counter()
    ckpt_path = _checkpoint_path(ckpt)
    preferred = {} if config is not None else checkpoint_defaults(read_meta(ckpt_path).sampling, options)
    options = sample_config(config, {**preferred, **options})
    plan = _plan(ckpt_path, classes, options, out=out, device=device, overwrite=overwrite, progress=progress,
                 fit_from=dict(start_stats=start_stats, data=data, root=data_root, download=download))
    plan.from_checkpoint = sorted(preferred)
    computed, replaced = _run_chunks(plan, progress)
    return _finalise(plan, computed, replaced, track, began)


@dataclass
class _Plan:
    """A checked sample run: the model, what to make (settings, the run's identity), the start fit and its chunks."""

    ckpt_path: Path
    sha: str
    model: Classifier
    rank: int
    world: int
    dev: torch.device
    class_ids: list[int]
    cfg: SamplerConfig
    fit: st.StartFit | None
    fit_source: str
    settings: dict
    out: Path
    labels: torch.Tensor  # of every item, class-major: n of the first class, then n of the next...
    from_checkpoint: list[str] = field(default_factory=list)  # options the checkpoint's defaults set

    @property
    def batch_size(self) -> int:
        return self.settings["batch_size"]

    @property
    def chunk_paths(self) -> list[Path]:
        return [self.out / "chunks" / f"chunk_{k:06d}.npz" for k in range(math.ceil(len(self.labels) / self.batch_size))]

    @property
    def mine(self) -> list[int]:  # the chunks this rank makes
        return list(range(self.rank, len(self.chunk_paths), self.world))


def _checkpoint_path(ckpt) -> Path:
    from ..models.checkpoint import DEFAULT_CHECKPOINT, resolve_checkpoint, shipped_dir

    if ckpt is None and not (shipped_dir() / f"{DEFAULT_CHECKPOINT}.safetensors").is_file():
        raise RobgenError(f"no default checkpoint: {DEFAULT_CHECKPOINT} is not shipped with this install yet; "
                          "pass --ckpt FILE")
    return resolve_checkpoint(ckpt)


def _plan(ckpt_path: Path, classes, options: SampleConfig, *, out, device, overwrite: bool, progress: bool,
          fit_from: dict) -> _Plan:
    """Load and check the model and options, resolve the start fit, then hold and prepare OUT (rank 0)."""
    from ..models.checkpoint import checkpoint_id, load_classifier

    rank, world, dev = distributed.setup(device)
    model = load_classifier(ckpt_path, dev)
    model.requires_grad_(False)
    class_ids = _class_ids(model.meta, classes)
    cfg = options.check()
    broken = [k for k, v in model.net.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise RobgenError(f"{ckpt_path} has NaN/inf weights ({len(broken)} tensors, first {broken[0]!r}): its "
                          "energies are NaN everywhere; use another checkpoint")
    sha = checkpoint_id(ckpt_path)["sha256"]
    fit, fit_source = _rank0_first(lambda: st.resolve_fit(
        options.init, model=model, ckpt_path=ckpt_path, checkpoint_sha256=sha, per_class=options.fit_images,
        early_stop=options.early_stop, progress=progress and rank == 0, **fit_from,
    ), rank, world)
    settings = {
        "format": FORMAT, "checkpoint_sha256": sha, "classes": class_ids,
        **{k: getattr(options, k) for k in ("n", "init", "sampler", "energy")}, **asdict(cfg),
        **{k: getattr(options, k) for k in ("retained", "sigma_pca", "data_noise", "early_stop", "batch_size", "seed",
                                            "bf16")},
        "start_fit": st.fit_digest(fit) if fit is not None else None,
    }
    # step_spread came after sample folders existed: it is part of a run's identity only where the sampler reads it,
    # so that a folder made before it still resumes.
    if "step_spread" not in (getattr(SAMPLERS.get(options.sampler), "reads", None) or ("step_spread",)):
        del settings["step_spread"]
    settings = json.loads(json.dumps(settings))  # the form it takes on disk, so equality survives the round trip
    out = Path(out) if out is not None else Path("samples") / ckpt_path.name.removesuffix(ckpt_path.suffix)
    _rank0_first(lambda: _prepare_out(out, settings, overwrite), rank, world, others_too=False)
    labels = torch.tensor(class_ids, dtype=torch.int64).repeat_interleave(options.n)
    return _Plan(ckpt_path, sha, model, rank, world, dev, class_ids, cfg, fit, fit_source, settings, out, labels)


def _class_ids(meta, classes: list[int | str] | None) -> list[int]:
    class_ids = list(range(meta.num_classes)) if classes is None else [meta.class_index(c) for c in classes]
    if not class_ids:
        raise RobgenError("no classes given; pass --class K or --classes all")
    if len(set(class_ids)) != len(class_ids):
        raise RobgenError(f"a class is given twice in {classes}")
    return class_ids


def _commit_chunk(out: Path, path: Path, chunk: dict, lo: int, settings: dict, names: list[str]) -> None:
    """The chunk's PNGs, then its chunk file: the file is the commit point a resumed run trusts."""
    _save_pngs(out, chunk, lo, settings["n"], names)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **chunk, run=np.array(run_id(settings)))


def _run_chunks(plan: _Plan, progress: bool) -> tuple[int, int]:
    """Make this rank's chunks that are not on disk yet; (chunks computed, damaged or foreign chunks replaced)."""
    meta, settings, size = plan.model.meta, plan.settings, plan.batch_size
    computed = replaced = 0
    name = f"sample {settings['sampler']}"
    bar = tqdm(plan.mine, desc=f"{name} rank {plan.rank}" if plan.world > 1 else name, unit="chunk",
               disable=not progress, leave=False)
    # One writer thread encodes a chunk's PNGs while the next chunk samples (PIL and torch release the GIL); at most
    # two chunks wait for it, and leaving the block waits for every write, so a failure loses no finished chunk.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: list[Future] = []
        for k in bar:
            path, lo = plan.chunk_paths[k], k * size
            if _reusable(path, settings, plan.labels[lo: lo + size]):
                continue
            replaced += path.is_file()
            chunk = _make_chunk(plan.model, plan.fit, plan.labels[lo: lo + size], tuple(meta.input_shape), settings,
                                plan.cfg, plan.dev, k)
            pending.append(writer.submit(_commit_chunk, plan.out, path, chunk, lo, settings, meta.class_names))
            if len(pending) > 2:
                pending.pop(0).result()
            computed += 1
        for done in pending:
            done.result()
    if plan.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return computed, replaced


def _finalise(plan: _Plan, computed: int, replaced: int, track: bool, began: float) -> dict:
    """Rank 0 merges every chunk into the output layout and writes manifest.json; every rank returns its counts."""
    chunks, mine, meta, out = len(plan.chunk_paths), len(plan.mine), plan.model.meta, plan.out
    result = {"out": str(out), "rank": plan.rank, "world_size": plan.world, "chunks": chunks,
              "chunks_computed": computed, "chunks_reused": mine - computed, "chunks_replaced": replaced}
    if plan.rank != 0:
        return result
    result.update(_merge(out, plan.chunk_paths, plan.labels, plan.class_ids, meta.class_names,
                         tuple(meta.input_shape), plan.settings, track))
    seconds = round(time.perf_counter() - began, 2)
    manifest = {
        "format": FORMAT, "checkpoint": {"path": str(plan.ckpt_path), "sha256": plan.sha}, "settings": plan.settings,
        "start_source": plan.fit_source, "from_checkpoint": plan.from_checkpoint, "class_names": meta.class_names, "n_images": len(plan.labels),
        "classes": result["classes"], "device": str(plan.dev), "world_size": plan.world, "seconds": seconds,
        "precision": precision(plan.dev, "bf16" if plan.settings["bf16"] else "off"),
        "chunks": {"total": chunks, "computed_by_rank0": computed, "reused_by_rank0": mine - computed},
    }
    if track:
        manifest["track"] = result["track"]
    path = write_manifest(out, manifest)
    result.update(seconds=seconds, start_source=plan.fit_source, from_checkpoint=plan.from_checkpoint, n_images=len(plan.labels), settings=plan.settings,
                  files={**result["files"], "manifest": str(path)})
    return result


def _merge(out: Path, chunk_files: list[Path], labels: torch.Tensor, class_ids: list[int], names: list[str],
           shape: tuple, settings: dict, track: bool) -> dict:
    """Stream the chunks into samples.npz, per-class energies, the step track and the grid."""
    from ..grid import render_grid

    count = {c: 0 for c in class_ids}
    energy_sum = {c: 0.0 for c in class_ids}
    track_sum = {c: np.zeros(settings["steps"]) for c in class_ids}
    firsts: dict[int, list[np.ndarray]] = {c: [] for c in class_ids}
    for file in chunk_files:
        with np.load(file) as chunk:
            for c in np.unique(chunk["labels"]).tolist():
                rows = chunk["labels"] == c
                count[c] += int(rows.sum())
                energy_sum[c] += float(chunk["energy"][rows].sum())
                track_sum[c] += chunk["track"][:, rows].sum(axis=1)
                firsts[c].extend(chunk["images"][rows][: DEFAULTS["grid_rows"] - len(firsts[c])])
    image_shape = (shape[1], shape[2], shape[0])
    write_npz(out / "samples.npz", chunk_files, len(labels), image_shape)
    render_grid([np.stack(firsts[c]) for c in class_ids], [names[c] for c in class_ids], out / "grid.png")
    files = {"npz": str(out / "samples.npz"), "images": str(out / "images"), "grid": str(out / "grid.png")}
    per_class = [{"index": c, "name": names[c], "n": count[c], "energy_mean": energy_sum[c] / count[c]}
                 for c in class_ids]
    result = {"classes": per_class, "files": files}
    if track:
        curves = {names[c]: (track_sum[c] / count[c]).tolist() for c in class_ids}
        _plot_track(out / "energy_track.png", curves)
        result["track"] = curves
        files["energy_track"] = str(out / "energy_track.png")
    return result
