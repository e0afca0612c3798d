"""Sampler overhead and memory of `robgen sample`, measured side by side in one run.

1. Seconds per SGLD step of robgen's sampler (samplers.descend over the shared energy) divided by the seconds of one
   forward + input-gradient backward of the same model and batch (the physical floor; goal <= 1.05 on CPU), and the
   same ratio for a loop doing what the reference code does every step (gc.collect(), torch.cuda.empty_cache(),
   fresh noise made on the host and moved to the device). Rounds alternate the three loops; medians are reported.
2. Peak RSS of a whole `sample()` run (uniform start, cnn-tiny, 2 steps) making 1,000 vs 10,000 images, each in a
   fresh subprocess: memory must stay flat in -n.
Hardware of the reported figures: a shared 2-core CPU, no GPU (torch CPU threads = 2).
Run: PYTHONPATH=. python benchmarks/bench_sample.py [--device cpu] [--batch 128] [--steps 10]
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from robgen import energy
from robgen.models import ModelMeta, build_classifier
from robgen.models.checkpoint import save_classifier
from robgen.sample.generate import _energy_grad
from robgen.sample.samplers import SamplerConfig, descend


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor_step(model, x, y):
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy.joint_energy(model(x), y).sum(), x)
    return grad


def reference_loop(model, x, y, steps: int, eta: float = 0.8, sigma: float = 0.001):
    """What the reference code does per step: collect garbage, empty the CUDA cache, move host noise to the device."""
    alpha = (2 * eta) ** 0.5
    for _ in range(steps):
        gc.collect()
        torch.cuda.empty_cache()
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(energy.joint_energy(model(x), y).sum(), x)
        noise = torch.randn(x.shape).to(x.device)
        x = (x.detach() - eta / 2 * grad + alpha * sigma * noise).clamp(0, 1)
    return x


def overhead(device: torch.device, batch: int, steps: int, rounds: int) -> dict:
    torch.manual_seed(0)
    meta = ModelMeta("cnn-small", 10, (3, 32, 32))
    model = build_classifier(meta).to(device).eval().requires_grad_(False)
    x0 = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.arange(batch, device=device) % 10
    cfg = SamplerConfig(steps=steps, step_size=0.8)
    grad_fn = _energy_grad(model, energy.joint_energy, y, False)
    generator = torch.Generator(device).manual_seed(0)
    loops = {
        "floor": lambda: [floor_step(model, x0, y) for _ in range(steps)],
        "robgen": lambda: descend("sgld", grad_fn, x0, cfg, generator),
        "reference": lambda: reference_loop(model, x0, y, steps),
    }
    for fn in loops.values():  # warm-up
        fn()
    times = {name: [] for name in loops}
    for _ in range(rounds):
        for name, fn in loops.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    per_step = {name: statistics.median(t) for name, t in times.items()}
    return {"per_step_s": per_step, "robgen_over_floor": per_step["robgen"] / per_step["floor"],
            "reference_over_floor": per_step["reference"] / per_step["floor"],
            "reference_over_robgen": per_step["reference"] / per_step["robgen"]}


CHILD = """
import json, resource, sys, time
from robgen.sample import sample
t = time.perf_counter()
r = sample(sys.argv[1], out=sys.argv[2], n=int(sys.argv[3]), init="uniform", steps=2, batch_size=500, progress=False,
           device="cpu")
print(json.dumps({"n_images": r["n_images"], "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t}))
"""


def memory(per_class: list[int]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        meta = ModelMeta("cnn-tiny", 10, (3, 32, 32))
        ckpt = save_classifier(build_classifier(meta), Path(tmp) / "tiny.safetensors")
        for n in per_class:
            done = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), f"{tmp}/out{n}", str(n)],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, cnn-small, "
          f"batch {args.batch}, {args.steps} steps x {args.rounds} rounds")
    r = overhead(device, args.batch, args.steps, args.rounds)
    for name, seconds in r["per_step_s"].items():
        print(f"  {name:<10} {seconds * 1000:8.2f} ms/step")
    print(f"robgen SGLD step / floor (forward + input grad):  {r['robgen_over_floor']:.3f}   (goal <= 1.05)")
    print(f"reference-style step / floor:                    {r['reference_over_floor']:.3f}")
    print(f"reference-style step / robgen step:              {r['reference_over_robgen']:.3f}")
    rows = memory([100, 1000])
    for row in rows:
        print(f"  sample() of {row['n_images']:>6} images: peak RSS {row['peak_rss_mib']:.0f} MiB, "
              f"{row['seconds']:.1f} s")
    print(f"peak RSS ratio, 10,000 vs 1,000 images:          {rows[1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.3f}")


if __name__ == "__main__":
    main()
