"""Cost of a fast-recipe training step against one plain forward+backward+SGD step of the same net.

For each loss, the full robgen step (eval-mode clean forward, the recipe's attack steps, the telemetry forward of
x*, the train-mode outer loss and the update) and a plain cross-entropy step run interleaved in one process, from
the same batch, so machine load hits both alike. Prints ms/step and the ratio robgen / plain. The goal for the
fast recipe is at most attack_steps + 1.3 (two attack steps cost about two input-gradient passes; the KL losses
also need a train-mode forward+backward of the clean batch, which a plain step does not).

    PYTHONPATH=. python benchmarks/bench_recipe.py [--arch airnet --batch 128 --iters 4 --losses standard,sat,weat-adv]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from robgen.models import ModelMeta, build_classifier
from robgen.train import LOSSES, make_config, train_step


def plain_step(model, optimizer, x, y) -> None:
    model.train()
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="airnet")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=4, help="timed steps per formulation and loss")
    parser.add_argument("--losses", default="standard,sat,weat-adv")
    parser.add_argument("--norm", default="linf")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_classifier(ModelMeta(args.arch, 10, mean=(0.5,) * 3, std=(0.25,) * 3))
    model = model.to(memory_format=torch.channels_last)  # as the trainer runs it
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    print(f"{args.arch}, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.iters} interleaved steps")
    for name in args.losses.split(","):
        config = make_config("fast", loss=name, norm=args.norm)
        loss = LOSSES.get(name)
        step = lambda: train_step(model, model, optimizer, loss, x, y, config, generator=torch.Generator().manual_seed(2))  # noqa: E731
        step(), plain_step(model, optimizer, x, y)  # warm-up, untimed
        ours, plain = [], []
        for _ in range(args.iters):
            began = time.perf_counter()
            step()
            ours.append(time.perf_counter() - began)
            began = time.perf_counter()
            plain_step(model, optimizer, x, y)
            plain.append(time.perf_counter() - began)
        o, p = statistics.median(ours), statistics.median(plain)
        steps = config["attack_steps"] if loss.objective else 0
        print(f"  {name:9s} ({steps} attack steps): robgen {1000 * o:7.0f} ms/step, plain {1000 * p:6.0f} ms/step, "
              f"ratio {o / p:.2f} (goal <= {steps + 1.3:.1f})")


if __name__ == "__main__":
    main()
