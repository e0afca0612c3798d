"""Print docs/RESULTS.md's accuracy-per-method table of the fast-recipe runs from their committed test evaluations
(`<run>/eval_test10k.json`, written by after_training.sh / the commands in RESULTS.md), each figure with its
standard error sqrt(p (1 - p) / n); a run with no evaluation yet gets dashes and its training state:
    python experiments/c10-fast/accuracy.py weat-adv-linf weat-adv-l2 standard trades sat weat-nat"""
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).parent


def with_error(acc: float, n: int) -> str:
    p = acc / 100
    return f"{acc:.2f}% ± {100 * math.sqrt(p * (1 - p) / n):.2f}"


def row(run: str) -> str:
    config = json.loads((HERE / run / "config.json").read_text()) if (HERE / run / "config.json").is_file() else None
    if config is None:
        return f"| {run} | - | - | - | - | not started |"
    epochs = sum(1 for _ in (HERE / run / "metrics.jsonl").open()) if (HERE / run / "metrics.jsonl").is_file() else 0
    method = f"{config['loss']} ({config['norm']} {config['eps']:.4g})"
    result = HERE / run / "eval_test10k.json"
    if not result.is_file():
        return f"| {run} | {method} | - | - | - | trained {epochs} of {config['epochs']} epochs |"
    r = json.loads(result.read_text())
    attack = r["attack"]["name"]
    return (f"| {run} | {method} | {with_error(r['clean_acc'], r['n'])} | {with_error(r['robust_acc'], r['n'])} | "
            f"{attack} | {r['n']:,} test images, {r['seconds'] / 60:.0f} min |")


if __name__ == "__main__":
    print("| run | loss (threat model, radius) | clean | PGD-20 | attack | measured on |")
    print("|---|---|---|---|---|---|")
    for run in sys.argv[1:]:
        print(row(run))
