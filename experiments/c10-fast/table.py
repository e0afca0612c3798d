"""Print docs/RESULTS.md's fast-recipe table from the runs' metrics.jsonl (validation split, never test images):
    python experiments/c10-fast/table.py weat-adv-linf weat-adv-l2"""
import json
import sys
from pathlib import Path

runs = sys.argv[1:]
rows = {r: [json.loads(line) for line in (Path(__file__).parent / r / "metrics.jsonl").read_text().splitlines()]
        for r in runs}
print("| epoch | " + " | ".join(f"{r}: val clean / PGD-20" for r in runs) + " | epoch wall time | train dE(x) |")
print("|---" * (len(runs) + 3) + "|")
for e in range(max(len(v) for v in rows.values())):
    cells = [rows[r][e] if e < len(rows[r]) else None for r in runs]
    acc = [f"{m['val_clean_acc']:.1f}% / {m['val_robust_acc']:.1f}%" if m else "-" for m in cells]
    wall = " / ".join(f"{(m['epoch_seconds'] + m['eval_seconds']) / 60:.0f} min" if m else "-" for m in cells)
    de = " / ".join(f"{m['train_dE']:+.4f}" if m else "-" for m in cells)
    print(f"| {e + 1} | " + " | ".join(acc) + f" | {wall} | {de} |")
