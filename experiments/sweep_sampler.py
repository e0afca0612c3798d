"""Sampler settings against FID / KID / precision-recall: a resumable grid over robgen.sample.sample options.

Each setting samples n images per class into OUT/<setting>/ (the sampler's own chunk reuse makes a killed setting
resume) and scores them against --ref; one JSON line per setting goes to OUT/sweep.jsonl, and a setting already
there is skipped, so the sweep continues where it stopped. `--plot FIG` draws FID and recall against steps, one line
per combination of the other settings. Choose on this proxy (e.g. 100 per class against a 10,000-image reference),
then confirm the winner under the full protocol (1,000 per class against all 50,000 training images).

    python experiments/sweep_sampler.py --ckpt C --data folder:/tmp/c10 --ref stats.npz --n 100 --out S \
        --grid init=pca,gaussian sigma_pca=0.005,0.01 steps=20,40,80
    python experiments/sweep_sampler.py --out S --plot S/fid_steps.png [--curves init=pca,sigma_pca=0.01 ...]
    python experiments/sweep_sampler.py --table S/sweep.jsonl     # the markdown table of docs/RESULTS.md
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from robgen.metrics import score
from robgen.sample import DEFAULTS, sample
from robgen.utils import atomic_write_text

PCA_INITS, PCA_OPTIONS = ("pca", "mix"), ("sigma_pca", "retained")


def parse_grid(items: list[str]) -> list[dict]:
    """`key=v1,v2` items -> every combination, values as numbers where they parse."""
    axes = []
    for item in items:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"--grid takes key=v1,v2 items, got {item!r}")
        axes.append([(key, number(v)) for v in values.split(",")])
    settings = {}
    for combo in itertools.product(*axes):
        setting = dict(combo)
        if setting.get("init", "pca") not in PCA_INITS:  # robgen refuses options a start does not read
            setting = {k: v for k, v in setting.items() if k not in PCA_OPTIONS}
        settings[name_of(setting)] = setting
    return list(settings.values())


def number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None if text == "none" else text


def name_of(setting: dict) -> str:
    return "_".join(f"{k}-{v}" for k, v in sorted(setting.items()))


def run(args) -> None:
    out = Path(args.out)
    log = out / "sweep.jsonl"
    done = {json.loads(line)["name"] for line in log.read_text().splitlines()} if log.is_file() else set()
    for setting in parse_grid(args.grid):
        name = name_of(setting)
        if name in done:
            continue
        drawn = sample(args.ckpt, None, out=out / name, n=args.n, data=args.data, seed=args.seed,
                       progress=False, **setting)
        scored = score(Path(drawn["out"]) / "samples.npz", ref=args.ref, fid=True,
                       kid=True, prc=True, inception_weights=args.inception_weights)
        row = {"name": name, "setting": setting, "n_per_class": args.n, "sample_seconds": drawn.get("seconds"),
               **{k: scored.get(k) for k in ("fid", "kid", "kid_std", "precision", "recall")},
               "protocol": scored.get("protocol")}
        lines = log.read_text().splitlines() if log.is_file() else []
        atomic_write_text(log, "\n".join([*lines, json.dumps(row, sort_keys=True)]) + "\n")
        print(f"{name}: FID {row['fid']:.2f}  KID {row['kid']:.4f}  precision {row['precision']:.3f}  "
              f"recall {row['recall']:.3f}", flush=True)


def table(path: str) -> None:
    """docs/RESULTS.md's sweep table: one row per line of a sweep.jsonl, in its order (sample()'s defaults where a
    setting names nothing)."""
    print("| sampler | start | sigma_pca | steps | other | FID | KID | precision | recall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        s = dict(r["setting"])
        init = s.pop("init", DEFAULTS["init"])
        sigma = str(s.pop("sigma_pca", DEFAULTS["sigma_pca"])) if init in PCA_INITS else "-"
        cells = [s.pop("sampler", DEFAULTS["sampler"]), init, sigma, str(s.pop("steps", DEFAULTS["steps"])),
                 ", ".join(f"{k} {v}" for k, v in sorted(s.items())) or "-"]
        print("| " + " | ".join(cells) + f" | {r['fid']:.2f} | {r['kid']:.4f} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} |")


def plot(args) -> None:
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (Path(args.out) / "sweep.jsonl").read_text().splitlines()]
    curves: dict[str, list] = {}
    for r in rows:
        rest = {k: v for k, v in r["setting"].items() if k != "steps"}
        if args.curves and rest not in [parse_grid(c.split(","))[0] for c in args.curves]:
            continue
        curves.setdefault(name_of(rest) or "default", []).append((r["setting"].get("steps"), r["fid"], r["recall"]))
    if not curves:
        raise SystemExit(f"no row of {args.out}/sweep.jsonl has the settings of {args.curves} besides steps")
    fig, (ax_fid, ax_rec) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in sorted(curves.items()):
        steps, fid, recall = zip(*sorted(points, key=lambda p: p[0] or 0))
        ax_fid.plot(steps, fid, marker="o", label=label)
        ax_rec.plot(steps, recall, marker="o", label=label)
    ax_fid.set(xlabel="SGLD steps", ylabel="FID", title=f"FID ({rows[0]['n_per_class']} per class)")
    ax_rec.set(xlabel="SGLD steps", ylabel="recall", title="recall (diversity)")
    ax_fid.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"wrote {args.plot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt")
    parser.add_argument("--data", default=None, help="training data to fit starts on (default: the checkpoint's)")
    parser.add_argument("--ref", help="reference: a stats .npz from `robgen stats` or folder:PATH")
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--n", type=int, default=100, help="images per class per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    parser.add_argument("--grid", nargs="*", default=[], help="key=v1,v2 over robgen.sample.sample options")
    parser.add_argument("--plot", default=None, help="only draw FIG from OUT/sweep.jsonl")
    parser.add_argument("--curves", nargs="*", default=[], help="with --plot: one curve per item k=v,k=v: the rows "
                        "with exactly these settings besides steps (default: every combination)")
    parser.add_argument("--table", default=None, metavar="SWEEP.jsonl", help="only print its markdown table")
    args = parser.parse_args()
    if args.table:
        return table(args.table)
    needed = ["out"] if args.plot else ["ckpt", "ref", "out"]
    missing = [f"--{k}" for k in needed if getattr(args, k) is None]
    if missing:
        parser.error(f"{', '.join(missing)} required")
    plot(args) if args.plot else run(args)


if __name__ == "__main__":
    main()
