"""Self-contained HTML pages: a run's report/report.html and a sweep's summary.html.

One file each, opened in any browser without a server: plots are embedded as PNG data URIs,
styles and the small table-sorting script are inline, nothing is fetched. Every number says
how it was obtained (split, thresholds, which metric chose the kept epoch).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#1d2330;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:30px;border-bottom:1px solid #dde;padding-bottom:4px}
.muted{color:#667}.answer{background:#f3f7ff;border:1px solid #c9d8f5;border-radius:8px;padding:12px 18px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.92em}
th,td{padding:4px 10px;border-bottom:1px solid #e3e6ee;text-align:right}
th{background:#f5f6fa;cursor:default}td:first-child,th:first-child{text-align:left}
table.sortable th{cursor:pointer}table.sortable th:after{content:" \\2195";color:#aab}
img{max-width:100%;border:1px solid #e3e6ee;border-radius:6px;margin:6px 0}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}code{background:#f2f2f6;padding:1px 4px;border-radius:3px}
.bad{color:#b3261e}.good{color:#1b7f3b}.row{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
"""

# Click a header to sort by that column (numbers numerically); click again to reverse.
_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var body=t.tBodies[0],rows=Array.from(body.rows),asc=th.dataset.asc!=='1';
      rows.sort(function(a,b){var x=a.cells[i].dataset.v||a.cells[i].textContent,
          y=b.cells[i].dataset.v||b.cells[i].textContent;
        var nx=parseFloat(x),ny=parseFloat(y);var c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});t.querySelectorAll('th').forEach(function(h){h.dataset.asc='';});th.dataset.asc=asc?'1':'0';
    });
  });
});
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def num(value: Any, digits: int = 4) -> str:
    if value is None or isinstance(value, bool):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return esc(value)
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, sortable: bool = False, cls: str = "") -> str:
    """An HTML table; numeric cells carry data-v so sorting is numeric."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, (int, float)) and not isinstance(cell, bool):
                cells.append(f'<td data-v="{cell}">{num(cell)}</td>')
            else:
                cells.append(f"<td>{esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    classes = " ".join(c for c in ("sortable" if sortable else "", cls) if c)
    return f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def image(path: Path, alt: str) -> str:
    """A PNG embedded as a data URI (the page stays one file)."""
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        'content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>{body}<script>{_SORT_JS}</script></body></html>\n"
    )


# --------------------------------------------------------------------------- a run


def _test_section(run: Mapping) -> str:
    tasks = run.get("tasks") or []
    test, at05 = run.get("test") or {}, run.get("test_at_0.5") or {}
    if not test:
        return "<p>No test results (no test split, or training stopped before an evaluation).</p>"
    any_ml = any(t["multilabel"] for t in tasks)
    headers = ["task", "labels", "macro-F1", "micro-F1", "accuracy"] + (
        ["macro-F1 at 0.5", "micro-F1 at 0.5"] if any_ml else []
    )
    rows = []
    for t in tasks:
        name, acc = t["name"], "subset_accuracy" if t["multilabel"] else "accuracy"
        row = [
            name + (" (multi-label)" if t["multilabel"] else ""),
            len(t["labels"]),
            test.get(f"{name}/macro_f1"),
            test.get(f"{name}/micro_f1"),
            test.get(f"{name}/{acc}"),
        ]
        if any_ml:
            row += [
                at05.get(f"{name}/macro_f1") if t["multilabel"] else "-",
                at05.get(f"{name}/micro_f1") if t["multilabel"] else "-",
            ]
        rows.append(row)
    rows.append(["mean over tasks", "", test.get("macro_f1"), "", ""] + (["", ""] if any_ml else []))
    decisions = run.get("decisions") or {}
    note = ""
    if decisions.get("applies_to"):
        note = (
            f"<p class=muted>Multi-label tasks decide with {esc(decisions['description'])}; the columns "
            "&ldquo;at 0.5&rdquo; score the same model with every label at 0.5. Accuracy of a multi-label task is "
            "subset accuracy.</p>"
        )
    n = (run.get("data_sizes") or {}).get("test")
    return (
        f"<p>Test split, {esc(n)} examples, scored with the model of the kept epoch.</p>" + table(headers, rows) + note
    )


def _thresholds_section(run: Mapping) -> str:
    thresholds = run.get("thresholds") or {}
    if not thresholds:
        return ""
    labels = {t["name"]: t["labels"] for t in run.get("tasks") or []}
    parts = []
    for task, values in thresholds.items():
        rows = sorted(zip(labels.get(task, []), values), key=lambda r: r[1])
        parts.append(
            f"<details><summary>{esc(task)}: {len(values)} labels</summary>"
            + table(["label", "threshold"], rows, sortable=True)
            + "</details>"
        )
    return "<h2>Decision thresholds</h2>" + "".join(parts)


def _per_class_section(per_class: Mapping) -> str:
    parts = []
    for task, rows in (per_class or {}).items():
        ordered = sorted(rows.items(), key=lambda kv: -(kv[1].get("f1") or 0.0))
        body = [[label, m.get("f1"), m.get("precision"), m.get("recall"), m.get("support")] for label, m in ordered]
        parts.append(
            f"<h3>{esc(task)}</h3>" + table(["label", "F1", "precision", "recall", "support"], body, sortable=True)
        )
    if not parts:
        return ""
    return (
        "<h2>Per class (test split, kept model)</h2><p class=muted>Ordered by F1, best first; click a column to "
        "sort.</p>" + "".join(parts)
    )


def _errors_section(errors: Mapping) -> str:
    from emotrain.inference.predictions import PREDICTIONS_FILE

    parts = []
    for task, info in (errors or {}).items():
        worst = [[w["label"], w["f1"], w["support"], w["predicted"]] for w in info.get("worst_labels") or []]
        confusions = [[c["gold"], c["predicted"], c["count"]] for c in info.get("confusions") or []]
        parts.append(
            f"<h3>{esc(task)}</h3><div class=row>"
            + table(["label (lowest F1)", "F1", "support", "predicted"], worst)
            + table(["gold", "predicted instead", "texts"], confusions)
            + "</div>"
        )
    if not parts:
        return ""
    return (
        f"<h2>Where it errs (test split)</h2><p class=muted>The labels with the lowest F1 and the most frequent "
        f"errors; multi-label: a missed gold label next to each wrong label predicted for the same text, or "
        f"(none). Every prediction is in <code>{esc(PREDICTIONS_FILE)}</code> in the run directory.</p>"
        + "".join(parts)
    )


def _history_section(run: Mapping, report: Mapping) -> str:
    best = report.get("best") or {}
    monitor = best.get("metric", "loss")
    history = (run or {}).get("history") or []
    if history:
        tuned = next(
            (k for k in ("macro_f1_tuned", "macro_f1_fixed") if any(k in (h.get("val") or {}) for h in history)), None
        )
        headers = ["epoch", "step", "train loss", "val loss", "val macro-F1 (at 0.5)" if tuned else "val macro-F1"]
        headers += [f"val macro-F1 ({'tuned' if tuned.endswith('tuned') else 'fixed'} thresholds)"] if tuned else []
        headers += [f"val {monitor} (kept by)"] if monitor not in ("loss", "macro_f1") else []
        rows = []
        for h in history:
            val = h.get("val") or {}
            mark = (
                " *"
                if h.get("step") == best.get("step")
                or (best.get("step") is None and h.get("epoch") == best.get("epoch"))
                else ""
            )
            row = [
                f"{h.get('epoch')}{'' if h.get('epoch_done', True) else ' (mid-epoch)'}{mark}",
                h.get("step"),
                h.get("train_loss"),
                val.get("loss"),
                val.get("macro_f1"),
            ]
            row += [val.get(tuned)] if tuned else []
            row += [val.get(monitor)] if monitor not in ("loss", "macro_f1") else []
            rows.append(row)
        return "<h2>Per evaluation (validation split)</h2><p class=muted>* the kept evaluation.</p>" + table(
            headers, rows
        )
    rows = [
        [i + 1, tl, vl]
        for i, (tl, vl) in enumerate(zip(report.get("train_losses") or [], report.get("val_losses") or []))
    ]
    return "<h2>Per epoch</h2>" + table(["epoch", "train loss", "val loss"], rows)


def _config_section(report: Mapping, run: Mapping | None) -> str:
    from emotrain.config import flatten_dict

    config = flatten_dict(report.get("hyperparameters") or {})
    rows = [[k, "null" if v is None else str(v)] for k, v in config.items()]
    out = (
        f"<h2>Configuration</h2><details><summary>{len(rows)} keys</summary>"
        + table(["key", "value"], rows)
        + "</details>"
    )
    if run:
        versions = [[k, v] for k, v in (run.get("versions") or {}).items()]
        git = run.get("git") or {}
        versions.append(
            ["git commit", f"{git.get('commit') or 'n/a'}{' (uncommitted changes)' if git.get('dirty') else ''}"]
        )
        out += "<details><summary>Versions</summary>" + table(["package", "version"], versions) + "</details>"
    return out


def _training_facts(run: Mapping) -> str:
    """One line of how the model was trained: data sizes, steps, time, device, precision, seed."""
    sizes = run.get("data_sizes") or {}
    precision = run.get("precision") or {}
    facts = [
        f"data: train {sizes.get('train')}, val {sizes.get('val')}, test {sizes.get('test')}",
        f"{run.get('epochs_run')} epochs, {run.get('global_steps')} optimiser steps in {run.get('wall_time_s')} s",
        f"device {run.get('device')}, precision {precision.get('effective')} (requested {precision.get('requested')})",
        f"seed {run.get('seed')}" + (", deterministic" if run.get("deterministic") else ""),
    ]
    return f"<p class=muted>Trained on {esc('; '.join(facts))}.</p>"


def run_report_html(report: Mapping, summary_text: str, report_dir: Path, *, run: Mapping | None = None) -> str:
    """report/report.html of one run: the answer, the plots, the tables, the configuration (collapsed)."""
    from emotrain.reports import describe_best

    files = report.get("files") or {}
    best = report.get("best") or {}
    prefix = report.get("prefix", "emotrain")
    status = (run or {}).get("status", "")
    head = (
        f"<h1>{esc(prefix)} run report</h1><p class=muted>{esc(report_dir.parent)} "
        f"&middot; generated {esc(report.get('generated_at'))}"
    )
    head += (
        f" &middot; status <b class={'good' if status == 'completed' else 'bad'}>{esc(status)}</b></p>"
        if status
        else "</p>"
    )
    answer = (
        f"<div class=answer><p><b>Kept model:</b> {esc(describe_best(best))}, "
        f"of {esc(report.get('epochs'))} epochs.</p>"
    )
    answer += _test_section(run) if run else "<p>Test results: not given to the report.</p>"
    answer += _training_facts(run) if run else ""
    answer += "</div>"
    plots = "".join(
        image(report_dir / files[key], key.replace("_", " "))
        for key in ("loss_curves", "metrics_curves")
        if key in files
    )
    per_task = "".join(
        image(report_dir / name, stem.replace("_", " "))
        for stem, name in files.items()
        if stem.startswith(("per_class_f1_", "confusion_matrix_"))
    )
    body = head + answer + _thresholds_section(run or {}) + "<h2>Curves</h2>" + plots
    body += _history_section(run or {}, report)
    body += _per_class_section(report.get("per_class") or {}) + _errors_section(report.get("errors") or {}) + per_task
    body += _config_section(report, run)
    body += f"<details><summary>summary.txt</summary><pre>{esc(summary_text)}</pre></details>"
    return page(f"{prefix} run report", body)


# --------------------------------------------------------------------------- a sweep


def sweep_summary_html(
    title: str,
    text: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    plot: Path | None,
    notes: Sequence[str],
    stats: tuple[Sequence[str], Sequence[Sequence[Any]]] | None = None,
) -> str:
    """summary.html of a sweep: (k-fold) the statistics over folds, the ranked or per-fold table, the plot, and the
    text summary."""
    body = f"<h1>{esc(title)}</h1>" + "".join(f"<p class=muted>{esc(n)}</p>" for n in notes)
    if stats:
        body += "<h2>Over folds</h2>" + table(*stats)
        body += "<h2>Per fold</h2>"
    body += table(headers, rows, sortable=True)
    if plot is not None:
        body += image(plot, "sweep summary plot")
    body += f"<details><summary>Text summary</summary><pre>{esc(text)}</pre></details>"
    return page(title, body)
