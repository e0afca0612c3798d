"""Print a FID table of docs/RESULTS.md from the committed scores (experiments/c10-fast/fid/<name>.json, written by
fid_protocol.sh and fid_starts.sh), one row per NAME=LABEL:
    python experiments/c10-fast/fid_table.py weat_c10=pca weat_c10_gaussian=gaussian weat_c10_mix=mix"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent / "fid"


def row(name: str, label: str) -> str:
    score = json.loads((HERE / f"{name}.json").read_text())
    per_class = sorted(score["fid_per_class"].values())
    return (f"| {label} | {score['fid']:.2f} | {score['kid']:.4f} | {score['precision']:.3f} | {score['recall']:.3f} | "
            f"{per_class[0]:.1f}-{per_class[-1]:.1f} |")


if __name__ == "__main__":
    for pair in sys.argv[1:]:
        print(row(*pair.split("=", 1)))
