"""Grid figures: one row per class with class names, from a sample folder, its npz, or class folders."""
from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from robgen.cli import main
from robgen.errors import RobgenError
from robgen.grid import grid
from robgen.sample import sample


@pytest.fixture
def samples(ckpt, tmp_path):
    sample(ckpt, out=tmp_path / "s", n=3, steps=2, progress=False)
    return tmp_path / "s"


def test_grid_has_one_row_per_class_and_the_class_names(samples, tmp_path):
    r = grid(samples, tmp_path / "fig.png", nrow=2, pad=1)
    assert r["shape"] == [3 * 33 + 1, 2 * 33 + 1, 3] and r["labels"] == ["class0", "class1", "class2"]
    assert Image.open(tmp_path / "fig.png").size[0] > 0 and (tmp_path / "fig.pdf").read_bytes()[:4] == b"%PDF"
    picked = grid(samples / "samples.npz", tmp_path / "two.png", classes=[2, 0], labels=False)
    assert picked["rows"] == 2 and picked["labels"] == [] and picked["shape"][1] == 3 * 34 + 2


def test_grid_reads_class_folders_without_npz(samples, tmp_path):
    (samples / "samples.npz").unlink()
    r = CliRunner().invoke(main, ["grid", str(samples), "--out", str(tmp_path / "f.png"), "--json"])
    assert r.exit_code == 0, r.output
    assert '"class1"' in r.output and (tmp_path / "f.pdf").is_file()


def test_grid_bad_input(samples, tmp_path):
    with pytest.raises(RobgenError, match="class 7 is not in"):
        grid(samples, tmp_path / "f.png", classes=[7])
    shutil.rmtree(samples / "images")
    (samples / "samples.npz").unlink()
    r = CliRunner().invoke(main, ["grid", str(samples), "--out", str(tmp_path / "f.png")])
    assert r.exit_code == 1 and "no samples.npz and no class folders" in r.output


def test_classes_are_labels_with_or_without_the_npz(ckpt, tmp_path):
    """`--classes 2` is label 2 whether the grid reads samples.npz or only images/ of a run that sampled 0 and 2."""
    sample(ckpt, classes=[0, 2], out=tmp_path / "s", n=2, steps=2, progress=False)
    from_npz = grid(tmp_path / "s", tmp_path / "a.png", classes=[2])
    (tmp_path / "s" / "samples.npz").unlink()
    from_folders = grid(tmp_path / "s", tmp_path / "b.png", classes=[2])
    assert from_npz["labels"] == from_folders["labels"] == ["class2"]
    assert Image.open(tmp_path / "a.png").tobytes() == Image.open(tmp_path / "b.png").tobytes()
    with pytest.raises(RobgenError, match=r"class 1 is not in .*it holds classes \[0, 2\]"):
        grid(tmp_path / "s", tmp_path / "c.png", classes=[1])


def test_figures_leave_the_callers_matplotlib_backend_alone(ckpt, tmp_path, monkeypatch):
    """A notebook user keeps their backend: grid() and sample(track=True) draw without matplotlib.use or pyplot."""
    import matplotlib

    switched = []
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: switched.append(a))
    backend = matplotlib.rcParams["backend"]
    sample(ckpt, out=tmp_path / "s", n=2, steps=2, track=True, progress=False)
    grid(tmp_path / "s", tmp_path / "g.png")
    assert switched == [] and matplotlib.rcParams["backend"] == backend
    assert (tmp_path / "s" / "energy_track.png").stat().st_size > 0 and (tmp_path / "g.pdf").is_file()
