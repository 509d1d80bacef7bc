"""`study report`: every table and figure of a study under results/<study>/ and report.md.

Reads only the Optuna storage (trial params, values and the records the run wrote) and never
re-trains. Each table's caption says what it can support: the factor and cell tables map the
search; only `ablate`'s study, fresh seeds shared by every variant, supports a claim that one
change matters.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from objectives import metrics as registry
from objectives.errors import InputError
from objectives.metrics import TABLE_METRICS
from study import figures, paths, tables
from study.records import AblationRecord, DataSummary, StudyRecord, Summary, TrialRecord, interval_resamples
from study.report.ablation import ablation_table
from study.report.clinical import write_ablation_endpoints, write_clinical
from study.report.frames import (
    best_trials_per_cell,
    cell_table,
    columns_caption,
    factor_table,
    factors,
    page_view,
    trial_frame,
    with_interval,
)
from study.report.importance import FANOVA_SEEDS, _importance_display, _importance_figure, importance_table
from study.report.whatif import write_whatif


@dataclass(frozen=True)
class Report:
    folder: Path
    markdown: Path
    files: tuple[Path, ...]
    summary: str


def build_report(
    study: optuna.Study, out: Path, formats: Sequence[str], storage_label: str, ablation: optuna.Study | None = None
) -> Report:
    """Write every table and figure of `study` under `out` and return what was written."""
    frame = trial_frame(study)
    if frame.empty:
        raise InputError(f"study {study.study_name} has no finished trials yet; run it first")
    out.mkdir(parents=True, exist_ok=True)
    record = StudyRecord.from_study(study)
    metric, layout = record.metric, record.report
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    files: list[Path] = []
    sections: list[str] = [_settings_section(study, record, storage_label)]
    data_section, data_files = _data_section(study, out, formats)
    sections.append(data_section)
    files += data_files

    factor = factor_table(frame, factors(study), maximize)
    if not factor.empty:
        caption = (
            f"Factor levels of {study.study_name}, per level of each sampled parameter: " + columns_caption(metric)
            + " A map of the search, not an ablation: the sampler chose the levels adaptively (promising ones get more "
            "trials), each level mixes different values of the other parameters (confounded), pruned trials are "
            "missing (survivors only) and the best of a larger n is higher by chance. Compare levels with `ablate`, "
            "not with this table."
        )
        files += tables.write(factor, page_view(factor, metric), out / "factors", formats, caption)
        sections.append(
            "## Factors (a map of the search, not an ablation)\n\n"
            + caption
            + "\n\n"
            + tables.markdown(page_view(factor, metric))
        )
    cells = cell_table(frame, maximize, layout.cells)
    if not cells.empty:
        named = " x ".join(k for k in layout.cells if k in cells)
        caption = (
            f"Cells of {study.study_name}, per combination of {named} (its [report] cells): " + columns_caption(metric)
            + " As adaptive and confounded as the factor table; a cell with a larger n has had more chances at a high "
            "best."
        )
        files += tables.write(cells, page_view(cells, metric), out / "cells", formats, caption)
        sections.append("## Cells\n\n" + caption + "\n\n" + tables.markdown(page_view(cells, metric)))

    importance, note = importance_table(study)
    if importance.empty:
        sections.append(f"## Parameter importance\n\n{note}\n")
    else:
        caption = (
            f"Parameter importances for validation {metric} over {int(importance.trials.max())} complete trials "
            "(pruned trials are excluded: their value is an early epoch's, not a trained configuration's): "
            "fANOVA, mean ± std "
            f"over {len(FANOVA_SEEDS)} random-forest seeds, and PED-ANOVA. A conditional parameter is evaluated over "
            "the trials "
            "where it is active (its share among the parameters of those trials), or n/a when they are too few; "
            "never 0 "
            f"for missing. Importances describe this search's trials, not the parameter's effect elsewhere."
        )
        shown = _importance_display(importance)
        files += tables.write(importance, shown, out / "importance", formats, caption)
        files.append(_importance_figure(importance, out / "importance.png"))
        sections.append("## Parameter importance\n\n" + caption + (f" {note}" if note else "") + "\n\n"
                        + tables.markdown(shown) + "\n![importance](importance.png)\n")

    picked = best_trials_per_cell(study, frame, maximize, layout)
    if picked:
        section, written = _best_trials_section(picked, metric, out)
        files += written
        sections.append(section)
        section, written = write_clinical(study, picked, layout.endpoints, out, formats)
        files += written
        sections.append(section)
    files.append(_history_figure(study, out / "history.png"))
    sections.append("## Optimization history\n\n![history](history.png)\n")
    section, written = write_whatif(study, metric, out, formats)
    files += written
    sections.append(section)

    if ablation is not None:
        if not AblationRecord.is_reported(ablation):
            sections.append(
                f"## Ablation study\n\n{ablation.study_name} was made by an older `ablate` (seeds 0..K-1, possibly the "
                f"parent's own, compared unpaired) and is not reported; delete it and run `ablate` again.\n"
            )
        elif not any(t.state == TrialState.COMPLETE for t in ablation.get_trials(deepcopy=False)):
            sections.append(f"## Ablation study\n\n{ablation.study_name} has no complete trial yet.\n")
        else:
            table, display, ablation_caption = ablation_table(ablation)
            files += tables.write(table, display, out / "ablation_study", formats, ablation_caption)
            sections.append("## Ablation study\n\n" + ablation_caption.text + "\n\n" + tables.markdown(display)
                            + ablation_caption.markdown_notes())
            section, written = write_ablation_endpoints(ablation, layout.endpoints, out, formats)
            files += written
            sections.append(section)

    markdown = f"# Study {study.study_name}\n\n" + "\n".join(sections)
    report_path = out / "report.md"
    report_path.write_text(markdown)
    factors_md = "\n## Factors\n\n" + tables.markdown(page_view(factor, metric)) if not factor.empty else ""
    summary = sections[0] + factors_md
    return Report(out, report_path, tuple([report_path, *files]), summary)


SPLIT_LABELS = (("train", "train"), ("val", "validation"), ("test", "test"))
EXCLUSIONS = "none: an unreadable image stops the run"
NOT_RECORDED = "not recorded"


def data_table(summary: DataSummary) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per class (and a total row): images and, where the data has groups, patients in each split.
    The raw frame (every count) and the page view (the same, with readable headers)."""
    rows = []
    names = [*summary.class_names, "total"]
    for c, name in enumerate(names):
        row: dict[str, object] = {"class": name}
        for split, _ in SPLIT_LABELS:
            counts = summary.images.get(split) or (0,) * len(summary.class_names)
            row[f"{split}_images"] = sum(counts) if name == "total" else counts[c]
            if summary.groups is not None:
                patients = summary.groups.get(split) or (0,) * len(summary.class_names)
                row[f"{split}_patients"] = sum(patients) if name == "total" else patients[c]
        rows.append(row)
    frame = pd.DataFrame(rows)
    display = frame.rename(columns={f"{s}_{kind}": f"{label} {kind}" for s, label in SPLIT_LABELS
                                    for kind in ("images", "patients")})
    return frame, display


def data_caption(study_name: str, summary: DataSummary) -> str:
    """What the data table says and supports: who the figures speak for, the leaks, the hashes."""
    seed = f" (split_seed {summary.split_seed})" if summary.split_seed is not None else ""
    parts = [f"Who is in the data of {study_name}: images per class in each split of the study's own split{seed}"]
    if summary.groups is None:
        parts[0] += "; the data has no groups, so images are the independent units (patients unknown)."
    else:
        shared = summary.shared or {}
        parts[0] += (", and patients (groups), each counted under the largest grade of its images in that split "
                     "(the worse eye, as the split stratifies); a patient in two splits counts in each.")
        leak = shared.get("train-test", 0) + shared.get("val-test", 0)
        parts.append(
            f"Patients in both train and test: {shared.get('train-test', 0)}; validation and test: "
            f"{shared.get('val-test', 0)}; train and validation: {shared.get('train-val', 0)}"
            + (" (the data's own test split shares them: test figures are optimistic)." if leak else ".")
        )
    parts.append(f"Exclusions: {EXCLUSIONS}.")
    parts.append(f"Split manifest sha256 {summary.split_hash or NOT_RECORDED}; image content "
                 f"{summary.content_hash or NOT_RECORDED}.")
    parts.append(
        "It supports how many independent units (patients) stand behind each test figure and how rare each class "
        "is, so a reader can judge the intervals; it says nothing of how these patients represent a population "
        "(recruitment, devices, sites are not recorded)."
    )
    return " ".join(parts)


def _data_section(study: optuna.Study, out: Path, formats: Sequence[str]) -> tuple[str, list[Path]]:
    """`## Data` and data.{md,csv,tex} from the summary `run` recorded; a study recorded before
    summaries were kept gets the section saying so, and no files."""
    summary = DataSummary.from_study(study)
    if summary is None:
        return ("## Data\n\nMissing: this study was recorded by an older run, before `run` kept a summary of its "
                "data (images and patients per class and split); resuming it with `run` records one.\n", [])
    frame, display = data_table(summary)
    caption = data_caption(study.study_name, summary)
    written = tables.write(frame, display, out / "data", formats, caption)
    return "## Data\n\n" + caption + "\n\n" + tables.markdown(display), written


def _best_trials_section(picked: dict[str, FrozenTrial], metric: str, out: Path) -> tuple[str, list[Path]]:
    """The test confusion matrix of each picked trial (by figure label) and their curves in one figure."""
    files, figure_lines = [], []
    for label, trial in picked.items():
        record = TrialRecord.from_trial(trial)
        confusion = record.test_confusion
        if confusion:
            title = f"{label}: trial {trial.number}, test (row-normalised)"
            names = record.class_names or [str(i) for i in range(len(confusion))]
            path = figures.confusion_figure(confusion, names, title, paths.figure_file(out, f"confusion_{label}"))
            files.append(path)
            figure_lines.append(f"![{label}]({path.name})")
    labels: dict[int, list[str]] = {}
    for label, trial in picked.items():
        labels.setdefault(trial.number, []).append(label)
    by_number = {t.number: t for t in picked.values()}
    curves = [figures.Curve(f"{' = '.join(names)} (trial {n})", TrialRecord.from_trial(by_number[n]).curves,
                            by_number[n].state == TrialState.PRUNED) for n, names in labels.items()]
    files.append(figures.curves_figure(curves, metric, out / "curves.png"))
    section = (
        "## Best trials: test confusion matrices and curves\n\n"
        + "\n".join(figure_lines)
        + "\n\n![curves](curves.png)\n"
    )
    return section, files


def _settings_section(study: optuna.Study, record: StudyRecord, storage_label: str) -> str:
    summary = Summary.of(study)
    lines = [
        f"- objective: `{record.objective or '?'}`, {study.direction.name.lower()} validation **{record.metric}**",
        f"- dataset: `{record.dataset or '?'}`",
        f"- storage: `{storage_label}`",
        f"- fixed: {', '.join(f'{k}={v}' for k, v in record.fixed.items()) or '–'}",
        f"- pinned: {', '.join(f'{k}={v}' for k, v in record.pinned.items()) or '–'}",
        f"- trials: {summary.complete} complete, {summary.pruned} pruned, {summary.failed} failed",
    ]
    if summary.reasons:
        lines.append("- failure reasons: " + ", ".join(f"{reason} ×{n}" for reason, n in summary.reasons))
    best = summary.best
    if best is None:
        return "## Settings\n\n" + "\n".join(lines) + "\n"
    lines.append(f"- best: trial {best.number}, " + ", ".join(f"{k}={tables.cell(v)}" for k, v in best.params.items()))
    def shown(split: str, name: str) -> str:
        value = best.metrics(split).get(name, np.nan)
        bounds = best.interval(name) if split == "test" else None
        return with_interval(value, *bounds) if bounds else tables.metric(value)

    metrics = pd.DataFrame([{"split": label, **{registry.label(n): shown(split, n) for n in TABLE_METRICS}}
                            for label, split in (("validation", "val"), ("test", "test"))])
    if best.test_intervals:
        note = (f"Test: [low, high] = 95 % interval from a bootstrap over test patients (images where ungrouped), "
                f"{interval_resamples(best.test_intervals)} resamples, recorded when the trial ended.")
    else:
        note = "Test intervals missing (older run): this trial recorded no per-image predictions."
    return ("## Settings and best trial\n\n" + "\n".join(lines) + "\n\n" + tables.markdown(metrics)
            + "\n" + note + "\n")


def _history_figure(study: optuna.Study, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = optuna.visualization.matplotlib.plot_optimization_history(study)
    fig = ax.figure
    assert isinstance(fig, Figure)  # Optuna draws on a figure of its own, never a SubFigure
    fig.set_size_inches(7, 4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
