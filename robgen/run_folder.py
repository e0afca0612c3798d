"""The training run folder (`robgen train --out RUN`), written and read only through here:

    RUN/config.json        the recipe (robgen.train.TrainConfig's fields + recipe) and how each session computed
    RUN/metrics.jsonl      one JSON object per epoch (robgen.train.METRIC_KEYS among them)
    RUN/last.safetensors   robgen classifiers (robgen.models.checkpoint), best by validation PGD accuracy
    RUN/best.safetensors
    RUN/state.pt           optimizer, scheduler, scaler and weights: the epoch's commit point (robgen.train.loop)
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import RobgenError
from .utils import atomic_write_text, read_json

FILES = ("config.json", "metrics.jsonl", "state.pt", "last.safetensors", "best.safetensors")
CONFIG, METRICS = "config.json", "metrics.jsonl"


def is_run(folder: Path) -> bool:
    """Whether `folder` holds a training run (its marker files)."""
    return (folder / CONFIG).is_file() and ((folder / METRICS).is_file() or (folder / "state.pt").is_file())


def read_config(out: str | Path) -> dict | None:
    """The recipe of the run in `out`, or None when there is none."""
    path = Path(out) / CONFIG
    if not path.is_file():
        return None
    config = read_json(path)
    if not isinstance(config, dict) or "loss" not in config:
        raise RobgenError(f"{path} is not a robgen training config (no recipe in it); restore it, or --overwrite "
                          "to start the run again")
    return config


def write_config(out: Path, record: dict) -> None:
    atomic_write_text(out / CONFIG, json.dumps(record, indent=2, sort_keys=True) + "\n")


def metrics_lines(out: Path) -> list[str]:
    """metrics.jsonl's lines as written (none when there is no file yet)."""
    path = out / METRICS
    return path.read_text().splitlines() if path.is_file() else []


def write_metrics(out: Path, lines: list[str]) -> None:
    """metrics.jsonl: one JSON object (a line from json.dumps) per epoch."""
    atomic_write_text(out / METRICS, "\n".join(lines) + "\n")


METRICS = "metrics.jsonl"
REQUIRED_METRICS = ("epoch", "train_dE")  # what `robgen phases` needs of every line
# Per-epoch robust accuracy: on the validation split held out of the training set (runs since the fast recipe);
# older runs measured it on a test subset.
ROBUST_ACC_KEYS = ("val_robust_acc", "test_robust_acc")


def epoch_robust_acc(record: dict) -> float | None:
    return next((float(record[k]) for k in ROBUST_ACC_KEYS if record.get(k) is not None), None)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a training run, by epoch (a resumed run's later record of an epoch wins).

    A truncated last line (the trainer is writing it right now) is ignored; any other bad line is an error.
    """
    run = Path(run_dir)
    path = run / METRICS
    if not path.is_file():
        what = "is not a folder" if not run.is_dir() else f"has no {METRICS}"
        raise RobgenError(f"run folder {run} {what}; {METRICS} is written by `robgen train --out {run}`")
    text = path.read_text()
    lines = text.splitlines()
    by_epoch: dict[int, dict] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) and not text.endswith("\n"):
                break
            raise RobgenError(f"{path} line {i} is not JSON ({err.msg}); is it a robgen training log?") from None
        missing = [k for k in REQUIRED_METRICS if not isinstance(record, dict) or record.get(k) is None]
        if isinstance(record, dict) and epoch_robust_acc(record) is None:
            missing.append(ROBUST_ACC_KEYS[0])
        if missing:
            raise RobgenError(f"{path} line {i} lacks {', '.join(missing)}; is it a robgen training log?")
        by_epoch[int(record["epoch"])] = record
    if not by_epoch:
        raise RobgenError(f"{path} holds no epoch yet; let `robgen train` finish its first epoch")
    return [by_epoch[e] for e in sorted(by_epoch)]


def run_loss(run_dir: str | Path, records: list[dict]) -> str:
    """The run's loss name from its metrics (else config.json, else the folder name), to label its curves."""
    if records[-1].get("loss"):
        return str(records[-1]["loss"])
    try:
        loss = (read_config(run_dir) or {}).get("loss")
    except RobgenError:  # a damaged or foreign config.json: label by the folder instead
        loss = None
    if loss:
        return str(loss)
    return Path(run_dir).resolve().name
