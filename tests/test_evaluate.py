"""robgen.evaluate's entry point and its kept-batch folder: `evaluate_checkpoint` hands every option to the step
that reads it, and the folder's key and batch files keep their format (AutoAttack runs span sessions on it)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from conftest import Recorder, make_ckpt, write_image_folder
from robgen import RobgenError, data as data_module, load_classifier
from robgen import evaluate as evaluate_module
from robgen.attacks import ATTACKS, AttackSpec
from robgen.evaluate import KeptBatches, collect_energies, evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_evaluate_checkpoint_hands_every_option_on(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "d", per_class=3, size=8)
    ckpt = make_ckpt(tmp_path / "m.safetensors", f"folder:{tmp_path / 'elsewhere'}", shape=(3, 8, 8))
    loading, evaluating = Recorder(data_module.load_split), Recorder(evaluate_module.evaluate)
    monkeypatch.setattr(data_module, "load_split", loading)
    monkeypatch.setattr(evaluate_module, "evaluate", evaluating)
    kept = tmp_path / "runs" / "batches"  # two levels that do not exist yet
    r = evaluate_checkpoint(ckpt, f"folder:{root}", norm="l2", eps=0.3, step_size=0.1, steps=2, device="cpu",
                            data_root=tmp_path / "root", batches_dir=kept, attack="pgd", n=6, batch_size=4, seed=1,
                            workers=0, channels_last=True)
    assert loading.calls == [((f"folder:{root}", "test"), dict(root=tmp_path / "root", download=False, n=6, seed=1))]
    spec = AttackSpec("pgd", eps=0.3, step_size=0.1, steps=2, norm="l2")
    (_, _, given), options = evaluating.calls[0]
    assert given == spec and options == dict(batch_size=4, seed=1, device="cpu", workers=0, batches_dir=kept,
                                             channels_last=True)
    assert r["spec"] == dataclasses.asdict(spec) and r["attack"]["name"] == "pgd" and r["n"] == 6
    assert r["channels_last"] is True and "channels_last" not in evaluate_checkpoint(ckpt, f"folder:{root}", n=2,
                                                                                      workers=0)
    assert (r["data"], r["ckpt"], r["seed"]) == (f"folder:{root}", ckpt, 1)
    assert sorted(p.name for p in kept.iterdir()) == ["batch_00000.pt", "batch_00001.pt", "key.json"]
    with pytest.raises(RobgenError, match="^unknown eval option 'bogus'; known: "):
        evaluate_checkpoint(ckpt, f"folder:{root}", bogus=1)


def test_the_kept_batch_key_of_the_autoattack_run_in_flight_is_unchanged(tmp_path, monkeypatch):
    """experiments/c10-fast/aa/weat_c10_reference/ keeps batches across sessions: the key this code writes for the
    same evaluation must be that file, byte for byte, or the run would refuse its own folder."""
    committed = ROOT / "experiments/c10-fast/aa/weat_c10_reference/key.json"
    engine = {k: v for k, v in json.loads(committed.read_text())["attack"].items()
              if k in ("engine", "note", "version")}
    monkeypatch.setattr(evaluate_module, "attack_engine", lambda spec: engine)  # whichever engine is installed here
    spec = ATTACKS.get("autoattack").in_norm("l2")
    KeptBatches(tmp_path / "a" / "b", load_classifier("weat_c10"), spec, batch_size=100, seed=0, n=1000)
    assert (tmp_path / "a" / "b" / "key.json").read_bytes() == committed.read_bytes()


def test_a_kept_batch_is_never_unpickled(tmp_path):
    model = load_classifier(make_ckpt(tmp_path / "m.safetensors", "x", shape=(3, 8, 8)))
    kept = KeptBatches(tmp_path / "k", model, ATTACKS.get("pgd10"), batch_size=2, seed=0, n=2)
    torch.save({"rows": Path("not a tensor")}, tmp_path / "k" / "batch_00000.pt")  # a pickled object
    with pytest.raises(RobgenError, match=r"batch_00000.pt is not a batch file robgen wrote \(UnpicklingError\); "
                                          "choose another --batches-dir$"):
        kept.load(0, torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), torch.Generator())


def test_collect_energies_keys_its_kept_batches_by_what_it_was_given_and_checks_its_numbers(tmp_path):
    model = load_classifier(make_ckpt(tmp_path / "m.safetensors", "x", shape=(3, 8, 8)))
    data = TensorDataset(torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1]))
    collect_energies(model, data, "pgd10", batch_size=2, seed=3, workers=0, progress=False, batches_dir=tmp_path / "k")
    key = json.loads((tmp_path / "k" / "key.json").read_text())
    assert (key["batch_size"], key["seed"], key["n"]) == (2, 3, 5)
    for bad, message in [(dict(batch_size=0), "--batch-size must be a whole number, positive; got 0"),
                         (dict(workers=-1), "--workers must be a whole number, at least 0; got -1"),
                         (dict(seed=-1), r"--seed must be a whole number in \[0, 2\*\*63\), got -1")]:
        with pytest.raises(RobgenError, match=f"^{message}$"):
            collect_energies(model, data, "pgd10", progress=False, **{"workers": 0, **bad})


def test_the_channels_last_layout_moves_results_by_rounding_only_and_keys_its_batches_apart(tmp_path):
    model = load_classifier(make_ckpt(tmp_path / "m.safetensors", "x", shape=(3, 8, 8)))
    data = TensorDataset(torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2] * 2))
    run = dict(batch_size=3, workers=0, progress=False)
    contiguous = collect_energies(model, data, "pgd10", batches_dir=tmp_path / "c", **run)
    channels_last = collect_energies(model, data, "pgd10", batches_dir=tmp_path / "l", channels_last=True, **run)
    assert next(model.parameters()).dim() == 4 and next(model.parameters()).is_contiguous(
        memory_format=torch.channels_last)  # the layout was in effect
    assert torch.equal(contiguous["pred_adv"], channels_last["pred_adv"])
    torch.testing.assert_close(contiguous["E_adv"], channels_last["E_adv"], rtol=1e-4, atol=1e-4)
    assert "channels_last" not in json.loads((tmp_path / "c" / "key.json").read_text())
    assert json.loads((tmp_path / "l" / "key.json").read_text())["channels_last"] is True
    with pytest.raises(RobgenError, match="keeps the batches of another evaluation"):  # rounding differs: no reuse
        collect_energies(model, data, "pgd10", batches_dir=tmp_path / "c", channels_last=True, **run)
