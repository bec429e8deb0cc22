"""Every config file composes through Hydra, as `python run.py` would compose it."""

import pytest
from omegaconf import OmegaConf

from wsp.config import CONF_DIR, group_choices

GROUPS = ["task", "synthetic", "corpus", "data", "model", "optim", "trainer", "logger", "scale", "experiment"]


@pytest.mark.parametrize(("group", "choice"), [(g, c) for g in GROUPS for c in group_choices(g)])
def test_every_config_choice_composes(compose_config, group, choice):
    cfg = compose_config(f"{group}={choice}")
    assert cfg.task.name and cfg.model.name and cfg.data.name


def test_every_model_config_names_a_registered_timm_model(compose_config):
    from wsp.models.backbones import check_model_name

    for choice in group_choices("model"):
        check_model_name(compose_config(f"model={choice}").model.name)


def test_transfer_tasks_default_to_a_labelled_dataset_and_user_choice_wins(compose_config):
    assert compose_config("task=probe").data.name == "imagefolder"
    assert compose_config("task=finetune").optim.schedule == "cosine"
    assert compose_config("task=pretrain").data.name == "hashtags"
    assert compose_config("task=probe", "data=hashtags").data.name == "hashtags"


def test_paper_fidelity_defaults(compose_config):
    corpus = compose_config("task=corpus", "corpus=wordnet17k", "seed=5")
    assert corpus.corpus.max_labels == 17000 and compose_config("corpus=top8.5k").corpus.max_labels == 8500
    assert (corpus.corpus.seed, corpus.synthetic.seed, corpus.data.seed) == (0, 0, 5), (
        "only training follows seed"
    )
    pretrain = compose_config("task=pretrain")
    assert pretrain.optim.decay_norm_and_bias is False and pretrain.task.interpolation == "linear"
    assert compose_config("task=finetune").optim.decay_norm_and_bias is False


def test_image_size_travels_with_the_model(compose_config):
    assert compose_config("model=resnext101_32x16d").data.image_size == 224
    assert compose_config("model=resnext_tiny").data.image_size == 64


def test_torchrun_trainer_reads_nodes_and_devices_from_torchruns_environment(compose_config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "32")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    trainer = compose_config("trainer=torchrun").trainer
    assert (trainer.devices, trainer.num_nodes, trainer.strategy) == (8, 4, "ddp")


def test_slurm_trainer_sizes_the_submitit_job_from_the_trainer():
    from hydra import compose, initialize_config_dir

    from wsp.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["trainer=slurm", "trainer.num_nodes=4"],
                      return_hydra_config=True)  # fmt: skip
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (4, 8, 8)


@pytest.mark.parametrize("task", group_choices("task"))
def test_every_task_composes_with_every_experiment(compose_config, task):
    """The demo composes each stage's task with the user's experiment: their keys must not collide."""
    for experiment in group_choices("experiment"):
        assert compose_config(f"experiment={experiment}", f"task={task}").task.name == task


STUDIES = [e for e in group_choices("experiment") if e != "demo_small"]


@pytest.mark.parametrize("scale", group_choices("scale"))
@pytest.mark.parametrize("study", STUDIES)
def test_every_study_composes_at_every_scale_with_its_sweep(tmp_path, study, scale):
    """Each study is a sweep (or, headline, one job) with transfer targets; at demo scale on the synthetic
    corpus and CPU, at full scale on the target datasets named by study.roots."""
    from hydra import compose, initialize_config_dir

    from wsp.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={study}", f"scale={scale}", f"output_dir={tmp_path}"],
                      return_hydra_config=True)  # fmt: skip
    assert (cfg.task.name, cfg.study.name, cfg.study.scale) == ("study", study, scale)
    assert cfg.hydra.runtime.choices.study == f"{study}/{scale}"
    assert cfg.study.transfers, "a study transfers to at least one target"
    assert cfg.hydra.sweeper.params, "a study is a sweep (the headline: of one job)"
    roots = [t.root for t in cfg.study.transfers.values()]
    if scale == "demo":
        assert cfg.study.source == "synthetic" and cfg.trainer.accelerator == "cpu"
        assert all(root.startswith(cfg.study.synthetic) for root in roots)
    else:
        assert cfg.study.source == "posts" and "trainer" in cfg.hydra.sweeper.params
        assert all(root is None for root in roots), "full-scale targets come from study.roots"


def test_capacity_imagenet_only_arm_trains_with_the_pretraining_recipe_at_imagenet_size(tmp_path):
    """The paper's ImageNet-only baselines: the schedule rule at N = 1.28M, warm-up and 20 halvings, 3,072
    images per step at peak lr 1.2 (on the README's 8 nodes x 8 GPUs)."""
    from hydra import compose, initialize_config_dir

    from wsp.tasks.study import _transfer
    from wsp.utils.schedule import paper_schedule_images, peak_lr

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=capacity", "study.pretraining=none",
                      "study.roots.imagenet=/data/imagenet", f"output_dir={tmp_path}"])  # fmt: skip
    scratch = _transfer(cfg, "in1k")["values"]
    sgd = compose_optim("sgd")
    assert scratch.task.epochs == round(paper_schedule_images(1_281_167) / 1_281_167)
    global_batch = scratch.data.batch_size * 8 * 8 * scratch.trainer.accumulate_grad_batches
    assert global_batch == 3072 and peak_lr(scratch.optim.base_lr, global_batch) == pytest.approx(1.2)
    optim = OmegaConf.merge(compose_optim("finetune"), scratch.optim)
    assert optim == sgd, "the from-scratch arm's optimiser is the pretraining recipe"


def compose_optim(choice: str):
    return OmegaConf.load(CONF_DIR / "optim" / f"{choice}.yaml")


def test_the_paper_regime_world_is_one_the_generator_draws_for_every_study(compose_config, in1k):
    """synthetic=paper_regime over each study's demo settings (the vocabulary study's 80% outside
    ImageNet-1k from the command line): real WordNet and ImageNet-22k synsets for all 24 concepts."""
    from wsp.corpus.synthetic import choose_concepts
    from wsp.hashtags.wordnet import imagenet1k_wnids

    for study, extra in [("resampling", []), ("vocabulary", ["synthetic.outside_in1k=19"])]:
        world = compose_config(
            f"experiment={study}", "scale=demo", "synthetic=paper_regime", *extra
        ).synthetic
        assert (world.concepts, world.posts) == (24, 35000)
        chosen = choose_concepts(in1k, world.concepts, world.zipf_exponent, world.seed, world.outside_in1k)
        outside = sum(c.wnid not in set(imagenet1k_wnids()) for c in chosen)
        assert len({c.wnid for c in chosen}) == 24 and outside == world.outside_in1k
        assert sum(c.frequency for c in chosen) == pytest.approx(1.0)
        if study == "resampling":
            assert world.zipf_exponent == 1.5, "the study's steeper curve holds in either world"
