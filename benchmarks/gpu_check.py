"""robgen on a GPU: what only a GPU can show, in one run of under 8 minutes on one H200 (about 5 of script).

    PYTHONPATH=. python benchmarks/gpu_check.py [--data folder:DIR] [--out DIR] [--budget 420]
    PYTHONPATH=. python benchmarks/gpu_check.py --dry-run --device cpu --out /tmp/gc   # tiny sizes (the tests run it)

Sections, most important first; each records its own error and one past --budget seconds is skipped:
  env          torch, GPU, TF32 flags, whether torch has DDP's two-forward fix (2.12), missing packages
  ddp          torchrun, 2 ranks sharing the GPU through gloo: weat-adv (two forwards before one backward) and sat
  syncs        host-device syncs by source line: per training step (loop.py), per PGD-10 attack, per 20 SGLD steps
  attack       KL reached by the training attack under --amp fp32/bf16/fp16 (robgen's fp32 attacks) against the
               attack run in the autocast dtype (before the fix), TF32 on and off; first-step zero gradients
  determinism  same seed twice: sample bytes (fp32, bf16), training weights
  ranks        `sample` in 1 process against torchrun with 2 ranks: the same images
  train        images/s of the paper recipe (PreActResNet-18, weat-adv, 10 attack steps), bf16 against fp32
  sgld         SGLD step time over the floor (one forward + input-gradient backward) at batch 128 and 1024
  sample       a real `sample` run (PCA starts, 40 steps, PNGs): images/s, share of time writing PNGs, and the
               projected wall time of 50,000 samples
  eval         PGD-20 on the same images, GPU against CPU (same CPU-drawn starts): accuracy and energy gaps
  compile      (--compile) a 10-step attack eager against torch.compile, parameters frozen as robgen does

Writes OUT/report.json (every figure) and OUT/summary.txt (the headline figures) after each section.
Without --data it writes a synthetic 10-class 32x32 image folder: speeds and parity need no real images.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHIPPED = REPO / "checkpoints" / "weat_c10_small.safetensors"
STARTS = REPO / "checkpoints" / "weat_c10_small.starts.safetensors"

SIZES = {  # full: one H200; dry: a CPU in seconds
    "full": dict(arch="preact-resnet18", small="cnn-small", train_images=5120, batch=128, val_n=256, epochs=2,
                 ddp_images=1024, attack_images=512, per_class=256, sgld_batches=(128, 1024), sgld_steps=20,
                 eval_images=1000, workers=8, sync_images=1280, rank_per_class=20, det_per_class=32, steps=40),
    "dry": dict(arch="cnn-tiny", small="cnn-tiny", train_images=64, batch=16, val_n=16, epochs=2, ddp_images=32,
                attack_images=16, per_class=1, sgld_batches=(8,), sgld_steps=3, eval_images=16, workers=0,
                sync_images=32, rank_per_class=1, det_per_class=1, steps=3),
}


def write_synthetic(root: Path, per_class: int, test_per_class: int) -> Path:
    """10 classes of noisy flat colours, 32x32 PNGs, train/ and test/ (ImageFolder)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = rng.integers(30, 225, (10, 3))
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c, colour in enumerate(colours):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(colour + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return root


def torchrun(args: argparse.Namespace, child: list[str], timeout: float) -> dict:
    """2 ranks through gloo on the one device (NCCL refuses two ranks per GPU)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "ROBGEN_DIST_BACKEND": "gloo", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           "--child", *child]
    began = time.perf_counter()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "seconds": round(time.perf_counter() - began, 1), "error": f"timed out after {timeout} s"}
    out = {"ok": done.returncode == 0, "seconds": round(time.perf_counter() - began, 1)}
    if done.returncode:
        lines = [ln for ln in done.stderr.splitlines() if "Error" in ln]
        out["error"] = (lines[0] if lines else done.stderr[-400:])[:400]
    return out


def child(argv: list[str]) -> None:
    """One torchrun rank: both ranks on the launcher's device (LOCAL_RANK 0), robgen's API with JSON arguments."""
    os.environ["LOCAL_RANK"] = "0"
    what, kwargs = argv[0], json.loads(argv[1])
    if kwargs.pop("before_2_12", False):  # DDP's buffer broadcast as torch 2.2-2.11 make it (see tests/ddp_before_2_12.py)
        torch.autograd._unsafe_preserve_version_counter = lambda *a, **k: contextlib.nullcontext()
    if what == "train":
        from robgen.train import make_config, train

        out, device, config = kwargs.pop("out"), kwargs.pop("device"), kwargs
        train(make_config(**config), out, device=device, workers=0, progress=False, log=lambda line: None)
    else:
        from robgen.sample import sample

        sample(**kwargs, progress=False)


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args, self.size = args, SIZES["dry" if args.dry_run else "full"]
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.report: dict = {"sizes": "dry" if args.dry_run else "full"}
        self.began = time.perf_counter()
        s = self.size
        self.data = args.data or "folder:" + str(write_synthetic(
            self.tmp / "data", max(s["train_images"], s["ddp_images"]) // 10 + s["val_n"] // 10 + 1,
            max(s["eval_images"], s["attack_images"]) // 10 + 1))

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, sections: list[str]) -> dict:
        for name in sections:
            elapsed = time.perf_counter() - self.began
            if elapsed > self.args.budget:
                self.report[name] = {"skipped": f"budget of {self.args.budget} s spent ({elapsed:.0f} s)"}
                continue
            began = time.perf_counter()
            try:
                self.report[name] = getattr(self, name)()
            except Exception as err:  # one broken section must not hide the others
                self.report[name] = {"error": f"{type(err).__name__}: {err}"[:500], "trace": traceback.format_exc()[-1500:]}
            self.report.setdefault("seconds", {})[name] = round(time.perf_counter() - began, 1)
            self.write()
            print(f"{name}: {json.dumps(self.report[name], default=str)[:600]}", file=sys.stderr, flush=True)
        self.report["total_seconds"] = round(time.perf_counter() - self.began, 1)
        self.write()
        return self.report

    def write(self) -> None:
        (self.out / "report.json").write_text(json.dumps(self.report, indent=1, default=str))
        (self.out / "summary.txt").write_text("\n".join(summary(self.report)) + "\n")

    def images(self, n: int):
        from robgen.data import load_split

        data, _ = load_split(self.data, "test", n=n, seed=0)
        x = torch.stack([data[i][0] for i in range(len(data))])
        return data, x, torch.tensor([data[i][1] for i in range(len(data))])

    # ------------------------------------------------------------------ sections
    def env(self) -> dict:
        import importlib.util

        from torch.nn.parallel import DistributedDataParallel

        from robgen.utils import precision

        out = {"torch": torch.__version__, "python": sys.version.split()[0], "device": str(self.dev),
               "torch_has_ddp_two_forward_fix": "_unsafe_preserve_version_counter" in inspect.getsource(
                   DistributedDataParallel._sync_buffers),
               "precision": precision(self.dev),
               "missing": [m for m in ("torchvision", "safetensors", "tqdm", "PIL", "matplotlib", "torch_fidelity",
                                       "torchattacks", "click") if importlib.util.find_spec(m) is None]}
        if self.cuda:
            p = torch.cuda.get_device_properties(self.dev)
            out.update(gpu=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                       cudnn=torch.backends.cudnn.version(), gpus=torch.cuda.device_count())
        return out

    def ddp(self) -> dict:
        s = self.size
        base = dict(data=self.data, arch=s["small"], epochs=1, batch_size=s["batch"], val_n=s["val_n"],
                    max_train=s["ddp_images"], val_attack_steps=2, device=str(self.dev.type))
        fixed = self.report.get("env", {}).get("torch_has_ddp_two_forward_fix", False)
        out = {}
        for loss in ("weat-adv", "sat"):
            # on a torch with the 2.12 fix, weat-adv runs under the old broadcast: what torch 2.11 would do
            out[loss] = torchrun(self.args, ["train", json.dumps(
                {**base, "loss": loss, "out": str(self.tmp / f"ddp-{loss}"), "before_2_12": fixed and loss != "sat"})],
                timeout=240)
        return out

    def syncs(self) -> dict:
        if not self.cuda:
            return {"skipped": "sync counting needs CUDA (torch.cuda.set_sync_debug_mode)"}
        from robgen import energy
        from robgen.attacks import pgd
        from robgen.models import ModelMeta, build_classifier
        from robgen.sample.generate import _energy_grad
        from robgen.sample.samplers import SamplerConfig, descend
        from robgen.train import make_config, train

        def count(fn) -> Counter:
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    fn()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            return Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower())

        s = self.size
        model = build_classifier(ModelMeta(s["small"], 10, (3, 32, 32))).to(self.dev).eval().requires_grad_(False)
        x = torch.rand(128, 3, 32, 32, device=self.dev)
        y = torch.arange(128, device=self.dev) % 10
        gen = torch.Generator(self.dev).manual_seed(0)
        sgld = count(lambda: descend("sgld", _energy_grad(model, energy.joint_energy, y, False), x,
                                     SamplerConfig(steps=20, step_size=0.8), gen))
        attack = count(lambda: pgd(model, x, y, steps=10, generator=gen))
        config = make_config("cpu", data=self.data, arch=s["small"], epochs=1, max_train=s["sync_images"],
                             val_n=s["val_n"], batch_size=s["batch"], val_attack_steps=2)
        loop = count(lambda: train(config, self.tmp / "syncs", device=str(self.dev), workers=2, progress=False,
                                   log=lambda line: None))
        steps = s["sync_images"] // s["batch"]
        in_loop = sum(n for where, n in loop.items() if where.startswith("loop.py"))
        return {"train_steps": steps, "loop_py_syncs_per_step": round(in_loop / steps, 2),
                "train_run_by_line": dict(loop.most_common(12)), "pgd10_total": sum(attack.values()),
                "pgd10_by_line": dict(attack.most_common(6)), "sgld20_total": sum(sgld.values()),
                "sgld20_by_line": dict(sgld.most_common(6))}

    def attack(self) -> dict:
        from robgen import energy, load_classifier
        from robgen.train import LOSSES, adversarial

        model = load_classifier(SHIPPED, self.dev)
        dev_type = self.dev.type
        _, x, y = self.images(self.size["attack_images"])
        x, y = x.to(self.dev), y.to(self.dev)
        dtypes = {"fp32": None, "bf16": torch.bfloat16, **({"fp16": torch.float16} if self.cuda else {})}

        class InDtype(torch.nn.Module):  # the model forward in the autocast dtype, as attacks ran before the fix
            def __init__(self, dtype):
                super().__init__()
                self.m, self.dtype = model, dtype

            def forward(self, t):
                with torch.autocast(dev_type, dtype=self.dtype):
                    return self.m(t)

        def kl_reached(net, outer_dtype, steps, step):
            ctx = torch.autocast(self.dev.type, dtype=outer_dtype) if outer_dtype else contextlib.nullcontext()
            with ctx:
                xa, _ = adversarial(net, x, y, LOSSES.get("weat-adv"), eps=8 / 255, step_size=step, steps=steps,
                                    generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                assert (xa - x).abs().max().item() <= 8 / 255 + 1e-6, "eps-ball violated"
                return round(energy.trades_kl(model(x), model(xa)).mean().item(), 5)

        out: dict = {}
        tf32 = torch.backends.cudnn.allow_tf32
        for tf in ((True, False) if self.cuda else (False,)):
            torch.backends.cudnn.allow_tf32 = tf
            for name, dt in dtypes.items():
                row = {}
                for steps, step in ((3, 4 / 255), (10, 2 / 255)):
                    row[f"{steps}x{round(step * 255)}/255"] = kl_reached(model, dt, steps, step)
                    if dt is not None:
                        row[f"{steps}x{round(step * 255)}/255_attack_in_{name}"] = kl_reached(InDtype(dt), None, steps, step)
                out[f"{name}{'_tf32' if tf else ''}"] = row
        torch.backends.cudnn.allow_tf32 = tf32
        # The KL attack's first step at x + 0.001 N(0, I): zero gradients and sign agreement with fp32.
        x0 = (x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(self.dev)).clamp(0, 1)
        with torch.no_grad():
            clean = model(x).float()
        grads = {}
        for name, dt in dtypes.items():
            net = model if dt is None else InDtype(dt)
            xa = x0.clone().requires_grad_(True)
            kl = energy.trades_kl(clean, net(xa).float()).sum()
            (grads[name],) = torch.autograd.grad(kl, xa)
        out["first_step"] = {name: {"zero_fraction": round((g == 0).float().mean().item(), 4),
                                    "sign_agrees_with_fp32": round((g.sign() == grads["fp32"].sign()).float().mean().item(), 4)}
                             for name, g in grads.items()}
        return out

    def determinism(self) -> dict:
        from safetensors.torch import load_file

        from robgen.sample import sample
        from robgen.train import make_config, train

        def run(name, **kw):
            sample(SHIPPED, n=self.size["det_per_class"], out=self.tmp / name, steps=self.size["steps"], seed=1, device=str(self.dev),
                   start_stats=STARTS, progress=False, **kw)
            return (self.tmp / name / "samples.npz").read_bytes()

        out = {"sample_fp32": run("da") == run("db"), "sample_bf16": run("dc", bf16=True) == run("dd", bf16=True)}
        s = self.size
        config = make_config("cpu", data=self.data, arch=s["small"], epochs=1, max_train=s["ddp_images"],
                             val_n=s["val_n"], batch_size=s["batch"], val_attack_steps=2)
        weights = []
        for name in ("ta", "tb"):
            train(config, self.tmp / name, device=str(self.dev), workers=0, progress=False, log=lambda line: None)
            weights.append(load_file(self.tmp / name / "last.safetensors"))
        out["train_weights"] = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
        return out

    def ranks(self) -> dict:
        from robgen.sample import sample

        kw = dict(ckpt=str(SHIPPED), n=self.size["rank_per_class"], steps=self.size["steps"], device=self.dev.type,
                  start_stats=str(STARTS), batch_size=64)
        sample(**kw, out=self.tmp / "r1", progress=False)
        two = torchrun(self.args, ["sample", json.dumps({**kw, "out": str(self.tmp / "r2")})], timeout=240)
        if two["ok"]:
            a, b = (np.load(self.tmp / r / "samples.npz")["images"] for r in ("r1", "r2"))
            two.update(same_images=bool(np.array_equal(a, b)), differing_values=int((a != b).sum()))
        return two

    def train(self) -> dict:
        from robgen.train import make_config, train

        s = self.size
        out = {}
        for amp in ("bf16", "off"):
            config = make_config("paper", data=self.data, arch=s["arch"], epochs=s["epochs"], max_train=s["train_images"],
                                 val_n=s["val_n"], batch_size=s["batch"], amp=amp)
            r = train(config, self.tmp / f"train-{amp}", device=str(self.dev), workers=s["workers"], progress=False,
                      log=lambda line: None)
            last = r["last"]  # epoch 2: cuDNN's algorithm search and worker start are in epoch 1
            out["fp32" if amp == "off" else amp] = {"images_per_s": round(last["images_per_s"], 1),
                                                    "epoch_seconds": round(last["epoch_seconds"], 2),
                                                    "eval_seconds": round(last["eval_seconds"], 2)}
        out["bf16_speedup"] = round(out["bf16"]["images_per_s"] / out["fp32"]["images_per_s"], 2)
        out["recipe"] = f"paper: {s['arch']}, weat-adv, 10 attack steps, batch {s['batch']}, {s['train_images']} images"
        return out

    def sgld(self) -> dict:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_sample import overhead

        out = {}
        for batch in self.size["sgld_batches"]:
            r = overhead(self.dev, batch, self.size["sgld_steps"], 3)
            step = r["per_step_s"]["robgen"]
            out[f"batch{batch}"] = {"step_over_floor": round(r["robgen_over_floor"], 3), "step_ms": round(step * 1e3, 3),
                                    "image_steps_per_s": round(batch / step)}
        return out

    def sample(self) -> dict:
        from robgen.sample import generate, sample

        pngs = [0.0]
        real = generate._save_pngs

        def timed(*a):
            began = time.perf_counter()
            real(*a)
            pngs[0] += time.perf_counter() - began

        generate._save_pngs = timed
        try:
            batch = self.size["sgld_batches"][-1]
            r = sample(SHIPPED, n=self.size["per_class"], out=self.tmp / "s50k", steps=self.size["steps"], batch_size=batch,
                       device=str(self.dev), start_stats=STARTS, progress=False)
        finally:
            generate._save_pngs = real
        per_s = r["n_images"] / r["seconds"]
        return {"images": r["n_images"], "batch": batch, "steps": self.size["steps"], "seconds": r["seconds"],
                "images_per_s": round(per_s, 1), "png_share": round(pngs[0] / r["seconds"], 3),
                "projected_50k_minutes": round(50000 / per_s / 60, 1), "model": "weat_c10_small (cnn-small)"}

    def eval(self) -> dict:
        from robgen import load_classifier
        from robgen.evaluate import collect_energies, summarize

        data, _, _ = self.images(self.size["eval_images"])
        rows = {}
        settings = [("cpu", False), (self.dev.type, True), (self.dev.type, False)] if self.cuda else [("cpu", False)]
        tf32 = torch.backends.cudnn.allow_tf32
        for device, tf in settings:
            torch.backends.cudnn.allow_tf32 = tf
            began = time.perf_counter()
            r = collect_energies(load_classifier(SHIPPED, device), data, "pgd20", device=device, workers=0,
                                 progress=False)
            rows[f"{device}{'_tf32' if tf else ''}"] = (r, time.perf_counter() - began)
        torch.backends.cudnn.allow_tf32 = tf32
        ref = rows["cpu"][0]
        out = {}
        for name, (r, seconds) in rows.items():
            m = summarize(r)
            out[name] = {"clean_acc": round(m["clean_acc"], 2), "robust_acc": round(m["robust_acc"], 2),
                         "seconds": round(seconds, 2),
                         "max_abs_dE_adv_vs_cpu": float((r["E_adv"] - ref["E_adv"]).abs().max()),
                         "pred_adv_agrees_with_cpu": float((r["pred_adv"] == ref["pred_adv"]).float().mean())}
        return out

    def compile(self) -> dict:
        if not self.cuda:
            return {"skipped": "torch.compile is measured on CUDA only"}
        from robgen.models import ModelMeta, build_classifier
        from robgen.train import LOSSES, adversarial

        model = build_classifier(ModelMeta(self.size["arch"], 10, (3, 32, 32))).to(self.dev)
        model = model.to(memory_format=torch.channels_last)
        x = torch.rand(128, 3, 32, 32, device=self.dev).contiguous(memory_format=torch.channels_last)
        y = torch.arange(128, device=self.dev) % 10

        def ms(net, reps=5):
            def once():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    adversarial(net, x, y, LOSSES.get("weat-adv"), eps=8 / 255, step_size=2 / 255, steps=10,
                                generator=torch.Generator(self.dev).manual_seed(0))
            once()
            self.sync()
            began = time.perf_counter()
            for _ in range(reps):
                once()
            self.sync()
            return round((time.perf_counter() - began) / reps * 1e3, 2)

        began = time.perf_counter()
        out = {"eager_ms": ms(model), "compiled_ms": ms(torch.compile(model))}
        out["seconds_with_compilation"] = round(time.perf_counter() - began, 1)
        return out


SECTIONS = ["env", "ddp", "syncs", "attack", "determinism", "ranks", "train", "sgld", "sample", "eval", "compile"]


def summary(r: dict) -> list[str]:
    """The headline figures (README material), then one line per section that failed or was skipped."""
    def get(*keys):
        value = r
        for k in keys:
            value = value.get(k, {}) if isinstance(value, dict) else {}
        return value if value != {} else "-"

    lines = [f"robgen GPU check ({r.get('sizes')} sizes): torch {get('env', 'torch')} on {get('env', 'gpu')}",
             f"DDP 2 ranks on one GPU (gloo): weat-adv ok {get('ddp', 'weat-adv', 'ok')}, sat ok {get('ddp', 'sat', 'ok')}"
             f" (torch has the 2.12 fix: {get('env', 'torch_has_ddp_two_forward_fix')})",
             f"host syncs per training step in loop.py: {get('syncs', 'loop_py_syncs_per_step')}; per PGD-10 attack: "
             f"{get('syncs', 'pgd10_total')}; per 20 SGLD steps: {get('syncs', 'sgld20_total')}",
             f"training images/s (paper recipe): bf16 {get('train', 'bf16', 'images_per_s')}, fp32 "
             f"{get('train', 'fp32', 'images_per_s')} (x{get('train', 'bf16_speedup')})"]
    for batch, row in (r.get("sgld") or {}).items():
        if isinstance(row, dict) and "step_over_floor" in row:
            lines.append(f"SGLD {batch}: step/floor {row['step_over_floor']}, {row['image_steps_per_s']} image-steps/s")
    lines.append(f"sample (40 steps, PNGs): {get('sample', 'images_per_s')} images/s, PNG share "
                 f"{get('sample', 'png_share')}, 50,000 samples in {get('sample', 'projected_50k_minutes')} min")
    lines.append(f"determinism: {json.dumps(r.get('determinism'))}; 1 process == torchrun-2: "
                 f"{get('ranks', 'same_images')}")
    lines.append(f"attack KL (10x2/255): {json.dumps({k: v.get('10x2/255') for k, v in (r.get('attack') or {}).items() if isinstance(v, dict) and '10x2/255' in v})}")
    lines.append(f"eval parity: {json.dumps({k: (v.get('robust_acc'), v.get('pred_adv_agrees_with_cpu')) for k, v in (r.get('eval') or {}).items() if isinstance(v, dict) and 'robust_acc' in v})}")
    for name in SECTIONS:
        sec = r.get(name)
        if isinstance(sec, dict) and ("error" in sec or "skipped" in sec):
            lines.append(f"{name}: {sec.get('error') or sec.get('skipped')}")
    lines.append(f"total {r.get('total_seconds', '-')} s")
    return lines


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--data", default=None, help="a robgen data spec (e.g. folder:/tmp/c10); default: synthetic")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"))
    p.add_argument("--budget", type=float, default=420, help="skip sections that would start after this many s")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, for a CPU")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (about 1-2 min more)")
    p.add_argument("--sections", default=None, help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = p.parse_args()
    chosen = args.sections.split(",") if args.sections else [s for s in SECTIONS if s != "compile" or args.compile]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section {unknown[0]}")
    report = Check(args).run(chosen)
    print("\n".join(summary(report)))


if __name__ == "__main__":
    main()
