#!/usr/bin/env bash
# Everything issue 12 and issue 16 still need from this CPU, in two lanes (one thread each), every step resumable and
# skipped when its output exists, so one command continues after any stop:
#   setsid nohup experiments/c10-fast/lanes.sh > /dev/null 2>&1 < /dev/null &
# lane 1: AutoAttack (reference) on weat_c10; trades; test evaluations; the runs' AutoAttack, from standard on
# lane 2: AutoAttack (torchattacks) on weat_c10; sat, weat-nat; test evaluations; the runs' AutoAttack, from weat-nat
# on (aa_runs.sh skips a run the other lane is attacking, so the lanes share that last part).
# Logs: the ones each script names, under experiments/c10-fast/.
set -u
cd "$(dirname "$0")"
evaluations() { flock /tmp/robgen-c10-fast-eval.lock ./after_training.sh eval; }  # one lane evaluates at a time
lane_1() {
  ./aa_engines.sh reference; ./run_queue.sh a; evaluations
  ./aa_runs.sh standard weat-adv-linf trades sat weat-nat
}
lane_2() {
  ./aa_engines.sh torchattacks; ./run_queue.sh b; evaluations
  ./aa_runs.sh weat-nat sat trades weat-adv-linf standard
}
lane_1 & lane_2 & wait
