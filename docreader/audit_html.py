"""`docreader audit ID --html FILE`: one self-contained page to see where an answer came from.

The whole document, laid out as its source is (pages, chapters, messages), tinted by the indexer's selection
weight; verified quotes marked apart from it; the ranked spans as links; and the answer split into its tokens:
hovering or clicking one shows the document blocks the indexer picked while that token was generated
(`docreader.token_regions`). Nothing is fetched: styles, script and data are inline, and a Content-Security-
Policy allows no network and only the page's own script (by hash), so a document's text, which is always
escaped, could not run code even if it were not.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import html
import json
from pathlib import Path

from .audit_record import AuditRecord
from .document import Region

PRIMARY_KINDS = ("page", "message", "section")  # how the source is divided, in order of preference


def esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _json_for_script(data: object) -> str:
    """JSON safe inside <script type=application/json>: no `</script>`, `<!--` or line separators."""
    s = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _sections(rec: AuditRecord) -> list[tuple[int, int, str, str]]:
    """(start, end, id, label) of the document's pages/messages/chapters in order, gaps as unlabelled parts."""
    doc = rec.document
    kind = next((k for k in PRIMARY_KINDS if any(r.kind == k for r in doc.regions)), None)
    regions: list[Region] = sorted((r for r in doc.regions if r.kind == kind), key=lambda r: r.start)
    out, at = [], 0
    for r in regions:
        if r.start < at:
            continue
        if doc.text[at:r.start].strip():
            out.append((at, r.start, f"gap-{at}", ""))
        out.append((r.start, r.end, f"{kind}-{r.index + 1}", r.label))
        at = r.end
    if doc.text[at:].strip() or not out:
        out.append((at, len(doc.text), f"gap-{at}", ""))
    return out


class _Marks:
    """Per character range: heat, block, quote and span membership, looked up by bisect over cut points."""

    def __init__(self, rec: AuditRecord):
        self.rec = rec
        tr = rec.tokens
        self.bounds = [int(b) for b in tr.bounds] if tr is not None else []
        self.heat = [int(h) / 255 for h in tr.heat] if tr is not None else []
        self.quotes = [(q["char_start"], q["char_end"], i) for i, q in enumerate(rec.quotes, 1)
                       if q.get("verified") and q.get("char_start") is not None]
        self.spans = [(s["char_start"], s["char_end"], s["rank"]) for s in rec.spans]
        top = max((s["score"] for s in rec.spans), default=0) or 1
        self.span_heat = {s["rank"]: (max(s["score"], 0) / top) ** 0.5 for s in rec.spans}

    def cuts(self, start: int, end: int) -> list[int]:
        pts = {start, end}
        pts.update(b for b in self.bounds if start < b < end)
        for a, b, _ in self.quotes + self.spans:
            pts.update(p for p in (a, b) if start < p < end)
        return sorted(pts)

    def block(self, pos: int) -> int | None:
        if not self.bounds:
            return None
        return min(max(bisect.bisect_right(self.bounds, pos) - 1, 0), len(self.heat) - 1)

    def piece(self, a: int, b: int, first_ids: set[str]) -> str:
        blk = self.block(a)
        quote = next((i for qa, qb, i in self.quotes if qa <= a and b <= qb), None)
        span = next((r for sa, sb, r in self.spans if sa <= a and b <= sb), None)
        heat = self.heat[blk] if blk is not None else (self.span_heat.get(span, 0.0) if span else 0.0)
        cls = [c for c, on in (("q", quote), ("s", span)) if on]
        attrs = []
        for name, n in (("quote", quote), ("span", span)):
            if n and f"{name}-{n}" not in first_ids:
                first_ids.add(f"{name}-{n}")
                attrs.append(f'id="{name}-{n}"')
        if blk is not None:
            attrs.append(f'data-b="{blk}"')
        if cls:
            attrs.append(f'class="{" ".join(cls)}"')
        if heat > 0:
            attrs.append(f'style="--h:{heat:.2f}"')
        return f"<span {' '.join(attrs)}>{esc(self.rec.document.text[a:b])}</span>" if attrs else \
            esc(self.rec.document.text[a:b])


def _document_html(rec: AuditRecord) -> str:
    marks, first_ids, parts = _Marks(rec), set(), []
    for start, end, sid, label in _sections(rec):
        cuts = marks.cuts(start, end)
        body = "".join(marks.piece(a, b, first_ids) for a, b in zip(cuts, cuts[1:]) if b > a)
        head = f'<h3 class="lbl">{esc(label)}</h3>' if label else ""
        kind = sid.split("-")[0]  # page | message | section | gap
        parts.append(f'<section class="part {kind}" id="{esc(sid)}">{head}<div class="tx">{body}</div></section>')
    return "\n".join(parts)


def _answer_html(rec: AuditRecord) -> str:
    text = rec.answer["answer"] or ""
    tr = rec.tokens
    if tr is None:
        return f'<p class="answer">{esc(text)}</p>'
    out, at = [], 0
    for i, end in enumerate(int(e) for e in tr.token_ends):
        if end > at:
            out.append(f'<span class="tok" data-t="{i}" tabindex="0">{esc(text[at:end])}</span>')
            at = end
    out.append(esc(text[at:]))
    return f'<p class="answer">{"".join(out)}</p>'


def _token_data(rec: AuditRecord) -> dict:
    """Per token: [[block, weight 1-255], ...]; per picked block: its label and where it starts."""
    tr = rec.tokens
    if tr is None:
        return {"picks": [], "blocks": {}}
    picks = [[[int(b), int(w)] for b, w in zip(row_b, row_w) if w > 0] for row_b, row_w in zip(tr.picks, tr.weights)]
    used = sorted({b for row in picks for b, _ in row})
    doc = rec.document
    blocks = {b: doc.locate(int(tr.bounds[b]), max(int(tr.bounds[b]) + 1, int(tr.bounds[b + 1])))["label"]
              for b in used}
    return {"picks": picks, "blocks": blocks}


def _quotes_html(rec: AuditRecord) -> str:
    items = []
    for i, q in enumerate(rec.quotes, 1):
        if q.get("verified") and q.get("char_start") is not None:
            items.append(f'<li class="qv"><a href="#quote-{i}">Quoted from {esc(q.get("label") or "")}</a>: '
                         f'“{esc(q["text"])}”</li>')
        else:
            items.append(f'<li class="qu">Unverified (not found in the document): “{esc(q["text"])}”</li>')
    return "<ol>" + "".join(items) + "</ol>" if items else "<p class=muted>None: the answer quotes nothing.</p>"


def _spans_html(rec: AuditRecord) -> str:
    items = []
    for s in rec.spans:
        text = " ".join(s["text"].split())
        text = text if len(text) <= 140 else text[:139] + "…"
        items.append(f'<li><a href="#span-{s["rank"]}"><b>{esc(s.get("label") or "")}</b> '
                     f'<span class="sc">{s["score"]:.4f}</span> {esc(text)}</a></li>')
    return "<ol id=spans>" + "".join(items) + "</ol>" if items else "<p class=muted>No spans were selected.</p>"


STYLE = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1f2328;background:#f3f4f6}
header{padding:12px 20px;background:#111827;color:#f9fafb}header h1{font-size:18px;margin:0 0 4px}
header .meta{font-size:12px;color:#d1d5db}.wrap{display:grid;grid-template-columns:minmax(320px,38%) 1fr;gap:16px;padding:16px}
aside{position:sticky;top:0;align-self:start;max-height:100vh;overflow:auto}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:12px 14px;margin-bottom:12px}
.card h2{font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:#6b7280;margin:0 0 6px}
.answer{white-space:pre-wrap}.tok{cursor:pointer;border-radius:3px}.tok:hover,.tok.on{background:#bfdbfe;outline:1px solid #2563eb}
.muted{color:#6b7280}.qv a{color:#15803d}.qu{color:#b91c1c}#spans a{color:inherit;text-decoration:none;display:block}
#spans a:hover{background:#fef3c7}.sc{color:#9a3412;font-variant-numeric:tabular-nums;font-size:12px}
.part{background:#fff;border:1px solid #d1d5db;box-shadow:0 1px 3px #0002;margin:0 0 14px;padding:14px 18px}
.lbl{font-size:12px;color:#6b7280;margin:0 0 6px}
.part.message{padding:3px 12px;margin:0 0 3px;box-shadow:none}.part.message .lbl{margin:0}.tx{white-space:pre-wrap;font:13px/1.5 ui-monospace,Menlo,Consolas,monospace}
#doc [style]{background:rgba(249,115,22,calc(var(--h)*.5))}body.tokmode #doc [style]{background:rgba(249,115,22,calc(var(--h)*.12))}
#doc .s{border-bottom:2px solid #c2410c}#doc .q{background:rgba(34,197,94,.35)!important;outline:2px solid #15803d}
#doc .t{background:rgba(37,99,235,calc(var(--t)*.45 + .1))!important;outline:1px solid #1d4ed8}
.legend span{display:inline-block;padding:0 6px;margin-right:6px;border-radius:3px;font-size:12px}
#tokinfo ol{padding-left:18px;margin:4px 0}#tokinfo a{color:#1d4ed8}
"""

SCRIPT = """
(function(){
var data=JSON.parse(document.getElementById('audit-data').textContent);
var byBlock={};
document.querySelectorAll('#doc [data-b]').forEach(function(el){(byBlock[el.dataset.b]=byBlock[el.dataset.b]||[]).push(el);});
var info=document.getElementById('tokinfo'),idle=info.innerHTML,pinned=null,shown=null;
function jump(b){var els=byBlock[b];if(els&&els.length)els[0].scrollIntoView({block:'center'});}
function show(t){
  if(shown===t)return;shown=t;
  document.querySelectorAll('#doc .t').forEach(function(el){el.classList.remove('t');});
  document.querySelectorAll('.tok.on').forEach(function(el){el.classList.remove('on');});
  if(t===null){document.body.classList.remove('tokmode');info.innerHTML=idle;return;}
  document.body.classList.add('tokmode');
  var tok=document.querySelector('.tok[data-t="'+t+'"]');if(tok)tok.classList.add('on');
  var picks=data.picks[t]||[],ol=document.createElement('ol');
  picks.forEach(function(p){(byBlock[p[0]]||[]).forEach(function(el){el.classList.add('t');el.style.setProperty('--t',p[1]/255);});
    var li=document.createElement('li'),a=document.createElement('a');a.href='#';
    a.textContent=(data.blocks[p[0]]||'block '+p[0])+' \\u00b7 '+Math.round(p[1]/2.55)+'%';
    a.addEventListener('click',function(e){e.preventDefault();jump(p[0]);});li.appendChild(a);ol.appendChild(li);});
  info.textContent='While generating \\u201c'+(tok?tok.textContent:'')+'\\u201d the indexer selected:';info.appendChild(ol);
}
document.querySelectorAll('.tok').forEach(function(el){var t=+el.dataset.t;
  el.addEventListener('mouseenter',function(){if(pinned===null)show(t);});
  el.addEventListener('mouseleave',function(){if(pinned===null)show(null);});
  function pin(){pinned=(pinned===t)?null:t;show(pinned);var p=pinned!==null&&data.picks[t][0];if(p)jump(p[0]);}
  el.addEventListener('click',pin);el.addEventListener('keydown',function(e){if(e.key==='Enter')pin();});});
})();
"""


def render(rec: AuditRecord) -> str:
    """The page's HTML text."""
    a, doc = rec.answer, rec.document
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; img-src data:"
    tokens_note = ("Hover or click a word of the answer to see what the indexer selected while it was generated."
                   if rec.tokens is not None else
                   "Per-token selections were not recorded for this answer (logged before they were stored).")
    dsa = a.get("dsa") or {}
    knobs = ", ".join(f"{k} {dsa[k]}" for k in ("top_k", "n_blocks", "local_window", "sink_tokens") if k in dsa)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>docreader audit #{esc(a['id'])} — {esc(Path(doc.path).name)}</title><style>{STYLE}</style></head>
<body><header><h1>Answer #{esc(a['id'])} · {esc(Path(doc.path).name)}</h1>
<div class="meta">{esc(a['created'])} · model {esc(a['model'])} · weights: {esc(rec.describe_weights())}<br>
{esc(rec.describe_backend())} · DSA {esc(knobs)} · {esc(a.get('prompt_tokens'))} prompt tokens
({esc(a.get('document_tokens'))} document) · document {esc(doc.path)} (sha256 {esc(rec.document_sha256[:16])})</div></header>
<div class="wrap"><aside>
<div class="card"><h2>Question</h2><p>{esc(a['question'])}</p></div>
<div class="card"><h2>Answer</h2>{_answer_html(rec)}<p class="muted" id="tokinfo">{esc(tokens_note)}</p></div>
<div class="card"><h2>Quotes (only verified ones are citations)</h2>{_quotes_html(rec)}</div>
<div class="card"><h2>Selected spans (what the indexer chose; not proof of use)</h2>{_spans_html(rec)}</div>
<div class="card legend"><span style="background:rgba(249,115,22,.45)">selection weight</span>
<span style="background:rgba(34,197,94,.35);outline:2px solid #15803d">verified quote</span>
<span style="border-bottom:2px solid #c2410c">ranked span</span>
<span style="background:rgba(37,99,235,.4)">selected for the chosen token</span></div>
</aside><main id="doc">
{_document_html(rec)}
</main></div>
<script type="application/json" id="audit-data">{_json_for_script(_token_data(rec))}</script>
<script>{SCRIPT}</script></body></html>
"""
