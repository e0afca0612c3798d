#!/usr/bin/env bash
# Issue 16: the reference AutoAttack (standard version) of every fast-recipe run that has its test evaluation, in the
# run's own threat model, on the same seeded 1,000 test JPEGs as the default's (`--n 1000 --seed 0`), with
# channels_last convolutions (1.33x faster here: benchmarks/results/bench_eval_layout.txt). One thread;
# every finished batch of 100 is kept in <run>/aa1k/, so rerunning after a stop continues where it stopped.
# Report: <run>/aa1k.json. weat-adv-l2 is skipped: its float16 copy, the shipped weat_c10, is aa_engines.sh's.
#   experiments/c10-fast/aa_runs.sh [RUN ...]     (default: standard weat-adv-linf trades sat weat-nat)
set -u
cd "$(dirname "$0")/../.."
DATA=${DATA:-folder:/tmp/c10}
E=experiments/c10-fast
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

aa() {  # aa RUN: skipped when done, not yet evaluated, or running in another lane (lanes.sh runs two of this script)
  local f=$E/$1/aa1k.json norm
  (
    flock -n 9 || exit 0
    [ -f "$f" ] || [ ! -f "$E/$1/eval_test10k.json" ] && exit 0
    norm=$(python -c "import json; print(json.load(open('$E/$1/config.json'))['norm'])")
    nice -n 5 robgen eval --ckpt "$E/$1/best.safetensors" --data "$DATA" --attack autoattack --norm "$norm" \
      --n 1000 --seed 0 --batch-size 100 --channels-last --batches-dir "$E/$1/aa1k" --json > "$f.tmp" \
      2>> "$E/$1.aa.log" && mv "$f.tmp" "$f"
  ) 9> "/tmp/robgen-c10-fast-aa-$1.lock"
}

runs=("$@")
[ $# -gt 0 ] || runs=(standard weat-adv-linf trades sat weat-nat)
for run in "${runs[@]}"; do aa "$run"; done
