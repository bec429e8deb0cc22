"""The study job's machinery: inputs built once per config and shared, stages composed like the CLI."""

import json
import threading

import pytest

from wsp.config import ConfigError
from wsp.tasks.study import built_once, compose_stage


def test_an_input_is_built_once_and_then_shared(tmp_path):
    builds = []

    def build(partial):
        builds.append(partial)
        partial.mkdir()
        (partial / "data.txt").write_text("built")

    folder = tmp_path / "corpus-x"
    threads = [threading.Thread(target=built_once, args=(folder, build, {"a": 1})) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and (folder / "data.txt").read_text() == "built"
    assert json.loads((folder / "built_from.json").read_text()) == {"a": 1}
    with pytest.raises(ConfigError, match="built from another config"):
        built_once(folder, build, {"a": 2})


def test_a_failed_build_leaves_no_folder_that_looks_finished(tmp_path):
    def failing(partial):
        partial.mkdir()
        raise RuntimeError("killed")

    folder = tmp_path / "synthetic"
    with pytest.raises(RuntimeError):
        built_once(folder, failing, {})
    assert not folder.exists() and (tmp_path / "synthetic.partial").is_dir()

    def resuming(partial):
        (partial / "rest").write_text("done")

    assert (built_once(folder, resuming, {}) / "rest").is_file()


def test_a_stage_is_composed_like_the_command_line_without_the_jobs_own_settings(tmp_path):
    from hydra import initialize_config_dir

    from wsp.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_stage("probe", ["experiment=label_noise", "scale=demo", "corpus.label_noise=0.25"],
                            {"output_dir": str(tmp_path), "data.root": "/data/target"},
                            {"task": {"max_iter": 7}})  # fmt: skip
    assert (cfg.task.name, cfg.data.name, cfg.data.root) == ("probe", "imagefolder", "/data/target")
    assert cfg.task.max_iter == 7 and cfg.corpus.label_noise == 0.25 and cfg.model.name == "wsp_resnext_tiny"
    assert "study" not in cfg


def test_replicates_summarise_as_mean_sd_n_and_a_95_percent_interval():
    """Three seeds of a study point: each numeric metric's mean under its own key, its sample sd and n;
    other values as the first seed has them; the seeds themselves kept; aggregate's t interval."""
    import math

    from wsp.tasks.aggregate import with_intervals
    from wsp.tasks.study import summarise

    runs = [{"seed": s, "probe/top1": top1, "corpus/path": "/c", "pretrain/steps": 10}
            for s, top1 in ((0, 50.0), (1, 60.0), (2, 70.0))]  # fmt: skip
    summary = summarise(runs)
    assert summary["probe/top1"] == 60.0 and summary["probe/top1/sd"] == 10.0 and summary["probe/top1/n"] == 3
    assert summary["pretrain/steps/sd"] == 0.0 and summary["corpus/path"] == "/c" and "seed" not in summary
    assert [r["seed"] for r in summary["replicates"]] == [0, 1, 2]
    half_width = with_intervals(summary)["probe/top1/ci95"]
    assert math.isclose(half_width, 4.302653 * 10.0 / math.sqrt(3), rel_tol=1e-6)  # t(0.975, 2) = 4.3027
