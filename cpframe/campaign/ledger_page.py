"""The "TAXICAB summary page": one static HTML page listing every calibration set of a repository.

DMTN-222 keeps this as a hand-edited Confluence page.  :func:`write_ledger_page` writes it
from the ledger: every set, its state, since when and by whom, the report it was judged on
(linked), where it was distributed, and the full history of each set, with the ledger's
head hash (to quote in a ticket) and the result of the hash-chain check.  No JavaScript is
needed; a browser test loads it headless.
"""

from __future__ import annotations

import datetime
import html
import os
from pathlib import Path
from typing import Any, Sequence

from cpframe.campaign.lifecycle import SetStatus, dumps_detail, ledger, report_path, summary_rows

__all__ = ["write_ledger_page"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top;font-size:.92em}
th{background:#f2f2f2}
.state{font-weight:600;padding:.1em .5em;border-radius:.3em}
.s-approved,.s-deployed,.s-distributed,.s-checked{background:#d8f3d8}
.s-rejected,.s-failed,.override{background:#f8d0d0}
.s-under_review{background:#fff2c0}
.s-generated,.s-verified,.s-certified{background:#e4ecfa}
code{font-size:.9em}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _link(out_dir: Path, repo: Any, report: str) -> str:
    if not report:
        return "-"
    p = report_path(repo, report)
    if not p.exists():
        return f"{_e(report)} (missing)"
    rel = os.path.relpath(p, out_dir)
    return f'<a class="report" href="{_e(rel)}">{_e(report)}</a>'


def _state(st: SetStatus) -> str:
    label = st.state or "not built"
    extra = ' <span class="state override">override</span>' if st.override else ""
    return f'<span class="state s-{_e(st.state or "none")}">{_e(label)}</span>{extra}'


def write_ledger_page(repo: Any, out: str | os.PathLike, statuses: Sequence[SetStatus] | None = None) -> Path:
    """Write ``out`` (a ``.html`` file, or a directory that gets ``index.html``); return its path.

    Raises LedgerTamperedError (nothing written) when the ledger's hash chain is broken.
    """
    led = ledger(repo)
    n_rows = led.verify()
    head = led.head()
    statuses = list(statuses) if statuses is not None else summary_rows(repo)
    path = Path(out)
    if path.suffix.lower() != ".html":
        path = path / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    out_dir = path.parent
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for st in statuses:
        last = st.last
        sites = ", ".join(f"{_e(s)} ({_e(v)})" for s, v in st.sites.items()) or "-"
        rows.append(
            f'<tr class="set" data-set="{_e(st.name)}" data-state="{_e(st.state)}">'
            f'<td><a href="#{_e(_anchor(st.name))}">{_e(st.name)}</a></td><td>{_state(st)}</td>'
            f"<td>{_e(last.at if last else '-')}</td><td>{_e(last.who if last else '-')}</td>"
            f"<td>{_link(out_dir, repo, st.report)}</td><td class=\"sites\">{sites}</td>"
            f"<td><code>{_e(st.next_step(str(repo.root)))}</code></td></tr>")
    sections = []
    for st in statuses:
        hist = "".join(
            f'<tr class="event{" override" if r.detail.get("override") else ""}" data-id="{r.id}">'
            f"<td>{r.id}</td><td>{_e(r.at)}</td><td>{_e(r.site or '')}</td>"
            f'<td><span class="state s-{_e(r.state)}">{_e(r.state)}</span></td>'
            f"<td>{_e(r.previous)}</td><td>{_e(r.who)}</td><td>{_e(r.ticket)}</td><td>{_e(r.why)}</td>"
            f"<td>{_e(dumps_detail(r.detail))}</td><td><code>{_e(r.hash[:12])}</code></td></tr>"
            for r in st.rows)
        sections.append(
            f'<h2 id="{_e(_anchor(st.name))}">{_e(st.name)}</h2>'
            f'<table class="history"><tr><th>row</th><th>at (UTC)</th><th>site</th><th>state</th><th>from</th>'
            f"<th>who</th><th>ticket</th><th>why</th><th>detail</th><th>hash</th></tr>{hist}</table>")
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Calibration sets of {_e(repo.root)}</title>
<style>{_CSS}</style></head>
<body data-sets="{len(statuses)}" data-ledger-rows="{n_rows}" data-ledger-ok="1">
<h1>Calibration sets</h1>
<p>Repository <code>{_e(repo.root)}</code>, written {now}. Ledger: {n_rows} rows, hash chain verified;
head <code id="head">{_e(head)}</code> (quote it in the ticket to anchor the history).</p>
<table id="sets"><tr><th>set</th><th>state</th><th>since (UTC)</th><th>by</th><th>report judged on</th>
<th>distributed to</th><th>next step</th></tr>
{''.join(rows)}
</table>
{''.join(sections)}
</body></html>
"""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _anchor(name: str) -> str:
    return "set-" + "".join(c if c.isalnum() else "-" for c in name)
