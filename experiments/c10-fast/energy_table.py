"""Print docs/RESULTS.md's energies-under-attack table from the committed `robgen energy` summaries
(experiments/c10-fast/energy/<model>/energy_summary.json), one row per model and attack:
    python experiments/c10-fast/energy_table.py weat_c10 standard"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent / "energy"


def rows(model: str):
    summary = json.loads((HERE / model / "energy_summary.json").read_text())
    for name, a in summary["attacks"].items():
        spec = a["spec"]
        kind = "targeted" if spec["targeted"] or spec["method"] == "apgd-t" else "untargeted"  # APGD-T targets itself
        success = "-" if a["success_rate"] is None else f"{a['success_rate']:.1f}%"
        yield (f"| {model} | {name} ({kind}, {spec['norm']} {spec['eps']:.4g}, {spec['steps']} steps) | {a['n']} | "
               f"{a['clean_acc']:.1f}% / {a['robust_acc']:.1f}% | {success} | {a['E_clean']:.3f} -> {a['E_adv']:.3f} | "
               f"{a['dE']:+.3f} | {a['direction']['E']['word']} | {a['dEy']:+.3f} |")


if __name__ == "__main__":
    print("| model | attack | images | clean / adversarial accuracy | success rate | mean E(x) clean -> adversarial "
          "| dE(x) = E(x) - E(x*) | in words | dE(x,y) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in sys.argv[1:]:
        for line in rows(model):
            print(line)
