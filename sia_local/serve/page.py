"""One self-contained HTML page showing where an answer was steered (`sia generate --html FILE [--compare]`).

Each token is a span; a junction carries `data-junction="1"` and is shaded by its entropy; a token
whose pick the reward changed carries `data-changed="1"`. Clicking (or focusing, then Enter) a junction
shows its k candidates with their base probability, reward(s) and steered probability. With
`--compare`, the unsteered answer (the same seed, no steering) stands beside the steered one, each
with its stats. No external script, style, font or image: the page works offline and can be shared.
"""

from __future__ import annotations

import html
import json
from typing import Any, Sequence

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:1.5rem;color:#1d1d1f;background:#fafafa}
h1{font-size:1.1rem}.answers{display:flex;flex-wrap:wrap;gap:1rem}
.answer{flex:1 1 22rem;background:#fff;border:1px solid #ddd;border-radius:8px;padding:1rem}
.answer h2{font-size:1rem;margin:0 0 .5rem}.stats{color:#555;font-size:.85rem;margin-top:.75rem}
.text{white-space:pre-wrap;word-wrap:break-word}.tok[data-junction="1"]{background:rgba(255,200,0,var(--h));cursor:pointer;border-radius:3px}
.tok[data-changed="1"]{outline:2px solid #2a9d4b;background:rgba(42,157,75,.25)}.tok:focus{outline:2px solid #3366cc}
#panel{position:sticky;bottom:0;background:#fff;border:1px solid #bbb;border-radius:8px;padding:.75rem;margin-top:1rem;display:none}
table{border-collapse:collapse;font-size:.85rem}td,th{padding:.15rem .5rem;text-align:right}td:first-child,th:first-child{text-align:left}
tr.chosen{font-weight:bold}.legend{font-size:.85rem;color:#555}
@media (max-width:480px){body{margin:.5rem}.answer{flex-basis:100%}}
"""

SCRIPT = """
const data = JSON.parse(document.getElementById('sia-trace').textContent);
const panel = document.getElementById('panel');
function show(el) {
  const t = data[+el.dataset.answer].tokens[+el.dataset.i];
  if (!t.candidates) { panel.style.display = 'none'; return; }
  const names = Object.keys(t.candidates[0].rewards || {});
  const cell = (row, tag, text) => { const c = document.createElement(tag); c.textContent = text; row.appendChild(c); };
  const table = document.createElement('table'), head = table.insertRow();
  ['candidate', 'p base', 'reward', ...names, 'p steered'].forEach(n => cell(head, 'th', n));  // names are text, never markup
  t.candidates.forEach((c, i) => {
    const row = table.insertRow(); if (i === t.rank) row.className = 'chosen';
    [JSON.stringify(c.text), c.p_base ?? '', c.reward ?? '', ...names.map(n => c.rewards[n]), c.p_steered ?? ''].forEach(v => cell(row, 'td', String(v)));
  });
  const note = document.createElement('div');
  note.textContent = 'entropy ' + t.entropy + ' nats' + (t.changed ? ' — the reward changed this token' : '');
  panel.replaceChildren(note, table);
  panel.style.display = 'block';
}
document.querySelectorAll('.tok[data-junction="1"]').forEach(el => {
  el.addEventListener('click', () => show(el));
  el.addEventListener('focus', () => show(el));
  el.addEventListener('keydown', e => { if (e.key === 'Enter') show(el); });
});
"""


def render_page(title: str, answers: Sequence[dict[str, Any]]) -> str:
    """A whole page for `answers`: each {"title", "tokens": [token trace dicts (`openai_api.token_tracer`)], "stats": str}."""
    blocks = []
    for a, answer in enumerate(answers):
        spans = []
        for i, t in enumerate(answer["tokens"]):
            attrs = f' data-answer="{a}" data-i="{i}"'
            if t.get("junction"):
                shade = min(1.0, max(0.15, float(t.get("entropy", 0.0)) / 2.3))
                attrs += f' data-junction="1" tabindex="0" style="--h:{shade:.2f}"'
            if t.get("changed"):
                attrs += ' data-changed="1"'
            spans.append(f'<span class="tok"{attrs}>{html.escape(t.get("text", ""))}</span>')
        blocks.append(f'<section class="answer"><h2>{html.escape(answer["title"])}</h2><div class="text">{"".join(spans)}</div>'
                      f'<div class="stats">{html.escape(answer.get("stats", ""))}</div></section>')
    trace = json.dumps([{"tokens": a["tokens"]} for a in answers], ensure_ascii=False).replace("<", "\\u003c")  # no tag, no comment opener
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>{html.escape(title)}</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>'
            '<p class="legend">Shaded: a junction (darker = higher entropy); outlined green: the reward changed the token. '
            'Click or focus a junction to see its candidates.</p>'
            f'<div class="answers">{"".join(blocks)}</div><div id="panel" aria-live="polite"></div>'
            f'<script type="application/json" id="sia-trace">{trace}</script><script>{SCRIPT}</script></body></html>')
