#!/usr/bin/env bash
# Runs the commands whose outputs README.md and docs/*.md show (the blocks that start with
# `$ python -m study ...`, each marked "Shown output: docs/shown_outputs.sh"), so a shown output
# can be refreshed from a real run instead of edited by hand.
#
# Run by hand, NOT in CI: the demo trains 10 real models (about 6 minutes on an idle 2-core CPU).
#
#   bash docs/shown_outputs.sh [OUT_DIR]     # default: a new temporary folder
#
# It works in OUT_DIR (a fresh results/ folder, so the demo starts at trial 0 as shown) with this
# checkout's code, and writes each step's output to OUT_DIR/<step>.txt; paste from there into the
# docs. Timings and, on other hardware or library versions, the trials' values differ from run to run.
# The figures come from elsewhere: docs/confusion_best.png is the report's confusion_best.png
# (copied to OUT_DIR by the `report` step), docs/dashboard.png the dashboard test's screenshot
# (STUDY_DOCS_SCREENSHOT=docs/dashboard.png, tests/e2e/test_analysis.py), docs/ablation_table.png the
# LaTeX ablation table of the `ablate` step below, rendered by pdflatex + pdftoppm (the `exhibit` step).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$(mktemp -d)}
mkdir -p "$out"
cd "$out"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME COMMAND...: run it, show and keep its output (stdout and stderr), go on on failure
    local name=$1
    shift
    echo "== $name: \$ $*" >&2
    "$@" 2>&1 | tee "$name.txt" || echo "(exit ${PIPESTATUS[0]})" | tee -a "$name.txt"
}

# README.md (tour, step 1) and docs/running.md: the demo.
step run python -m study run dr_focal
# README.md (tour, steps 2 and 3): outputs not shown in the docs, run so the tour's files exist.
step list python -m study list
step report python -m study report dr_focal
cp results/dr_focal/confusion_best.png . 2>/dev/null || true

# docs/data.md: `data inspect` on a copy of the embedded images with one train image deleted and
# one train image copied over a test image (it exits 2: one problem would stop a run).
rm -rf fundus
cp -r results/data/synthetic-fundus-pairs-800-200-seed0 fundus
rm fundus/train_00295_left.jpeg
cp fundus/train_00136_right.jpeg fundus/test_00050_right.jpeg
step data-inspect python -m study data inspect fundus

# docs/pruning.md (the what-if) and docs/ablations.md (the exhibit): a pilot without pruning, its
# report's "Pruning what-if", its ablation (5 fresh seeds) and the ablation table as LaTeX renders it.
step pilot python -m study run dr_focal --pruner none --study-name dr_focal_pilot
step ablate python -m study ablate dr_focal_pilot
step pilot-report python -m study report dr_focal_pilot
exhibit() {
    mkdir -p exhibit && cp results/dr_focal_pilot/ablation_study.tex exhibit/
    printf '%s\n' '\documentclass[11pt]{article}' '\usepackage[margin=2cm]{geometry}' '\usepackage{booktabs}' \
        '\usepackage{graphicx}' '\pagestyle{empty}' '\begin{document}' '\input{ablation_study.tex}' '\end{document}' \
        > exhibit/doc.tex
    (cd exhibit && pdflatex -interaction=nonstopmode -halt-on-error doc.tex && pdftoppm -r 130 -png -singlefile doc.pdf page)
    python - <<'PY'
from PIL import Image, ImageChops
page = Image.open("exhibit/page.png").convert("RGB")
box = ImageChops.difference(page, Image.new("RGB", page.size, (255, 255, 255))).getbbox()
page.crop((box[0] - 20, box[1] - 20, box[2] + 20, box[3] + 20)).save("ablation_table.png", optimize=True)
PY
}
step exhibit exhibit

echo "outputs in $out" >&2
