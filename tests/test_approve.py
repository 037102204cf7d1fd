"""Approval: who approved what and when; the champion alias; publish refuses unapproved versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TEST_KEY, run_wobble

from wobble.core.errors import NotApproved, WobbleError
from wobble.core.warehouse import connect
from wobble.models.approve import approve, champion, require_approval
from wobble.models.tracking import client


def fresh_version(cfg) -> str:
    """A new, unapproved registry version of the tiny world's model (same run, no retraining)."""
    c = client(cfg)
    mv = c.get_model_version("crisis_90d", "1")
    return str(c.create_model_version("crisis_90d", mv.source, run_id=mv.run_id).version)


def test_publish_refuses_an_unapproved_model(tiny_trained):
    from wobble.lists.publish import publish

    cfg, result = tiny_trained
    version = fresh_version(cfg)
    with pytest.raises(NotApproved) as err:
        publish(cfg, model="crisis_90d", version=version, as_of=result.split.data_end)
    msg = str(err.value)
    assert f"version {version} has not been approved" in msg
    assert f"wobble approve --model crisis_90d --version {version} --by" in msg


def test_publish_from_the_cli_refuses_in_one_line(tiny_trained):
    cfg, _ = tiny_trained
    version = fresh_version(cfg)
    proc = run_wobble("publish", "--config", str(cfg.root / "wobble.toml"), "--model", "crisis_90d",
                      "--version", version, env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY})
    assert proc.returncode == 2
    assert "not been approved" in proc.stderr and "wobble approve" in proc.stderr
    assert "Traceback" not in proc.stderr
    # the config's first model, never trained here: train it, not approve it; a version the registry
    # does not have: which versions it has
    for args, says in [(["--version", version], "no model 'early_warning_90d' in the registry; train it first"),
                       (["--model", "crisis_90d", "--version", "99"], "model 'crisis_90d' has no version 99")]:
        proc = run_wobble("publish", "--config", str(cfg.root / "wobble.toml"), *args,
                          env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY})
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr[-600:]


def test_approval_is_recorded_in_the_warehouse_and_mlflow_and_sets_the_champion(tiny_trained):
    cfg, result = tiny_trained
    proc = run_wobble("approve", "--config", str(cfg.root / "wobble.toml"), "--model", "crisis_90d",
                      "--version", result.model_version, "--by", "Dr A Example, Clinical Safety Officer",
                      "--note", "read the card; subgroup flags accepted for the pilot", "--json",
                      env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY})
    assert proc.returncode == 0, proc.stderr
    with connect(cfg.warehouse, read_only=True) as con:
        a = require_approval(con, "crisis_90d", result.model_version)
    assert a.approved_by == "Dr A Example, Clinical Safety Officer" and not a.demo
    assert "subgroup flags accepted" in a.note
    tags = client(cfg).get_model_version("crisis_90d", result.model_version).tags
    assert tags["approved_by"] == a.approved_by and tags["approval_demo"] == "false"
    assert champion(cfg, "crisis_90d") == result.model_version
    # The card is re-rendered at once, so whoever reads it next sees the approval, not "not approved".
    card = json.loads(proc.stdout)["outputs"]["model_card"]
    text = Path(card).read_text(encoding="utf-8")
    assert "**Status: approved** by Dr A Example, Clinical Safety Officer" in text and "not approved" not in text
    assert "Status: approved" in Path(card).with_suffix(".html").read_text(encoding="utf-8")


def test_approving_needs_a_name_and_a_real_version(tiny_trained):
    cfg, result = tiny_trained
    with pytest.raises(WobbleError, match="approver's name"):
        approve(cfg, model="crisis_90d", version=result.model_version, by="  ", note="")
    with pytest.raises(WobbleError, match="no model 'crisis_90d' version 99"):
        approve(cfg, model="crisis_90d", version="99", by="Someone", note="")


def test_a_store_moved_to_another_folder_says_so_in_one_line(tiny_world, tmp_path):
    """MLflow records full paths: after the folder is moved, a version's files are looked for in the
    old one. Publishing says where, and what to do, in one line (MLflow says "No such artifact: ''")."""
    import shutil

    from conftest import copy_tree

    from wobble.core.config import load_config
    from wobble.models.train import train

    before = copy_tree(tiny_world, tmp_path / "before")
    result = train(load_config(before / "wobble.toml"), "crisis_90d", key=TEST_KEY.encode())
    approve(load_config(before / "wobble.toml"), model="crisis_90d", version=result.model_version, by="Test Lead",
            note="for the test")
    after = tmp_path / "after"
    shutil.move(before, after)
    proc = run_wobble("publish", "--config", str(after / "wobble.toml"), "--model", "crisis_90d")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = [x for x in proc.stderr.splitlines() if x.startswith("wobble:")]
    assert len(line) == 1
    assert f"model crisis_90d version {result.model_version}: its files are not where" in line[0]
    assert str(before / "mlflow") in line[0] and "put it back there" in line[0]
