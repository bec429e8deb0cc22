"""Every study of the paper as `python run.py -m experiment=<study> scale=demo`: real Hydra multiruns of
real subprocesses (shrunk further by overrides to fit the test budget), then the notebooks on them."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.test_run import ROOT, run
from wsp.utils.schedule import paper_schedule_images

# The demo scale shrunk: a few hundred tiny posts and a few hundred pretraining images per job.
TINY = ["scale=demo", "synthetic.posts=500", "synthetic.concepts=8", "synthetic.image_size=48",
        "synthetic.target_train_per_class=4", "synthetic.target_val_per_class=5", "synthetic.posts_per_file=250",
        "corpus.shard_size=100", "model.image_size=32", "data.batch_size=16", "data.num_workers=1",
        "study.pretrain.task.images=960"]  # fmt: skip
# Fewer points per sweep (command-line sweeps replace the study's own) and shorter fine-tuning.
EXTENT = {
    "headline": ["study.transfers.target.values.task.epochs=2", "study.seeds=2"],  # one job, two replicates
    "capacity": [
        "+model.kwargs.base_width=8",
        "study.transfers.target.values.task.epochs=1",
        "study.transfers.target.scratch_values.task.epochs=2",
    ],  # fmt: skip
    "data_size": [
        "corpus.subset=0.5,1.0",
        "model=resnext_tiny",
        "study.pretrain.task.images=paper",
        "study.pretrain.task.extremes=[[100,6],[1000,2]]",
    ],  # fmt: skip
    "vocabulary": ["synthetic.outside_in1k=3", "corpus.max_labels=null"],
    "resampling": ["++study.pretrain.data.resampling=natural,uniform"],
    "label_noise": ["corpus.label_noise=0.0,0.5"],
    "loss": [],
}
JOBS = {
    "headline": 1,
    "capacity": 2,
    "data_size": 2,
    "vocabulary": 2,
    "resampling": 2,
    "label_noise": 2,
    "loss": 2,
}
NOTEBOOKS = {"corpus": "resampling", "scaling": "data_size", "capacity": "capacity", "label_noise": "label_noise",
             "vocabulary": "vocabulary"}  # fmt: skip


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """study -> (sweep folder, finished process), each study run once on first use."""
    done = {}

    def sweep(study: str):
        if study not in done:
            folder = tmp_path_factory.mktemp(study)
            done[study] = folder, run("-m", f"experiment={study}", *TINY, *EXTENT[study], f"hydra.sweep.dir={folder}",
                                      timeout=900)  # fmt: skip
        return done[study]

    return sweep


def jobs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.isdigit())


@pytest.mark.slow
@pytest.mark.parametrize("study", list(EXTENT))
def test_every_demo_study_runs_each_job_end_to_end(sweeps, study):
    folder, done = sweeps(study)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(jobs(folder)) == JOBS[study]
    table = pd.read_csv(folder / "results.csv")  # written by the sweep's end-of-multirun callback
    assert sorted(table["run"].astype(str)) == [p.name for p in jobs(folder)]
    targets = [c for c in table.columns if c.endswith("/top1") and not c.startswith("pretrain")]
    assert (
        targets
        and table[targets].notna().all().all()
        and table[targets].apply(lambda c: c.between(0, 100)).all().all()
    )
    for job in jobs(folder):
        results = json.loads((job / "results.json").read_text())
        assert results["task"] == "study" and results["wall_time_s"] > 0
        host = results["host"]  # what the numbers depend on beyond config and seeds (README: Resampling)
        assert (
            host["torch"] == torch.__version__
            and host["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        )
        assert host["cpu"] and host["threads"] >= 1 and table["host.cpu"].notna().all()
        assert results["config"]["study"]["name"] == study
        if results["config"]["study"]["pretraining"] == "hashtags":
            folders = [f"seed{r['seed']}/" for r in results.get("replicates", [])] or [""]
            assert results["images_processed"] > 0
            assert 0 < results["pretrain/train/time_s"] <= results["pretrain/wall_time_s"]  # not resumed
            assert all((job / f"{f}pretrain" / "backbone.safetensors").is_file() for f in folders)
        # one wandb run per job, offline, grouped by the sweep and tagged by the study
        (wandb_run,) = (job / "wandb").glob("offline-run-*/run-*.wandb")
        record = wandb_run.read_bytes()
        assert folder.name.encode() in record and study.encode() in record and b"demo" in record
    assert len(list((folder / "shared").glob("corpus-*"))) == table["corpus/path"].nunique()


@pytest.mark.slow
def test_data_size_subsets_nest_and_train_for_the_paper_rule(sweeps):
    folder, done = sweeps("data_size")
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(folder / "results.csv").sort_values("config.corpus.subset")
    sizes = table["corpus/train_images"].tolist()
    assert sizes[0] < sizes[1] and abs(sizes[0] / sizes[1] - 0.5) < 0.15
    for _, job in table.iterrows():
        scheduled = paper_schedule_images(job["corpus/train_images"], "linear", [[100, 6], [1000, 2]])
        assert scheduled <= job["images_processed"] < scheduled + 16  # whole batches of 16

    def train_keys(corpus):
        return {k for ref in Path(corpus).glob("train-*.tar") for k in _keys(ref)}

    small, large = (train_keys(path) for path in table["corpus/path"])
    assert small < large


def _keys(tar: Path) -> set[str]:
    import tarfile

    with tarfile.open(tar) as members:
        return {m.name.split(".")[0] for m in members}


@pytest.mark.slow
def test_a_seeds_axis_builds_each_input_once_and_changes_only_training(sweeps):
    """study.seeds=2: two replicates of one job with seeds 0 and 1, on one synthetic world and one corpus
    (their own seeds); the job's row has each metric's mean, sd, n and 95% interval."""
    folder, done = sweeps("headline")
    assert done.returncode == 0, done.stderr[-3000:]
    (job,) = jobs(folder)
    results = json.loads((job / "results.json").read_text())
    replicates = results["replicates"]
    assert [r["seed"] for r in replicates] == [0, 1]
    assert {r["corpus/path"] for r in replicates} == {results["corpus/path"]}
    assert len(list((folder / "shared").glob("corpus-*"))) == 1
    assert len(list((folder / "shared").glob("synthetic*"))) == 1
    tops = [r["target/top1"] for r in replicates]
    assert results["target/top1"] == pytest.approx(sum(tops) / 2) and results["target/top1/n"] == 2
    assert results["target/top1/sd"] == pytest.approx(abs(tops[0] - tops[1]) / 2**0.5)
    weights = [(job / f"seed{s}" / "pretrain" / "backbone.safetensors").read_bytes() for s in (0, 1)]
    assert weights[0] != weights[1]  # the seed reached training
    row = pd.read_csv(folder / "results.csv").iloc[0]
    assert row["target/top1/n"] == 2 and row["target/top1/ci95"] == pytest.approx(
        12.706 * row["target/top1/sd"] / 2**0.5, rel=1e-3
    )  # t(0.975, 1 degree of freedom)


@pytest.mark.slow
def test_vocabulary_demo_labels_concepts_outside_imagenet_only_with_wordnet(sweeps):
    folder, done = sweeps("vocabulary")
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(folder / "results.csv")
    labels = table.set_index("config.corpus.vocabulary")["corpus/labels"]
    assert labels["wordnet"] > labels["in1k"]
    target_in1k = folder / "shared" / "synthetic" / "target_in1k" / "train"
    assert len(list(target_in1k.iterdir())) == 8 - 3


@pytest.mark.slow
@pytest.mark.parametrize(("notebook", "study"), list(NOTEBOOKS.items()))
def test_study_notebook_runs_headless_on_its_demo_sweep(sweeps, monkeypatch, notebook, study):
    import nbformat
    from nbclient import NotebookClient

    folder, done = sweeps(study)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setenv("WSP_SWEEP", str(folder))
    book = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    NotebookClient(book, timeout=300, resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    figure = {"corpus": "resampling"}.get(notebook, notebook)
    assert (folder / "figures" / f"{figure}.png").stat().st_size > 10_000
    if notebook == "corpus":
        assert (folder / "figures" / "label_zipf.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_study_run_again_in_its_folder_redoes_only_what_did_not_finish(sweeps):
    """A sweep relaunched into its folder (a preempted SLURM array, a crash): finished stages are read back,
    the missing one runs, and each job continues its own wandb run. Relaunched as submitit jobs (SLURM's
    path, on the local executor: the jobs run at once)."""
    folder, done = sweeps("loss")
    assert done.returncode == 0, done.stderr[-3000:]
    before = pd.read_csv(folder / "results.csv").set_index("run")
    (folder / "1" / "target" / "results.json").unlink()
    again = run("-m", "experiment=loss", *TINY, "hydra/launcher=submitit_local", f"hydra.sweep.dir={folder}",
                timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    logs = {job.name: (job / "run.log").read_text() for job in jobs(folder)}
    assert all(log.count("pretrain: finished before") == 1 for log in logs.values())
    assert logs["0"].count("target: finished before") == 1 and "target: finished before" not in logs["1"]
    after = pd.read_csv(folder / "results.csv").set_index("run")
    assert after.loc[0, "target/top1"] == before.loc[0, "target/top1"]
    assert after.loc[1, "target/top1"] == pytest.approx(before.loc[1, "target/top1"])  # the same features
    for job in jobs(folder):
        ids = {p.name.rsplit("-", 1)[1] for p in (job / "wandb").glob("offline-run-*")}
        assert len(list((job / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1
