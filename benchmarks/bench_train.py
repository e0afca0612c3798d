"""Speed of one WEAT_adv training step (attack + telemetry forward + outer loss + SGD update).

CPU mode (default: cnn-small, batch 128, 10 attack steps): robgen's step, whose KL attack computes the clean logits
once per batch, against the reference formulation that recomputes the clean softmax inside each attack step.
Both run side by side in one process, interleaved, from the same weights and noise; prints ms/step, images/s and
the ratio robgen / reference (lower is better; expected about 0.8). Measured on a shared 2-core CPU (no GPU).
CUDA mode (--device cuda: PreActResNet-18, batch 128): robgen's step in fp32 and in bf16 autocast with
channels_last, images/s and the bf16 speed-up.

    PYTHONPATH=. python benchmarks/bench_train.py [--arch cnn-small --batch 128 --steps 10 --iters 5]
    PYTHONPATH=. python benchmarks/bench_train.py --device cuda
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch

from robgen import energy
from robgen.attacks import project, random_start
from robgen.models import ModelMeta, build_classifier
from robgen.train import LOSSES, adversarial, batch_loss, make_config, train_step

LOSS = LOSSES.get("weat-adv")


def reference_attack(model, x, config, generator):
    """The reference code's KL attack: p(.|x) is recomputed, with a graph, inside every attack step."""
    model.eval()
    x_adv = random_start(x, config["eps"], "linf", LOSS.start, generator)
    for _ in range(config["attack_steps"]):
        x_adv.requires_grad_(True)
        kl = energy.trades_kl(model(x), model(x_adv)).sum()
        (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = project(x_adv.detach() + config["step_size"] * grad.sign(), x, config["eps"], "linf")
    return x_adv.detach()


def reference_step(model, optimizer, x, y, config, generator):
    x_adv = reference_attack(model, x, config, generator)
    value, _ = batch_loss(LOSS, model, x, x_adv, y, config["beta"])
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def setup(arch: str, batch: int, device: torch.device, channels_last: bool):
    torch.manual_seed(0)
    model = build_classifier(ModelMeta(arch, 10)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, 32, 32, generator=gen).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    return model, optimizer, x, y


def cpu_mode(args, config) -> None:
    device = torch.device(args.device)
    ours_model, ours_opt, x, y = setup(args.arch, args.batch, device, False)
    ref_model = copy.deepcopy(ours_model)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    # Same weights and noise: both formulations must find the same x*.
    ours_x, _ = adversarial(ours_model, x, y, LOSS, eps=config["eps"], step_size=config["step_size"],
                            steps=config["attack_steps"], generator=torch.Generator().manual_seed(2))
    same = torch.equal(ours_x, reference_attack(ref_model, x, config, torch.Generator().manual_seed(2)))
    train_step(ours_model, ours_model, ours_opt, LOSS, x, y, config, generator=torch.Generator().manual_seed(3))
    reference_step(ref_model, ref_opt, x, y, config, torch.Generator().manual_seed(3))  # warm-up, untimed

    ours, ref = [], []
    for i in range(args.iters):
        gen = torch.Generator().manual_seed(10 + i)
        ours.append(timed(lambda: train_step(ours_model, ours_model, ours_opt, LOSS, x, y, config, generator=gen), device))
        gen = torch.Generator().manual_seed(10 + i)
        ref.append(timed(lambda: reference_step(ref_model, ref_opt, x, y, config, gen), device))
    o, r = statistics.median(ours), statistics.median(ref)
    print(f"weat-adv step, {args.arch}, batch {args.batch}, {config['attack_steps']} attack steps, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.iters} interleaved steps")
    print(f"  x* identical in both formulations (same weights and noise): {same}")
    print(f"  reference (clean softmax per attack step): {1000 * r:8.1f} ms/step  {args.batch / r:7.1f} img/s")
    print(f"  robgen (clean logits once per batch):      {1000 * o:8.1f} ms/step  {args.batch / o:7.1f} img/s")
    print(f"  ratio robgen / reference: {o / r:.3f}")


def cuda_mode(args, config) -> None:
    device = torch.device(args.device)
    rates = {}
    for amp in ("off", "bf16"):
        model, opt, x, y = setup(args.arch, args.batch, device, True)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
        step = lambda: train_step(model, model, opt, LOSS, x, y, config, autocast=autocast)  # noqa: E731
        for _ in range(3):  # warm-up: cuDNN autotuning, allocator
            step()
        seconds = statistics.median(timed(step, device) for _ in range(args.iters))
        rates[amp] = args.batch / seconds
        print(f"weat-adv step, {args.arch}, batch {args.batch}, {config['attack_steps']} attack steps, "
              f"{torch.cuda.get_device_name(device)}, {'bf16 autocast' if amp == 'bf16' else 'fp32'}, channels_last: "
              f"{1000 * seconds:.1f} ms/step  {rates[amp]:.0f} img/s")
    print(f"  bf16 / fp32 images/s: {rates['bf16'] / rates['off']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default=None, help="default: cnn-small on CPU, preact-resnet18 on CUDA")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="attack steps")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per formulation")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.arch = args.arch or ("preact-resnet18" if cuda else "cnn-small")
    config = make_config(attack_steps=args.steps)
    (cuda_mode if cuda else cpu_mode)(args, config)


if __name__ == "__main__":
    main()
