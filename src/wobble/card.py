"""The model card: what a governance board reads before approving a model version.

Rendered from the training run's numbers into Markdown (the source of truth) and a
self-contained HTML page with the same content; both are attached to the MLflow run and
written to `<outputs>/cards/`.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import jinja2

from wobble.config import Config

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("wobble", "templates"),
    autoescape=False,  # Markdown; the HTML below escapes through the markdown renderer
    keep_trailing_newline=True,
    trim_blocks=False,
)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f}"


def _pct(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}%"


HTML_SHELL = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.5; color: #1b1b1b; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #767676; padding: .3rem .6rem; text-align: left; }}
blockquote {{ border-left: 4px solid #b35900; margin: 0; padding: .5rem 1rem; background: #fff4e5; }}
@media print {{ body {{ margin: 0; max-width: none; }} }}
</style></head>
<body><main>
{body}
</main></body></html>
"""


def render_card(
    cfg: Config, *, spec, metrics: dict, split, rows_train: int, rows_test: int,
    shap_features: dict[str, float], shap_families: dict[str, float], cat, version: str | None,
) -> tuple[Path, Path]:
    """Write `<outputs>/cards/<name>-v<version>.md` and `.html`; return both paths."""
    import markdown

    total = sum(shap_families.values()) or 1.0
    text = _ENV.get_template("card.md.j2").render(
        spec=spec, metrics=metrics, split=split, rows_train=rows_train, rows_test=rows_test,
        shap_families=shap_families, shap_total=total,
        top_features=list(shap_features.items())[:8], cat=cat, version=version,
        demo=cfg.wobble.demo, trained_at=datetime.now().strftime("%Y-%m-%d %H:%M"),
        fmt=_fmt, pct=_pct,
    )
    out = cfg.outputs / "cards"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.name}-v{version}" if version else f"{spec.name}-unregistered"
    md_path = out / f"{stem}.md"
    md_path.write_text(text, encoding="utf-8")
    body = markdown.markdown(text, extensions=["tables"])
    html_path = out / f"{stem}.html"
    html_path.write_text(HTML_SHELL.format(title=f"Model card: {spec.title}", body=body), encoding="utf-8")
    return md_path, html_path
