"""One Jinja environment, HTML escaped on every page: text from the data shows as text everywhere.

The list and the review page are checked with a hostile tag in `test_publish` and `test_review`;
these check the card, the monitoring report and the rules themselves.
"""

from __future__ import annotations

import copy
import re

from conftest import HOSTILE
from hypothesis import given
from hypothesis import strategies as st

from wobble.core.render import ENV, markdown_text, markdown_to_html, render


def _no_live_script(html: str) -> None:
    assert "<script" not in html.lower(), html[max(0, html.lower().find("<script") - 200):][:400]
    assert "&lt;script&gt;" in html or "&lt;script" in html


def test_one_environment_escapes_html_templates_and_not_markdown_ones():
    assert ENV.autoescape("list.html.j2") and ENV.autoescape("review_person.html.j2")
    assert ENV.autoescape("monitor.html.j2") and ENV.autoescape("card.html.j2")  # (monitor's once was not)
    assert not ENV.autoescape("card.md.j2")
    page = render("card.html.j2", title=HOSTILE, body="<p>trusted</p>")
    assert "<title>&lt;script&gt;" in page and "<p>trusted</p>" in page


@given(st.text())
def test_markdown_values_cannot_open_a_tag(text):
    html = markdown_to_html(markdown_text("<script>" + text))
    assert "<script" not in html


def test_script_links_are_disarmed():
    html = markdown_to_html("[click](javascript:alert(1)) and ![x](data:text/html,<b>)")
    assert "javascript:" not in html and "data:text" not in html


def test_a_hostile_name_shows_as_text_on_the_card(tiny_trained, tmp_path):
    from wobble.models.card import write_card
    from wobble.models.spec import load_spec

    cfg, result = tiny_trained
    evaluation = copy.deepcopy(result.evaluation)
    evaluation["data"]["sources"][0]["source"] = HOSTILE
    evaluation["data"]["systems"][0]["system"] = HOSTILE
    out = cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"outputs": tmp_path})})
    md, html = write_card(out, spec=load_spec(cfg.models_dir, "crisis_90d"), evaluation=evaluation, version=None)
    assert HOSTILE not in md.read_text() and "&lt;script>alert" in md.read_text()
    _no_live_script(html.read_text())


def test_a_hostile_team_shows_as_text_on_the_monitoring_report(monitor_world):
    from wobble.core.config import load_config
    from wobble.models.spec import load_spec
    from wobble.ops.monitor import _write_report, monitor

    cfg = load_config(monitor_world[0])
    result = monitor(cfg)
    result.drift["teams"][0]["team"] = HOSTILE
    result.drift["feed_gaps"] = [{"team": HOSTILE, "text": HOSTILE, "status": "ongoing"}]
    md, html = _write_report(cfg, load_spec(cfg.models_dir, cfg.wobble.models[0]), result)
    assert HOSTILE not in md.read_text()
    _no_live_script(html.read_text())
    assert re.search(r"team &lt;script", md.read_text())
