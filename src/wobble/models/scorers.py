"""What a new model is compared with on the same test rows: the count baseline, the simulator's
oracle (synthetic worlds only) and the current champion.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from wobble.core.config import Config
from wobble.core.vocab import CRISIS_SERVICES
from wobble.models.evaluate import Scorer
from wobble.models.fit import fit_baseline, predict_rows
from wobble.models.spec import ModelSpec
from wobble.models.tracking import client, load_version
from wobble.models.truth import crisis_risk, truth_file


def _scorers(cfg, key, spec, fit, calibrator, train_df, test_df, features, champ):
    """The model and everything it is compared with, scored on the test rows; and the oracle's note."""
    raw = predict_rows(fit, test_df, features)
    baseline = fit_baseline(train_df.select(spec.baseline.features).to_numpy(), train_df["label"].to_numpy())
    p_base = baseline.predict_proba(test_df.select(spec.baseline.features).to_numpy())[:, 1]
    scorers = [Scorer("model", raw, calibrator.predict(raw)), Scorer("baseline", p_base, p_base)]
    oracle, oracle_note = _oracle_scores(cfg, key, spec, test_df)
    if oracle is not None:
        scorers.append(Scorer("oracle", oracle, oracle))
    if champ is not None:
        raw_c = predict_rows(champ.booster, test_df, champ.features)
        scorers.append(Scorer("champion", raw_c, champ.calibrator.predict(raw_c)))
    return scorers, oracle_note


def _oracle_scores(cfg: Config, key: bytes | None, spec: ModelSpec, test_df: pl.DataFrame):
    """The simulator's true p_crisis for each test row, where the world is synthetic; and why not."""
    if truth_file(cfg, "risk.parquet") is None:
        return None, "no simulator truth: real data has no oracle"
    t = spec.target
    if t.kind != "crisis" or set(t.services) != set(CRISIS_SERVICES) or t.statuses:
        return None, "the simulator's true risk is of a crisis within its horizon, not this target"
    if key is None:
        return None, "the pseudonymisation key was not given, so the truth cannot be matched to people"
    risk = crisis_risk(cfg, key, sorted(set(test_df["as_of"].to_list())), people=test_df["person_id"])
    if risk.height and int(risk["horizon_days"][0]) != t.horizon_days:
        return None, f"the simulator's true risk is over {int(risk['horizon_days'][0])} days, not {t.horizon_days}"
    joined = test_df.select("person_id", "as_of").join(risk.select("person_id", "as_of", "p_crisis"),
                                                        on=["person_id", "as_of"], how="left", maintain_order="left")
    return joined["p_crisis"].to_numpy().astype(float), "the simulator's own probability (synthetic data only)"


@dataclass
class _Champion:
    version: str
    booster: object
    calibrator: object
    features: list[str]
    note: str


def _champion(cfg: Config, spec: ModelSpec, cat) -> _Champion | None:
    """The current champion of this model, if there is one whose features still exist."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client(cfg).get_model_version_by_alias(spec.name, "champion")
    except MlflowException:
        return None
    booster, calibrator, features, _run = load_version(cfg, spec.name, str(mv.version))
    missing = [f for f in features if f not in cat.columns]
    if missing:
        return None
    return _Champion(str(mv.version), booster, calibrator, features,
                     f"version {mv.version}, scored on this test period's rows")


