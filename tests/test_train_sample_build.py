"""Training builds its training dates' snapshots for the people its fits read, not for everyone.

At scale a fit reads at most `max_rows` rows (`sample_sql`): at 1,000,000 people and 33 training
dates, about one row in twenty. Which people those are follows from the registrations and
contacts alone (`fitting_rows`), so train builds only their snapshots; the model, its card's
figures and its lists must be those of a training that built everyone's.
"""

from __future__ import annotations

import re

import pytest
from conftest import TEST_KEY, copy_tree

from wobble.core.config import PACKAGED_MODELS

pytestmark = pytest.mark.slow


def _small_fits(models):
    """The shipped specs, with fits small enough that 3,000 people are sampled, and the comparator
    reading a wider sample than the model (so the people built must be both samples)."""
    ew = models / "early_warning_90d.yml"
    text = ew.read_text()
    ew.write_text(re.sub(r"(\n  early_stopping_rounds:)", r"\n  max_rows: 2000\n  search_rows: 1500\1", text, count=1))
    crisis = models / "crisis_90d.yml"
    text = crisis.read_text()
    crisis.write_text(re.sub(r"(\n  early_stopping_rounds:)", r"\n  search_rows: 8000\1", text, count=1))


def _timeless(evaluation: dict) -> dict:
    """The evaluation without what differs between two runs of the same training (times)."""
    out = {k: v for k, v in evaluation.items() if k not in ("trained_at",)}
    out["training"] = {**out["training"], "candidates": [{k: v for k, v in c.items() if k != "seconds"}
                                                        for c in out["training"]["candidates"]]}
    return out


def test_a_training_that_builds_the_sample_alone_gives_the_model_of_one_that_builds_everyone(
        tmp_path, tiny_world, monkeypatch):
    from wobble.core.config import load_config
    from wobble.core.warehouse import connect
    from wobble.models import train as train_module
    from wobble.models.spec import load_spec

    results, built = {}, {}
    for how in ("sample", "everyone"):
        work = copy_tree(tiny_world, tmp_path / how)
        copy_tree(PACKAGED_MODELS, work / "models")
        _small_fits(work / "models")
        toml = work / "wobble.toml"
        toml.write_text(toml.read_text().replace("[paths]\n", '[paths]\nmodels = "models"\n', 1))
        cfg = load_config(toml)
        assert load_spec(cfg.models_dir, "early_warning_90d").estimator.max_rows == 2000
        if how == "everyone":
            monkeypatch.setattr(train_module, "_people_to_build", lambda share, samples: None)
        results[how] = train_module.train(cfg, "early_warning_90d", key=TEST_KEY.encode(), register=False)
        with connect(cfg.warehouse, read_only=True) as con:
            built[how] = con.execute(
                "SELECT count(DISTINCT person_id) FROM feature_snapshots WHERE as_of IN "
                f"(SELECT unnest([{', '.join(repr(d.isoformat()) for d in results[how].split.train)}]::DATE[]))"
            ).fetchall()[0][0]
    sample, everyone = results["sample"], results["everyone"]
    assert 0 < built["sample"] < 0.7 * built["everyone"]  # a real sample was built, not everyone
    assert sample.evaluation["training"]["fit_share"] < 1  # … because the fit read a sample
    assert sample.metrics == everyone.metrics
    assert _timeless(sample.evaluation) == _timeless(everyone.evaluation)
    assert sample.rows_train == everyone.rows_train and sample.rows_test == everyone.rows_test
