"""Print docs/RESULTS.md's accuracy-per-method table of the fast-recipe runs from their committed test evaluations
(`<run>/eval_test10k.json`, written by after_training.sh / the commands in RESULTS.md) and the reference AutoAttack on
a seeded 1,000 of the test images (`<run>/aa1k.json` from aa_runs.sh; for weat-adv-l2, its float16 copy weat_c10's
from aa_engines.sh), each figure with its standard error sqrt(p (1 - p) / n); a run with no evaluation yet gets dashes
and its training state:
    python experiments/c10-fast/accuracy.py weat-adv-linf weat-adv-l2 standard trades sat weat-nat"""
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).parent
# The reference AutoAttack's batch folder per run (its report: the folder's name + .json); weat-adv-l2's is its
# shipped float16 copy weat_c10's.
AUTOATTACK = {"weat-adv-l2": HERE / "aa" / "weat_c10_reference"}


def with_error(acc: float, n: int) -> str:
    p = acc / 100
    return f"{acc:.2f}% ± {100 * math.sqrt(p * (1 - p) / n):.2f}"


def autoattack(run: str) -> str:
    batches = AUTOATTACK.get(run, HERE / run / "aa1k")
    report = batches.with_suffix(".json")
    if not report.is_file():  # running or not started: the batches of 100 it has kept so far
        kept = len(list(batches.glob("batch_*.pt")))
        return f"- ({kept} of 10 batches)" if kept else "-"
    r = json.loads(report.read_text())
    return f"{with_error(r['robust_acc'], r['n'])} ({r['attack']['engine']})"


def row(run: str) -> str:
    config = json.loads((HERE / run / "config.json").read_text()) if (HERE / run / "config.json").is_file() else None
    if config is None:
        return f"| {run} | - | - | - | - | - | not started |"
    epochs = sum(1 for _ in (HERE / run / "metrics.jsonl").open()) if (HERE / run / "metrics.jsonl").is_file() else 0
    method = f"{config['loss']} ({config['norm']} {config['eps']:.4g})"
    result = HERE / run / "eval_test10k.json"
    if not result.is_file():
        return f"| {run} | {method} | - | - | - | - | trained {epochs} of {config['epochs']} epochs |"
    r = json.loads(result.read_text())
    attack = r["attack"]["name"]
    return (f"| {run} | {method} | {with_error(r['clean_acc'], r['n'])} | {with_error(r['robust_acc'], r['n'])} | "
            f"{attack} | {autoattack(run)} | {r['n']:,} test images, {r['seconds'] / 60:.0f} min |")


if __name__ == "__main__":
    print("| run | loss (threat model, radius) | clean | PGD-20 | attack | AutoAttack (1,000) | measured on |")
    print("|---|---|---|---|---|---|---|")
    for run in sys.argv[1:]:
        print(row(run))
