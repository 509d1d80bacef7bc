"""A study is a TOML file: the schema version, schema-1 objectives as settings of the one image
classifier, objective modules of one's own, and the [report] table (no training)."""

import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from objectives import contract, image_classifier
from objectives.errors import InputError
from study import registry
from study.report import frames
from study.report_layout import ReportLayout
from study.schema1 import SCHEMA1_OBJECTIVES
from study.space import SpaceError, build_config, config_defaults
from study.space_file import load_space

# The shipped studies as schema-1 files (search_spaces/*.toml before schema 2, without [embedded]).
SCHEMA1 = {
    "dr_focal": """
[study]
objective = "dr_focal"
metric = "kappa"
[fixed]
epochs = 15
batch_size = 32
momentum = 0.9
weight_decay = 5e-4
image_size = 512
val_fraction = 0.2
split_seed = 0
group_by = "auto"
norm_mean = []
norm_std = []
[space]
arch        = { choices = ["resnet18", "resnet50"] }
pretrained  = { choices = [true, false] }
fe_epochs   = { low = 0, high = "epochs - 1", when = { pretrained = true } }
lr          = { low = 1e-4, high = 1e-1, log = true }
loss        = { choices = ["ce", "focal"] }
focal_gamma = { low = 0.0, high = 5.0, when = { loss = "focal" } }
focal_alpha = { choices = ["none", "inverse_frequency", "effective_number"], when = { loss = "focal" } }
""",
    "cifar_loss": """
[study]
objective = "cifar_loss"
metric = "accuracy"
[fixed]
epochs = 30
batch_size = 128
momentum = 0.9
weight_decay = 0.0
step_size = 5
step_gamma = 0.5
image_size = 32
crop_padding = 4
hflip = true
norm_mean = [0.4914, 0.4822, 0.4465]
norm_std = [0.2023, 0.1994, 0.2010]
num_classes = 0
class_names = []
val_fraction = 0.1
split_seed = 0
group_by = "auto"
[space]
arch        = { choices = ["convnet", "resnet18_32"] }
loss        = { choices = ["l1", "ce", "focal"] }
focal_gamma = { low = 0.0, high = 5.0, when = { loss = "focal" } }
lr          = { low = 1e-3, high = 0.3, log = true }
""",
}


def configs(space, n=40):
    """The flat configs of `n` trials a seeded random sampler draws from `space`."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    found = []
    for _ in range(n):
        trial = study.ask()
        found.append(contract.flat(build_config(image_classifier.Config, space.with_defaults(space.suggest(trial)))))
        study.tell(trial, 0.0)
    return found


@pytest.mark.parametrize("name", list(SCHEMA1))
def test_a_schema1_file_and_the_shipped_schema2_file_give_the_same_trials(tmp_path: Path, name):
    old = tmp_path / f"{name}.toml"
    old.write_text(SCHEMA1[name])
    legacy, shipped = load_space(old), registry.resolve(name)
    assert (legacy.schema, shipped.schema) == (1, 2)
    assert legacy.study.objective == name and shipped.study.objective == "image_classifier"
    assert registry.objective_module(legacy) is registry.objective_module(shipped) is image_classifier
    assert legacy.embedded["dataset"] == shipped.embedded["dataset"] == SCHEMA1_OBJECTIVES[name].embedded_dataset
    assert configs(legacy) == configs(shipped)


def test_the_schema1_table_names_every_setting_of_the_image_classifier():
    for legacy in SCHEMA1_OBJECTIVES.values():
        assert set(legacy.settings) == set(config_defaults(image_classifier.Config))
        build_config(image_classifier.Config, dict(legacy.settings))  # every value passes the checks


def test_a_schema1_study_keeps_its_fingerprint():
    """The hash `run` compares with what a study recorded, computed by the commit that made the
    fixture (0795b6c, when dr_focal was a module of its own)."""
    fixture = Path(__file__).parent / "fixtures" / "recipe2_study" / "recipe2.toml"
    assert load_space(fixture).fingerprint(config_defaults(image_classifier.Config)) == "f63dadc571738629"


def test_settings_are_checked_once_for_every_study():
    with pytest.raises(SpaceError, match="focal_gamma must be a finite number >= 0"):
        build_config(image_classifier.Config, {"focal_gamma": -1.0})
    with pytest.raises(SpaceError, match="fe_epochs > 0 freezes a randomly initialised backbone"):
        build_config(image_classifier.Config, {"fe_epochs": 1})
    with pytest.raises(SpaceError, match="convnet has no pretrained weights"):
        build_config(image_classifier.Config, {"arch": "convnet", "pretrained": True})
    with pytest.raises(SpaceError, match="unknown setting.*dropout"):
        build_config(image_classifier.Config, {"dropout": 0.1})
    config = build_config(
        image_classifier.Config, {"image_size": 32, "norm_mean": [0.5] * 3, "norm_std": [0.2] * 3, "lr": 1}
    )
    assert config.data.norm_mean == (0.5,) * 3 and config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert hash(config.data) == hash(build_config(image_classifier.Config, {"image_size": 32, "norm_mean": [0.5] * 3,
                                                                           "norm_std": [0.2] * 3}).data)
    parts = {s.part for s in contract.settings(image_classifier.Config).values()}
    assert parts == {"data", "train"} and set(contract.flat(config)) == set(contract.settings(image_classifier.Config))


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
        (GOOD.replace("schema = 2", "schema = 3"), "schema = 3 is unknown; this version reads schema 1 or 2"),
        (GOOD.replace("schema = 2", 'schema = "2"'), "schema = '2' is unknown"),
        (GOOD.replace("schema = 2", "") + "[report]\ncells = []\n", "[report] needs schema = 2"),
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
