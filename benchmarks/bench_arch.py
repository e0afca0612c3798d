"""Training speed of the registered architectures on this machine, side by side in one process.

Per architecture: images/s of a forward+backward+SGD step, of an input-gradient pass (what an attack step costs) and
of a forward pass, batch 128, channels_last, and each speed as a ratio to cnn-small's. This is how airnet was chosen
for the fast recipe (benchmarks/results/bench_arch.txt holds a committed run).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_arch.py [--archs cnn-small,airnet,preact-resnet18 --iters 4]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from robgen.models import ModelMeta, build_classifier


def rates(net: torch.nn.Module, batch: int, iters: int) -> tuple[float, float, float]:
    """(train step, input gradient, forward) images per second."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=gen)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

    def train():
        net.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()

    def input_grad():
        net.eval()
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(net(xg), y), xg)

    def forward():
        net.eval()
        with torch.no_grad():
            net(x)

    out = []
    for fn in (train, input_grad, forward):
        fn()  # warm-up
        began = time.perf_counter()
        for _ in range(iters):
            fn()
        out.append(batch * iters / (time.perf_counter() - began))
    return tuple(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="cnn-small,airnet,preact-resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=4)
    args = parser.parse_args()
    print(f"batch {args.batch}, channels_last, {torch.get_num_threads()} threads; img/s (ratio to the first arch)")
    first = None
    for name in args.archs.split(","):
        torch.manual_seed(0)
        net = build_classifier(ModelMeta(name, 10)).net.to(memory_format=torch.channels_last)
        r = rates(net, args.batch, args.iters)
        first = first or r
        params = sum(p.numel() for p in net.parameters()) / 1e6
        print(f"  {name:16s} {params:5.2f}M  train {r[0]:6.0f} ({r[0] / first[0]:.2f})  input-grad {r[1]:6.0f} "
              f"({r[1] / first[1]:.2f})  forward {r[2]:6.0f} ({r[2] / first[2]:.2f})")


if __name__ == "__main__":
    main()
