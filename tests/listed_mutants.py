"""Issue 18's listed mutants, each applied alone to a copy of the repository and run against the fast suite.

Every line of MUTANTS is one change the audit found the suite passing; each must now fail a test ("killed").
Not part of the suite (it runs the suite once per mutant, about 20 CPU-minutes in all):

    OMP_NUM_THREADS=1 python tests/listed_mutants.py [NAME ...]      # exit status 1 if any mutant survives
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = "not torchrun and not ddp and not torchscript and not clean_fid"

# name: (file, original text, mutated text); the original must occur exactly once in the file.
MUTANTS = {
    "eval robust accuracy from the clean predictions": (
        "robgen/evaluate.py", '"robust_acc": 100.0 * (rows["pred_adv"]', '"robust_acc": 100.0 * (rows["pred_clean"]'),
    "the training KL attack descends the KL": (
        "robgen/attacks.py", "clean: energy.trades_kl(clean, logits))", "clean: -energy.trades_kl(clean, logits))"),
    "SGLD drops the 1/2 of its gradient step": (
        "robgen/sample/samplers.py", "v = -((cfg.step_size if eta is None else eta) / 2) * grad",
        "v = -(cfg.step_size if eta is None else eta) * grad"),
    "SGLD noise scale sqrt(eta), not sqrt(2 eta)": (
        "robgen/sample/samplers.py", "(math.sqrt(2 * self.step_size)", "(math.sqrt(self.step_size)"),
    "sgld-rand noise scale sqrt(eta), not sqrt(2 eta)": (
        "robgen/sample/samplers.py", "(torch.sqrt(2 * eta)", "(torch.sqrt(eta)"),
    "SGLD momentum sign flipped": (
        "robgen/sample/samplers.py", 'v.add_(state["v"], alpha=cfg.momentum)', 'v.add_(state["v"], alpha=-cfg.momentum)'),
    "Heun ignores its corrector": (
        "robgen/sample/samplers.py", "(g1 + g2) / 2, cfg, noise)", "g1, cfg, noise)"),
    "the pgd sampler's eps-ball doubled": (
        "robgen/sample/samplers.py", 'project(x, state["x0"], cfg.eps, cfg.norm)',
        'project(x, state["x0"], 2 * cfg.eps, cfg.norm)'),
    "--early-stop inverted (a sample freezes while above its target)": (
        "robgen/sample/samplers.py", "done |= energies[n] <= stop_at", "done |= energies[n] > stop_at"),
    "--early-stop ignored by a sample run": (
        "robgen/sample/generate.py", 'stop_at = fit.energy.to(device)[y] if settings["early_stop"] else None',
        "stop_at = None"),
    "every chunk gets the same noise (the chunk seed ignores the chunk)": (
        "robgen/seeds.py", "return derive(seed, chunk, bits=63)", "return derive(seed, 0, bits=63)"),
    "the PCA start's spread without sqrt(n_y - 1)": (
        "robgen/sample/starts.py", "return math.sqrt(float(self.count[y]) - 1) * self.std[y][:k]",
        "return self.std[y][:k]"),
    "--energy ce descends the joint energy": (
        "robgen/energy.py", 'TARGET_ENERGIES.register("ce")(cross_entropy)', 'TARGET_ENERGIES.register("ce")(joint_energy)'),
    "a targeted attack may pick the true class": (
        "robgen/attacks.py", "torch.randint(1, num_classes, y.shape", "torch.randint(0, num_classes, y.shape"),
    "FGSM takes no step": (
        "robgen/attacks.py", "steps=spec.steps, norm=spec.norm,", 'steps=0 if spec.method == "fgsm" else spec.steps, norm=spec.norm,'),
    "the trainer's per-epoch PGD steps eps, not eps/4": (
        "robgen/train/loop.py", 'step_size=config["eps"] / 4,', 'step_size=config["eps"],'),
    "train_dE's sign flipped": (
        "robgen/train/loop.py", '"train_dE": mean["E_clean"] - mean["E_adv"]', '"train_dE": mean["E_adv"] - mean["E_clean"]'),
    "info (and every load) skips the weights' shape check": (
        "robgen/models/checkpoint.py", "if value.shape != state[key].shape:", "if False:"),
    "the TRADES split's conditional term with the wrong sign": (
        "robgen/energy.py", "(class_probs(clean_logits) * (clean_logits - adv_logits))",
        "(class_probs(clean_logits) * (adv_logits - clean_logits))"),
}


def copy_repo(dest: Path) -> None:
    # the working tree as git sees it: tracked files and new ones that are not ignored
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout
    files = sorted(set(listed.split(b"\0")))
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())


def killed(copy: Path, name: str) -> bool:
    path, original, mutated = MUTANTS[name]
    file = copy / path
    text = file.read_text()
    if text.count(original) != 1:
        raise SystemExit(f"{name}: {original!r} occurs {text.count(original)} times in {path}, not once")
    file.write_text(text.replace(original, mutated))
    try:
        env = {**os.environ, "PYTHONPATH": str(copy)}
        # the formula pins first (most mutants fail there within seconds), then the rest of the suite
        tests = ["tests/test_pins.py", *sorted(str(p.relative_to(copy)) for p in (copy / "tests").glob("test_*.py")
                                               if p.name != "test_pins.py")]
        run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-k", FAST, *tests],
                             cwd=copy, env=env, capture_output=True, text=True)
        failed = [line for line in run.stdout.splitlines() if line.startswith("FAILED")]
        print(f"{'killed' if run.returncode else 'SURVIVED'}: {name}" + (f"  ({failed[0][7:]})" if failed else ""),
              flush=True)
        return run.returncode != 0
    finally:
        file.write_text(text)


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in MUTANTS]
    if unknown:
        raise SystemExit(f"unknown mutant {unknown[0]!r}; known: {', '.join(MUTANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        copy_repo(copy)
        imported = subprocess.run([sys.executable, "-c", "import robgen; print(robgen.__file__)"], cwd=copy,
                                  env={**os.environ, "PYTHONPATH": str(copy)}, capture_output=True, text=True).stdout
        if not imported.startswith(str(copy)):  # an installed robgen would shadow the mutated copy
            raise SystemExit(f"the copy's tests import robgen from {imported.strip()}, not from {copy}")
        survivors = [n for n in names or MUTANTS if not killed(copy, n)]
    print(f"{len(names or MUTANTS) - len(survivors)} of {len(names or MUTANTS)} listed mutants killed")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
