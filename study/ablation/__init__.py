"""Ablations: the variants of a best configuration (`variants`: what one change means, the fresh
seeds, the retune candidates) and the paired runs over them that `study ablate` makes (`ablate`).
Their tables and intervals are drawn by `study.report`."""
