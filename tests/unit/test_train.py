"""The training loop (`objectives.train`): pretrained weights from the local cache, the FE phase
freezing the backbone, the best epoch picked on validation, NaN loss, bf16 and compile on CPU."""

from pathlib import Path

import numpy as np
import pytest
import torch

from objectives.data import find_dataset, load_splits
from objectives.losses import build_loss
from objectives.models import build_model, head_name, in_head, missing_weights, weights_file
from objectives.train import CHECKPOINT_KEYS, Checkpointing, Diverged, Runtime, fit

from conftest import fit_cfg


@pytest.fixture
def splits(dr_dir: Path):
    return load_splits(
        find_dataset(dr_dir, num_classes=5), image_size=32, val_fraction=0.25, split_seed=0, cache_dir=None
    )


def backbone_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not in_head(k, head_name(model))}


def head_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if in_head(k, head_name(model))}


def test_pretrained_weights_load_from_local_cache(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    assert missing_weights(["resnet18"]) == []
    saved = torch.load(weights_file("resnet18"), weights_only=True)
    model = build_model("resnet18", 5, pretrained=True)
    assert torch.equal(model.state_dict()["conv1.weight"], saved["conv1.weight"])
    assert model.fc.out_features == 5


def test_missing_weights_are_named(empty_torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(empty_torch_home))
    missing = missing_weights(["resnet18", "resnet50", "convnet"])
    assert [p.name for p in missing] == ["resnet18-f37072fd.pth", "resnet50-0676ba61.pth"]
    assert all(p.parent == empty_torch_home / "hub" / "checkpoints" for p in missing)


def test_fe_phase_freezes_backbone_bit_identical_then_ft_moves_it(splits, torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    model = build_model("resnet18", 5, pretrained=True)
    start_backbone, start_head = backbone_state(model), head_state(model)
    after_fe = {}

    def report(epoch, row):
        if epoch == 2:  # the last FE epoch
            assert row["phase"] == "fe"
            after_fe["backbone"], after_fe["head"] = backbone_state(model), head_state(model)
        if epoch == 3:  # after FT; fit later restores the best epoch's weights, which may be FE's
            after_fe["ft"] = backbone_state(model)

    cfg = fit_cfg(epochs=3, fe_epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=16)
    result = fit(model, build_loss("ce", class_counts=[1] * 5), splits, cfg, Runtime(), report)
    assert result.curves["phase"] == ["fe", "fe", "ft"]
    # weights and BatchNorm running statistics alike
    assert all(torch.equal(start_backbone[k], after_fe["backbone"][k]) for k in start_backbone)
    assert any(not torch.equal(start_head[k], after_fe["head"][k]) for k in start_head)
    final = after_fe["ft"]
    moved = [k for k in start_backbone if k.endswith("weight") and not torch.equal(start_backbone[k], final[k])]
    assert "conv1.weight" in moved and "layer4.1.conv2.weight" in moved


def test_fit_picks_best_epoch_on_validation_and_evaluates_test(splits):
    seen = []
    cfg = fit_cfg(epochs=3, fe_epochs=0, lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=16, metric="accuracy")
    result = fit(
        build_model("resnet18", 5, pretrained=False),
        build_loss("ce", class_counts=[1] * 5),
        splits,
        cfg,
        Runtime(),
        lambda e, row: seen.append(e),
    )
    assert seen == [1, 2, 3]
    best = max(range(3), key=lambda i: (result.curves["val_accuracy"][i], -i))
    assert result.best_epoch == best + 1
    assert result.val.metrics["accuracy"] == result.curves["val_accuracy"][best]
    assert sum(map(sum, result.test.confusion)) == len(splits.test)
    assert sum(map(sum, result.val.confusion)) == len(splits.val)


def test_nan_loss_raises_diverged(splits):
    cfg = fit_cfg(epochs=2, fe_epochs=0, lr=1e30, momentum=0.9, weight_decay=0.0, batch_size=16)
    with pytest.raises(Diverged) as err:
        fit(
            build_model("resnet18", 5, pretrained=False),
            build_loss("ce", class_counts=[1] * 5),
            splits,
            cfg,
            Runtime(),
            lambda e, r: None,
        )
    assert err.value.reason == "nan_loss"


def test_bf16_autocast_path_runs_on_cpu(splits):
    """The CUDA fast path (bf16 autocast, channels_last) also runs on CPU with close results."""
    results = []
    for amp in (False, True):
        torch.manual_seed(0)
        model = build_model("resnet18", 5, pretrained=False)
        runtime = Runtime(amp=amp, channels_last=amp)
        cfg = fit_cfg(epochs=1, fe_epochs=0, lr=0.0, momentum=0.0, weight_decay=0.0, batch_size=16)
        results.append(fit(model, build_loss("ce", class_counts=[1] * 5), splits, cfg, runtime, lambda e, r: None))
    assert results[1].curves["val_loss"][0] == pytest.approx(results[0].curves["val_loss"][0], rel=0.05)


@pytest.mark.parametrize("every_s, saves", [(0.0, [1, 2, 3]), (3600.0, [])])
def test_checkpoints_follow_their_time_interval(splits, every_s, saves):
    """Every epoch with interval 0 (what the resume tests use); none within a long interval."""
    saved = []
    cfg = fit_cfg(epochs=3, fe_epochs=0, lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=16)
    fit(
        build_model("convnet", 5, pretrained=False, seed=0),
        build_loss("ce", class_counts=[1] * 5),
        splits,
        cfg,
        Runtime(),
        lambda e, r: None,
        Checkpointing(save=saved.append, every_s=every_s),
    )
    assert [state["epoch"] for state in saved] == saves
    assert all(set(state) == CHECKPOINT_KEYS for state in saved)  # the objective's declared keys, exactly


def test_compiled_model_trains_like_the_eager_one(splits):
    """`--compile` runs torch.compile (inductor, a C compiler on the CPU) and keeps the results."""
    results = []
    for compiled in (False, True):
        cfg = fit_cfg(epochs=2, fe_epochs=1, lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=16)
        model = build_model("convnet", 5, pretrained=False, seed=0)
        results.append(
            fit(
                model, build_loss("ce", class_counts=[1] * 5), splits, cfg, Runtime(compile=compiled), lambda e, r: None
            )
        )
    assert results[1].curves["phase"] == ["fe", "ft"]
    fe, ft = zip(results[1].curves["train_loss"], results[0].curves["train_loss"])
    assert fe[0] == pytest.approx(fe[1], rel=1e-3)  # FE trains the head alone: the same sums, reassociated
    # Fine-tuning amplifies the reassociation over an epoch of SGD steps: 1.0 % apart on the H200
    # machine's 16-core CPU with torch 2.11, under 0.1 % on 2 cores with torch 2.14.
    assert ft[0] == pytest.approx(ft[1], rel=3e-2)
    compiled, eager = (np.asarray(r.test.confusion) for r in results)
    assert compiled.sum() == eager.sum() and abs(np.trace(compiled) - np.trace(eager)) <= max(2, 0.05 * eager.sum())
