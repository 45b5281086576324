#!/usr/bin/env bash
# Regenerates the README's measured results on the embedded default (synthfaces + the zoo):
# the zoo quality table, the Table-2 matrix, Fig.-2 montages for a Type 1, 2 and 3 pair, and
# the out-of-range check. Outputs go to assets/figures/ and results/ (markdown snippets).
set -euo pipefail
cd "$(dirname "$0")/.."
LA=${LA:-target/release/latent-atlas}
mkdir -p assets/figures results
"$LA" models --markdown > results/zoo.md
"$LA" table --models vae-a,vae-b,svae,gan-a,refdcgan,style-a,flow --json results/table.json --csv results/table.csv > results/table.md
"$LA" montage --source vae-a --target vae-b --n 10 --out assets/figures/montage-type1-vae-a-to-vae-b.png > results/montage.txt
"$LA" montage --source vae-a --target svae --n 10 --out assets/figures/montage-type2-vae-a-to-svae.png >> results/montage.txt
"$LA" montage --source vae-a --target refdcgan --n 10 --out assets/figures/montage-type3-vae-a-to-refdcgan.png >> results/montage.txt
"$LA" montage --source vae-a --target gan-a --n 10 --out assets/figures/montage-type3-vae-a-to-gan-a.png > results/montage-gan-a.txt
"$LA" ood --models vae-a,vae-b,svae,gan-a,refdcgan,style-a > results/ood.md
"$LA" local-basis --model vae-a --pair vae-a,vae-b --points 20 --plot assets/figures/local-basis-vae-a.png > results/local-basis-vae-a.md
"$LA" local-basis --model style-a --jacobian mapping --points 20 --plot assets/figures/local-basis-style-a-mapping.png > results/local-basis-style-a-mapping.md
# every ordered pair of the zoo except the flow (its Jacobian has 12,288 columns per point)
"$LA" local-basis --all-pairs vae-a,vae-b,svae,gan-a,refdcgan,style-a --points 10 --ks 1,4,16 > results/local-basis-transfer-all-pairs.md
"$LA" transfer-montage --source vae-a --target gan-a --samples 3 --dirs 0 --range 6 --out assets/figures/direction-transfer-vae-a-to-gan-a.png > results/transfer-montage.txt
"$LA" probe --models vae-a,vae-b,svae,gan-a,refdcgan,style-a > results/probe-synthfaces.md
"$LA" probe --data orl --models vae-a,vae-b,svae,gan-a,refdcgan,style-a > results/probe-orl.md
"$LA" support-set --model vae-a --out results/support-vae-a.json --grid assets/figures/support-set-vae-a.png > results/support.txt
echo "results written to results/ and assets/figures/"
