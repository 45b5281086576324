#!/usr/bin/env bash
# Regenerates the README's measured results on the embedded default (synthfaces + the zoo):
# the zoo quality table, the Table-2 matrix, Fig.-2 montages for a Type 1, 2 and 3 pair, and
# the out-of-range check. Outputs go to assets/figures/ and results/ (markdown snippets).
set -euo pipefail
cd "$(dirname "$0")/.."
LA=${LA:-target/release/latent-atlas}
mkdir -p assets/figures results
"$LA" models --markdown > results/zoo.md
"$LA" table --json results/table.json --csv results/table.csv > results/table.md
"$LA" montage --source vae-a --target vae-b --n 10 --out assets/figures/montage-type1-vae-a-to-vae-b.png > results/montage.txt
"$LA" montage --source vae-a --target svae --n 10 --out assets/figures/montage-type2-vae-a-to-svae.png >> results/montage.txt
"$LA" montage --source vae-a --target refdcgan --n 10 --out assets/figures/montage-type3-vae-a-to-refdcgan.png >> results/montage.txt
"$LA" ood > results/ood.md
"$LA" support-set --model vae-a --out results/support-vae-a.json --grid assets/figures/support-set-vae-a.png > results/support.txt
echo "results written to results/ and assets/figures/"
