"""A search-space file of schema 2: its objective (the image classifier by default, or a module of
one's own), the schema line and the [report] table, and the report layout a study records (no training)."""

import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from objectives import image_classifier
from objectives.errors import InputError
from study import registry
from study.report import frames
from study.report_layout import ReportLayout
from study.space import SpaceError
from study.space_file import load_space

GOOD = """
schema = 2
[study]
metric = "accuracy"
[fixed]
epochs = 2
[space]
arch = { choices = ["convnet", "resnet18"] }
loss = { choices = ["ce", "focal"] }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_schema2_defaults_to_the_image_classifier(tmp_path: Path):
    space = load_space(write(tmp_path, GOOD))
    assert space.schema == 2 and space.study.objective == "image_classifier" and not space.defaults
    assert registry.objective_module(space) is image_classifier
    assert space.report == ReportLayout()
    stated = load_space(write(tmp_path, GOOD.replace("[study]", '[study]\nobjective = "image_classifier"')))
    assert stated.fingerprint() == space.fingerprint()


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD.replace("schema = 2", "schema = 3"), "schema = 3 is unknown; this version reads schema 2"),
        (GOOD.replace("schema = 2", 'schema = "2"'), "schema = '2' is unknown"),
        (GOOD.replace("[study]", '[study]\nobjective = "dr_focal"'), "'dr_focal' is a schema-1 objective"),
        (
            GOOD + '[report]\ncells = ["arch", "optimizer"]\n',
            "[report].cells: 'optimizer' is not a setting in [fixed] or [space]",
        ),
        (GOOD + '[report]\nfigures = ["arch", "arch"]\n', "[report].figures must be a list of distinct setting names"),
        (GOOD + '[report]\ncolumns = ["arch"]\n', "[report]: unknown key 'columns'"),
        (GOOD + '[report]\nlabels = { arch = { vgg = "v" } }\n', "[report].labels.arch: 'vgg' is not a value of arch"),
        (
            GOOD + '[report]\nlabels = { arch = { convnet = "small/net" } }\n',
            "[report].labels.arch.convnet: 'small/net' must be",
        ),
    ],
)
def test_bad_schema_and_report_are_one_line_errors_naming_the_file(tmp_path: Path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_report_names_must_be_settings_of_the_objective(tmp_path: Path):
    path = write(tmp_path, GOOD.replace("[fixed]", "[fixed]\nwidth = 3") + '[report]\ncells = ["arch", "width"]\n')
    with pytest.raises(SpaceError, match="width: not a setting of objective image_classifier"):
        load_space(path).check_config(image_classifier.Config)


def test_an_objective_module_of_ones_own(tmp_path: Path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "__init__.py").write_text("")
    (tmp_path / "mine" / "partial.py").write_text("Config = None\n")
    (tmp_path / "mine" / "classifier.py").write_text(
        "from objectives.image_classifier import EMBEDDED_DATASET, Config, load_data, run\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for objective, message in (
        ("mine.nothere", "no module mine.nothere"),
        ("nothere", "no module objectives.nothere"),
        ("mine.partial", "mine.partial is not an objective module: it lacks EMBEDDED_DATASET, load_data, run"),
        ("synthetic", "objectives.synthetic is not an objective module"),
    ):
        path = write(tmp_path, GOOD.replace("[study]", f'[study]\nobjective = "{objective}"'))
        with pytest.raises(InputError) as err:
            registry.objective_module(load_space(path))
        assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    path = write(tmp_path, GOOD.replace("[study]", '[study]\nobjective = "mine.classifier"'))
    assert registry.objective_module(load_space(path)).Config is image_classifier.Config


def trial(number, value, **config):
    return create_trial(
        params={"arch": config["arch"]},
        distributions={"arch": CategoricalDistribution(["convnet", "resnet18"])},
        value=value,
        user_attrs={"config": config, "test_confusion": [[1, 0], [0, 1]], "class_names": ["a", "b"]},
    )


def layout_study(report=None):
    study = optuna.create_study(direction="maximize")
    for i, (arch, pretrained, loss) in enumerate(
        [("convnet", False, "ce"), ("resnet18", True, "ce"), ("resnet18", False, "focal"), ("resnet18", True, "focal")]
    ):
        study.add_trial(trial(i, 0.1 * i, arch=arch, pretrained=pretrained, loss=loss))
    if report is not None:
        study.set_user_attr("report", report)
    return study


def test_report_cells_and_figures_come_from_the_recorded_layout_or_the_dr_defaults():
    old = layout_study()  # a study made before studies recorded [report]
    frame = frames.trial_frame(old)
    assert set(frames.best_trials_per_cell(old, frame, True)) == {
        "best",
        "convnet_scratch",
        "resnet18_pretrained",
        "resnet18_scratch",
    }
    assert {"arch", "pretrained", "loss"} <= set(frames.cell_table(frame, True).columns)
    layout = ReportLayout(cells=("loss",), figures=("loss", "pretrained"), labels={"loss": {"focal": "fl"}})
    new = layout_study(layout.record())
    assert frames.recorded_layout(new) == ReportLayout.from_record(layout.record())
    picked = frames.best_trials_per_cell(new, frames.trial_frame(new), True)
    assert set(picked) == {"best", "ce_False", "ce_True", "fl_False", "fl_True"}
    cells = frames.cell_table(frames.trial_frame(new), True, frames.recorded_layout(new).cells)
    assert list(cells.loss) == ["ce", "focal"] and "arch" not in cells
    assert (
        ReportLayout().label("pretrained", True) == "pretrained"
        and ReportLayout().label("arch", "convnet") == "convnet"
    )
    assert (
        ReportLayout().label("pretrained", np.False_) == "scratch"
        and ReportLayout().label("pretrained", "True") == "pretrained"
    )
