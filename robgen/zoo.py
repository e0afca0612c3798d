"""RobustBench's model zoo by name: `robustbench:<model>[:<dataset>[:<threat model>]]` wherever a checkpoint is taken.

The first use downloads the model's weights through the robustbench package (`pip install 'robgen[zoo]'`) into
robgen's cache, checks that they load with torch.load(weights_only=True), builds the zoo's own architecture with
them and stores the result as a robgen checkpoint, `<cache>/robustbench/<dataset>/<threat>/<model>.safetensors`.
Later uses read that checkpoint; its architecture is rebuilt from the installed robustbench package.
Offline, a downloaded weights file saved as `<cache>/robustbench/<dataset>/<threat>/<model>.pt` is used instead.
"""
from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

from .errors import RobgenError
from .utils import atomic_path, cache_dir, sha256_file

PREFIX = "robustbench:"
# The zoo's datasets that robgen can load; ImageNet models would need an ImageNet loader robgen does not have.
DATASETS = ("cifar10", "cifar100")
THREATS = ("Linf", "L2", "corruptions")
USAGE = "write robustbench:MODEL[:DATASET[:THREAT]], e.g. robustbench:Standard:cifar10:Linf"
INFO_URL = "https://raw.githubusercontent.com/RobustBench/robustbench/master/model_info/{dataset}/{threat}/{model}.json"
GDRIVE_URL = "https://drive.google.com/uc?id={gdrive_id}"


def is_zoo(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse(spec: str) -> tuple[str, str, str]:
    """(model, dataset, threat model) of a robustbench: spec; dataset defaults to cifar10, threat model to Linf."""
    parts = spec[len(PREFIX):].split(":")
    if not parts[0] or len(parts) > 3:
        raise RobgenError(f"bad zoo checkpoint {spec!r}; {USAGE}")
    model, dataset, threat = (parts + ["cifar10", "Linf"][len(parts) - 1:])[:3]
    if dataset.lower() not in DATASETS:
        raise RobgenError(f"robgen reads RobustBench models for {', '.join(DATASETS)}, not {dataset!r}; {USAGE}")
    canonical = {t.lower(): t for t in THREATS}
    if threat.lower() not in canonical:
        raise RobgenError(f"unknown RobustBench threat model {threat!r}; use {', '.join(THREATS)}")
    return model, dataset.lower(), canonical[threat.lower()]


def _robustbench():
    """The robustbench package (its utils module), importable also where AutoAttack came from PyPI."""
    # robustbench 1.1.1 imports `autoattack` (fra31/auto-attack, installed from git); PyPI ships the same code as
    # `pyautoattack`, which robustbench's own requirements pull in, so the PyPI install is aliased under that name.
    if "autoattack" not in sys.modules and importlib.util.find_spec("autoattack") is None \
            and importlib.util.find_spec("pyautoattack") is not None:
        import pyautoattack
        import pyautoattack.state

        sys.modules["autoattack"], sys.modules["autoattack.state"] = pyautoattack, pyautoattack.state
    try:
        import robustbench.utils
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] == "robustbench":
            raise RobgenError(
                "robustbench: checkpoints need the robustbench package: pip install 'robgen[zoo]'; without it, "
                "convert a downloaded file with `robgen import FILE --arch ARCH --out NAME.safetensors`"
            ) from None
        hint = "pip install 'setuptools<81' (robustbench 1.1.1 imports pkg_resources)" if err.name == "pkg_resources" \
            else "pip install 'robgen[zoo]'"
        raise RobgenError(f"the robustbench package cannot be imported: {err}; {hint}") from None
    return robustbench.utils


def _entry(model: str, dataset: str, threat: str) -> dict:
    """The model zoo's entry (architecture factory, Google Drive id) for one model; unknown names get suggestions."""
    _robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    models = model_dicts[BenchmarkDataset(dataset)].get(ThreatModel(threat), {})
    if model not in models:
        close = difflib.get_close_matches(model, list(models), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise RobgenError(f"RobustBench has no {dataset} {threat} model {model!r} ({len(models)} models){hint}")
    gdrive_id = models[model]["gdrive_id"]
    if gdrive_id is None or isinstance(gdrive_id, list):
        what = "an ensemble of several files" if gdrive_id else "served through timm"
        raise RobgenError(f"RobustBench model {model!r} is {what}; robgen reads single-file zoo models only")
    return models[model]


def zoo_dir(dataset: str, threat: str) -> Path:
    return cache_dir("robustbench", dataset, threat)


def build_net(arch: str) -> torch.nn.Module:
    """A freshly initialised zoo architecture: the module robustbench itself builds for the model."""
    return _entry(*parse(arch))["model"]()


def check_weights(path: Path, where: str) -> None:
    """The file is weights that torch.load(weights_only=True) reads; else a one-line error saying what to do."""
    from .models.checkpoint import safe_torch_load

    with open(path, "rb") as f:
        head = f.read(512).lstrip()
    if head[:1] == b"<":
        raise RobgenError(f"{where} is an HTML page, not weights (Google Drive's confirmation page: RobustBench issue "
                          "#68)")
    try:
        safe_torch_load(path)  # refuses files that need arbitrary code to unpickle
    except RobgenError as err:
        raise RobgenError(str(err).replace(str(path), where)) from None


def model_info(model: str, dataset: str, threat: str) -> dict:
    """The leaderboard's entry for the model (paper, authors, reported accuracies), or {} when it cannot be fetched:
    it only labels the checkpoint, so a failure here does not stop the model from loading."""
    import json

    import requests

    url = INFO_URL.format(model=model, dataset=dataset, threat=threat)
    try:
        response = requests.get(url, timeout=15)
        response.raise_for_status()
        return json.loads(response.text)
    except (requests.RequestException, ValueError):
        return {}


def convert(spec: str, weights: str | Path, *, checked: bool = False):
    """A robgen Classifier from a zoo model's weights file, loaded through robustbench's own model loader (which
    knows each model's key layout) after the weights_only check (`checked`: already done)."""
    from .data import dataset_spec
    from .models import Classifier, ModelMeta

    model_name, dataset, threat = parse(spec)
    rb = _robustbench()
    entry = _entry(model_name, dataset, threat)
    weights = Path(weights)
    if not weights.is_file():
        raise RobgenError(f"no file {str(weights)!r}")
    if not checked:
        check_weights(weights, str(weights))
    with tempfile.TemporaryDirectory() as tmp:  # robustbench reads <model_dir>/<dataset>/<threat>/<model>.pt
        link = Path(tmp) / dataset / threat / f"{model_name}.pt"
        link.parent.mkdir(parents=True)
        link.symlink_to(weights.resolve())
        try:
            net = rb.load_model(model_name, model_dir=tmp, dataset=dataset, threat_model=threat)
        except (RuntimeError, KeyError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RobgenError(f"{weights} does not fit RobustBench's {model_name} architecture: {first}") from None
    data = dataset_spec(dataset)
    info = model_info(model_name, dataset, threat)
    recipe = {
        "source": "robustbench", "model": model_name, "dataset": dataset, "threat_model": threat,
        "paper": info.get("name"), "paper_url": info.get("link"), "authors": info.get("authors"),
        "robustbench_version": importlib.metadata.version("robustbench"), "gdrive_id": entry["gdrive_id"],
        "weights_sha256": sha256_file(weights),
    }
    metrics = {f"robustbench_{k}": info[k] for k in ("clean_acc", "autoattack_acc", "corruptions_acc") if k in info}
    meta = ModelMeta(
        arch=PREFIX + ":".join((model_name, dataset, threat)), num_classes=data.num_classes,
        input_shape=data.input_shape, class_names=data.class_names or [], dataset=dataset,
        recipe={k: v for k, v in recipe.items() if v is not None}, metrics=metrics,
    )
    # RobustBench models take images in [0, 1] and normalise inside themselves: robgen adds no normalisation.
    return Classifier(net.float().eval(), meta).eval()


def zoo_checkpoint(spec: str) -> Path:
    """The robgen checkpoint of a zoo model, downloading and converting it on first use."""
    from .models.checkpoint import save_classifier

    model_name, dataset, threat = parse(spec)
    folder = zoo_dir(dataset, threat)
    ckpt, weights = folder / f"{model_name}.safetensors", folder / f"{model_name}.pt"
    if ckpt.is_file():
        return ckpt
    rb = _robustbench()
    gdrive_id = _entry(model_name, dataset, threat)["gdrive_id"]
    url = GDRIVE_URL.format(gdrive_id=gdrive_id)
    downloaded = not weights.is_file()
    if downloaded:
        with atomic_path(weights) as tmp:  # nothing lands at `weights` unless it is weights
            try:
                rb.download_gdrive_new(gdrive_id, tmp)
            except Exception as err:  # noqa: BLE001  (requests, gdown and OS errors all mean: no file)
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise RobgenError(f"downloading RobustBench model {model_name} failed ({first[:200]}); offline, "
                                  f"fetch {url} elsewhere and save it as {weights}") from None
            try:
                check_weights(tmp, f"the download of {model_name}")
            except RobgenError as err:
                raise RobgenError(f"{err}; fetch {url} in a browser and save it as {weights}") from None
    else:
        try:
            check_weights(weights, str(weights))
        except RobgenError as err:
            raise RobgenError(f"{err}; delete it to download again, or save the file from {url} there") from None
    save_classifier(convert(spec, weights, checked=True), ckpt)
    if downloaded:  # the converted checkpoint holds the same weights; keeping both doubles the disk use
        weights.unlink()
    return ckpt
