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
