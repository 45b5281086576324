#!/usr/bin/env bash
# Trains the shipped model zoo with our own `train` command, one model after another, into
# runs/<name> (checkpoints, sample grids), then copies config + weights + grids into
# assets/models/<name>. Every step resumes from its checkpoint, so the script can be re-run
# after an interruption. LA = the latent-atlas binary (default: target/release/latent-atlas).
set -euo pipefail
cd "$(dirname "$0")/.."
LA=${LA:-target/release/latent-atlas}
mkdir -p runs
while pgrep -f "latent-atlas train|la-train train" >/dev/null; do sleep 20; done
ship() { # ship NAME RUN_DIR
  local dst=assets/models/$1; mkdir -p "$dst"
  cp "$2/config.json" "$2/model.safetensors" "$dst/"
  local s; s=$(ls "$2"/samples/samples_*.png 2>/dev/null | tail -1 || true); [ -n "$s" ] && cp "$s" "$dst/samples.png"
  local r; r=$(ls "$2"/samples/recon_*.png 2>/dev/null | tail -1 || true); [ -n "$r" ] && cp "$r" "$dst/recon.png"
  return 0
}
step() { # step NAME ARGS... : trains unless runs/NAME/DONE exists
  local name=$1; shift
  [ -e "runs/$name/DONE" ] && return 0
  echo "== $name: $LA train $* --out runs/$name --resume"
  /usr/bin/time -v "$LA" train "$@" --out "runs/$name" --resume 2>&1 | grep -vE "^\s+(Page|Socket|Signals|Swaps|File|Average|Exit|Minor|Major|Voluntary|Involuntary)" 
  touch "runs/$name/DONE"
}
step vae-a --model vae --data synthfaces --latent-dim 64 --seed 1 --epochs 12
ship vae-a runs/vae-a
step vae-b --model vae --data synthfaces --latent-dim 64 --seed 2 --epochs 10
ship vae-b runs/vae-b
step svae --model svae --data synthfaces --latent-dim 128 --seed 3 --epochs 8
ship svae runs/svae
step gan-a-gen --model gan --data synthfaces --latent-dim 64 --seed 4 --epochs 6 --name gan-a
step gan-a --model recoder --generator runs/gan-a-gen --data synthfaces --seed 5 --epochs 2 --steps-per-epoch 300 --name gan-a
ship gan-a runs/gan-a; cp "$(ls runs/gan-a-gen/samples/samples_*.png | tail -1)" assets/models/gan-a/samples.png
step refdcgan --model recoder --generator assets/models/refdcgan --data synthfaces --seed 6 --epochs 2 --steps-per-epoch 300 --name refdcgan
ship refdcgan runs/refdcgan
echo "== zoo done"
