"""wobble.toml: mistakes are named by block and key, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TEST_KEY, run_wobble

from wobble.core.config import load_config, parse_config, with_fhir_folder
from wobble.core.errors import ConfigError

CSV = {"kind": "csv", "table": "contacts", "system": "gp", "path": "a.csv",
       "columns": {"nhs_number": "N", "record_id": "I", "occurred_at": "W", "service": "S"}}


@pytest.mark.parametrize("raw, message", [
    ({"paths": {"warehose": "x"}}, "config paths.warehose: unknown key"),
    ({"sources": {"gp": {**CSV, "colums": {}}}}, "config sources.gp.colums: unknown key"),
    ({"sources": {"gp": {**CSV, "kind": "xlsx"}}},
     "config sources.gp.kind: Input should be 'csv', 'parquet' or 'fhir'"),
    ({"sources": {"gp": {**CSV, "delimiter": ";;"}}}, "config sources.gp.delimiter"),
    ({"sources": {"gp": {**CSV, "timezone": "Europe/Londn"}}}, "sources.gp.timezone: unknown time zone"),
    ({"sources": {"gp": {k: v for k, v in CSV.items() if k != "table"}}}, "sources.gp.table: missing"),
    ({"sources": {"gp": {**CSV, "columns": {"record_id": "I", "occurred_at": "W", "service": "S"}}}},
     "sources.gp.columns: missing required field 'nhs_number'"),
    ({"sources": {"gp": {**CSV, "columns": {**CSV["columns"], "colour": "C"}}}},
     "sources.gp: 'colour' is not a field of the contacts contract"),
    ({"sources": {"ehr": {"kind": "fhir", "system": "ehr", "path": "x", "table": "persons"}}},
     "sources.ehr.table: not used by a FHIR source"),
    ({"sources": {"ehr": {"kind": "fhir", "system": "ehr", "path": "x", "values": {"colour": {}}}}},
     "sources.ehr.values: 'colour' cannot be mapped for FHIR"),
    ({"lookups": {"opt_out": "x.csv"}}, "config lookups.opt_out: unknown key"),
    ({"ingest": {"threads": 0}}, "config ingest.threads"),
])
def test_config_errors_name_the_block_and_key(raw, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(raw, root=tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_fhir_folder_without_a_config_gets_defaults_under_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "export").mkdir()
    cfg, name = with_fhir_folder(Path("export"))
    assert cfg.warehouse == tmp_path / "data/warehouse.duckdb"
    assert cfg.outputs == tmp_path / "data/outputs"
    assert list(cfg.sources) == [name] and cfg.sources[name].kind == "fhir"
    with pytest.raises(ConfigError, match="--fhir: no folder or file"):
        with_fhir_folder(tmp_path / "nowhere")


def test_a_fhir_folder_with_a_config_keeps_its_paths_and_code_maps(tmp_path):
    path = tmp_path / "wobble.toml"
    path.write_text('[paths]\nwarehouse = "w/wh.duckdb"\n[sources.ehr]\nkind = "fhir"\nsystem = "trust"\n'
                    'path = "old"\n[sources.ehr.values.tag]\n"X1" = "low_mood"\n')
    (tmp_path / "new").mkdir()
    cfg, name = with_fhir_folder(tmp_path / "new", load_config(path))
    assert name == "ehr" and cfg.sources["ehr"].path == str(tmp_path / "new")
    assert cfg.sources["ehr"].values == {"tag": {"X1": "low_mood"}} and cfg.sources["ehr"].system == "trust"
    assert cfg.warehouse == tmp_path / "w/wh.duckdb"


def test_the_command_line_says_what_is_missing(tmp_path):
    env = {"WOBBLE_PSEUDONYM_KEY": TEST_KEY}
    proc = run_wobble("ingest", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "no config file at wobble.toml" in proc.stderr
    proc = run_wobble("ingest", "--fhir", "nowhere", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "--fhir: no folder or file" in proc.stderr and "Traceback" not in proc.stderr


def test_out_of_memory_is_one_line_and_its_own_exit_code(capsys):
    """DuckDB running out of memory is the machine, not a bug: one line, no traceback. Any
    other unexpected error keeps its traceback."""
    import duckdb
    import typer

    from wobble.cli.main import OUT_OF_MEMORY, friendly

    @friendly
    def oom():
        raise duckdb.OutOfMemoryException("Out of Memory Error: failed to pin block of size 256.0 KiB\n"
                                          "Possible solutions: …")

    with pytest.raises(typer.Exit) as exit_:
        oom()
    assert exit_.value.exit_code == OUT_OF_MEMORY
    said = capsys.readouterr().err.strip()
    assert len(said.splitlines()) == 1 and "ran out of memory" in said and "failed to pin block" in said
    assert "Possible solutions" not in said
    assert "raise memory_limit under [ingest] in wobble.toml" in said  # (rich once ate "[ingest]")

    @friendly
    def bug():
        raise duckdb.BinderException("a column that does not exist")

    with pytest.raises(duckdb.BinderException):
        bug()


def test_feature_and_model_folders_default_to_the_packaged_ones_and_can_be_set(tmp_path):
    import shutil

    from wobble.core.config import PACKAGED_FEATURES, PACKAGED_MODELS
    from wobble.features import load_catalogue
    from wobble.models.spec import load_spec

    cfg = parse_config({}, root=tmp_path)
    assert cfg.features_dir == PACKAGED_FEATURES and (PACKAGED_FEATURES / "services.yml").exists()
    assert cfg.models_dir == PACKAGED_MODELS and (PACKAGED_MODELS / "crisis_90d.yml").exists()
    shutil.copytree(PACKAGED_FEATURES, tmp_path / "my_features")
    (tmp_path / "my_features" / "tags.yml").unlink()
    shutil.copytree(PACKAGED_MODELS, tmp_path / "my_models")
    cfg = parse_config({"paths": {"features": "my_features", "models": str(tmp_path / "my_models")}}, root=tmp_path)
    assert cfg.features_dir == tmp_path / "my_features" and cfg.models_dir == tmp_path / "my_models"
    ours, packaged = load_catalogue(cfg.features_dir), load_catalogue(PACKAGED_FEATURES)
    assert {f.family for f in ours.features} == {f.family for f in packaged.features} - {"tags"}
    assert load_spec(cfg.models_dir, "crisis_90d").name == "crisis_90d"
