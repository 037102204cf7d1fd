"""Plain labels: every label a person reads on a list, a model card or a report comes from the catalogue and
the vocabularies, never their code names (`contacts_365d`, `crisis_90d`, `ae_attendance`, `opted_out`, `gp`).

Code names may appear only inside blocks meant for analysts: an element with the class `for-analysts`
(the card's and reports' "For analysts" details), where the data team finds the names to query by.
"""

from __future__ import annotations

import re
from functools import cache
from html.parser import HTMLParser

import pytest
from conftest import ROOT

ANALYST_CLASS = "for-analysts"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@cache
def code_names() -> frozenset[str]:
    """Every code name a reader should never see: features, models, services, tags, statuses, modes, roles,
    outcomes, systems, quarantine reasons and the person table's coded columns. One-word codes that are
    also plain English ("age", "acute", "housing") are left out; "gp" is the one short code kept."""
    import yaml

    from wobble.core import vocab
    from wobble.features.catalogue import load_catalogue
    from wobble.ingest.validate import REASONS

    cat = load_catalogue(ROOT / "src" / "wobble" / "features" / "families")
    models = {yaml.safe_load(p.read_text())["name"] for p in (ROOT / "src/wobble/models/specs").glob("*.yml")}
    names = {*cat.columns, *models, *vocab.SERVICES, *vocab.TAGS, *vocab.STATUSES, *vocab.MODES,
             *vocab.AUTHOR_ROLES, *vocab.OUTCOMES, *vocab.SOURCE_SYSTEMS, *REASONS, *vocab.FAIRNESS_ATTRIBUTES,
             "opted_out", "ethnicity_group", "imd_decile", "birth_year", "died_on", "person_id", "team_id"}
    return frozenset(n for n in names if "_" in n or n == "gp")


class _Text(HTMLParser):
    """The text a person reads: not inside <style>, <script>, <title>, or an element of class `for-analysts`;
    plus every image's alt text and every aria-label."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[bool] = []  # per open element: is it hidden from this scan?
        self.parts: list[str] = []

    def _hidden(self) -> bool:
        return any(self.stack)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        hidden = tag in ("style", "script", "title") or ANALYST_CLASS in (a.get("class") or "").split()
        if not self._hidden() and not hidden:
            self.parts += [a[k] for k in ("alt", "aria-label", "title") if a.get(k)]
        if tag not in VOID:
            self.stack.append(hidden)

    def handle_endtag(self, tag):
        if tag not in VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not self._hidden():
            self.parts.append(data)


def human_text(html: str) -> str:
    """The text of an HTML page a person reads, outside blocks for analysts."""
    p = _Text()
    p.feed(html)
    return " ".join(p.parts)


def find_codes(text: str, names=None) -> list[str]:
    """Each code name in `text`, with a little context: 'contacts_365d: … (contacts_365d): more …'."""
    names = names or code_names()
    out = []
    for m in re.finditer(r"(?<![\w/.-])[a-z][a-z0-9_]*(?![\w/-])", text):
        if m.group() in names:
            out.append(f"{m.group()}: …" + text[max(0, m.start() - 40): m.end() + 20].replace("\n", " ") + "…")
    return out


def test_the_scanner_finds_code_names_outside_analyst_blocks_only():
    html = ("<p>Contacts (contacts_365d) and gp records</p><p>GP and A&amp;E attendance</p>"
            "<img alt='ae_attendance per month'><style>.opted_out{}</style>"
            "<details class='x for-analysts'><summary>For analysts</summary><code>crisis_90d</code><br>"
            "<p>opted_out</p></details><p>wobble/models/crisis_90d.yml</p>")
    found = [f.split(":")[0] for f in find_codes(human_text(html))]
    assert found == ["contacts_365d", "gp", "ae_attendance"]


@pytest.mark.parametrize("name", ["list", "card", "data-quality report", "monitoring report"])
def test_no_code_name_reaches_a_reader(monitored, name):
    """On the demo's list, card and data-quality report, and the monitoring report of its matured copy."""
    hits = find_codes(human_text(monitored[name].read_text(encoding="utf-8")))
    assert not hits, f"{len(hits)} code names in the {name} ({monitored[name]}):\n" + "\n".join(hits[:40])
