"""The rules that decide what a study's numbers mean: the pretrained arm's normalisation, the
sampler that really searches, seeds of retried trials, cross-entropy validation loss, and a
fingerprint that tells studies of an earlier recipe apart."""

from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from optuna.trial import TrialState

from objectives.data import DeviceBatches, find_dataset, load_splits
from objectives.image_classifier import Config, pretrained_normalisation
from objectives.models import build_model
from objectives.train import Runtime, evaluate
from study.run.samplers import make_sampler, sampler_settings
from study.run.trainer import trial_seed
from study.spaces import registry
from study.spaces import space as space_module
from study.spaces.space import build_config, config_defaults
from study.spaces.space_file import load_space

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def normalised(space):
    """`space` with the settings the image classifier adds for its pretrained arm."""
    return space.with_settings(add=True, **pretrained_normalisation(space.possible_values))


def test_pretrained_arm_and_scratch_arm_both_get_the_weights_normalisation():
    space = registry.resolve("dr_focal")
    resolved = normalised(space)
    assert resolved.fixed["norm_mean"] == pytest.approx(IMAGENET[0]) and resolved.fixed["norm_std"] == pytest.approx(
        IMAGENET[1]
    )
    for pretrained in (True, False):  # both arms of the factor: it changes one thing
        config = build_config(Config, {**resolved.fixed, "pretrained": pretrained, "fe_epochs": 0})
        assert config.data.norm_mean == pytest.approx(tuple(IMAGENET[0]))
        assert config.data != build_config(Config, {**space.fixed}).data  # the data part keys the decoded data
    assert (
        normalised(space.pin("pretrained", False)).fixed["norm_mean"] == []
    )  # no weights: the data's own
    own = space.pin("norm_mean", [0.5, 0.5, 0.5]).pin("norm_std", [0.2, 0.2, 0.2])
    assert normalised(own).fixed["norm_mean"] == [0.5, 0.5, 0.5]  # explicit settings win
    defaults = config_defaults(Config)
    assert resolved.fingerprint(defaults) != space.pin("pretrained", False).fingerprint(defaults)


def test_tpe_models_conditional_parameters_jointly_after_its_startup_trials():
    space = registry.resolve("dr_focal").embedded_run()
    settings = sampler_settings(space)
    assert settings == {"class": "TPESampler", "seed": 0, "multivariate": True, "group": True, "constant_liar": True,
                        "n_startup_trials": space.embedded["sampler_startup_trials"]}
    assert space.embedded["sampler_startup_trials"] < space.study.trials  # the demo is not random search
    sampler = make_sampler(space, 0)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(space.study.sampler_startup_trials + 3):
        trial = study.ask()
        values = space.suggest(trial)
        study.tell(trial, values["lr"] * (2.0 if values["loss"] == "focal" else 1.0))
    study.ask()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))[0]
    # group=True: TPE models fe_epochs and focal_* within their conditions, not independently
    assert set(sampler.infer_relative_search_space(study, running)) >= {
        "lr",
        "loss",
        "fe_epochs",
        "focal_gamma",
        "focal_alpha",
    }


def test_a_retried_trial_keeps_the_seed_of_the_trial_it_resumes():
    study = optuna.create_study()
    first = study.ask()
    first.set_user_attr("config", {"seed": 41})
    study.tell(first, state=TrialState.FAIL)
    study.enqueue_trial({}, user_attrs={"resume_of": first.number})
    retry = study.ask()
    assert trial_seed(study, retry, base=0, setting="seed") == 41
    fresh = study.ask()
    assert trial_seed(study, fresh, base=100, setting="seed") == 100 + fresh.number


def test_validation_loss_is_cross_entropy_whatever_the_training_loss(dr_dir: Path):
    splits = load_splits(
        find_dataset(dr_dir, num_classes=5), image_size=32, val_fraction=0.25, split_seed=0, cache_dir=None
    )
    model = build_model("convnet", 5, pretrained=False, seed=0).eval()
    runtime = Runtime()
    got = evaluate(model, splits.val, splits, runtime)
    logits, targets = [], []
    with torch.no_grad():
        for x, y in DeviceBatches(
            splits.val, batch_size=7, device=torch.device("cpu"), mean=splits.mean, std=splits.std
        ):
            logits.append(model(x))
            targets.append(y)
    expected = F.cross_entropy(torch.cat(logits), torch.cat(targets)).item()
    assert got.loss == pytest.approx(expected, rel=1e-5)


def test_fingerprint_has_a_recipe_version_and_ignores_settings_at_their_default(tmp_path: Path, monkeypatch):
    text = (Path(registry.named_studies()["dr_focal"])).read_text()
    plain = text.replace('group_by = "auto"', "").replace("sampler_startup_trials = 10 ", "# ")
    assert plain != text
    written = tmp_path / "dr_focal.toml"
    written.write_text(plain)
    defaults = config_defaults(Config)
    shipped = registry.resolve("dr_focal").fingerprint(defaults)
    assert load_space(written).fingerprint(defaults) == shipped  # group_by "auto", TPE's 10 start-up trials: defaults
    assert registry.resolve("dr_focal").pin("group_by", "none").fingerprint(defaults) != shipped
    monkeypatch.setattr(space_module, "RECIPE_VERSION", space_module.RECIPE_VERSION - 1)
    assert registry.resolve("dr_focal").fingerprint(defaults) != shipped  # a study of the earlier recipe
