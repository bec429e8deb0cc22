"""Each task through Hydra-composed configs and `run_task`, with the real Trainer, on miniature data."""

import json
from pathlib import Path

import pytest
import torch

from wsp.config import ConfigError
from wsp.tasks import run_task
from wsp.tasks.common import make_classifier

FAST = ["logger=csv", "data.num_workers=0", "data.batch_size=8", "model.image_size=32"]


def results(cfg) -> dict:
    return json.loads((Path(cfg.output_dir) / "results.json").read_text())


def test_pretrain_fast_dev_run_exports_a_backbone(compose_config, corpus_dir):
    cfg = compose_config("task=pretrain", f"data.path={corpus_dir}", "+trainer.fast_dev_run=true", *FAST)
    metrics = run_task(cfg)
    assert Path(metrics["backbone"]).is_file()
    assert results(cfg)["task"] == "pretrain" and results(cfg)["steps"] == 1


def test_pretrain_length_defaults_to_the_papers_rule(compose_config, corpus_dir):
    cfg = compose_config("task=pretrain", f"data.path={corpus_dir}", "+trainer.fast_dev_run=true", *FAST)
    assert cfg.task.images == "paper"
    train_images = sum(n for shard, n in json.loads((corpus_dir / "sizes.json").read_text()).items()
                       if shard.startswith("train-"))  # fmt: skip
    assert run_task(cfg)["images_scheduled"] == 120 * train_images  # a corpus below 1.2M: 120 epochs


def test_pretrain_logs_throughput_and_data_wait(compose_config, corpus_dir):
    cfg = compose_config("task=pretrain", f"data.path={corpus_dir}", "task.images=48", "trainer.log_every_n_steps=2",
                         *FAST)  # fmt: skip
    metrics = run_task(cfg)
    assert metrics["train/images_per_s"] == pytest.approx(metrics["train/images_per_s_per_device"])
    assert metrics["train/images_per_s"] > 0 and metrics["train/loss"] > 0
    assert 0 <= metrics["train/data_wait_fraction"] < 1
    logged = (Path(cfg.output_dir) / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/data_wait_fraction" in logged and "train/images_per_s_per_device" in logged


def test_pretrain_in_bf16_autocast(compose_config, corpus_dir):
    """trainer=gpu's precision, on CPU: uint8 batches standardised, the loss in fp32."""
    cfg = compose_config("task=pretrain", f"data.path={corpus_dir}", "task.images=16", "trainer.precision=bf16-mixed",
                         *FAST)  # fmt: skip
    metrics = run_task(cfg)
    assert metrics["steps"] == 2 and 0 < metrics["train/loss"] < 10 and 0 <= metrics["val/top1"] <= 100


@pytest.mark.slow
def test_pretrain_compiled_with_activation_checkpointing(compose_config, corpus_dir):
    from safetensors.torch import load_file

    from wsp.models.backbones import create_backbone

    cfg = compose_config("task=pretrain", f"data.path={corpus_dir}", "task.images=16", "model.compile=true",
                         "model.grad_checkpointing=true", *FAST)  # fmt: skip
    metrics = run_task(cfg)
    assert metrics["steps"] == 2 and metrics["train/loss"] > 0
    assert load_file(metrics["backbone"]).keys() == create_backbone(cfg.model.name).state_dict().keys()


def test_finetune_one_epoch_with_listed_duplicates(compose_config, synthetic_dir, tmp_path):
    """The final validation counts every val image once and the lower bound counts listed ones wrong."""
    val = sorted((synthetic_dir / "target" / "val").rglob("*.jpg"))
    matches = tmp_path / "matches.csv"
    matches.write_text(f"eval_image,corpus_key,method,score\n{val[0]},k,exact,1.0\n{val[0]},k2,phash,2\n")
    target = [f"data.root={synthetic_dir / 'target'}", f"data.duplicates={matches}"]
    cfg = compose_config("task=finetune", *target, "task.epochs=1", *FAST)
    metrics = run_task(cfg)
    assert 0 <= metrics["finetune/top1_lower_bound"] <= metrics["finetune/top1"] <= 100
    assert metrics["finetune/val_images"] == len(val) and metrics["finetune/duplicates_listed"] == 1
    matches.write_text(f"eval_image,corpus_key,method,score\n{tmp_path / 'elsewhere.jpg'},k,exact,1.0\n")
    with pytest.raises(
        ConfigError,
        match=r"data.duplicates=.*: 1 listed images are not in the val split, e.g. .*elsewhere.jpg",
    ):
        run_task(compose_config("task=finetune", *target, *FAST))


def test_pretrain_then_probe_and_finetune_from_its_outputs(compose_config, corpus_dir, cub_root):
    """A Lightning checkpoint and the exported backbone, each probed and fine-tuned on a CUB replica."""
    pre = compose_config("task=pretrain", f"data.path={corpus_dir}", "task.images=32", *FAST)
    pretrained = run_task(pre)
    assert pretrained["steps"] == 4 and "val/top1" in pretrained
    checkpoint = Path(pre.output_dir) / "checkpoints" / "last.ckpt"
    assert [p.name for p in checkpoint.parent.iterdir()] == ["last.ckpt"]  # one file, written once a save
    # weight decay spares BatchNorm and biases (Goyal et al.), as the saved optimizer's groups show
    groups = torch.load(checkpoint, weights_only=True)["optimizer_states"][0]["param_groups"]
    one_d = sum(p.ndim <= 1 for p in make_classifier(pre, pretrained["classes"], "softmax").parameters())
    assert sorted((g["weight_decay"], len(g["params"])) for g in groups)[0] == (0.0, one_d)
    assert sorted(g["weight_decay"] for g in groups) == [0.0, pre.optim.weight_decay] and one_d > 0
    target = ["data=cub", f"data.root={cub_root}", "data.crop_to_box=true"]
    for weights in (pretrained["backbone"], checkpoint):
        probe = compose_config(
            "task=probe", *target, f"backbone.weights={weights}", "task.l2_grid=[0.01,1.0]", *FAST
        )
        metrics = run_task(probe)
        assert (
            0 <= metrics["probe/top1"] <= 100
            and metrics["probe/train_images"] == 24
            and metrics["probe/val_images"] == 18
        )
    tune = compose_config("task=finetune", *target, f"backbone.weights={checkpoint}", "task.epochs=1", *FAST)
    assert run_task(tune)["steps"] == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=pretrain", "optim.base_lr=-1", "data.path=/x"], "optim.base_lr=-1"),
        (["task=pretrain"], "data.path is required"),
        (["task=pretrain", "data.path=/nonexistent"], "data.path=/nonexistent: no sizes.json"),
        (["task=probe", "data.root=/nonexistent"], "data.root=/nonexistent: no /nonexistent/train"),
        (
            ["task=probe", "data.root=/x", "backbone.weights=/no/such.safetensors"],
            "backbone.weights=/no/such",
        ),
        (["task=corpus"], "corpus.input is required"),
        (
            ["task=finetune", "model.loss=hinge", "data.root=/x"],
            "model.loss=hinge: valid are softmax, sigmoid",
        ),
        (["task=finetune", "task.checkpoint_every=0", "data.root=/x"], "task.checkpoint_every=0: must be"),
        (["task=pretrain", "trainer.devices=auto", "data.path=/x"], None),
    ],
)
def test_bad_config_values_fail_at_start_naming_the_key(compose_config, overrides, message, corpus_dir):
    if message is None:  # a device count the lr cannot be derived from
        overrides = ["task=pretrain", "trainer.devices=auto", f"data.path={corpus_dir}"]
        message = "trainer.devices=auto"
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        run_task(compose_config(*overrides))


def test_schedule_ends_that_would_train_a_larger_corpus_for_less_are_refused(compose_config, corpus_dir):
    cfg = compose_config(
        "task=pretrain", f"data.path={corpus_dir}", "task.extremes=[[100,60],[1000,2]]", *FAST
    )
    with pytest.raises(
        ConfigError, match=r"task.extremes=\[\[100, 60\], \[1000, 2\]\]: .* never trains for less"
    ):
        run_task(cfg)


def test_a_diverging_run_stops_naming_the_step_or_skips_and_counts(compose_config, corpus_dir):
    diverge = ["task=pretrain", f"data.path={corpus_dir}", "task.images=48", "optim.base_lr=1e30", *FAST]
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at step \d+"):
        run_task(compose_config(*diverge))
    metrics = run_task(compose_config(*diverge, "task.nonfinite_loss=skip"))
    assert metrics["train/skipped_steps"] >= 1  # the run finished, counting the skipped steps


def test_evaluate_a_classifier_with_its_own_head_on_imagenet_val(compose_config, imagenet_root, tmp_path):
    """A head that always ranks classes 5, 4, 3, 2, 1 first: top-1 is class 5's share of val, top-5 five's."""
    import timm
    import torch

    model = timm.create_model("wsp_resnext_tiny", num_classes=1000)
    state = model.state_dict()
    state["fc.weight"].zero_()
    state["fc.bias"].zero_()
    state["fc.bias"][[5, 4, 3, 2, 1]] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "classifier.pth")  # as DDP saves it
    cfg = compose_config("task=evaluate", f"data.root={imagenet_root}", f"backbone.weights={tmp_path / 'classifier.pth'}",
                         "data.num_workers=0", "data.batch_size=250")  # fmt: skip
    metrics = run_task(cfg)
    assert metrics["evaluate/val_images"] == 1000 and metrics["crop_pct"] == 0.875
    assert metrics["evaluate/top1"] == pytest.approx(0.1) and metrics["evaluate/top5"] == pytest.approx(0.5)
