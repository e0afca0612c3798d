"""Attack speed of `robgen eval` in the contiguous and the channels_last layout, side by side in one process.

Runs collect_energies (what `robgen eval` and AutoAttack's batches run) on the same seeded images with both layouts,
alternating, and prints the time of each, the ratio, and how far the results moved (predictions under attack that
differ, the largest change of E(x*)): the evidence for EvalConfig.channels_last's comment.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_eval_layout.py [--ckpt weat_c10 --attack pgd20-l2 --n 100]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import TensorDataset

from robgen.evaluate import collect_energies
from robgen.models.checkpoint import load_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="weat_c10")
    parser.add_argument("--attack", default="pgd20-l2")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    model = load_classifier(args.ckpt)
    images = torch.rand(args.n, *model.meta.input_shape, generator=gen)
    data = TensorDataset(images, torch.randint(0, model.num_classes, (args.n,), generator=gen))
    seconds: dict[bool, list[float]] = {False: [], True: []}
    rows = {}
    for _ in range(args.rounds):
        for layout in (False, True):
            began = time.perf_counter()
            # A fresh copy each time: collect_energies converts the module it is given in place.
            rows[layout] = collect_energies(load_classifier(args.ckpt), data, args.attack, batch_size=args.n,
                                            workers=0, progress=False, channels_last=layout)
            seconds[layout].append(time.perf_counter() - began)
    contiguous, channels_last = min(seconds[False]), min(seconds[True])
    flipped = int((rows[False]["pred_adv"] != rows[True]["pred_adv"]).sum())
    moved = (rows[False]["E_adv"] - rows[True]["E_adv"]).abs().max().item()
    print(f"{args.ckpt}, {args.attack}, {args.n} images, {torch.get_num_threads()} threads, best of {args.rounds}")
    print(f"contiguous     {contiguous:.1f} s")
    print(f"channels_last  {channels_last:.1f} s   speed ratio {contiguous / channels_last:.2f}")
    print(f"predictions under attack that differ: {flipped} of {args.n}; largest change of E(x*): {moved:.2e}")


if __name__ == "__main__":
    main()
