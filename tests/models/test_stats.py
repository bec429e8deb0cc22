import pytest

from wsp.models.stats import PAPER
from wsp.tasks import run_task


def test_model_stats_match_the_papers_table_within_3_percent(compose_config):
    rows = run_task(compose_config("task=model_stats", "logger=csv"))["models"]
    assert set(rows) == set(PAPER)
    for name, row in rows.items():
        assert row["params"] == pytest.approx(row["paper_params"], rel=0.03), name
        assert row["mult_adds"] == pytest.approx(row["paper_mult_adds"], rel=0.03), name


def test_stats_of_a_model_without_paper_numbers(compose_config):
    rows = run_task(
        compose_config("task=model_stats", "task.models=[wsp_resnext_tiny]", "task.image_size=64")
    )["models"]
    assert rows["wsp_resnext_tiny"]["paper_params"] is None and rows["wsp_resnext_tiny"]["mult_adds"] > 0
