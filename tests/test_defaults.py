"""One source of defaults per operation: every CLI default equals its API config's, and the API functions read
the same config."""
import inspect

import pytest
from click.testing import CliRunner

import robgen.train
from robgen import analysis, evaluate, grid
from robgen.cli import main
from robgen.config import defaults
from robgen.errors import RobgenError
from robgen.metrics import ScoreConfig
from robgen.sample import generate
from robgen.train import RECIPES, TrainCall, TrainConfig, make_config

# command -> (its config, the config's fields it leaves to the API's default)
COMMANDS = {
    "eval": (evaluate.EvalConfig, {"workers"}),
    "energy": (analysis.EnergyConfig, {"workers"}),
    "survey": (analysis.SurveyConfig, {"workers"}),
    "weights": (analysis.WeightsConfig, {"workers"}),
    "phases": (analysis.PhaseConfig, {"min_spread", "persist"}),
    "sample": (generate.SampleConfig, {"data_noise"}),
    "fit-start": (generate.SampleConfig, set(generate.SampleConfig.__dataclass_fields__) - {"init", "retained",
                                                                                            "fit_images"}),
    "grid": (grid.GridConfig, set()),
    "score": (ScoreConfig, {"kid_subsets", "kid_subset_size", "prc_neighborhood", "isc_splits"}),
    "stats": (ScoreConfig, {"fid", "kid", "prc", "isc", "per_class", "n", "seed", "kid_subsets", "kid_subset_size",
                            "prc_neighborhood", "isc_splits"}),
    "train": (TrainCall, set()),
}


def cli_defaults(command: str) -> dict:
    return {p.name: p.default for p in main.commands[command].params}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_cli_default_is_the_config_default(command):
    config, api_only = COMMANDS[command]
    want, cli = defaults(config), cli_defaults(command)
    if command == "energy":  # a comma list on the command line
        cli["attacks"] = tuple(cli["attacks"].split(","))
    assert set(want) - set(cli) == api_only
    assert {k: cli[k] for k in want if k in cli} == {k: v for k, v in want.items() if k not in api_only}


def test_train_options_left_unset_take_the_recipe(monkeypatch, tmp_path):
    built = []
    monkeypatch.setattr(robgen.train, "train", lambda config, out, **kw: built.append((config, kw)) or {"rank": 1})
    fields = set(defaults(TrainConfig)) & set(cli_defaults("train"))
    assert {"arch", "epochs", "lr", "seed", "loss", "amp"} <= fields
    assert all(cli_defaults("train")[k] is None for k in fields)
    for recipe in RECIPES:
        result = CliRunner().invoke(main, ["train", "--recipe", recipe, "--out", str(tmp_path / recipe)])
        assert result.exit_code == 0, result.output
        config, kw = built[-1]
        assert config == make_config(recipe)
        assert (kw["workers"], kw["device"]) == (TrainCall.workers, TrainCall.device)
    help_text = CliRunner().invoke(main, ["train", "--help"], terminal_width=200).output
    assert "[paper: 100, cpu: 10, fast: 10]" in help_text  # epochs, read from the recipes


def test_api_functions_read_their_configs():
    def params(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    ev, en = evaluate.EvalConfig(), analysis.EnergyConfig()
    collect = params(evaluate.collect_energies)
    assert (collect["attack"], collect["batch_size"], collect["seed"], collect["workers"]) == (
        ev.attack, ev.batch_size, ev.seed, ev.workers)
    energies = params(analysis.attack_energies)
    assert (energies["attacks"], energies["batch_size"], energies["seed"]) == (en.attacks, en.batch_size, en.seed)
    assert params(analysis.survey)["attack"] == analysis.SurveyConfig.attack
    g = params(grid.grid)
    assert (g["nrow"], g["labels"], g["pad"]) == (grid.GRID.nrow, grid.GRID.labels, grid.GRID.pad)
    t = params(robgen.train.train)
    assert (t["workers"], t["device"]) == (TrainCall.workers, TrainCall.device)


def test_sample_takes_config_fields_and_names_an_unknown_one():
    config = generate.sample_config(None, {"n": 3, "steps": 7})
    assert (config.n, config.steps, config.sampler) == (3, 7, generate.SampleConfig.sampler)
    assert generate.sample_config(config, {"seed": 5}) == generate.SampleConfig(n=3, steps=7, seed=5)
    with pytest.raises(RobgenError, match=r"^unknown sample option 'stepz'; known: n, init, sampler"):
        generate.sample(None, stepz=3)
    assert inspect.signature(generate.sample).parameters["options"].kind is inspect.Parameter.VAR_KEYWORD
