"""The report's pruning what-if (`study.report.whatif`) on in-memory studies whose complete trials
carry recorded curves: every candidate replayed over the study's own unpruned curves, and one line
saying why not for a pruned study or too small a pilot."""


import numpy as np
import optuna
import pandas as pd

from study.records import CURVES, PRUNER, StudyRecord
from study.report import whatif
from study.run.replay import CANDIDATES
from study.spaces.space import StudySettings

from conftest import ROOT


def pilot(pruner, n=14, epochs=9, seed=0):
    """A study of `n` complete trials with late-jumping curves, a test kappa near each one's best."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(direction="maximize", study_name="pilot")
    study.set_user_attr(PRUNER, pruner)
    for i in range(n):
        jump = int(rng.integers(2, epochs))
        level = float(rng.uniform(0.3, 0.8))
        values = [0.05 * rng.random() if e < jump else level + 0.02 * rng.normal() for e in range(epochs)]
        trial = study.ask()
        trial.set_user_attr(CURVES, {"epoch": list(range(1, epochs + 1)), "phase": ["ft"] * epochs,
                                     "val_kappa": values})
        trial.set_user_attr("test_metrics", {"kappa": max(values) - 0.03})
        study.tell(trial, max(values))
    return study


def test_every_candidate_is_replayed_over_an_unpruned_pilot(tmp_path):
    study = pilot({"class": "NopPruner"})
    frame, why = whatif.whatif_frame(study, "kappa", StudySettings(), n_orders=20)
    assert why == "" and list(frame.candidate) == [c.name for c in CANDIDATES]
    assert ((frame.saved_mean >= 0) & (frame.saved_mean < 1)).all() and (frame.regret_mean >= 0).all()
    assert ((frame.pick_survives >= 0) & (frame.pick_survives <= 1)).all()
    assert (frame.saved_mean > 0).any()  # some rule stops something on late-jumping curves
    kept_all = frame[frame.pick_survives == 1.0]
    assert (kept_all.regret_mean == 0).all()  # keeping the pick in every order costs nothing
    section, files = whatif.write_whatif(study, "kappa", tmp_path, ["csv", "md"])
    assert "## Pruning what-if" in section and {p.name for p in files} == {"pruning_whatif.csv", "pruning_whatif.md"}
    assert list(pd.read_csv(tmp_path / "pruning_whatif.csv").columns) == list(whatif.WHATIF_COLUMNS)


def test_a_pruned_study_or_a_small_pilot_gets_one_line_saying_why_not(tmp_path):
    section, files = whatif.write_whatif(pilot({"class": "MedianPruner"}), "kappa", tmp_path, ["csv"])
    assert "ran with a pruner" in section and "--pruner none" in section and not files
    section, files = whatif.write_whatif(pilot({"class": "NopPruner"}, n=5), "kappa", tmp_path, ["csv"])
    assert "5 complete trials, fewer than 12" in section and not files



def test_a_pilot_on_the_embedded_data_is_judged_by_the_settings_it_ran_with():
    """The demo (no --data) runs with [embedded]'s startup_trials = 2, not the file's 4: a 10-trial
    demo pilot is 5 x startup_trials, enough for the what-if; on the user's data the file's 4 hold."""
    text = (ROOT / "search_spaces" / "dr_focal.toml").read_text()
    embedded = whatif.pilot_settings(StudyRecord(space_text=text, dataset="synthetic-fundus"))
    own = whatif.pilot_settings(StudyRecord(space_text=text, dataset="/data/dr"))
    assert (embedded.startup_trials, own.startup_trials) == (2, 4)
    assert whatif.pilot_settings(StudyRecord(space_text="not a toml [")) == StudySettings()
