"""The `robgen` command group: thin wrappers over the Python API, sharing its defaults."""
from __future__ import annotations

import json
import sys

import click

from .errors import RobgenError
from .evaluate import DEFAULTS as EVAL_DEFAULTS


class RobgenGroup(click.Group):
    """Shows RobgenError as a one-line `Error: ...` (exit status 1), never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RobgenError as err:
            raise click.ClickException(str(err)) from None


@click.group(cls=RobgenGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="robgen")
def main():
    """Robust classifiers as energy-based models: train, analyse, sample, score."""


def emit(result: dict, as_json: bool, lines: list[str]) -> None:
    """Print a result either as JSON (machine-readable) or as human lines."""
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        for line in lines:
            click.echo(line)


class FloatOrFraction(click.ParamType):
    """A float written plainly or as a fraction, e.g. 8/255."""

    name = "float"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            num, _, den = str(value).partition("/")
            return float(num) / float(den) if den else float(num)
        except (ValueError, ZeroDivisionError):
            self.fail(f"{value!r} is not a number or fraction like 8/255", param, ctx)


FLOAT = FloatOrFraction()


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(FLOAT.convert(v, None, None) for v in text.split(","))
    except click.BadParameter as err:
        raise RobgenError(err.message) from None


ckpt_option = click.option(
    "--ckpt", default=None, help="robgen checkpoint (.safetensors) or shipped name; default: the shipped default"
)
data_root_option = click.option("--data-root", default=None, help="dataset root (default: $ROBGEN_DATA or ./data)")
download_option = click.option("--download", is_flag=True, help="download torchvision datasets (needs internet)")
device_option = click.option("--device", default="auto", help="cpu, cuda, cuda:1, or auto")
seed_option = click.option("--seed", default=EVAL_DEFAULTS["seed"], type=int, help="random seed: the same seed gives the same output")
json_option = click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")


def check_compatible(meta, spec) -> None:
    """A model can only be scored on data with its number of classes and input shape."""
    if meta.num_classes != spec.num_classes or tuple(meta.input_shape) != tuple(spec.input_shape):
        raise RobgenError(
            f"checkpoint expects {meta.num_classes} classes of shape {tuple(meta.input_shape)}, but dataset "
            f"{spec.name} has {spec.num_classes} classes of shape {tuple(spec.input_shape)}; pass a matching --data"
        )


@main.command("info")
@ckpt_option
@json_option
def info_cmd(ckpt, as_json):
    """Metadata, parameter count, and a check that weights and architecture agree."""
    from .models.checkpoint import checkpoint_id, load_classifier

    model = load_classifier(ckpt)  # raises on any weight/architecture mismatch
    meta = model.meta
    result = {
        **checkpoint_id(ckpt),
        **{k: v for k, v in vars(meta).items()},
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "weights_match_architecture": True,
    }
    emit(result, as_json, [
        f"checkpoint  {result['path']}  (sha256 {result['sha256'][:16]})",
        f"arch        {meta.arch}, {result['parameters']:,} parameters; weights match the architecture",
        f"input       {meta.input_shape}, mean {meta.mean}, std {meta.std}",
        f"classes     {meta.num_classes}: {', '.join(meta.class_names)}",
        f"dataset     {meta.dataset or '-'}",
        f"recipe      {json.dumps(meta.recipe, sort_keys=True) if meta.recipe else '-'}",
        f"metrics     {json.dumps(meta.metrics, sort_keys=True) if meta.metrics else '-'}",
    ])


@main.command("import")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--arch", required=True, help="architecture the weights belong to (see `robgen info` / ARCHS)")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="robgen checkpoint to write")
@click.option("--data", default="cifar10", help="dataset the model was trained on (classes, input shape)")
@click.option("--mean", default=None, help="per-channel mean the model expects, e.g. 0.49,0.48,0.45 (default: none)")
@click.option("--std", default=None, help="per-channel std the model expects (default: none)")
@click.option("--fp16", is_flag=True, help="store weights in float16 (half the size)")
@click.option("--overwrite", is_flag=True, help="replace an existing --out file")
def import_cmd(src, arch, out, data, mean, std, fp16, overwrite):
    """Convert a foreign PyTorch file (state_dict, RobustBench, JEM-style) into a robgen checkpoint.

    Reads with torch.load(weights_only=True): files that need arbitrary code are refused.
    RobustBench models take raw [0, 1] inputs, hence no normalisation unless --mean/--std say otherwise.
    """
    import torch

    from .data import dataset_spec
    from .models import ModelMeta
    from .models.checkpoint import import_checkpoint, save_classifier
    from pathlib import Path

    if Path(out).exists() and not overwrite:
        raise RobgenError(f"{out} exists; pass --overwrite to replace it")
    spec = dataset_spec(data)
    channels = spec.input_shape[0]
    meta = ModelMeta(
        arch=arch, num_classes=spec.num_classes, input_shape=spec.input_shape,
        mean=floats(mean) if mean else (0.0,) * channels, std=floats(std) if std else (1.0,) * channels,
        class_names=spec.class_names or [], dataset=spec.name, recipe={"imported_from": Path(src).name},
    )
    model = import_checkpoint(src, meta)
    save_classifier(model, out, dtype=torch.float16 if fp16 else None)
    click.echo(f"imported {src} as {arch} ({meta.num_classes} classes) -> {out}")


@main.command("eval")
@ckpt_option
@click.option("--data", default=None, help="dataset name or folder:PATH (default: the checkpoint's dataset)")
@data_root_option
@download_option
@click.option("--attack", default=EVAL_DEFAULTS["attack"], help="none, fgsm, pgd20, pgd-l2, pgd-targeted, trades, apgd-ce, ...")
@click.option("--eps", type=FLOAT, default=None, help="override the attack's radius, e.g. 8/255")
@click.option("--step-size", type=FLOAT, default=None, help="override the attack's step size, e.g. 2/255")
@click.option("--steps", type=int, default=None, help="override the attack's number of steps")
@click.option("--n", default=EVAL_DEFAULTS["n"], type=int, help="number of test images (a seeded random subset)")
@click.option("--batch-size", default=EVAL_DEFAULTS["batch_size"], type=int)
@device_option
@seed_option
@json_option
def eval_cmd(ckpt, data, data_root, download, attack, eps, step_size, steps, n, batch_size, device, seed, as_json):
    """Clean and robust accuracy, with mean E(x) and E(x,y) on clean and adversarial inputs."""
    from .attacks import ATTACKS
    from .data import load_split
    from .evaluate import evaluate
    from .models.checkpoint import load_classifier

    model = load_classifier(ckpt)
    data = data or model.meta.dataset
    if not data:
        raise RobgenError("the checkpoint does not name its dataset; pass --data")
    spec = ATTACKS.get(attack).replace(eps=eps, step_size=step_size, steps=steps)
    dataset, dspec = load_split(data, "test", root=data_root, download=download, n=n, seed=seed)
    check_compatible(model.meta, dspec)
    r = evaluate(model, dataset, spec, batch_size=batch_size, seed=seed, device=device)
    r["attack"]["name"], r["data"], r["ckpt"] = attack, data, ckpt or "default"
    emit(r, as_json, [
        f"{r['ckpt']} on {data} test, {r['n']} images, attack {attack} "
        f"(eps {spec.eps:.4f}, step {spec.step_size:.4f}, {spec.steps} steps), seed {seed}",
        f"clean accuracy   {r['clean_acc']:.2f}%",
        f"robust accuracy  {r['robust_acc']:.2f}%",
        f"mean E(x)        clean {r['E_clean']:.3f}   adversarial {r['E_adv']:.3f}   dE(x) {r['dE']:+.3f}",
        f"mean E(x,y)      clean {r['Ey_clean']:.3f}   adversarial {r['Ey_adv']:.3f}   dE(x,y) {r['dEy']:+.3f}",
        f"time {r['seconds']} s",
    ])


@main.command("train")
@click.option("--data", default=None, help="dataset name or folder:PATH [recipe: cifar10]")
@click.option("--arch", default=None, help="architecture, e.g. resnet18, preact-resnet18, cnn-small [recipe]")
@click.option("--loss", default=None, help="sat, trades, weat-adv, weat-nat, mart [weat-adv]")
@click.option("--recipe", default=None, help="paper (PAPER.md section 3) or cpu (cnn-small, 3 attack steps, 10k images) [paper]")
@click.option("--epochs", type=int, default=None, help="[recipe]")
@click.option("--batch-size", type=int, default=None, help="global batch size, split over DDP ranks [recipe]")
@click.option("--lr", type=FLOAT, default=None, help="peak learning rate [recipe]")
@click.option("--schedule", default=None, help="onecycle, cosine or step, stepped per batch [recipe]")
@click.option("--eps", type=FLOAT, default=None, help="Linf radius of training and test attacks, e.g. 8/255 [recipe]")
@click.option("--step-size", type=FLOAT, default=None, help="training attack step, e.g. 2/255 [recipe]")
@click.option("--attack-steps", type=int, default=None, help="training attack steps [recipe]")
@click.option("--beta", type=FLOAT, default=None, help="weight of the KL term [recipe]")
@click.option("--max-train", type=int, default=None, help="train on a seeded random subset of N images [recipe]")
@click.option("--max-test", type=int, default=None, help="size of the fixed test subset for clean/PGD-20 accuracy [recipe]")
@click.option("--amp", type=click.Choice(["bf16", "fp16", "off"]), default=None, help="CUDA autocast [bf16]")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (CUDA only)")
@click.option("--seed", type=int, default=None, help="random seed: the same seed gives the same run [recipe]")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run folder")
@click.option("--resume", is_flag=True, help="continue the run in --out (options left out keep the run's values)")
@click.option("--overwrite", is_flag=True, help="replace a run already in --out")
@click.option("--stop-after", type=int, default=None, help="end this call after N epochs (continue with --resume)")
@click.option("--workers", type=int, default=EVAL_DEFAULTS["workers"], help="data loader processes")
@device_option
@json_option
def train_cmd(data, arch, loss, recipe, epochs, batch_size, lr, schedule, eps, step_size, attack_steps, beta,
              max_train, max_test, amp, compile_, seed, out, resume, overwrite, stop_after, workers, device, as_json):
    """Adversarial training with per-epoch energy telemetry (metrics.jsonl) and checkpoints in --out.

    Under torchrun the same command trains with DistributedDataParallel (NCCL on GPU, gloo on CPU).
    """
    from .train import make_config, read_config, train

    base = read_config(out) if resume else None
    config = make_config(
        recipe, base, data=data, arch=arch, loss=loss, epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule,
        eps=eps, step_size=step_size, attack_steps=attack_steps, beta=beta, max_train=max_train, max_test=max_test,
        amp=amp, seed=seed,
    )
    r = train(
        config, out, resume=resume, overwrite=overwrite, device=device, workers=workers, compile=compile_,
        stop_after=stop_after, progress=not as_json, log=lambda line: click.echo(line, err=as_json),
    )
    if r["rank"] != 0:  # under torchrun only rank 0 reports
        return
    last, best = r["last"], r["best"]
    emit(r, as_json, [
        f"trained {config['loss']} to epoch {r['epochs_done']}/{r['epochs']} in {out}: "
        f"clean {last['test_clean_acc']:.2f}%, PGD-{config['test_attack_steps']} "
        f"{last['test_robust_acc']:.2f}%; best epoch {best['epoch']} "
        f"({best['test_robust_acc']:.2f}%)",
        f"wrote {r['checkpoints']['last']}, {r['checkpoints']['best']}, {out}/metrics.jsonl, {out}/state.pt",
    ])


if __name__ == "__main__":
    sys.exit(main())
