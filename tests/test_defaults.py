"""`robgen sample` and sample() share one set of defaults: SampleConfig's."""
import inspect
from dataclasses import fields

from robgen.cli import main
from robgen.sample import generate


def test_every_sample_cli_default_is_the_api_default():
    config = {f.name: f.default for f in fields(generate.SampleConfig)}
    api = inspect.signature(generate.sample).parameters
    assert {k: api[k].default for k in config} == config
    cli = {p.name: (False if p.is_flag else p.default) for p in main.commands["sample"].params if p.name in config}
    assert set(config) - set(cli) == {"data_noise"}  # an API-only option
    assert cli == {k: v for k, v in config.items() if k in cli}
