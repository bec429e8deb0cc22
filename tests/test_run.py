"""run.py as users run it: real subprocesses, real Hydra, real output folders."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_cfg_job_prints_the_composed_config():
    done = run("--cfg", "job")
    assert done.returncode == 0
    assert "task:\n  name: demo" in done.stdout and "model:\n  name: wsp_resnext_tiny" in done.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["model=nope"], "model=nope is not a config choice; valid: resnext101_32x16d"),
        (["trainer=tpu,cpu"], "trainer=tpu is not a config choice"),
        (["task=pretrain", "optim.base_lr=-0.1", "data.path=/x"], "optim.base_lr=-0.1: must be a number > 0"),
        (["task=probe"], "data.root is required for task=probe"),
    ],
)
def test_bad_input_fails_in_one_line(tmp_path, args, expected):
    done = run(*args, f"hydra.run.dir={tmp_path}")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"error: {expected}" + done.stderr.strip().split(expected, 1)[1]
    ]


@pytest.fixture(scope="module")
def synthetic_dir_for_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic_run")
    done = run("task=synthetic", f"hydra.run.dir={out}", "synthetic.posts=400", "synthetic.concepts=6",
               "synthetic.image_size=48", "synthetic.posts_per_file=100")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def demo_small(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python run.py experiment=demo_small`, with wandb offline as by default."""
    out = tmp_path_factory.mktemp("demo_small")
    return out, run("experiment=demo_small", f"hydra.run.dir={out}", "data.num_workers=1")


@pytest.mark.slow
def test_demo_end_to_end_writes_results_plot_and_logs(demo_small):
    out, done = demo_small
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for key in ("pretrained_probe_top1", "random_probe_top1", "scratch_top1"):
        assert 0 <= results[key] <= 100
    assert "pretrained_probe_top1" in done.stdout and (out / "demo.png").stat().st_size > 10_000
    assert results["corpus"]["train"] > 400
    for stage in ("synthetic", "corpus", "pretrain", "probe_pretrained", "probe_random", "scratch"):
        assert (out / stage / "results.json").is_file(), stage
    assert (out / "pretrain" / "backbone.safetensors").is_file()
    assert list((out / "pretrain").glob("wandb/offline-run-*")), "wandb logged offline"
    assert "val/top1" in (out / "pretrain" / "csv" / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_demo_notebook_runs_headless_and_saves_its_figures(demo_small, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    out, done = demo_small
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setenv("WSP_RUN", str(out))
    notebook = nbformat.read(ROOT / "notebooks" / "demo.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    for figure in ("label_zipf.png", "pretraining.png", "transfer.png"):
        assert (out / "figures" / figure).stat().st_size > 5_000, figure


@pytest.mark.slow
def test_default_demo_pretraining_beats_both_baselines_by_10_points(tmp_path):
    """The README's claim, at the README's settings: the full default demo (about 6 minutes here)."""
    done = run(f"hydra.run.dir={tmp_path}", "logger=csv", timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    baseline = max(results["random_probe_top1"], results["scratch_top1"])
    assert results["pretrained_probe_top1"] >= baseline + 10, results


@pytest.mark.slow
def test_corpus_map_stages_run_as_submitit_job_arrays(tmp_path, synthetic_dir_for_runs):
    """The SLURM path, on submitit's local executor: each map stage a Hydra multirun over input parts."""
    posts = f"corpus.input={synthetic_dir_for_runs / 'posts' / '*.jsonl'}"
    common = [posts, "corpus.shard_size=50", "logger=csv"]

    def stage(name, *extra, multirun=False):
        args = ["-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / name}"] if multirun else [
            f"hydra.run.dir={tmp_path / name}"]  # fmt: skip
        done = run(*args, "task=corpus", f"corpus.stage={name}", *common, *extra)
        assert done.returncode == 0, done.stderr[-2000:]

    staged = f"corpus.output={tmp_path / 'staged'}"
    stage("count", staged, "corpus.num_parts=2", "corpus.part=0,1", multirun=True)
    stage("vocab", staged)
    stage("write", staged, "corpus.num_parts=2", "corpus.part=0,1", multirun=True)
    stage("finalize", staged)
    stage("all", f"corpus.output={tmp_path / 'local'}")
    for name in ("sizes.json", "vocab.json", "stats.json"):
        assert (tmp_path / "staged" / name).read_text() == (tmp_path / "local" / name).read_text(), name
    assert sorted(p.name for p in (tmp_path / "staged").glob("*.tar")) == sorted(
        p.name for p in (tmp_path / "local").glob("*.tar"))  # fmt: skip


@pytest.mark.slow
def test_pretrain_with_ddp_on_two_cpu_processes(tmp_path, synthetic_dir_for_runs):
    corpus = tmp_path / "corpus"
    built = run("task=corpus", f"corpus.input={synthetic_dir_for_runs / 'posts' / '*.jsonl'}", f"corpus.output={corpus}",
                "corpus.shard_size=50", f"hydra.run.dir={corpus}")  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    out = tmp_path / "ddp"
    done = run("task=pretrain", "trainer=ddp_cpu", f"data.path={corpus}", "task.images=640", "data.batch_size=16",
               "data.num_workers=1", "model.image_size=32", "logger=csv", f"hydra.run.dir={out}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 20 and results["images_processed"] == 640  # 20 steps x 16 images x 2 processes
    assert (out / "backbone.safetensors").is_file()
