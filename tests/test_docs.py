"""The documentation's numbers equal the committed outputs they cite (docs/CLAIMS.md lists every claim and its
backing): the training tables against metrics.jsonl, the survey table against its JSON, the model card against the
shipped files, the README's presets against the registries. A doc edited without its output, or an output replaced
without its doc, fails here."""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = (ROOT / "docs" / "RESULTS.md").read_text()
README = (ROOT / "README.md").read_text()
CARD = (ROOT / "checkpoints" / "weat_c10_small.md").read_text()
CPU_RUNS = {"SAT": "sat", "TRADES": "trades", "WEAT-adv": "weat-adv", "WEAT-nat": "weat-nat"}


def table(text: str, header: str) -> list[list[str]]:
    """The body rows (cells stripped) of the markdown table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def metrics(run: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / "experiments" / run / "metrics.jsonl").read_text().splitlines()]


def first_number(cell: str) -> float:
    return float(re.search(r"[-+]?\d+(?:\.\d+)?", cell.replace(",", "")).group())


def test_the_cpu_training_table_is_its_runs_metrics():
    rows = table(RESULTS, "| method | best epoch |")
    assert [next(k for k in CPU_RUNS if row[0].startswith(k)) for row in rows] == ["SAT", "TRADES", "WEAT-adv", "WEAT-nat"]
    for row in rows:
        lines = metrics("c10-cpu/" + CPU_RUNS[next(k for k in CPU_RUNS if row[0].startswith(k))])
        best = max(lines, key=lambda m: (m["test_robust_acc"], -m["epoch"]))  # the first epoch of the best accuracy
        minutes = sum(m["epoch_seconds"] + m["eval_seconds"] for m in lines) / 60
        assert int(first_number(row[1])) == best["epoch"], row
        assert row[2] == f"{best['test_clean_acc']:.1f}%" and row[3] == f"{best['test_robust_acc']:.1f}%", row
        assert lines[-1]["epoch"] == 10 and row[4] == f"{lines[-1]['train_dE']:+.3f}", row
        assert row[5].startswith(f"{minutes:.1f} min"), row


def test_the_energy_gap_narrative_holds_in_the_metrics():
    # "SAT's train dE(x) leaves 0 from epoch 2 and keeps falling, while TRADES and both WEAT variants stay near +0.01"
    sat = [m["train_dE"] for m in metrics("c10-cpu/sat")]
    assert all(d < 0 for d in sat[1:]) and all(a > b for a, b in zip(sat[1:], sat[2:]))
    for run in ("trades", "weat-adv", "weat-nat"):
        assert all(0.005 < m["train_dE"] < 0.02 for m in metrics(f"c10-cpu/{run}")), run
    # WEAT-nat's best.safetensors is epoch 8 (28.2%) against 27.0% at epoch 10
    nat = {m["epoch"]: m["test_robust_acc"] for m in metrics("c10-cpu/weat-nat")}
    assert (round(nat[8], 1), round(nat[10], 1)) == (28.2, 27.0)


def test_the_phase_detector_found_no_phase_2_or_3_in_the_cpu_runs():
    report = json.loads((ROOT / "docs" / "figures" / "phases_c10_cpu.json").read_text())
    assert sorted(r["label"] for r in report["runs"]) == sorted(CPU_RUNS.values())
    assert report["settings"]["baseline_epochs"] == 5  # "its phase-2 rule measures the spread of the first 5 epochs"
    for run in report["runs"]:
        assert run["phases"]["phase2_start"] is None and run["phases"]["phase3_start"] is None, run["label"]


def test_the_fast_phases_figure_is_the_linf_runs_metrics():
    report = json.loads((ROOT / "docs" / "figures" / "phases_c10_fast.json").read_text())
    assert [r["run"] for r in report["runs"]] == ["experiments/c10-fast/weat-adv-linf"]
    (run,) = report["runs"]
    lines = metrics("c10-fast/weat-adv-linf")
    assert run["train_dE"] == [m["train_dE"] for m in lines]
    assert run["robust_err"] == pytest.approx([100 - m["val_robust_acc"] for m in lines])
    # "train dE(x) stays between +0.006 and +0.014 ... validation PGD-20 error falls to the last epoch"
    assert (f"{min(run['train_dE']):+.3f}", f"{max(run['train_dE']):+.3f}") == ("+0.006", "+0.014")
    assert min(run["robust_err"]) == run["robust_err"][-1]
    assert run["phases"]["phase2_start"] is None and run["phases"]["phase3_start"] is None


def test_the_fast_recipe_table_is_its_runs_metrics():
    linf, l2 = metrics("c10-fast/weat-adv-linf"), metrics("c10-fast/weat-adv-l2")
    rows = table(RESULTS, "| epoch | Linf 8/255")
    assert rows and [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        a, b = linf[int(row[0]) - 1], l2[int(row[0]) - 1]
        assert row[1] == f"{a['val_clean_acc']:.1f}% / {a['val_robust_acc']:.1f}%", row
        assert row[2] == f"{b['val_clean_acc']:.1f}% / {b['val_robust_acc']:.1f}%", row
        wall = [round((m["epoch_seconds"] + m["eval_seconds"]) / 60) for m in (a, b)]
        assert row[3] == f"{wall[0]} min / {wall[1]} min", row
        assert row[4] == f"{a['train_dE']:+.4f} / {b['train_dE']:+.4f}", row
    for m in linf + l2:  # "on the 49,000 training images outside the 1,000-image validation split", in full batches
        assert (m["val_images"], m["train_images"]) == (1000, 49000 // 128 * 128)


def test_the_survey_table_is_its_json():
    report = json.loads((ROOT / "docs" / "figures" / "survey_c10_cpu.json").read_text())
    models = {m["model"]: m for m in report["models"]}
    names = {"WEAT-nat": "weat-nat/best", "WEAT-adv": "weat_c10_small", "TRADES": "trades/best", "SAT": "sat/best"}
    rows = table(RESULTS, "| model | PGD-20 | mean dE(x)")
    assert len(rows) == 4 and report["n"] == 500 and report["attack"] == "pgd"
    for row in rows:
        m = models[names[row[0].split(" ")[0]]]
        assert row[1] == f"{m['robust_acc']:.1f}%", row
        assert row[2:] == [f"{m['dE']['mean']:.3f}", f"{m['dE']['std']:.3f}", f"{m['dEy']['mean']:.3f}",
                           f"{m['dEy']['std']:.3f}"], row
    # the survey's 500 images are the trainer's test subset: the same PGD-20 accuracy as each run's last epoch
    for label, run in (("sat/best", "sat"), ("trades/best", "trades"), ("weat_c10_small", "weat-adv")):
        assert round(models[label]["robust_acc"], 1) == round(metrics(f"c10-cpu/{run}")[-1]["test_robust_acc"], 1)



def test_the_energy_table_is_its_summaries():
    import subprocess
    import sys

    printed = subprocess.run([sys.executable, str(ROOT / "experiments" / "c10-fast" / "energy_table.py"), "weat_c10",
                              "standard"], capture_output=True, text=True, check=True).stdout.splitlines()
    lines = RESULTS.splitlines()
    start = lines.index(printed[0])
    assert lines[start:start + len(printed)] == printed
    for model in ("weat_c10", "standard"):
        summary = json.loads((ROOT / "experiments" / "c10-fast" / "energy" / model / "energy_summary.json").read_text())
        assert summary["n"] == 200 and summary["data"] == "folder:/tmp/c10" and summary["seed"] == 0
        assert sorted(summary["attacks"]) == ["apgd-ce", "apgd-t", "pgd", "pgd-targeted"]
        assert all(a["spec"]["norm"] == "l2" and a["spec"]["eps"] == 0.5 for a in summary["attacks"].values())
    # the narrative: Standard's untargeted attacks lower E(x) and its targeted ones raise it; the default's attacks
    # leave E(x) or raise it; E(x,y) rises everywhere, for the default by at most 0.54, for Standard by over 5
    words = {m: {k: a["direction"]["E"]["word"] for k, a in json.loads(
        (ROOT / "experiments" / "c10-fast" / "energy" / m / "energy_summary.json").read_text())["attacks"].items()}
        for m in ("weat_c10", "standard")}
    assert words["standard"] == {"pgd": "lowered", "apgd-ce": "lowered", "apgd-t": "raised", "pgd-targeted": "raised"}
    assert set(words["weat_c10"].values()) == {"raised", "no clear change"}
    dEy = {m: [a["dEy"] for a in json.loads((ROOT / "experiments" / "c10-fast" / "energy" / m /
                                             "energy_summary.json").read_text())["attacks"].values()]
           for m in ("weat_c10", "standard")}
    assert -0.545 < min(dEy["weat_c10"]) and max(dEy["weat_c10"]) < 0 and max(dEy["standard"]) < -5


def _header(path: Path) -> dict:
    with path.open("rb") as f:
        return json.loads(f.read(int.from_bytes(f.read(8), "little")))


def test_the_model_card_describes_the_shipped_files():
    ckpt = ROOT / "checkpoints" / "weat_c10_small.safetensors"
    starts = ckpt.with_name("weat_c10_small.starts.safetensors")
    header, fit_header = _header(ckpt), _header(starts)
    meta = json.loads(header.pop("__metadata__")["robgen"])
    info = json.loads(fit_header.pop("__metadata__")["info"])
    assert f"({ckpt.stat().st_size / 1e6:.1f} MB, float16 weights" in CARD
    assert {t["dtype"] for t in header.values()} == {"F16", "I64"}  # float16 weights, int64 BatchNorm counters
    assert f"(`weat_c10_small.starts.safetensors` ({starts.stat().st_size / 2**20:.1f} MiB)".replace("(`", "`", 1) in CARD
    components = [t["shape"][0] for k, t in fit_header.items() if k.startswith("std.")]
    assert f"({min(components)}-{max(components)} components per class)" in CARD
    assert (info["per_class"], info["retained"]) == (1000, 0.95) and "1,000 training images per class" in CARD
    params = sum(math.prod(t["shape"]) for k, t in header.items() if t["dtype"] == "F16" and "running_" not in k)
    assert f"{params:,} parameters" in CARD
    recipe = meta["recipe"]
    assert (recipe["epochs"], recipe["batch_size"], recipe["lr"], recipe["pct_start"], recipe["momentum"],
            recipe["weight_decay"], recipe["attack_steps"], recipe["beta"], recipe["seed"], recipe["max_train"]) == (
        10, 128, 0.1, 0.25, 0.9, 5e-4, 3, 6.0, 0, 10000)
    assert (recipe["step_size"], recipe["eps"]) == (4 / 255, 8 / 255) and (meta["mean"], meta["std"]) == ([0.5] * 3, [0.25] * 3)
    # the Limits section's account of the metadata: no machine path, what ran, the trainer's own metrics
    assert (recipe["data"], recipe["device"], recipe["precision"], recipe["amp"], recipe["max_test"]) == (
        "folder:cifar10", "cpu", "fp32", "bf16", 500)
    assert info["dataset"] == "folder:cifar10" and info["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    m, last = meta["metrics"], metrics("c10-cpu/weat-adv")[-1]
    assert (m["epoch"], m["test_images"], m["test_clean_acc"], m["test_robust_acc"]) == (
        last["epoch"], 500, last["test_clean_acc"], last["test_robust_acc"])
    assert "(48.8% / 29.6%;" in CARD
    minutes = sum(x["epoch_seconds"] + x["eval_seconds"] for x in metrics("c10-cpu/weat-adv")) / 60
    assert f"{round(minutes)} min wall" in CARD
    score = json.loads((ROOT / "experiments" / "c10-fast" / "fid" / "weat_c10_small.json").read_text())
    assert (f"FID {score['fid']:.2f}, KID {score['kid']:.4f}, precision {score['precision']:.3f}, recall "
            f"{score['recall']:.3f}") in " ".join(CARD.split())
    assert f"clean {m['test_clean_acc']:.1f}%, PGD-20" in CARD and f"{m['test_robust_acc']:.1f}%; standard" in CARD


def test_the_default_model_card_describes_the_shipped_files_and_their_outputs():
    card = (ROOT / "checkpoints" / "weat_c10.md").read_text()
    ckpt = ROOT / "checkpoints" / "weat_c10.safetensors"
    starts = ckpt.with_name("weat_c10.starts.safetensors")
    header, fit_header = _header(ckpt), _header(starts)
    meta = json.loads(header.pop("__metadata__")["robgen"])
    info = json.loads(fit_header.pop("__metadata__")["info"])
    assert f"(`weat_c10.safetensors` ({ckpt.stat().st_size / 1e6:.1f} MB, float16 weights".replace("(`", "`", 1) in card
    assert {t["dtype"] for t in header.values()} == {"F16", "I64"}
    assert f"`weat_c10.starts.safetensors` ({starts.stat().st_size / 2**20:.1f} MiB)" in card
    components = [t["shape"][0] for k, t in fit_header.items() if k.startswith("std.")]
    assert f"({min(components)}-{max(components)} components per class)" in card
    assert (info["per_class"], info["retained"], info["dataset"]) == (None, 0.95, "folder:c10")
    params = sum(math.prod(t["shape"]) for k, t in header.items() if t["dtype"] == "F16" and "running_" not in k)
    assert f"{params:,} parameters" in card
    run = ROOT / "experiments" / "c10-fast" / "weat-adv-l2"
    config = json.loads((run / "config.json").read_text())
    recipe = {k: v for k, v in meta["recipe"].items() if k not in ("data", "device", "precision")}
    assert recipe == {k: v for k, v in config.items() if k in recipe}  # the run's recipe, without machine paths
    assert (meta["recipe"]["data"], meta["recipe"]["device"], meta["recipe"]["precision"], meta["dataset"]) == (
        "folder:c10", "cpu", "fp32", "cifar10")
    assert json.dumps(meta["sampling"], sort_keys=True) in card
    lines = metrics("c10-fast/weat-adv-l2")
    assert f"({sum(m['epoch_seconds'] + m['eval_seconds'] for m in lines):,.0f} s," in card
    test = json.loads((run / "eval_test10k.json").read_text())
    assert f"| {test['clean_acc']:.2f}% |" in card and f"| {test['robust_acc']:.2f}% |" in card
    fp16 = json.loads((run / "fp16_val.json").read_text())
    assert fp16["float16"] == fp16["float32"]
    words = " ".join(card.split())
    assert f"clean {fp16['float16']['clean_acc']:.2f}% both, PGD-20-L2 {fp16['float16']['robust_acc']:.2f}% both" in words
    score = json.loads((ROOT / "experiments" / "c10-fast" / "fid" / "weat_c10.json").read_text())
    assert f"FID {score['fid']:.2f}" in card and score["protocol"]["reference_size"] == 50000
    assert score["protocol"]["num_samples"] == 10000


def test_the_accuracy_per_method_table_is_its_runs_evaluations():
    import subprocess
    import sys

    runs = ["weat-adv-linf", "weat-adv-l2", "standard", "trades", "sat", "weat-nat"]
    assert f"accuracy.py {' '.join(runs)}`" in " ".join(RESULTS.split())
    printed = subprocess.run([sys.executable, str(ROOT / "experiments" / "c10-fast" / "accuracy.py"), *runs],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    lines = RESULTS.splitlines()
    start = lines.index(printed[0])
    assert lines[start:start + len(printed)] == printed
    for run in runs:  # every evaluated run: all 10,000 test images, PGD-20 in the run's own norm
        path = ROOT / "experiments" / "c10-fast" / run / "eval_test10k.json"
        if path.is_file():
            result, config = json.loads(path.read_text()), json.loads((path.parent / "config.json").read_text())
            spec = result["attack"]
            assert (result["n"], spec["steps"], spec["norm"], spec["eps"]) == (10000, 20, config["norm"], config["eps"])
    fast = ROOT / "experiments" / "c10-fast"
    reports = {run: fast / run / "aa1k.json" for run in runs} | {"weat-adv-l2": fast / "aa" / "weat_c10_reference.json"}
    for run, path in reports.items():  # the reference AutoAttack on the same seeded 1,000 in the run's threat model
        if not path.is_file():
            continue
        result, config = json.loads(path.read_text()), json.loads((fast / run / "config.json").read_text())
        assert (result["n"], result["seed"], result["attack"]["method"]) == (1000, 0, "autoattack")
        assert (result["attack"]["norm"], result["attack"]["engine"].split()[0]) == (config["norm"], "pyautoattack")
        assert math.isclose(result["attack"]["eps"], config["eps"])


def _fid_table_lines(text: str, header: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


@pytest.mark.parametrize("header, names", [
    ("| samples (10,000) | FID |", ["weat_c10", "test_jpegs", "weat_c10_small"]),
    ("| start (10,000 samples) | FID |", ["weat_c10", "weat_c10_gaussian", "weat_c10_mix"])])
def test_the_fid_tables_are_their_jsons(header, names):
    """Each row is experiments/c10-fast/fid_table.py's line for its score (every cell), under the full protocol."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fid_table", ROOT / "experiments" / "c10-fast" / "fid_table.py")
    fid_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fid_table)
    lines = _fid_table_lines(RESULTS, header)
    assert len(lines) == len(names)
    if header.startswith("| samples"):
        assert _fid_table_lines(README, header) == lines
    for line, name in zip(lines, names):
        label = line.strip("|").split("|")[0].strip()
        assert line == fid_table.row(name, label), name
        score = json.loads((ROOT / "experiments" / "c10-fast" / "fid" / f"{name}.json").read_text())
        assert (score["protocol"]["num_samples"], score["protocol"]["reference_size"]) == (10000, 50000), name
        assert len(score["fid_per_class"]) == 10, name


def test_the_sweep_table_is_its_jsonl(capsys):
    import importlib.util

    path = ROOT / "experiments" / "sweep_sampler.py"
    spec = importlib.util.spec_from_file_location("sweep_sampler", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    jsonl = ROOT / "experiments" / "c10-fast" / "weat-adv-l2" / "sweep" / "sweep.jsonl"
    sweep.table(str(jsonl))
    printed = capsys.readouterr().out.splitlines()
    header = "| sampler | start | sigma_pca | steps | other | FID |"
    assert printed[0].startswith(header)
    lines = RESULTS.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    assert lines[start:start + len(printed)] == printed
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert all(r["protocol"]["reference_size"] == 10000 and r["protocol"]["num_samples"] == 1000 for r in rows)
    best = min(rows, key=lambda r: r["fid"])
    assert best["setting"] == json.loads(_header(ROOT / "checkpoints" / "weat_c10.safetensors")["__metadata__"]["robgen"])["sampling"]


def test_the_readme_attack_presets_are_the_registry():
    from robgen.attacks import ATTACKS

    for steps in (10, 20, 50, 100):
        linf, l2 = ATTACKS.get(f"pgd{steps}"), ATTACKS.get(f"pgd{steps}-l2")
        assert (linf.method, linf.eps, linf.step_size, linf.steps, linf.norm, linf.objective, linf.start) == (
            "pgd", 8 / 255, 2 / 255, steps, "linf", "ce", "uniform")
        assert (l2.eps, l2.step_size, l2.steps, l2.norm, l2.start) == (0.5, 0.125, steps, "l2", "uniform")
    assert ATTACKS.get("pgd-l2") == ATTACKS.get("pgd20-l2")
    assert ATTACKS.get("pgd-targeted").targeted and ATTACKS.get("pgd-targeted-l2").targeted
    assert ATTACKS.get("trades").objective == "kl" and ATTACKS.get("autoattack").steps == 100
    assert "`none`, `fgsm`, `pgd10`/`pgd20`/`pgd50`/`pgd100`" in README


def test_the_readme_sampling_and_recipe_defaults_are_the_code():
    from robgen.sample import DEFAULTS, SAMPLERS
    from robgen.sample.samplers import SamplerConfig
    from robgen.train import LOSSES, make_config

    assert (DEFAULTS["n"], DEFAULTS["init"], DEFAULTS["sampler"], DEFAULTS["steps"], DEFAULTS["momentum"],
            DEFAULTS["noise"], DEFAULTS["retained"], DEFAULTS["sigma_pca"]) == (64, "pca", "sgld", 40, 0.0, 0.001, 0.95, 0.005)
    assert SAMPLERS.get("sgld").default_step_size == SAMPLERS.get("heun").default_step_size == 0.8
    assert SamplerConfig(steps=1, step_size=0.8).noise_std == pytest.approx(math.sqrt(1.6) * 0.001, rel=1e-12)
    paper, fast, cpu = make_config("paper"), make_config("fast"), make_config("cpu")
    assert (paper["arch"], paper["epochs"], paper["batch_size"], paper["lr"], paper["momentum"], paper["weight_decay"],
            paper["pct_start"], paper["attack_steps"], paper["beta"]) == ("resnet18", 100, 128, 0.1, 0.9, 5e-4, 0.25, 10, 6.0)
    assert (fast["arch"], fast["epochs"], fast["attack_steps"], fast["lr"], fast["select_from"], fast["val_n"]) == (
        "airnet", 10, 2, 0.2, 5, 1000)
    assert (cpu["arch"], cpu["epochs"], cpu["max_train"], cpu["attack_steps"], cpu["val_n"]) == ("cnn-small", 10, 10000, 3, 500)
    # "paper 1/4, fast and cpu 1/2: Linf 2/255 / 4/255 / 4/255, L2 0.125 / 0.25 / 0.25"
    assert [make_config(r)["step_size"] for r in ("paper", "fast", "cpu")] == [2 / 255, 4 / 255, 4 / 255]
    assert [make_config(r, norm="l2")["step_size"] for r in ("paper", "fast", "cpu")] == [0.125, 0.25, 0.25]
    assert sorted(LOSSES) == sorted(["standard", "sat", "trades", "weat-adv", "weat-nat", "mart"])


def test_the_readme_registries_and_cli_options_exist():
    import robgen
    from robgen.cli import main

    for path in ("models.ARCHS", "data.DATASETS", "attacks.ATTACKS", "train.LOSSES", "sample.STARTS",
                 "sample.SAMPLERS", "energy.TARGET_ENERGIES"):
        module, name = path.rsplit(".", 1)
        assert f"`robgen.{path}`" in README and hasattr(__import__(f"robgen.{module}", fromlist=[name]), name), path
    assert sorted(robgen.sample.STARTS) == sorted(["pca", "gaussian", "mix", "data", "uniform"])
    options = {name: {o for p in cmd.params for o in p.opts} for name, cmd in main.commands.items()}
    # "every command but `import` prints JSON with --json"; fit-start and stats take no --seed
    assert [name for name, opts in options.items() if "--json" not in opts] == ["import"]
    assert "--seed" not in options["fit-start"] | options["stats"]
    for name in ("train", "eval", "sample", "energy", "survey", "weights", "score"):
        assert {"--seed", "--device"} <= options[name], name


def test_the_model_parameter_counts_in_the_readme():
    from robgen.models import ARCHS

    counts = {name: sum(p.numel() for p in ARCHS.get(name)(num_classes=10).parameters())
              for name in ("airnet", "cnn-small")}
    assert f"{counts['airnet'] / 1e6:.1f}M parameters" in README and f"cnn-small` ({counts['cnn-small'] / 1e6:.2f}M)" in README


def test_the_readmes_benchmark_figures_are_the_committed_outputs():
    """The speeds the README quotes are the ones benchmarks/results/*.txt recorded (a rerun replaces both)."""
    results = ROOT / "benchmarks" / "results"
    arch = {m[0]: m[1:] for m in re.findall(
        r"^  (\S+) +[\d.]+M  train +(\d+) \(([\d.]+)\)  input-grad +(\d+) \(([\d.]+)\)  forward +(\d+) \(([\d.]+)\)$",
        (results / "bench_arch.txt").read_text(), re.M)}
    flat = " ".join(README.split())
    assert (f"printed airnet {arch['airnet'][0]} images/s, cnn-small {arch['cnn-small'][0]} and PreActResNet-18 "
            f"(11.2M) {arch['preact-resnet18'][0]}") in flat
    assert f"airnet {arch['airnet'][1]} / {arch['airnet'][3]} / {arch['airnet'][5]} of cnn-small" in flat
    recipe = dict(re.findall(r"^  (\S+) +\(\d attack steps\):.* ratio ([\d.]+)", (results / "bench_recipe.txt").read_text(), re.M))
    assert (f"standard {recipe['standard']}, sat {recipe['sat']} (2 attack steps; goal 3.3), "
            f"weat-adv {recipe['weat-adv']}") in flat
    layout = (results / "bench_eval_layout.txt").read_text()
    ratio, differ = re.search(r"speed ratio ([\d.]+)\n.*differ: (\d+ of \d+);", layout).groups()
    assert f"speed ratio {ratio}, {differ} predictions differ" in flat
    assert f"attacks {ratio}x faster on this CPU (benchmarks/results/bench_eval_layout.txt)" in " ".join(
        (ROOT / "robgen" / "evaluate.py").read_text().replace("#", "").split())


def test_the_mutation_table_counts_the_committed_results():
    """docs/MUTATION.md's row per module is the count of its committed `mutant: status` file in docs/mutation/."""
    text = (ROOT / "docs" / "MUTATION.md").read_text()
    files = sorted((ROOT / "docs" / "mutation").glob("*.txt"))
    assert files
    for path in files:
        statuses = [line.rsplit(": ", 1)[1] for line in path.read_text().splitlines()]
        killed, total = statuses.count("killed"), len(statuses)
        unreached = statuses.count("no tests")
        survived = total - killed - unreached
        row = re.search(rf"^\| `{re.escape(path.stem)}` \| [^|]+ \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| "
                        rf"([\d.]+)% \|", text, re.M)
        assert row, path.stem
        assert [int(g.replace(",", "")) for g in row.groups()[:4]] == [total, killed, survived, unreached], path.stem
        assert row.group(5) == f"{100 * killed / total:.1f}", path.stem


def test_the_readme_and_card_give_both_autoattack_engines_on_the_same_1000_images():
    """Issue 12: the default's AutoAttack by the reference implementation (the figure) and the torchattacks chain,
    on the same seeded 1,000 test images and the same weights, quoted from their reports."""
    aa = ROOT / "experiments" / "c10-fast" / "aa"
    keys = {e: json.loads((aa / f"weat_c10_{e}" / "key.json").read_text()) for e in ("reference", "torchattacks")}
    engine_fields = ("engine", "version", "note")
    same = [{k: v for k, v in key.items() if k != "attack"} | {
        k: v for k, v in key["attack"].items() if k not in engine_fields} for key in keys.values()]
    assert same[0] == same[1] and same[0]["n"] == 1000 and same[0]["seed"] == 0
    readme, card = " ".join(README.split()), " ".join((ROOT / "checkpoints" / "weat_c10.md").read_text().split())
    for engine in keys:
        report = json.loads((aa / f"weat_c10_{engine}.json").read_text())
        assert report["attack"]["engine"] == keys[engine]["attack"]["engine"] and report["n"] == 1000
        figure = f"{report['robust_acc']:.1f}% ({report['attack']['engine']})"
        assert figure in readme and figure in card
    pgd = json.loads((aa / "weat_c10_pgd20-l2.json").read_text())  # the same images under PGD-20-L2, for scale
    assert (pgd["n"], pgd["seed"], pgd["attack"]["name"], round(pgd["clean_acc"], 1)) == (1000, 0, "pgd20-l2", 75.7)
    assert f"| {pgd['robust_acc']:.1f}% |" in card and f"the same 1,000 leaves {pgd['robust_acc']:.1f}%" in readme
