#!/bin/bash
# Training steps (B=64; ResNet-18 at 64x64, B=32) and eval inference (B=256) of the reference CNNs
# against PyTorch CPU, in two rounds: each `convkern bench --model --peers` times convkern, then
# PyTorch in its own worker process. Quote the best round of each framework. Run it on a quiet
# machine:  bash bench/models_vs_torch.sh > bench/results/models-cpu-$(date +%F).txt
set -euo pipefail
cd "$(dirname "$0")/.."
CONVKERN=${CONVKERN:-.venv/bin/convkern}
# a fresh autotune cache unless one is given: auto times its candidates in this run
export CONVKERN_CACHE_DIR=${CONVKERN_CACHE_DIR:-$(mktemp -d)}
for round in 1 2; do
  for m in "lenet5 --batch-size 64" "tf_mnist_cnn --batch-size 64" "cifar10_cnn --batch-size 64" \
           "resnet18 --batch-size 32 --input-size 64" "lenet5 --batch-size 256" "tf_mnist_cnn --batch-size 256" \
           "cifar10_cnn --batch-size 256" "resnet18 --batch-size 256 --input-size 64"; do
    echo "== round $round: $m"
    # shellcheck disable=SC2086
    "$CONVKERN" bench --model $m --peers 2>&1 | grep -E "^model|^PyTorch"
  done
done
