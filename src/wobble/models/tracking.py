"""MLflow, kept local: a SQLite store and an artifact folder under the configured data folder.

No server is needed; telemetry is off. Everything MLflow-shaped the other stages need goes through
here: where the store is, which experiment, and how to load a registered model version.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wobble.core.config import Config
from wobble.core.errors import WobbleError, first_line

EXPERIMENT = "wobble"

# OMP_WAIT_POLICY: LightGBM's OpenMP threads otherwise spin while they wait; on a busy 2-core
# machine that made a fit 5-10 times slower (measured). It must be set before LightGBM loads.
for _var, _val in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"),
                   ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"), ("OMP_WAIT_POLICY", "PASSIVE")):
    os.environ.setdefault(_var, _val)


def tracking_uri(cfg: Config) -> str:
    return f"sqlite:///{(cfg.mlflow_dir / 'mlflow.db').resolve()}"


def setup(cfg: Config) -> str:
    """Point MLflow at the local store; create the experiment if needed; return its id."""
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    cfg.mlflow_dir.mkdir(parents=True, exist_ok=True)
    db = cfg.mlflow_dir / "mlflow.db"
    # checked here: MLflow retries a store it cannot open for about two minutes before failing
    if not os.access(cfg.mlflow_dir, os.W_OK | os.X_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise WobbleError(f"cannot open the MLflow store {db} (permission denied): the user running wobble "
                          "must be able to write that folder")
    mlflow.set_tracking_uri(tracking_uri(cfg))
    mlflow.set_registry_uri(tracking_uri(cfg))
    try:
        exp = mlflow.get_experiment_by_name(EXPERIMENT)
    except Exception as exc:
        # SQLAlchemy's OperationalError (by name: it is MLflow's dependency, not ours): a folder or
        # database this user may not write
        if type(exc).__name__ != "OperationalError" or not hasattr(exc, "orig"):
            raise
        raise WobbleError(f"cannot open the MLflow store {db} ({first_line(exc.orig)}): "
                          "the user running wobble must be able to write that folder") from None
    if exp is not None:
        return exp.experiment_id
    artifacts = (cfg.mlflow_dir / "artifacts").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())


def client(cfg: Config):
    """An MlflowClient on the local store."""
    from mlflow import MlflowClient

    setup(cfg)
    return MlflowClient(tracking_uri=tracking_uri(cfg), registry_uri=tracking_uri(cfg))


def registered_version(cfg: Config, model: str, version: str | None = None):
    """The registry's version `version` of `model` (default: its latest), or a WobbleError saying
    what the registry has: no such model (train it first), or the versions it does have."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client(cfg).search_model_versions(f"name = '{model}'")
    except MlflowException:
        versions = []
    if not versions:
        raise WobbleError(f"no model {model!r} in the registry; train it first with `wobble train --model {model}`")
    if version is None:
        version = str(max(int(v.version) for v in versions))
    mv = next((v for v in versions if str(v.version) == str(version)), None)
    if mv is None:
        known = ", ".join(sorted((str(v.version) for v in versions), key=int))
        raise WobbleError(f"model {model!r} has no version {version} (versions: {known})")
    return mv


def load_version(cfg: Config, name: str, version: str):
    """(LightGBM Booster, calibrator, feature list, run id) for a registered model version."""
    import mlflow
    import mlflow.lightgbm

    c = client(cfg)
    mv = c.get_model_version(name, version)
    with _stored(c, mv, name, version):
        booster = mlflow.lightgbm.load_model(f"models:/{name}/{version}")
        local = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="wobble"))
    with open(local / "calibrator.pkl", "rb") as f:
        calibrator = load_pickle(f)
    features = json.loads((local / "features.json").read_text())
    return booster, calibrator, features, mv.run_id


def load_evaluation(cfg: Config, name: str, version: str) -> dict:
    """The evaluation a registered version's card was rendered from (`wobble/evaluation.json`)."""
    import mlflow

    c = client(cfg)
    mv = c.get_model_version(name, str(version))
    with _stored(c, mv, name, version):
        local = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="wobble/evaluation.json"))
    return json.loads(local.read_text(encoding="utf-8"))


@contextmanager
def _stored(c, mv, name: str, version: str) -> Iterator[None]:
    """Say in one line where a version's files were looked for when MLflow cannot find them (it
    says "No such artifact: ''"): MLflow records full paths, so a store that was moved or copied
    from another folder still looks in the old one."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:
        where = c.get_run(mv.run_id).info.artifact_uri
        raise WobbleError(
            f"model {name} version {version}: its files are not where the MLflow store says they are "
            f"({where}). MLflow records full paths, so a store moved or copied from another folder "
            f"still points to the old one: put it back there, or train the model again with this store "
            f"({first_line(exc)})") from None


# Where classes pickled by earlier versions of wobble live now (a calibrator was `wobble.train._Calibrator`
# before the stages became packages), so a champion trained then still loads.
MOVED_MODULES = {"wobble.train": "wobble.models.fit", "wobble.metrics": "wobble.models.metrics"}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return super().find_class(MOVED_MODULES.get(module, module), name)


def load_pickle(file) -> object:
    """An object pickled by this or an earlier version of wobble (see MOVED_MODULES)."""
    return _Unpickler(file).load()
