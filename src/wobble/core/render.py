"""Every page and report wobble writes comes from one Jinja environment, with one escaping policy.

Templates live in `wobble/templates/`. HTML templates (`*.html.j2`) are autoescaped: a value
holding `<script>` shows as text. Markdown templates (`*.md.j2`: the model card, the monitoring
and data-quality reports) are not HTML-escaped, so that their Markdown reads well as a file; instead
every value they print has anything that could open an HTML tag written as an entity (`<` before a
letter, `/`, `!` or `?`), and `markdown_page` turns the Markdown into HTML with links to scripts
disarmed. Both rules live here and nowhere else.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from importlib.resources import files

import jinja2
import markdown
import markupsafe

from wobble.core.vocab import reason_label, system_label, upper_first

_TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY = re.compile(r"&(?=#|[A-Za-z][A-Za-z0-9]*;)")
_SCRIPT_LINK = re.compile(r"""(\b(?:href|src)\s*=\s*["']?)\s*(?:javascript|vbscript|data:text)""", re.IGNORECASE)


def _is_markdown(name: str | None) -> bool:
    return bool(name) and name.endswith(".md.j2")


def markdown_text(value) -> str:
    """A value as Markdown may hold it: no HTML tag or entity can start inside it."""
    text = str(value)
    return _TAG_OPEN.sub("&lt;", _ENTITY.sub("&amp;", text))


@jinja2.pass_context
def _finalize(context: jinja2.runtime.Context, value):
    if _is_markdown(context.name) and not isinstance(value, (int, float)):
        return markdown_text(value)
    return value


def day_text(d: date | datetime | str, *, short: bool = False) -> str:
    """'23 November 2026' (or '23 Nov 2026'), from a date, a datetime or an ISO string."""
    if isinstance(d, str):
        d = date.fromisoformat(d[:10])
    return f"{d.day} {d:%b %Y}" if short else f"{d.day} {d:%B %Y}"


def plural(n: int, one: str, many: str) -> str:
    """'1 subgroup differs', '3 subgroups differ', '1,204 rows'."""
    return f"{n:,} {one if n == 1 else many}"


def css_string(value) -> markupsafe.Markup:
    """A value as a quoted CSS string inside a `<style>` element (where HTML entities are not decoded): quotes,
    backslashes, line breaks and '<' escaped as CSS escapes, so nothing can close the string or the element."""
    text = "".join(f"\\{ord(c):x} " if c in '"\\<>\n\r' else c for c in str(value))
    return markupsafe.Markup(f'"{text}"')


def markdown_cell(value) -> str:
    """A value inside a Markdown table cell: no pipe or line break can end the cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("wobble", "templates"),
    autoescape=lambda name: not _is_markdown(name),
    finalize=_finalize,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters["day"] = lambda d: day_text(d, short=True)
ENV.filters["cell"] = markdown_cell
ENV.filters["system"] = system_label  # a source system's plain name: 'hospital' for 'acute'
ENV.filters["reason"] = reason_label  # a quarantine reason's plain words
ENV.filters["css_string"] = css_string
ENV.filters["upper_first"] = upper_first  # a sentence that stands alone (a list item) starts with a capital
ENV.globals["plural"] = plural  # '1 team', '4 teams'


def template_text(name: str) -> str:
    """A file that lives beside the templates (the card's governance content), as text."""
    return (files("wobble") / "templates" / name).read_text(encoding="utf-8")


def render(template: str, **context) -> str:
    """The named template rendered with `context`."""
    return ENV.get_template(template).render(**context)


def markdown_to_html(text: str, *, toc: bool = False) -> str:
    """Markdown written by a `*.md.j2` template, as an HTML fragment; links to scripts disarmed."""
    # md_in_html: Markdown inside `<details class="for-analysts" markdown="1">` blocks (code names, commands)
    exts = ["tables", "md_in_html", *(["toc"] if toc else [])]
    html = markdown.markdown(text, extensions=exts)
    return _SCRIPT_LINK.sub(r"\1#", html)
