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



from .grid import DEFAULTS as GRID  # noqa: E402  (option defaults are read when the commands are defined)
from .sample.generate import DEFAULTS as SAMPLE  # noqa: E402


@main.command("sample")
@ckpt_option
@click.option("--class", "class_", multiple=True, help="class index or name (repeatable); default: all classes")
@click.option("--classes", default=None, help="'all' or a comma list of classes, e.g. 3,5 or cat,dog")
@click.option("-n", "n", default=SAMPLE["n"], type=int, help="images per class")
@click.option("--init", default=SAMPLE["init"], help="start: pca, gaussian, mix, data, uniform")
@click.option("--sampler", default=SAMPLE["sampler"], help="sgld, pgd or heun")
@click.option("--energy", default=SAMPLE["energy"], help="energy descended: joint E(x,y), ce, or marginal E(x)")
@click.option("--steps", default=SAMPLE["steps"], type=int)
@click.option("--step-size", type=FLOAT, default=None, help="eta; default: the sampler's (sgld/heun 0.8, pgd 0.5)")
@click.option("--momentum", type=FLOAT, default=SAMPLE["momentum"], help="zeta (sgld/heun)")
@click.option("--noise", type=FLOAT, default=SAMPLE["noise"], help="sigma of the SGLD noise")
@click.option("--alpha", type=FLOAT, default=None, help="noise scale; default sqrt(2 eta)")
@click.option("--norm", default=SAMPLE["norm"], help="pgd step norm: l2 or linf")
@click.option("--eps", type=FLOAT, default=None, help="pgd: radius of the ball around the start (default: none)")
@click.option("--retained", type=FLOAT, default=SAMPLE["retained"], help="pca: share of class variance kept")
@click.option("--sigma-pca", type=FLOAT, default=SAMPLE["sigma_pca"], help="pca: std of the coefficients a_i")
@click.option("--early-stop", is_flag=True, help="freeze a sample once E(x,y) reaches its class's mean training energy")
@click.option("--batch-size", default=SAMPLE["batch_size"], type=int, help="images per chunk (fixes memory)")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast for the model")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="output folder (default samples/<ckpt>)")
@click.option("--overwrite", is_flag=True, help="replace a different run already in --out")
@click.option("--track", is_flag=True, help="record mean E(x,y) per step and class; plot energy_track.png")
@click.option("--start-stats", default=None, type=click.Path(dir_okay=False), help="start fit from `robgen fit-start`")
@click.option("--data", default=None, help="training data to fit the start on (default: the checkpoint's dataset)")
@click.option("--fit-images", default=SAMPLE["fit_images"], type=int, help="images per class used to fit the start")
@data_root_option
@download_option
@device_option
@seed_option
@json_option
def sample_cmd(ckpt, class_, classes, n, init, sampler, energy, steps, step_size, momentum, noise, alpha, norm, eps,
               retained, sigma_pca, early_stop, batch_size, bf16, out, overwrite, track, start_stats, data, fit_images,
               data_root, download, device, seed, as_json):
    """Sample images from a classifier's energy E(x,y): images, samples.npz, grid.png and manifest.json under --out."""
    from .sample import sample

    if class_ and classes:
        raise RobgenError("pass either --class or --classes, not both")
    chosen = list(class_) or (None if classes in (None, "all") else [c.strip() for c in classes.split(",")])
    r = sample(
        ckpt, chosen, out=out, n=n, init=init, sampler=sampler, energy=energy, steps=steps, step_size=step_size,
        momentum=momentum, noise=noise, alpha=alpha, norm=norm, eps=eps, retained=retained, sigma_pca=sigma_pca,
        early_stop=early_stop, batch_size=batch_size, seed=seed, bf16=bf16, start_stats=start_stats, data=data,
        fit_images=fit_images, data_root=data_root, download=download, device=device, overwrite=overwrite,
        track=track, progress=not as_json,
    )
    if r["rank"] != 0:
        return
    s = r["settings"]
    emit(r, as_json, [
        f"sampled {r['n_images']} images ({n} per class, {len(r['classes'])} classes) with {s['sampler']} on "
        f"{s['energy']} energy, {s['steps']} steps of {s['step_size']}, start {s['init']} ({r['start_source']}), "
        f"seed {seed}, {r['world_size']} process(es)",
        f"chunks: {r['chunks_computed']} computed, {r['chunks_reused']} reused of {r['chunks']}; {r['seconds']} s",
        *[f"  {c['index']:>3} {c['name']:<16} mean E(x,y) {c['energy_mean']:.3f}" for c in r["classes"]],
        *[f"wrote {kind:<12} {path}" for kind, path in r["files"].items()],
    ])


@main.command("fit-start")
@ckpt_option
@click.option("--data", default=None, help="training data (default: the checkpoint's dataset)")
@click.option("--init", default="pca", help="what the file must serve: pca (truncated, small), gaussian/mix (full), "
              "data (full + images)")
@click.option("--retained", type=FLOAT, default=SAMPLE["retained"], help="pca: share of class variance kept")
@click.option("--fit-images", default=SAMPLE["fit_images"], type=int, help="images per class")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="file to write; ship it beside the checkpoint as <ckpt stem>.starts.safetensors")
@click.option("--overwrite", is_flag=True, help="replace an existing --out file")
@data_root_option
@download_option
@device_option
@json_option
def fit_start_cmd(ckpt, data, init, retained, fit_images, out, overwrite, data_root, download, device, as_json):
    """Fit class-wise start statistics (mean, PCA, mean training energy) and export them for shipping."""
    from pathlib import Path

    from .models.checkpoint import checkpoint_id, load_classifier
    from .sample.starts import STARTS, fit_starts, save_fit

    if Path(out).exists() and not overwrite:
        raise RobgenError(f"{out} exists; pass --overwrite to replace it")
    STARTS.get(init)
    model = load_classifier(ckpt, device if device != "auto" else "cpu")
    data = data or model.meta.dataset
    if not data:
        raise RobgenError("the checkpoint does not name its dataset; pass --data")
    fit = fit_starts(data, model=model, checkpoint_sha256=checkpoint_id(ckpt)["sha256"], per_class=fit_images,
                     root=data_root, download=download, progress=not as_json)
    if init == "pca":
        fit = fit.truncated(retained)
    elif init != "data":
        fit.images = []
    save_fit(fit, out)
    sizes = [len(s) for s in fit.std]
    r = {"out": str(out), "init": init, "data": data, "classes": fit.num_classes, "components": sizes,
         "bytes": Path(out).stat().st_size}
    emit(r, as_json, [
        f"fitted {init} starts on {data} ({fit_images} images per class, {fit.num_classes} classes), "
        f"{min(sizes)}-{max(sizes)} components per class -> {out} ({r['bytes'] / 2**20:.1f} MiB)",
    ])


@main.command("grid")
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="figure path; PNG and PDF written")
@click.option("--nrow", default=GRID["nrow"], type=int, help="images per class")
@click.option("--classes", default=None, help="comma list of class indices (default: all)")
@click.option("--labels/--no-labels", default=GRID["labels"], help="class names as row labels")
@click.option("--pad", default=GRID["pad"], type=int, help="pixels between images")
@json_option
def grid_cmd(source, out, nrow, classes, labels, pad, as_json):
    """A paper figure from samples: one row per class, class names as row labels."""
    from .grid import grid

    try:
        chosen = None if classes in (None, "all") else [int(c) for c in classes.split(",")]
    except ValueError:
        raise RobgenError(f"--classes takes class indices like 0,3,5, got {classes!r}") from None
    r = grid(source, out, nrow=nrow, classes=chosen, labels=labels, pad=pad)
    emit(r, as_json, [f"grid of {r['rows']} classes x up to {nrow} images -> {r['files']['png']}, {r['files']['pdf']}"])

if __name__ == "__main__":
    sys.exit(main())
