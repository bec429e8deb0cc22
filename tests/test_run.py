"""run.py as users run it: real subprocesses, real Hydra, real output folders."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import put

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ["headline", "capacity", "data_size", "vocabulary", "resampling", "label_noise", "loss"]


def run(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_cfg_job_prints_the_composed_config():
    done = run("--cfg", "job")
    assert done.returncode == 0
    cfg = OmegaConf.create(done.stdout)
    assert cfg.task.name == "demo" and cfg.model.name == "wsp_resnext_tiny" and cfg.model.compile is False


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
    for key in ("probe_pretrained/top1", "probe_random/top1", "scratch/top1"):
        assert 0 <= results[key] <= 100
    assert "probe_pretrained/top1" in done.stdout and (out / "demo.png").stat().st_size > 10_000
    assert results["corpus/train_images"] > 400 and results["images_processed"] == 3200
    (corpus,) = out.glob("corpus-in1k-*")
    for stage in ("synthetic", corpus.name, "pretrain", "probe_pretrained", "probe_random", "scratch"):
        assert (out / stage / "results.json").is_file(), stage
    assert (out / "pretrain" / "backbone.safetensors").is_file()
    (wandb_run,) = out.glob("wandb/offline-run-*/run-*.wandb")  # one wandb run for the whole demo
    record = wandb_run.read_bytes()
    for key in (b"pretrain-train/loss", b"probe_random-probe/top1", b"scratch-val/top1"):  # stage-prefixed
        assert key in record, key
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


@pytest.mark.full_demo
def test_default_demo_pretraining_beats_both_baselines_by_30_points(tmp_path):
    """The README's claim, at the README's settings: the full default demo (about 6 minutes here, one
    seed, so out of the default run: `bash scripts/test.sh -m full_demo`). Its worst of five seeds beat
    the better baseline by 68 points. The demo's pipeline runs in every suite at demo_small size."""
    done = run(f"hydra.run.dir={tmp_path}", "logger=csv", timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    baseline = max(results["probe_random/top1"], results["scratch/top1"])
    assert results["probe_pretrained/top1"] >= baseline + 30, results


@pytest.mark.slow
def test_corpus_map_stages_run_as_submitit_job_arrays(tmp_path, synthetic_dir_for_runs, corpus_for_runs):
    """The SLURM path, on submitit's local executor: each map stage a Hydra multirun over input parts. The
    staged build writes what one process writes (`corpus_for_runs`: the same posts and shard size)."""
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
    for name in ("sizes.json", "vocab.json", "stats.json"):
        assert (tmp_path / "staged" / name).read_text() == (corpus_for_runs / name).read_text(), name
    assert sorted(p.name for p in (tmp_path / "staged").glob("*.tar")) == sorted(
        p.name for p in corpus_for_runs.glob("*.tar"))  # fmt: skip


@pytest.fixture(scope="module")
def corpus_for_runs(tmp_path_factory, synthetic_dir_for_runs) -> Path:
    corpus = tmp_path_factory.mktemp("corpus_run")
    built = run("task=corpus", f"corpus.input={synthetic_dir_for_runs / 'posts' / '*.jsonl'}", f"corpus.output={corpus}",
                "corpus.shard_size=50", f"hydra.run.dir={corpus}")  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    return corpus


@pytest.mark.slow
def test_pretrain_with_ddp_on_two_cpu_processes(tmp_path, corpus_for_runs):
    corpus = corpus_for_runs
    out = tmp_path / "ddp"
    done = run("task=pretrain", "trainer=ddp_cpu", f"data.path={corpus}", "task.images=640", "data.batch_size=16",
               "data.num_workers=1", "model.image_size=32", "logger=csv", f"hydra.run.dir={out}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 20 and results["images_processed"] == 640  # 20 steps x 16 images x 2 processes
    assert results["train/images_per_s"] == pytest.approx(2 * results["train/images_per_s_per_device"])
    assert (out / "backbone.safetensors").is_file()


@pytest.mark.slow
def test_a_ddp_run_killed_twice_and_resumed_on_other_layouts_trains_on_what_an_uninterrupted_run_does(
    tmp_path, corpus_for_runs
):
    """2 ranks, SIGKILLed after a checkpoint; resumed on 2 ranks and SIGKILLed after the next checkpoint;
    resumed on 1 rank x 1 worker to the end. Its ledger (every item trained, rows past each checkpoint
    dropped at the resume) equals an uninterrupted 1-rank run's item by item, and after the 2 -> 1 resume
    the lr at every step is the uninterrupted run's at the same images: the current global batch's."""
    import pandas as pd

    args = ["task=pretrain", f"data.path={corpus_for_runs}", "task.images=960", "task.checkpoint_every=4",
            "data.batch_size=16", "data.num_workers=1", "model.image_size=32", "logger=csv", "data.ledger=true",
            "trainer.log_every_n_steps=1"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run(*args, "trainer=cpu", f"hydra.run.dir={whole}").returncode == 0
    last = killed / "checkpoints" / "last.ckpt"
    first = kill_after_checkpoint(
        [*args, "trainer=ddp_cpu", f"hydra.run.dir={killed}"], last, killed / "ledger"
    )
    second = kill_after_checkpoint(
        [*args, "trainer=ddp_cpu", f"hydra.run.dir={killed}", "ckpt_path=last"], last, killed / "ledger"
    )
    assert 0 < first < second and second * 32 < 960
    resumed = run(*args, "trainer=cpu", f"hydra.run.dir={killed}", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((killed / "results.json").read_text())
    assert results["images_processed"] == results["images_scheduled"] == 960
    assert results["steps"] == second + (960 - second * 32) // 16

    def ledger(run_dir):
        rows = pd.concat([pd.read_csv(f) for f in sorted((run_dir / "ledger").glob("*.csv"))])
        return rows.sort_values(["pass", "block", "item"]).reset_index(drop=True)

    items = ["pass", "block", "item", "shard", "key", "copy", "decoded"]
    trained, expected = ledger(killed), ledger(whole)
    assert len(expected) == 960 and not trained.duplicated(["pass", "block", "item"]).any()
    pd.testing.assert_frame_equal(trained[items], expected[items])
    assert sorted(trained["rank"].unique()) == [0, 1]

    def lrs(metrics):
        frame = pd.read_csv(metrics)
        return frame["train/lr"].dropna().tolist()

    tail = lrs(max((killed / "csv").glob("resumed-*/metrics.csv")))  # the last resume's (1 rank) log
    uninterrupted = lrs(whole / "csv" / "metrics.csv")
    assert tail == pytest.approx(uninterrupted[second * 2 :], rel=1e-6)


def kill_after_checkpoint(args: list[str], checkpoint: Path, ledger: Path | None = None) -> int:
    """Start run.py with `args`, SIGKILL it (and the ranks it started) once it writes `checkpoint` anew
    (and, with `ledger`, once rows past that checkpoint reached the ledger's files); the checkpoint's step."""
    import os
    import signal
    import time

    def written():
        return sum(f.stat().st_size for f in ledger.glob("*.csv")) if ledger and ledger.is_dir() else 0

    before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    while process.poll() is None and (not checkpoint.exists() or checkpoint.stat().st_mtime_ns == before):
        time.sleep(0.01)
    saved = written()
    while ledger and process.poll() is None and written() <= saved:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and checkpoint.stat().st_mtime_ns != before, (
        "the run ended before a checkpoint"
    )
    return torch.load(checkpoint, weights_only=True)["global_step"]


@pytest.mark.slow
def test_pretrain_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, corpus_for_runs):
    """SIGKILL after the first checkpoint, resume with ckpt_path=last: same samples, same final weights."""
    from safetensors.torch import load_file

    args = ["task=pretrain", f"data.path={corpus_for_runs}", "task.images=960", "task.checkpoint_every=5",
            "data.batch_size=8", "data.num_workers=2", "model.image_size=32", "logger=csv",
            "+trainer.deterministic=true"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run(*args, f"hydra.run.dir={whole}").returncode == 0
    last = killed / "checkpoints" / "last.ckpt"
    step = kill_after_checkpoint([*args, f"hydra.run.dir={killed}"], last)
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    epoch_steps = json.loads((whole / "results.json").read_text())["steps"] // 3 + 1  # ~2.7 epochs in all
    assert 0 < step < 120 and step % epoch_steps, step  # killed mid-epoch
    # The run's training clock lives in the checkpoint: set it to 1,000 s, and the resumed run's
    # train/time_s must carry it (a clock restarted at the resume stays under this invocation's time).
    state = torch.load(last, weights_only=True)
    assert 0 < state["callbacks"]["Timer"]["time_elapsed"]["train"] < 1000
    state["callbacks"]["Timer"]["time_elapsed"]["train"] = 1000.0
    torch.save(state, last)

    resumed = run(*args, f"hydra.run.dir={killed}", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr
    results = json.loads((killed / "results.json").read_text())
    assert 1000 < results["train/time_s"] < 1000 + results["wall_time_s"]
    expected, got = load_file(whole / "backbone.safetensors"), load_file(killed / "backbone.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)

    def stream_position(run_dir):  # where training left the data stream: the items consumed
        state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["loops"]["fit_loop"]
        return state["state_dict"]["combined_loader"]

    assert stream_position(killed) == stream_position(whole)

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    refused = run(*args, f"hydra.run.dir={tmp_path / 'refused'}", f"ckpt_path={truncated}")
    assert refused.returncode != 0
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: ckpt_path={truncated}: truncated or corrupt")
    )


def test_a_sweep_aggregates_into_one_table(tmp_path):
    """A real Hydra multirun (two jobs), then task=aggregate over its folder."""
    import pandas as pd

    sweep = tmp_path / "sweep"
    swept = run("-m", "task=model_stats", "task.models=[wsp_resnext_tiny]", "task.image_size=64,128", "logger=csv",
                f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert swept.returncode == 0, swept.stderr[-2000:]
    done = run(
        "task=aggregate", f"task.sweep={sweep}", "task.format=parquet", f"hydra.run.dir={tmp_path / 'agg'}"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_parquet(sweep / "results.parquet").sort_values("config.task.image_size")
    assert table["run"].tolist() == ["0", "1"] and table["config.task.image_size"].tolist() == [64, 128]
    params, mult_adds = table["models.wsp_resnext_tiny.params"], table["models.wsp_resnext_tiny.mult_adds"]
    assert params.nunique() == 1 and mult_adds.iloc[1] == pytest.approx(4 * mult_adds.iloc[0], rel=0.05)
    refused = run("task=aggregate", f"task.sweep={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'agg2'}")
    assert (
        refused.stderr.strip().splitlines()[-1]
        == f"error: task.sweep={tmp_path / 'empty'}: no results.json under it"
    )


@pytest.mark.slow
def test_preflight_on_cpu_with_the_tiny_model(tmp_path):
    """task=preflight end to end on CPU: photos -> corpus -> pretraining -> checkpoint + resume -> probe."""
    done = run("task=preflight", "model=resnext_tiny", "trainer=cpu", "model.image_size=32", "task.photos=60",
               "task.photo_side=160", "task.images=128", "task.resume_images=32", "task.compile=[false]",
               "data.num_workers=1", "data.batch_size=16", "trainer.log_every_n_steps=4", f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    eager = results["eager"]
    assert eager["images_per_s_per_device"] > 0 and 0 <= eager["data_wait_fraction"] < 1
    assert (
        eager["checkpoint_write_s"] > 0 and eager["mfu"] is None and eager["peak_memory_gib"] is None
    )  # CPU
    assert 0 <= results["probe/top1"] <= 100
    assert set(results["study_gpu_days"]) == set(STUDIES) and min(results["study_gpu_days"].values()) > 0
    resumed = json.loads((tmp_path / "pretrain-eager" / "results.json").read_text())
    assert resumed["images_processed"] == 128 + 32 and "| images/s per device |" in done.stdout


@pytest.mark.slow
def test_evaluate_on_two_ddp_processes_counts_each_val_image_once(tmp_path, imagenet_root):
    """Evaluation summed over the ranks, each val image once; the paper's lower bound with three val
    images listed as duplicates of training images."""
    import timm

    import wsp.models.backbones  # noqa: F401  (registers wsp_resnext_tiny with timm)

    # 999 val images (one class's left out), so that a padding sampler would count one image twice
    root = tmp_path / "imagenet"
    root.mkdir()
    (root / "train").symlink_to(imagenet_root / "train")
    val = sorted((imagenet_root / "val").rglob("*.JPEG"))[:-1]
    val = [put(root / "val" / p.parent.name / p.name, p) for p in val]
    listed = [val[5], val[17], val[900]]  # val[5] is class 5's image: the only one the head below gets right
    matches = tmp_path / "matches.csv"
    matches.write_text(
        "eval_image,corpus_key,method,score\n"
        + "".join(f"{p},k{i},exact,1.0\n" for i, p in enumerate(listed))
    )
    common = [f"data.root={root}", "trainer=ddp_cpu", "model.image_size=32", "data.num_workers=0",
              "data.batch_size=64", f"data.duplicates={matches}", "logger=csv"]  # fmt: skip

    model = timm.create_model("wsp_resnext_tiny", num_classes=1000)
    state = model.state_dict()
    state["fc.weight"].zero_()
    state["fc.bias"].zero_()
    state["fc.bias"][[5, 4, 3, 2, 1]] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    torch.save(state, tmp_path / "classifier.pth")
    evaluate = run("task=evaluate", *common, f"backbone.weights={tmp_path / 'classifier.pth'}",
                   f"hydra.run.dir={tmp_path / 'evaluate'}")  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    assert "sync_dist=True" not in evaluate.stderr  # the counts are summed over the ranks by torchmetrics
    results = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    assert results["evaluate/val_images"] == 999 and results["evaluate/duplicates_listed"] == 3
    assert results["evaluate/top1"] == pytest.approx(100 / 999) and results["evaluate/top5"] == pytest.approx(
        500 / 999
    )
    assert results["evaluate/top1_lower_bound"] == 0.0  # its one right answer was listed


@pytest.mark.slow
def test_a_probe_on_two_ddp_processes_equals_one_process_on_any_shard_count_and_resume(
    tmp_path, synthetic_dir
):
    """The issue's command: an ImageNet replica of 9 train and 6 val images, 2 processes. With the default
    shard size one rank has no shard of either split; with 2-image shards both ranks extract and fit
    (5 and 3 shards: not multiples of the ranks); a resume with one shard pending leaves the others
    untouched. Each time the same images counted once, and the same probe as one process."""
    from safetensors.torch import load_file

    root = tmp_path / "imagenet"
    for split, per_class in (("train", 3), ("val", 2)):
        classes = sorted((synthetic_dir / "target" / split).iterdir())[:3]
        for folder in classes:
            for image in sorted(folder.iterdir())[:per_class]:
                put(root / split / folder.name / f"{image.stem}.JPEG", image)
    listed = sorted((root / "val").rglob("*.JPEG"))[:1]  # the paper's lower bound, with one listed duplicate
    matches = tmp_path / "matches.csv"
    matches.write_text(f"eval_image,corpus_key,method,score\n{listed[0]},k0,exact,1.0\n")
    common = ["task=probe", "data=imagenet", f"data.root={root}", "model.image_size=32", "data.num_workers=0",
              "logger=csv", f"task.feature_cache={tmp_path / 'features'}", f"data.duplicates={matches}"]  # fmt: skip

    def probe(name: str, *args: str) -> tuple[dict, dict]:
        done = run(*common, *args, f"hydra.run.dir={tmp_path / name}")
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads((tmp_path / name / "results.json").read_text())
        return results, load_file(tmp_path / name / "probe.safetensors")

    alone, alone_weights = probe("alone", "trainer=cpu")
    assert alone["probe/train_images"] == 9 and alone["probe/val_images"] == 6
    assert all(end["converged"] for end in alone["fits"]["res5"].values()), alone["fits"]
    for name, args in {"ddp": [], "ddp_shards": ["task.shard_images=2"]}.items():
        results, weights = probe(name, "trainer=ddp_cpu", *args)
        assert (results["probe/train_images"], results["probe/val_images"]) == (9, 6), name
        assert results["probe/duplicates_listed"] == 1, name
        assert results["probe/top1_lower_bound"] == alone["probe/top1_lower_bound"] <= alone["probe/top1"], (
            name
        )
        assert results["probe/top1"] == alone["probe/top1"] and results["probe/l2"] == alone["probe/l2"], name
        # the biases of the 997 classes without an image have no finite optimum (their logits only sink), so
        # they end where the tolerance stops the fit; the weights and the objective are determined
        for key in ("res5.weight", "res5.mean", "res5.std"):
            torch.testing.assert_close(
                weights[key], alone_weights[key], rtol=1e-3, atol=1e-4, msg=f"{name}: {key}"
            )
        refit, alone_refit = results["fits"]["res5"]["refit"], alone["fits"]["res5"]["refit"]
        assert refit["objective"] == pytest.approx(alone_refit["objective"], rel=1e-4), name
    cache = Path(results["feature_cache"])
    assert cache != Path(alone["feature_cache"])  # another shard size, other features
    assert sorted(p.name for p in cache.glob("*.safetensors")) == [
        *(f"train-{j:05d}.safetensors" for j in range(5)),
        *(f"val-{j:05d}.safetensors" for j in range(3)),
    ]

    # killed with one shard left: one pending shard for two ranks
    (cache / "train.json").unlink()
    (cache / "train-00003.safetensors").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")}
    resumed, _ = probe("resumed", "trainer=ddp_cpu", "task.shard_images=2")
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors") if p.name in kept} == kept
    assert (cache / "train-00003.safetensors").is_file() and resumed["probe/top1"] == alone["probe/top1"]


@pytest.mark.slow
def test_a_study_under_torchrun_runs_every_stage_on_every_rank_and_resumes_a_killed_fine_tune(
    tmp_path, demo_small
):
    """experiment=demo_small started the way a cluster starts it: 2 processes by torchrun, every rank in
    every stage (pretrain, both probes, fine-tune). Killed once the fine-tune stage has checkpointed
    mid-epoch, the same command finishes the job: finished stages read back, the fine-tune resumed from
    its checkpoint, and the results carry the keys of a single-process run."""
    import os
    import signal
    import time

    out = tmp_path / "study"
    command = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node=2", str(ROOT / "run.py"),
               "experiment=demo_small", "trainer=torchrun", "trainer.accelerator=cpu", "trainer.precision=32-true",
               "data.num_workers=1", f"hydra.run.dir={out}",
               "++study.transfers.scratch.values.data.batch_size=4",  # 3 steps an epoch on 2 ranks
               "++study.transfers.scratch.values.task.checkpoint_every=2"]  # fmt: skip
    checkpoint = out / "scratch" / "checkpoints" / "last.ckpt"
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while not checkpoint.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert checkpoint.is_file(), first.stderr.read()[-3000:]
    killed_at = torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]
    assert killed_at > 0 and not (out / "scratch" / "results.json").exists()

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    single = json.loads((demo_small[0] / "results.json").read_text())
    assert set(results) == set(single)
    for stage in ("probe_pretrained", "probe_random"):
        probe = json.loads((out / stage / "results.json").read_text())
        assert probe["probe/val_images"] == 30 and probe["probe/train_images"] == 24, stage
    scratch = json.loads((out / "scratch" / "results.json").read_text())
    assert (
        scratch["steps"] == 2 * 3 and scratch["finetune/val_images"] == 30
    )  # 2 epochs of 24 images, 2 x 4 a step
