#!/usr/bin/env bash
# The fast-recipe runs of issue 16, two lanes side by side (one thread each, niced), each lane running its runs in
# order and resuming whichever is unfinished. Safe to start again after any stop: a finished run says "nothing to
# do", an unfinished one continues from its state.pt. Logs: experiments/c10-fast/<run>.log.
#   python -m zipfile -e ../shared/data/cifar10-jpg.zip /tmp/c10 && experiments/c10-fast/run_queue.sh [a|b]
# (no argument: both lanes; one letter: that lane alone, leaving the other core free for evaluation jobs).
set -u
cd "$(dirname "$0")/../.."
DATA=${DATA:-folder:/tmp/c10}

run() {  # run NAME LOSS NORM
  local out=experiments/c10-fast/$1 what
  # A started run continues from its own config.json (the data path in it: unpack the JPEGs to the same place).
  if [ -f "$out/config.json" ]; then what=(--resume); else what=(--recipe fast --loss "$2" --norm "$3" --data "$DATA"); fi
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 5 robgen train "${what[@]}" --workers 0 --out "$out" \
    >> "experiments/c10-fast/$1.log" 2>&1
}

# Standard first: it is the cheapest run and the energy histograms compare it with the default.
lane_a() { run weat-adv-linf weat-adv linf && run standard standard linf && run trades trades linf; }
lane_b() { run weat-adv-l2 weat-adv l2 && run sat sat linf && run weat-nat weat-nat linf; }
case ${1:-ab} in
  a) lane_a ;;
  b) lane_b ;;
  *) lane_a & lane_b & wait ;;
esac
