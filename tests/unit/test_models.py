"""Any torchvision classifier by name: every name of `list_models` is an arch; its classifier layer
is found and replaced (the last Linear, or SqueezeNet's class conv) with the fp32 head; FE trains
that one layer only; the weights are torchvision's own file from TORCH_HOME (resnet50's V1, not
its V2 DEFAULT) and a trial records their name; an image size the arch cannot take is one line
before any trial. Four families training end to end through the real runner:
tests/e2e/test_models_e2e.py."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from torch import nn
from torchvision import models as tvm

from objectives import image_classifier
from objectives.data import find_dataset, load_splits
from objectives.losses import build_loss
from objectives.models import (
    ConvHead,
    Head,
    architectures,
    build_model,
    find_head,
    head_name,
    in_head,
    size_problem,
    weights_file,
    weights_name,
)
from objectives.train import Runtime, fit, freeze_backbone
from study import cli, records

from conftest import dr_labels, fit_cfg, write_dr_lab


def test_every_torchvision_classifier_is_an_arch_and_the_own_nets_stay():
    names = architectures()
    assert set(tvm.list_models(module=tvm)) <= set(names)
    assert {"convnet", "resnet18_32", "efficientnet_b0", "vit_b_16", "squeezenet1_1"} <= set(names)
    assert len(names) == len(set(names)) == len(tvm.list_models(module=tvm)) + 2


def test_an_unknown_arch_is_one_line_with_the_nearest_names():
    with pytest.raises(ValueError) as raised:
        image_classifier.TrainConfig(arch="resnet_50")
    message = str(raised.value)
    assert "arch 'resnet_50' is not a model: did you mean resnet50" in message and "\n" not in message


# ---------------------------------------------------------------- the head, per family (meta device: no memory)

@pytest.mark.parametrize("arch, head, kind", [
    ("resnet50", "fc", Head),
    ("convnet", "fc", Head),
    ("resnet18_32", "fc", Head),
    ("efficientnet_b0", "classifier.1", Head),
    ("convnext_tiny", "classifier.2", Head),
    ("mobilenet_v3_small", "classifier.3", Head),  # classifier.0, its 576->1024 Linear, stays
    ("vgg11", "classifier.6", Head),  # FC6/FC7 stay
    ("maxvit_t", "classifier.5", Head),  # its pre-logits Linear (classifier.3) stays
    ("vit_b_16", "heads.head", Head),
    ("swin_t", "head", Head),
    ("densenet121", "classifier", Head),
    ("googlenet", "fc", Head),
    ("inception_v3", "fc", Head),
    ("squeezenet1_1", "classifier.1", ConvHead),  # no Linear: the conv to the 1000 classes
])
def test_the_classifier_layer_is_found_and_replaced(arch, head, kind):
    with torch.device("meta"):
        model = build_model(arch, 5, pretrained=False, seed=0)
    assert head_name(model) == head
    layer = model.get_submodule(head)
    assert type(layer) is kind and layer.weight.shape[0] == 5
    assert sum(isinstance(m, (Head, ConvHead)) for m in model.modules()) == 1
    assert model.eval()(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 5)


def test_regnet_builds_off_the_meta_device_with_its_fc_replaced():
    model = build_model("regnet_y_400mf", 5, pretrained=False, seed=0)  # RegNet builders cannot run on meta
    assert head_name(model) == "fc" and isinstance(model.fc, Head) and model.fc.out_features == 5


def test_the_last_linear_wins_and_a_conv_head_needs_the_category_count():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1000))
    assert find_head(net, 1000) == "4"
    convs = nn.Sequential(nn.Conv2d(3, 1000, 1), nn.ReLU(), nn.Conv2d(1000, 1000, 1), nn.Conv2d(1000, 7, 1))
    assert find_head(convs, 1000) == "2"
    with pytest.raises(ValueError, match="no nn.Linear and no Conv2d of 1000 outputs"):
        find_head(nn.Sequential(nn.Conv2d(3, 8, 1)), 1000)


@pytest.mark.parametrize("arch", ["googlenet", "inception_v3"])
def test_auxiliary_classifiers_are_off_so_train_mode_returns_logits(arch):
    with torch.device("meta"):
        model = build_model(arch, 5, pretrained=False, seed=0)
    assert model.aux_logits is False
    assert not any("aux" in name.lower() for name, _ in model.named_modules())
    out = model.train()(torch.empty(2, 3, 299, 299, device="meta"))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)


def test_conv_head_computes_in_float32_under_autocast():
    model = build_model("squeezenet1_1", 3, pretrained=False, seed=0).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.dtype == torch.float32 and logits.shape == (2, 3)


# ---------------------------------------------------------------- FE trains the head layer only

def test_a_head_name_matches_its_own_parameters_only():
    assert in_head("classifier.1", "classifier.1") and in_head("classifier.1.weight", "classifier.1")
    assert not in_head("classifier.10.weight", "classifier.1") and not in_head("classifier.1x", "classifier.1")
    model = nn.Module()
    model.classifier = nn.Sequential(nn.Identity(), Head(4, 4), *[nn.Identity() for _ in range(8)], nn.Linear(4, 4))
    freeze_backbone(model, frozen=True)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"classifier.1.weight", "classifier.1.bias"}
    freeze_backbone(model, frozen=False)
    assert all(p.requires_grad for p in model.parameters())


def save_random_weights(arch: str, model: nn.Module) -> Path:
    """A checkpoint of random values at the exact file torchvision's weights API reads (under the
    TORCH_HOME the test has set)."""
    target = weights_file(arch)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), target)
    return target


def test_fe_trains_only_the_head_of_a_pretrained_mobilenet(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    torch.manual_seed(7)
    saved = save_random_weights("mobilenet_v3_small", tvm.mobilenet_v3_small())
    assert saved == tmp_path / "home" / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    model = build_model("mobilenet_v3_small", 5, pretrained=True, seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    assert torch.equal(start["classifier.0.weight"], torch.load(saved, weights_only=True)["classifier.0.weight"])
    data = write_dr_lab(tmp_path / "dr", dr_labels(40), dr_labels(12, seed=1), size=32)
    splits = load_splits(find_dataset(data, num_classes=5), image_size=32, val_fraction=0.25, split_seed=0,
                         cache_dir=None)
    after_fe: dict[str, torch.Tensor] = {}

    def report(epoch, row):
        if epoch == 1:
            after_fe.update({k: v.clone() for k, v in model.state_dict().items()})

    cfg = fit_cfg(epochs=2, fe_epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=8)
    fit(model, build_loss("ce", class_counts=[1] * 5), splits, cfg, Runtime(), report)
    moved = {k for k in start if not torch.equal(start[k], after_fe[k])}
    assert moved == {"classifier.3.weight", "classifier.3.bias"}  # BatchNorm statistics and classifier.0 too


# ---------------------------------------------------------------- weights: the file, its name, the record

def test_resnets_keep_their_v1_weights_and_the_name_is_what_a_trial_records():
    assert weights_name("resnet50", pretrained=True) == "ResNet50_Weights.IMAGENET1K_V1"  # DEFAULT is V2
    assert weights_name("resnet18", pretrained=True) == "ResNet18_Weights.IMAGENET1K_V1"
    assert weights_name("efficientnet_b0", pretrained=True) == "EfficientNet_B0_Weights.IMAGENET1K_V1"
    assert weights_name("efficientnet_b0", pretrained=False) is None
    assert weights_name("convnet", pretrained=False) is None
    assert weights_file("resnet50").name == "resnet50-0676ba61.pth"


def test_a_missing_weights_file_is_named_with_its_folder_and_nothing_is_downloaded(empty_torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(empty_torch_home))
    with pytest.raises(FileNotFoundError) as raised:
        build_model("convnext_tiny", 5, pretrained=True)
    folder = empty_torch_home / "hub" / "checkpoints"
    assert str(raised.value) == (f"pretrained weights of convnext_tiny missing: put convnext_tiny-983f1562.pth into "
                                 f"{folder}/")
    assert not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("arch, model", [("squeezenet1_1", tvm.squeezenet1_1),
                                          ("inception_v3", lambda: tvm.inception_v3(init_weights=False))])
def test_pretrained_weights_load_from_the_weights_file(tmp_path, monkeypatch, arch, model):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    saved = torch.load(save_random_weights(arch, model()), weights_only=True)
    built = build_model(arch, 4, pretrained=True, seed=0)
    state = built.state_dict()
    kept = [k for k in saved if k in state and not in_head(k, head_name(built))]
    assert kept and all(torch.equal(state[k], saved[k]) for k in kept)
    assert not any(k.startswith("AuxLogits") for k in state)  # the checkpoint's auxiliary head is dropped
    assert built.eval()(torch.randn(1, 3, 80, 80)).shape == (1, 4)


def test_the_weights_name_reads_back_from_the_trial():
    study = optuna.create_study()
    trial = study.ask()
    records.TrialWriter(trial).weights("ResNet50_Weights.IMAGENET1K_V1")
    study.tell(trial, 0.5)
    assert records.TrialRecord.from_trial(study.trials[0]).weights == "ResNet50_Weights.IMAGENET1K_V1"


# ---------------------------------------------------------------- image sizes: one line before trial one

@pytest.mark.parametrize("arch, size, pretrained, line", [
    ("vit_b_16", 64, False, "vit_b_16 needs image_size 224"),
    ("vit_b_16", 256, False, "vit_b_16 needs image_size 224"),
    ("maxvit_t", 256, False, "maxvit_t needs image_size 224"),
    ("vit_h_14", 224, True, "vit_h_14 needs image_size 518"),  # its weights are 518 px; from scratch 224 is right
    ("alexnet", 32, False, "alexnet needs image_size >= 63"),
    ("inception_v3", 64, False, "inception_v3 needs image_size >= 75"),
])
def test_an_image_size_the_arch_cannot_take_is_one_line(arch, size, pretrained, line):
    assert size_problem(arch, size, pretrained) == line
    with pytest.raises(ValueError) as raised:
        image_classifier.Config(data=image_classifier.DataConfig(image_size=size),
                                train=image_classifier.TrainConfig(arch=arch, pretrained=pretrained))
    assert str(raised.value) == line


@pytest.mark.parametrize("arch, size, pretrained", [
    ("vit_b_16", 224, False), ("vit_h_14", 224, False), ("alexnet", 63, False), ("inception_v3", 75, False),
    ("swin_t", 32, False), ("efficientnet_b0", 16, True), ("convnet", 16, False), ("resnet18_32", 16, False),
    ("regnet_y_400mf", 16, False),  # RegNet fails on meta: the weights' min_size (1) decides
])
def test_sizes_the_arch_takes_pass(arch, size, pretrained):
    assert size_problem(arch, size, pretrained) == ""


def test_run_refuses_an_arch_choice_the_image_size_does_not_fit_before_anything_is_written(tmp_path, capsys):
    path = tmp_path / "archs.toml"
    path.write_text('schema = 2\n[study]\nobjective = "image_classifier"\n[fixed]\nimage_size = 64\n'
                    '[space]\narch = { choices = ["resnet18", "vit_b_16"] }\n')
    code = cli.main(["run", str(path), "--results", str(tmp_path / "results"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    assert err.endswith("[space].arch = 'vit_b_16' would fail every trial that samples it: "
                        "vit_b_16 needs image_size 224")
    assert not (tmp_path / "results" / "optuna.db").exists()


# ---------------------------------------------------------------- end to end, from scratch
