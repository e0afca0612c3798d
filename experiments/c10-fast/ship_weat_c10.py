"""Make the shipped default `weat_c10` from a fast-recipe run (issue 16): float16 weights, the dataset named `cifar10`
(no machine path), the sampler settings its sweep chose as the checkpoint's sampling defaults; then the float16 and the
float32 weights evaluated side by side (with --report) on the run's validation split (1,000 training images, never
test images), clean and under the run's own validation attack. The check reads only the weights, which the sampling
defaults do not change.

    python experiments/c10-fast/ship_weat_c10.py --run experiments/c10-fast/weat-adv-l2 \
        --sampling '{"init": "pca", "sigma_pca": 0.02}' --out checkpoints/weat_c10.safetensors \
        --report experiments/c10-fast/weat-adv-l2/fp16_val.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import robgen
from robgen.data import train_val_split
from robgen.evaluate import evaluate
from robgen.outputs import claim
from robgen.utils import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run folder with config.json and best.safetensors")
    parser.add_argument("--sampling", required=True, help="JSON object of sample options (SampleConfig fields)")
    parser.add_argument("--data", default="folder:/tmp/c10", help="the training data the run used")
    parser.add_argument("--out", required=True)
    parser.add_argument("--report", default=None, help="JSON of the float16 vs float32 check")
    args = parser.parse_args()
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    claim([args.out, *([args.report] if args.report else [])], False)
    model = robgen.load_classifier(run / "best.safetensors")
    model.meta.dataset = "cifar10"
    model.meta.sampling = json.loads(args.sampling)
    robgen.save_classifier(model, args.out, torch.float16)
    if args.report:
        check_float16(run, config, args)


def check_float16(run: Path, config: dict, args) -> None:
    _, val, _ = train_val_split(args.data, config["val_n"], seed=config["val_seed"])
    attack = "pgd20-l2" if config["norm"] == "l2" else "pgd20"
    report = {"validation": f"{config['val_n']} training images (val_seed {config['val_seed']})", "attack": attack}
    for name, path in (("float32", run / "best.safetensors"), ("float16", args.out)):
        r = evaluate(robgen.load_classifier(path), val, attack, seed=0, workers=0, progress=False)
        report[name] = {k: r[k] for k in ("clean_acc", "robust_acc")}
        print(f"{name}: clean {r['clean_acc']:.2f}%  {attack} {r['robust_acc']:.2f}%", flush=True)
    atomic_write_text(Path(args.report), json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
