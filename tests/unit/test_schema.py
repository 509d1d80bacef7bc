"""Schema 1, the search-space format before ``schema = 2``: read only from the text a study
recorded (its old studies resume by name and ablate), refused as a file with a one-line error
naming `study migrate`, which writes the schema-2 file of the same study (no training)."""

import shutil
import tomllib
from pathlib import Path

import optuna
import pytest

from objectives import contract, image_classifier
from study import cli
from study.cli.migrate import to_schema2
from study.spaces import registry
from study.spaces.schema1 import REFERABLE_DR, SCHEMA1_OBJECTIVES
from study.spaces.space import SpaceError, build_config, config_defaults
from study.spaces.space_file import load_space, load_space_text

from conftest import FIXTURES

RECIPE2 = FIXTURES / "recipe2_study" / "recipe2.toml"
RECIPE2_FINGERPRINT = "f63dadc571738629"  # what its study recorded, computed by the commit that made it (0795b6c)

# The shipped studies as schema-1 text, as the studies made from them recorded it (search_spaces/*.toml
# before schema 2, without [embedded]).
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


def fingerprint(space) -> str:
    """The fingerprint `run` compares with what a study recorded."""
    return space.fingerprint(config_defaults(image_classifier.Config))


def stored(text: str, name: str = "old"):
    return load_space_text(text, Path(f"{name}.toml"), name, stored=True)


@pytest.mark.parametrize("name", list(SCHEMA1))
def test_a_recorded_schema1_space_and_the_shipped_schema2_file_give_the_same_trials(name):
    legacy, shipped = stored(SCHEMA1[name], name), registry.resolve(name)
    assert (legacy.schema, shipped.schema) == (1, 2)
    assert legacy.study.objective == name and shipped.study.objective == "image_classifier"
    assert registry.objective_module(legacy) is registry.objective_module(shipped) is image_classifier
    assert legacy.embedded["dataset"] == shipped.embedded["dataset"] == SCHEMA1_OBJECTIVES[name].embedded_dataset
    assert configs(legacy) == configs(shipped)


def test_the_schema1_table_names_every_setting_of_the_image_classifier():
    for legacy in SCHEMA1_OBJECTIVES.values():
        assert set(legacy.settings) == set(config_defaults(image_classifier.Config))
        build_config(image_classifier.Config, dict(legacy.settings))  # every value passes the checks


def test_a_recorded_schema1_study_keeps_its_fingerprint():
    assert fingerprint(stored(RECIPE2.read_text(), "recipe2")) == RECIPE2_FINGERPRINT


@pytest.mark.parametrize("text", [
    RECIPE2.read_text(),  # a schema-1 objective
    "schema = 1\n" + RECIPE2.read_text(),
    '[study]\nobjective = "image_classifier"\n[fixed]\nepochs = 1\n',  # no schema line: once schema 1, now an error
])
def test_a_schema1_file_is_one_line_naming_study_migrate(tmp_path: Path, capsys, text):
    path = tmp_path / "old.toml"
    path.write_text(text)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)) and f"python -m study migrate {path}" in message
    assert cli.main(["run", str(path), "--results", str(tmp_path / "results")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "study migrate" in error
    assert not (tmp_path / "results").exists()


def test_migrate_writes_the_schema2_file_of_the_same_study(tmp_path: Path, capsys):
    old = tmp_path / "recipe2.toml"
    shutil.copy(RECIPE2, old)
    new = tmp_path / "new" / "recipe2.toml"
    new.parent.mkdir()
    assert cli.main(["migrate", str(old), "-o", str(new)]) == 0
    space = load_space(new)
    assert space.schema == 2 and fingerprint(space) == RECIPE2_FINGERPRINT
    assert configs(space) == configs(stored(RECIPE2.read_text()))  # the same trials
    assert space.embedded["dataset"] == "synthetic-fundus" and space.report.endpoints == (REFERABLE_DR,)
    doc = tomllib.loads(new.read_text())
    assert doc["study"]["schema1_objective"] == "dr_focal" and "objective" not in doc["study"]
    assert set(doc["fixed"]) == set(config_defaults(image_classifier.Config)) - set(doc["space"])  # spelled out
    assert doc["fixed"]["num_classes"] == 5 and doc["fixed"]["epochs"] == 1  # dr_focal's, the file's own
    assert old.read_text() == RECIPE2.read_text()


@pytest.mark.parametrize("name", list(SCHEMA1))
def test_migrate_keeps_the_fingerprint_trials_data_and_endpoints_of_each_schema1_objective(name):
    old = stored(SCHEMA1[name], name)
    new = load_space_text(to_schema2(SCHEMA1[name], Path(f"{name}.toml")), Path(f"{name}.toml"), name)
    assert (new.schema, new.study.objective) == (2, name) and fingerprint(new) == fingerprint(old)
    assert configs(new) == configs(old) and new.embedded == old.embedded and new.report == old.report


def test_migrate_refuses_to_overwrite_an_existing_output_without_force(tmp_path: Path, capsys):
    old = tmp_path / "recipe2.toml"
    shutil.copy(RECIPE2, old)
    out = tmp_path / "out.toml"
    out.write_text("mine")
    assert cli.main(["migrate", str(old), "-o", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{out} exists" in error and "--force" in error
    assert out.read_text() == "mine"
    assert cli.main(["migrate", str(old), "-o", str(out), "--force"]) == 0
    migrated = out.read_text()
    assert fingerprint(load_space(out)) == RECIPE2_FINGERPRINT
    assert cli.main(["migrate", str(old)]) == 0  # in place: the old file kept next to it
    assert old.read_text() == migrated and (tmp_path / "recipe2.toml.schema1").read_text() == RECIPE2.read_text()
    assert cli.main(["migrate", str(old)]) == 2
    assert "already schema 2" in capsys.readouterr().err
    assert (tmp_path / "recipe2.toml.schema1").read_text() == RECIPE2.read_text()


def test_a_schema1_file_of_another_objective_gains_only_the_schema_line(tmp_path: Path):
    text = ('[study]\nobjective = "image_classifier"\nsampler = "random"\nmetric = "accuracy"\n'
            '[fixed]\nepochs = 3\nbatch_size = 8\n'
            '[space]\nlr = { low = 1e-3, high = 1e-1, log = true }\nloss = { choices = ["ce", "focal"] }\n'
            '[embedded]\ntrials = 2\n')
    old = tmp_path / "mine.toml"
    old.write_text(text)
    assert cli.main(["migrate", str(old), "-o", str(tmp_path / "new.toml")]) == 0
    space = load_space(tmp_path / "new.toml")
    assert "schema1_objective" not in (tmp_path / "new.toml").read_text() and not space.defaults
    assert fingerprint(space) == fingerprint(stored(text)) and configs(space) == configs(stored(text))
    assert dict(space.embedded) == {"trials": 2} and space.study.metric == "accuracy"


@pytest.mark.parametrize("study, message", [
    ('schema1_objective = "dr_focus"', "[study].schema1_objective = 'dr_focus'; expected one of dr_focal, cifar_loss"),
    ('schema1_objective = "dr_focal"\nobjective = "mine.clf"', "runs objective = \"image_classifier\", not 'mine.clf'"),
    ('objective = "dr_focal"', "'dr_focal' is a schema-1 objective"),
])
def test_schema1_names_in_a_schema2_file_are_one_line_errors(tmp_path: Path, study, message):
    path = tmp_path / "s.toml"
    path.write_text(f"schema = 2\n[study]\n{study}\n[fixed]\nepochs = 1\n")
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


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
