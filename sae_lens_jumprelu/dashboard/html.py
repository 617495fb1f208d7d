"""Static HTML for the feature dashboard: pure functions from plain data to page text.

Every page is self-contained (inline CSS, inline SVG, one small inline script on the index),
so the site opens from disk with no server and makes no request outside its directory.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: right; }
th { cursor: pointer; background: #eee; } tr:nth-child(even) { background: #f7f7f7; }
td.text, th.text { text-align: left; }
.example { font-family: ui-monospace, monospace; white-space: pre-wrap; margin: 4px 0;
           padding: 4px; border-bottom: 1px solid #eee; }
.tok { border-radius: 2px; } .max { outline: 1px solid #b00; font-weight: bold; }
.columns { display: flex; gap: 3em; flex-wrap: wrap; }
"""

# Sorts the index table by a column on a header click, or on load from "#sort=column"
# ("#sort=-column": descending), so a link can open the index sorted.
SORT_SCRIPT = """
function sortBy(column, descending) {
  const body = document.querySelector('#features tbody');
  const rows = Array.from(body.rows);
  const key = r => parseFloat(r.querySelector(`td[data-col="${column}"]`).dataset.value);
  rows.sort((a, b) => descending ? key(b) - key(a) : key(a) - key(b));
  rows.forEach(r => body.appendChild(r));
  document.body.dataset.sorted = (descending ? '-' : '') + column;
}
document.querySelectorAll('#features th[data-col]').forEach(th => th.addEventListener('click',
  () => sortBy(th.dataset.col, document.body.dataset.sorted !== '-' + th.dataset.col)));
const m = location.hash.match(/^#sort=(-?)([a-z_]+)$/);
if (m) sortBy(m[2], m[1] === '-');
"""


@dataclass(frozen=True)
class Example:
    """One top-activating context window."""

    tokens: Sequence[str]
    """Token strings of the window."""
    acts: Sequence[float]
    """The feature's activation on each token."""
    max_index: int
    """Where in the window the maximum is."""
    value: float
    """The maximum activation."""
    context: int
    """Index of the context in the dataset stream."""


@dataclass(frozen=True)
class FeaturePage:
    """Everything one feature's page shows."""

    index: int
    hook_name: str
    frequency: float
    max_activation: float
    threshold: float
    examples: Sequence[Example]
    histogram: Sequence[tuple[float, float, int]]
    """(low edge, high edge, count) of the nonzero activations, log-spaced bins."""
    promoted: Sequence[tuple[str, float]] | None
    suppressed: Sequence[tuple[str, float]] | None
    """Token and direct logit effect; None where the hook has no direct path to the logits."""
    previous: str | None = None
    next: str | None = None
    """File names of neighbouring pages."""


def page_name(index: int) -> str:
    return f"feature-{index:06d}.html"


def _document(title: str, body: str, script: str = "") -> str:
    script = f"<script>{script}</script>" if script else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{body}{script}</body></html>\n"
    )


def render_feature(page: FeaturePage) -> str:
    nav = " · ".join(
        f'<a href="{escape(target)}">{label}</a>'
        for label, target in (
            ("previous", page.previous),
            ("index", "index.html"),
            ("next", page.next),
        )
        if target
    )
    stats = (
        f'<p id="stats">frequency <b id="frequency">{page.frequency:.4%}</b> · max activation '
        f"<b>{page.max_activation:.4g}</b> · threshold {page.threshold:.4g}</p>"
    )
    examples = "".join(_render_example(e) for e in page.examples) or "<p>never fired</p>"
    logits = (
        '<div class="columns" id="logits">'
        + _logit_table("promoted logits", "promoted", page.promoted)
        + _logit_table("suppressed logits", "suppressed", page.suppressed)
        + "</div>"
        if page.promoted is not None and page.suppressed is not None
        else "<p>logit effects: not available for this hook (no direct path to the logits)</p>"
    )
    body = (
        f"<nav>{nav}</nav><h1>Feature {page.index}</h1><p>{escape(page.hook_name)}</p>{stats}"
        f"<h2>Activation histogram</h2>{_histogram_svg(page.histogram)}{logits}"
        f'<h2>Top examples</h2><div id="examples">{examples}</div>'
    )
    return _document(f"Feature {page.index} · {page.hook_name}", body)


def _render_example(example: Example) -> str:
    top = max(example.value, 1e-12)
    spans = []
    for i, (token, act) in enumerate(zip(example.tokens, example.acts, strict=True)):
        alpha = max(0.0, min(1.0, act / top))
        cls = "tok max" if i == example.max_index else "tok"
        spans.append(
            f'<span class="{cls}" title="{act:.4g}" data-act="{act:.6g}" '
            f'style="background: rgba(255,80,0,{alpha:.3f})">{escape(token)}</span>'
        )
    return (
        f'<div class="example" data-context="{example.context}">'
        f"<small>{example.value:.4g} </small>{''.join(spans)}</div>"
    )


def _logit_table(title: str, element_id: str, rows: Sequence[tuple[str, float]] | None) -> str:
    cells = "".join(
        f'<tr><td class="text">{escape(repr(token))}</td><td>{value:+.4g}</td></tr>'
        for token, value in rows or ()
    )
    return f'<div><h2>{title}</h2><table id="{element_id}">{cells}</table></div>'


def _histogram_svg(bins: Sequence[tuple[float, float, int]]) -> str:
    if not bins:
        return '<svg id="histogram" width="10" height="10"></svg><p>no activations</p>'
    width, height, bar = 600, 160, 600 / len(bins)
    top = max(count for _, _, count in bins)
    rects = "".join(
        f'<rect x="{i * bar:.2f}" y="{height - count / top * height:.2f}" '
        f'width="{max(bar - 1, 0.5):.2f}" height="{count / top * height:.2f}" fill="#d55">'
        f"<title>{low:.3g}-{high:.3g}: {count}</title></rect>"
        for i, (low, high, count) in enumerate(bins)
    )
    axis = (
        f'<text x="0" y="{height + 14}" font-size="11">{bins[0][0]:.3g}</text>'
        f'<text x="{width}" y="{height + 14}" font-size="11" text-anchor="end">'
        f"{bins[-1][1]:.3g}</text>"
        f'<text x="{width / 2}" y="{height + 14}" font-size="11" text-anchor="middle">'
        f"activation (log scale), nonzero only</text>"
    )
    return (
        f'<svg id="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height + 18}">{rects}{axis}</svg>'
    )


@dataclass(frozen=True)
class IndexRow:
    index: int
    frequency: float
    max_activation: float
    top_logit: str | None


def render_index(title: str, description: Sequence[str], rows: Sequence[IndexRow]) -> str:
    header = (
        '<tr><th data-col="feature">feature</th><th data-col="frequency">frequency</th>'
        '<th data-col="max_activation">max activation</th>'
        '<th class="text">top promoted logit</th></tr>'
    )
    body = "".join(
        f'<tr><td data-col="feature" data-value="{r.index}">'
        f'<a href="{page_name(r.index)}">{r.index}</a></td>'
        f'<td data-col="frequency" data-value="{r.frequency:.9g}">{r.frequency:.4%}</td>'
        f'<td data-col="max_activation" data-value="{r.max_activation:.9g}">'
        f"{r.max_activation:.4g}</td>"
        f'<td class="text">{escape(repr(r.top_logit)) if r.top_logit is not None else ""}</td></tr>'
        for r in rows
    )
    items = "".join(f"<li>{escape(line)}</li>" for line in description)
    page = (
        f"<h1>{escape(title)}</h1><ul>{items}</ul><p>Click a column header to sort.</p>"
        f'<table id="features"><thead>{header}</thead><tbody>{body}</tbody></table>'
    )
    return _document(title, page, SORT_SCRIPT)
