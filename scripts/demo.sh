#!/usr/bin/env bash
# The CPU demo (about 10 minutes on 2 cores, installation included): installs the project, downloads and
# prepares Shakespeare's works, trains a small Finch (RWKV-6) byte-level model with a progress bar, prints the
# validation loss and a sample, and plots the loss curve.
#
#   bash scripts/demo.sh                 # workdir/demo; an existing run there is resumed, not restarted
#   WORKDIR=/tmp/demo bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${WORKDIR:-workdir/demo}"
pip install -q -e .
python experiments/train.py --config configs/shakespeare_finch.py --workdir "$WORKDIR"
python experiments/plot_metrics.py "$WORKDIR" --out "$WORKDIR/curve.png" --target 1.5 \
    --title "Finch (RWKV-6) on Shakespeare, byte level, 2-core CPU"
