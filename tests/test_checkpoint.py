import pickle

import pytest
import torch

from robgen import RobgenError
from robgen.models import ModelMeta, build_classifier
from robgen.models.checkpoint import import_checkpoint, load_classifier, read_meta, save_classifier


def trained_model():
    """A classifier whose BN statistics moved away from their initial values."""
    torch.manual_seed(0)
    meta = ModelMeta("cnn-tiny", 3, class_names=["a", "b", "c"], dataset="cifar10", recipe={"loss": "weat-adv"},
                     metrics={"clean_acc": 12.5})
    model = build_classifier(meta).train()
    model(torch.rand(8, 3, 32, 32))
    return model.eval()


def test_round_trip_is_bit_exact(tmp_path):
    model = trained_model()
    path = save_classifier(model, tmp_path / "m.safetensors")
    loaded = load_classifier(path)
    for (k, a), (_, b) in zip(model.net.state_dict().items(), loaded.net.state_dict().items()):
        assert torch.equal(a, b), k
    assert loaded.meta == model.meta
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_fp16_storage_loads_as_float32_close_to_original(tmp_path):
    model = trained_model()
    loaded = load_classifier(save_classifier(model, tmp_path / "h.safetensors", dtype=torch.float16))
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(model(x), loaded(x), atol=1e-2)
    assert read_meta(tmp_path / "h.safetensors").recipe == {"loss": "weat-adv"}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DataParallel
        lambda sd: {"state_dict": sd},  # RobustBench
        lambda sd: {"model_state_dict": {f"module.{k}": v for k, v in sd.items()}, "replay_buffer": torch.rand(2, 3)},
        lambda sd: sd,
    ],
    ids=["module-prefix", "robustbench", "jem", "plain"],
)
def test_import_foreign_state_dicts(tmp_path, wrap):
    model = trained_model()
    torch.save(wrap(model.net.state_dict()), tmp_path / "foreign.pt")
    imported = import_checkpoint(tmp_path / "foreign.pt", model.meta)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(imported(x), model(x))


def test_key_mismatch_names_the_first_differing_key(tmp_path):
    state = trained_model().net.state_dict()
    state.pop("linear.weight")
    state["head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(RobgenError, match="first missing key 'linear.weight'.*first unexpected key 'head.weight'"):
        import_checkpoint(tmp_path / "bad.pt", trained_model().meta)


def test_shape_mismatch_names_the_key(tmp_path):
    torch.save(trained_model().net.state_dict(), tmp_path / "m.pt")
    with pytest.raises(RobgenError, match="'linear.weight' has shape"):
        import_checkpoint(tmp_path / "m.pt", ModelMeta("cnn-tiny", 5))


def test_legacy_tar_checkpoint_is_refused_as_needing_unpickling(tmp_path):
    import io
    import tarfile

    legacy = tmp_path / "natural.pt.tar"
    with tarfile.open(legacy, "w") as archive:  # torch's pre-1.6 layout: a tar of pickles
        info = tarfile.TarInfo("sys_info")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"\x80\x02}q"))
    meta = ModelMeta("cnn-tiny", 3)
    with pytest.raises(RobgenError, match="legacy .tar format, which weights_only loading refuses"):
        import_checkpoint(legacy, meta)


def test_html_page_saved_as_checkpoint(tmp_path):
    page = tmp_path / "model.pt"
    page.write_text("<!DOCTYPE html><html><body>Not Found</body></html>")
    with pytest.raises(RobgenError, match="not a PyTorch checkpoint.*HTML"):
        import_checkpoint(page, trained_model().meta)
    with pytest.raises(RobgenError, match="not a readable robgen checkpoint.*robgen import"):
        load_classifier(page)


def test_truncated_files(tmp_path):
    model = trained_model()
    torch.save(model.net.state_dict(), tmp_path / "m.pt")
    save_classifier(model, tmp_path / "m.safetensors")
    for name in ("m.pt", "m.safetensors"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
    with pytest.raises(RobgenError, match="not a readable PyTorch checkpoint"):
        import_checkpoint(tmp_path / "cut_m.pt", model.meta)
    with pytest.raises(RobgenError, match="not a readable robgen checkpoint"):
        load_classifier(tmp_path / "cut_m.safetensors")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_needing_arbitrary_code_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"weights": Payload()}, f, protocol=2)
    with pytest.raises(RobgenError, match=r"needs arbitrary code to unpickle \(.*print\)"):
        import_checkpoint(tmp_path / "evil.pt", trained_model().meta)
    assert "must never run" not in capsys.readouterr().out


def test_missing_checkpoint_lists_shipped_ones():
    with pytest.raises(RobgenError, match="no checkpoint 'nope': not a file, nor a shipped checkpoint"):
        load_classifier("nope")
