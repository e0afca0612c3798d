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


if __name__ == "__main__":
    sys.exit(main())
