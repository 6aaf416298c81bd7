"""The HITL view's pages: server-drawn HTML styled like Airflow 3's UI, with the mAP chart
and the drift chart as inline SVGs.

The pages are shown inside Airflow's UI (an external view frames them); their stylesheet and
their one small script are served by the plugin itself (``assets/hitl_view.css``,
``assets/hitl_view.js``): no CDN, no font download. The colours are Airflow 3.3's own
(its Chakra theme's ``brand`` and ``gray`` scales, in OKLCH) and its font stack (Inter, then
the system's sans-serif); the page follows the colour mode of the Airflow page that frames
it (light or dark, switched live), or ``?theme=light|dark``.

Every number a person reads has a stable ``data-testid`` (``<what>-<run id>``) and its raw
value in ``data-value`` (JSON), so that browser tests read what the page shows.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from hitl_plugin.boxes import KINDS
from hitl_plugin.report import DRIFT_VERDICTS

_e = html.escape

STAGE_TEXT = {
    "running": "running (before labeling)",
    "submitting": "sending tasks to Label Studio",
    "labeling": "waiting for people",
    "collected": "answers collected, merging",
    "merged": "merged, report pending",
    "reported": "reported",
    "ended": "ended at the gate",
    "none": "no round folder yet",
}


def q(value: str) -> str:
    """One URL path segment."""
    return quote(str(value), safe="")


def num(value: Any, digits: int | None = None) -> str:
    """A number as a person reads it ('' for none)."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}f}"
    return str(value)


def cell(testid: str, value: Any, *, digits: int | None = None, tag: str = "td",
         cls: str = "num", text: str | None = None) -> str:
    """An element showing one number (or ``text`` for it), with its test id and raw value."""
    shown = num(value, digits) if text is None or value is None else text
    return (f'<{tag} class="{cls}" data-testid="{_e(testid)}" '
            f'data-value="{_e(json.dumps(value))}">{_e(shown)}</{tag}>')


def page(title: str, body: str, *, base: str, theme: str | None = None) -> str:
    """A whole page: Airflow's look, the plugin's stylesheet and script."""
    mode = theme if theme in ("light", "dark") else "light"
    fixed = ' data-theme-fixed="1"' if theme in ("light", "dark") else ""
    return (
        f'<!DOCTYPE html><html lang="en" class="{mode}"{fixed}><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>"
        f'<link rel="stylesheet" href="{_e(base)}/static/hitl_view.css">'
        f'<script src="{_e(base)}/static/hitl_view.js"></script>'
        f'</head><body><main class="hitl">{body}</main></body></html>')


# -- links ------------------------------------------------------------------------------------


def run_href(base: str, dag_id: str, run_id: str) -> str:
    return f"{base}/runs/{q(dag_id)}/{q(run_id)}"


def pipeline_href(base: str, dag_id: str) -> str:
    return f"{base}/pipelines/{q(dag_id)}"


def airflow_run_href(airflow: str, dag_id: str, run_id: str) -> str:
    return f"{airflow}/dags/{q(dag_id)}/runs/{q(run_id)}"


def project_href(ls_url: str | None, project_id: int | None) -> str | None:
    """A Label Studio project's data manager page."""
    if not ls_url or project_id is None:
        return None
    from hitl_plugin.labeling.tasks import project_url

    return project_url(ls_url, project_id)


def _ls_link(ls_url: str | None, project_id: int | None, run_id: str,
             testid: str = "ls-link") -> str:
    href = project_href(ls_url, project_id)
    if href is None:
        return "–" if project_id is None else f"project {int(project_id)}"
    return (f'<a class="ext" data-testid="{testid}-{_e(run_id)}" href="{_e(href)}" '
            f'target="_blank" rel="noopener noreferrer">project {int(project_id)} ↗</a>')


# -- chart ------------------------------------------------------------------------------------


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def line_chart(points: list[dict], lines: list[tuple[str, str]], *, name: str, title: str,
               y_label: str, scale: Callable[[float], tuple[float, int]], empty: str,
               y_of: Callable[[float], float] = float,
               shown: Callable[[float], str] = lambda v: f"{v:.4f}", tick: str = "{:.2f}",
               limit: tuple[str, str] | None = None) -> str:
    """Values per round as an SVG line chart: one line (CSS class ``key``) per ``(key,
    label)`` of ``lines``, a point for each of ``points`` (``{"run_id", "round", key:
    value}``) that has the key.

    :param name: the test ids' prefix (``<name>-chart``, ``<name>-line-<key>``,
        ``<name>-point-<key>-<run id>``, ``<name>-chart-empty``).
    :param scale: the y axis' step and number of steps for the highest value drawn.
    :param y_of: where a value stands on the y axis (its raw value goes in ``data-value``);
        ``shown``: how a point's tooltip writes it.
    :param limit: ``(key, label)`` of a dashed line across the chart through each point's
        value of ``key`` (a threshold), drawn from edge to edge.
    """
    width, height, left, right, top, bottom = 720, 260, 56, 16, 16, 40
    keys = [k for k, _ in lines] + ([limit[0]] if limit else [])
    values = [y_of(p[k]) for p in points for k in keys if _is_num(p.get(k))]
    if not values:
        return f'<p class="muted" data-testid="{name}-chart-empty">{_e(empty)}</p>'
    step, ticks = scale(max(values))
    top_value = step * ticks
    n = len(points)
    plot_w, plot_h = width - left - right, height - top - bottom
    pad = 24  # keep the first and last points off the axes

    def x(i: int) -> float:
        return left + (plot_w / 2 if n == 1 else pad + (plot_w - 2 * pad) * i / (n - 1))

    def y(v: float) -> float:
        return top + plot_h * (1 - v / top_value)

    out = [f'<svg data-testid="{name}-chart" class="chart" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="{_e(title)}">']
    for k in range(ticks + 1):
        v = step * k
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(v):.1f}" '
                   f'y2="{y(v):.1f}"/><text class="tick" x="{left - 6}" y="{y(v) + 4:.1f}" '
                   f'text-anchor="end">{tick.format(v)}</text>')
    for i, p in enumerate(points):
        out.append(f'<text class="tick" x="{x(i):.1f}" y="{height - bottom + 16}" '
                   f'text-anchor="middle"><title>{_e(p["run_id"])}</title>{p["round"]}</text>')
    out.append(f'<text class="axis" x="{left + plot_w / 2}" y="{height - 4}" '
               'text-anchor="middle">round</text>')
    out.append(f'<text class="axis" transform="rotate(-90)" x="{-(top + plot_h / 2)}" y="14" '
               f'text-anchor="middle">{_e(y_label)}</text>')
    if limit:
        pts = [(i, y_of(p[limit[0]])) for i, p in enumerate(points) if _is_num(p.get(limit[0]))]
        if pts:
            edge = [(left, pts[0][1]), *((x(i), v) for i, v in pts), (width - right, pts[-1][1])]
            path = " ".join(f"{u:.1f},{y(v):.1f}" for u, v in edge)
            out.append(f'<polyline class="line {limit[0]}" data-testid="{name}-{limit[0]}" '
                       f'points="{path}"><title>{_e(limit[1])}</title></polyline>')
    for key, label in lines:
        pts = [(i, p[key]) for i, p in enumerate(points) if _is_num(p.get(key))]
        if not pts:
            continue
        path = " ".join(f"{x(i):.1f},{y(y_of(v)):.1f}" for i, v in pts)
        out.append(f'<polyline class="line {key}" data-testid="{name}-line-{key}" '
                   f'points="{path}"/>')
        for i, v in pts:
            run = points[i]["run_id"]
            out.append(f'<circle class="dot {key}" data-testid="{name}-point-{key}-{_e(run)}" '
                       f'data-value="{v!r}" cx="{x(i):.1f}" cy="{y(y_of(v)):.1f}" r="4">'
                       f"<title>{_e(run)}: {_e(label)} {_e(shown(v))}</title></circle>")
    out.append("</svg>")
    keys_shown = [*lines, *([limit] if limit else [])]
    legend = ('<div class="legend">' + " ".join(f'<span class="key {key}"></span>{_e(label)}'
                                                for key, label in keys_shown) + "</div>")
    return "".join(out) + legend


def _map_scale(high: float) -> tuple[float, int]:
    step = 0.05 if high < 0.2 else 0.1 if high < 0.5 else 0.2
    return step, min(int(high / step) + 1, round(1 / step)) if high < 1 else int(high / step) + 1


def map_chart(series: list[dict]) -> str:
    """mAP50-95 of each reported round, before (the round's training) and after (the retrain
    on its corrections), as an SVG line chart."""
    return line_chart(series, [("before", "trained this round"),
                               ("after", "retrained on the corrections")],
                      name="map", title="mAP50-95 per round", y_label="mAP50-95 (held-out)",
                      scale=_map_scale, empty="No round has been reported yet: the chart "
                      "appears after the first round report.")


#: The drift signals the chart draws, in order, as their lines are labeled.
DRIFT_SIGNALS = (("confidence", "confidence (KS)"), ("box_count", "box count (KS)"),
                 ("class_mix", "class mix (chi-square)"), ("embedding", "embedding (MMD)"))
#: p-values below this one are drawn at it (-log10: 16), so that a p-value of 0 has a place.
P_FLOOR = 1e-16


def _log_p(p: float) -> float:
    return -math.log10(max(float(p), P_FLOOR))


def _drift_scale(high: float) -> tuple[float, int]:
    step = 0.5 if high < 3 else 1 if high < 6 else 2 if high < 12 else 4
    return step, int(high / step) + 1


def drift_chart(points: list[dict]) -> str:
    """Each round's drift p-values, one line per signal, as -log10(p) (higher: stronger
    evidence of drift), with the verdict's threshold (alpha over the signals tested)."""
    return line_chart(points, list(DRIFT_SIGNALS), name="drift",
                      title="drift p-values per round", y_label="-log10(p-value)",
                      scale=_drift_scale, y_of=_log_p, shown=lambda p: f"p={p:.2g}",
                      tick="{:g}", limit=("threshold", "drift threshold (alpha / signals)"),
                      empty="No round has tested for drift yet (the drift step writes the "
                      "p-values; rounds before it or with drift off have none).")


# -- parts ------------------------------------------------------------------------------------


def _deadline(deadline: str | None, run_id: str) -> str:
    if not deadline:
        return '<span class="muted">deadline not set yet</span>'
    return (f'<time data-testid="deadline-{_e(run_id)}" data-deadline="{_e(deadline)}" '
            f'datetime="{_e(deadline)}">{_e(deadline)}</time> '
            f'<span class="muted" data-countdown="{_e(deadline)}"></span>')


def progress_block(run_id: str, prog: dict | None, deadline: str | None,
                   api_url: str | None) -> str:
    """A waiting round's live count (done of total) and deadline; a message when Label
    Studio cannot be reached."""
    rid = _e(run_id)
    attrs = f' data-progress-url="{_e(api_url)}"' if api_url else ""
    if prog is None or "error" in prog:
        reason = (prog or {}).get("error", "no Label Studio project recorded yet")
        body = (f'<p class="warn" data-testid="progress-error-{rid}">Live progress unavailable: '
                f"{_e(reason)}</p>")
        return (f'<div class="progress" data-testid="progress-{rid}"{attrs}>{body}'
                f'<p>Deadline: {_deadline(deadline, run_id)}</p></div>')
    pct = 100.0 * (prog["done"] / prog["total"]) if prog["total"] else 100.0
    return (
        f'<div class="progress" data-testid="progress-{rid}"{attrs}>'
        f'<div class="bar"><span data-testid="progress-bar-{rid}" style="width:{pct:.1f}%">'
        "</span></div>"
        f'<p><strong>{cell(f"progress-done-{run_id}", prog["done"], tag="span", cls="big")}'
        f'</strong> of {cell(f"progress-total-{run_id}", prog["total"], tag="span", cls="big")}'
        f' tasks done ({cell(f"progress-annotated-{run_id}", prog["annotated"], tag="span")}'
        f' annotated, {cell(f"progress-skipped-{run_id}", prog["skipped"], tag="span")}'
        " skipped)</p>"
        f'<p>Deadline: {_deadline(prog.get("deadline") or deadline, run_id)}</p></div>')


ROUND_COLUMNS = (
    ("selected", "selected"), ("labeled", "labeled"), ("confirmed", "confirmed"),
    ("edited", "edited"), ("empty", "empty"), ("rejected", "rejected"),
    ("skipped", "skipped"),
)


def rounds_table(dag_id: str, rows: list[dict], *, base: str, ls_url: str | None) -> str:
    """One row per round: what people were sent and did, what was fixed, mAP, version,
    the drift verdict."""
    if not rows:
        return '<p class="muted">No round yet.</p>'
    head = ("<tr><th>round</th><th>status</th>"
            + "".join(f"<th>{label}</th>" for _, label in ROUND_COLUMNS)
            + "".join(f"<th>fixed: {k.replace('_', ' ')}</th>" for k in KINDS)
            + "<th>human boxes</th><th>auto-accepted boxes</th><th>mAP50-95 before</th>"
              "<th>after</th><th>new version</th><th>drift</th><th>Label Studio</th></tr>")
    body = []
    ncols = 6 + len(ROUND_COLUMNS) + len(KINDS) + 4
    for row in reversed(rows):
        run = row["run_id"]
        link = f'<a href="{_e(run_href(base, dag_id, run))}">{_e(run)}</a>'
        if "unreadable" in row:
            body.append(f'<tr data-testid="round-{_e(run)}"><td>{link}</td><td colspan='
                        f'"{ncols}" class="warn">report unreadable: {_e(row["unreadable"])}'
                        "</td></tr>")
            continue
        status = (f'<td><span class="chip {row["stage"]}" data-testid="stage-{_e(run)}">'
                  f'{_e(STAGE_TEXT.get(row["stage"], row["stage"]))}</span></td>')
        if row["stage"] != "reported":
            body.append(f'<tr data-testid="round-{_e(run)}"><td>{link}</td>{status}'
                        f'<td colspan="{ncols - 2}" class="muted">in progress</td>'
                        f"<td>{_ls_link(ls_url, row.get('project_id'), run)}</td></tr>")
            continue
        cells = "".join(cell(f"{key}-{run}", row.get(key)) for key, _ in ROUND_COLUMNS)
        cells += "".join(cell(f"fixed-{k}-{run}", row["fixed"][k]) for k in KINDS)
        cells += cell(f"human-boxes-{run}", row.get("human_boxes"))
        cells += cell(f"auto-boxes-{run}", row.get("auto_accepted_boxes"))
        cells += cell(f"map-before-{run}", row.get("map50_95_before"), digits=4)
        cells += cell(f"map-after-{run}", row.get("map50_95_after"), digits=4)
        cells += cell(f"new-version-{run}", row.get("new_version"), cls="")
        cells += "<td>" + drift_verdict(f"round-drift-{run}", row.get("drift")) + "</td>"
        body.append(f'<tr data-testid="round-{_e(run)}"><td>{link}</td>{status}{cells}'
                    f"<td>{_ls_link(ls_url, row.get('project_id'), run)}</td></tr>")
    return (f'<div class="scroll"><table data-testid="rounds-table">{head}{"".join(body)}'
            "</table></div>")


def drift_verdict(testid: str, drift: dict | None) -> str:
    """A round's drift verdict as a chip (its raw verdict in ``data-value``; '–' without a
    drift step)."""
    verdict = (drift or {}).get("verdict")
    return cell(testid, verdict, tag="span", cls=f"chip {_e(str(verdict))}" if verdict else "",
                text=DRIFT_VERDICTS.get(str(verdict), str(verdict)))


#: How the drift signals' tests read (``test`` of each signal in ``drift.json``).
DRIFT_TESTS = {"ks": "Kolmogorov-Smirnov", "chi2": "chi-square",
               "chi2_permutation": "chi-square permutation", "mmd": "MMD permutation"}


def _sig(value: Any) -> str | None:
    return f"{value:.3g}" if _is_num(value) else None


def drift_block(dag: str, row: dict, *, base: str) -> str:
    """A round's drift section: the verdict and why, each signal's test, statistic and
    p-value against the threshold, what the selection did, the drift plot."""
    run, drift = row["run_id"], row.get("drift")
    verdict = drift_verdict(f"drift-verdict-{run}", drift)
    if not drift:
        return (f"<section><h2>Drift</h2><p>Verdict: {verdict} <span class=\"muted\">No drift "
                "report for this round (it ran before the drift step, or without it).</span>"
                "</p></section>")
    signals = drift.get("signals") if isinstance(drift.get("signals"), dict) else {}
    rows = "".join(
        f'<tr data-testid="drift-signal-{_e(k)}-{_e(run)}"><td>{_e(k.replace("_", " "))}</td>'
        + cell(f"drift-test-{k}-{run}", sig.get("test"), cls="",
               text=DRIFT_TESTS.get(str(sig.get("test")), str(sig.get("test"))))
        + cell(f"drift-stat-{k}-{run}", sig.get("statistic"), text=_sig(sig.get("statistic")))
        + cell(f"drift-p-{k}-{run}", sig.get("p_value"), text=_sig(sig.get("p_value")))
        + "</tr>" for k, sig in signals.items() if isinstance(sig, dict))
    table = ('<table data-testid="drift-signals-' + _e(run) + '"><tr><th>signal</th><th>test'
             "</th><th>statistic</th><th>p-value</th></tr>" + rows
             + '<tr><th colspan="3">threshold (alpha '
             + cell(f"drift-alpha-{run}", drift.get("alpha"), tag="span", cls="")
             + " over the signals tested)</th>"
             + cell(f"drift-threshold-{run}", drift.get("threshold"), tag="th",
                    text=_sig(drift.get("threshold"))) + "</tr></table>") if rows else ""
    sizes = (f'<p>{cell(f"drift-n-pool-{run}", drift.get("n_pool"), tag="span", cls="")} pool '
             f'images against {cell(f"drift-n-reference-{run}", drift.get("n_reference"), tag="span", cls="")}'  # noqa: E501
             " held-out images"
             + (f' ({cell(f"drift-n-tested-before-{run}", drift["n_pool_tested_before"], tag="span", cls="")}'  # noqa: E501
                " more pool images were left by earlier rounds, which tested them)"
                if drift.get("n_pool_tested_before") else "")
             + "</p>") if drift.get("n_pool") is not None else ""
    budget = ""
    if drift.get("budget") is not None:
        budget = (f'<p>Budget: {cell(f"drift-base-budget-{run}", drift.get("base_budget"), tag="span", cls="")}'  # noqa: E501
                  f' → {cell(f"drift-budget-{run}", drift.get("budget"), tag="span", cls="")}'
                  " images, of which "
                  f'{cell(f"drift-reserved-{run}", drift.get("reserved"), tag="span", cls="")}'
                  " reserved for the pool images least like the held-out set (reason "
                  "<em>drift</em>)</p>")
    plot = (f'<img class="plot" data-testid="drift-plot-{_e(run)}" alt="drift plot" '
            f'src="{_e(base)}/drift-plot/{_e(q(dag))}/{_e(q(run))}.png">'
            if row.get("has_drift_plot") else "")
    return (f"<section><h2>Drift</h2><p>Verdict: {verdict}</p>"
            f'<p data-testid="drift-reason-{_e(run)}">{_e(drift.get("reason") or "")}</p>'
            f"{sizes}{table}{budget}{plot}</section>")


def people_table(run_id: str, people: list[dict]) -> str:
    """The per-person table of a round (``annotators`` of its report)."""
    if not people:
        return '<p class="muted">This round measured nobody (no gold or overlapped tasks).</p>'
    head = ("<tr><th>person</th><th>tasks</th><th>gold boxes</th><th>accuracy</th>"
            "<th>95% interval</th><th>precision</th><th>agreement</th><th>median s/task</th>"
            "<th>held answers</th><th>flagged</th></tr>")
    body = []
    for i, row in enumerate(people):
        who = str(row.get("annotator", ""))
        tid = f"annotator-{run_id}-{i}"
        ci = row.get("accuracy_ci95")
        interval = (f"{ci[0]:.2f}–{ci[1]:.2f}" if isinstance(ci, list) and len(ci) == 2
                    and all(isinstance(c, (int, float)) for c in ci) else "–")
        flagged = ('<span class="chip failed">yes: answers outside consensus held</span>'
                   if row.get("flagged") else "no")
        body.append(
            f'<tr data-testid="{_e(tid)}" data-annotator="{_e(who)}"><td>{_e(who)}</td>'
            + cell(f"{tid}-tasks", row.get("tasks"))
            + cell(f"{tid}-gold-boxes", row.get("gold_boxes"))
            + cell(f"{tid}-accuracy", row.get("accuracy"), digits=2)
            + f'<td class="num">{_e(interval)}</td>'
            + cell(f"{tid}-precision", row.get("precision"), digits=2)
            + cell(f"{tid}-agreement", row.get("agreement"), digits=2)
            + cell(f"{tid}-median-seconds", row.get("median_seconds"), digits=1)
            + cell(f"{tid}-held", row.get("held_answers"))
            + f'<td data-testid="{_e(tid)}-flagged">{flagged}</td></tr>')
    return (f'<div class="scroll"><table data-testid="annotators-{_e(run_id)}">{head}'
            f'{"".join(body)}</table></div>')


def lineage_block(data: dict | None, *, base: str) -> str:
    """The dataset's current version and the chain of parents it was made from."""
    if data is None:
        return '<p class="muted">The dataset of this pipeline is not known yet.</p>'
    if "error" in data:
        return f'<p class="warn" data-testid="dataset-error">{_e(data["error"])}</p>'
    chain = " ← ".join(f'<span class="ver" data-testid="lineage-{_e(v)}">{_e(v)}</span>'
                       for v in data["chain"])
    rows = []
    for v in data["versions"]:
        made = "imported" if not v["round_key"] else _e(v["round_key"])
        if v["dag_id"] and v["run_id"]:
            made = (f'round <a href="{_e(run_href(base, v["dag_id"], v["run_id"]))}">'
                    f'{_e(v["run_id"])}</a> of {_e(v["dag_id"])}')
        cls = "" if v["in_chain"] else ' class="muted"'
        rows.append(f'<tr{cls} data-testid="version-{_e(v["version"])}"><td>{_e(v["version"])}'
                    f'</td><td>{_e(v["parent"] or "–")}</td><td>{made}</td>'
                    f'<td class="num">{_e(num(v["images"]))}</td>'
                    f'<td class="num">{_e(num(v["annotations"]))}</td>'
                    f'<td>{_e(v["created"])}</td></tr>')
    return (f'<p>Dataset <strong data-testid="dataset-name">{_e(data["name"])}</strong>, '
            f'current version <strong data-testid="dataset-latest">{_e(data["latest"] or "–")}'
            f'</strong></p><p class="chain" data-testid="lineage">Lineage: {chain}</p>'
            '<div class="scroll"><table data-testid="versions-table"><tr><th>version</th>'
            "<th>parent</th><th>made by</th><th>images</th><th>annotations</th><th>created</th>"
            f'</tr>{"".join(rows)}</table></div>')


def _header(title: str, crumbs: list[tuple[str, str | None]], links: str = "") -> str:
    trail = " / ".join(f'<a href="{_e(h)}">{_e(t)}</a>' if h else _e(t) for t, h in crumbs)
    return (f'<header><nav class="crumbs">{trail}</nav><h1>{_e(title)}</h1>'
            f'<div class="links">{links}</div></header>')


# -- pages ------------------------------------------------------------------------------------


def index_page(summaries: list[dict], *, base: str, theme: str | None = None) -> str:
    """Every pipeline the user may read, one card each."""
    cards = []
    for s in summaries:
        dag = s["dag_id"]
        last = s.get("last") or {}
        waiting = (f'<p><span class="chip labeling" data-testid="waiting-{_e(dag)}">'
                   f'{s["waiting"]} round(s) waiting for people</span></p>'
                   if s.get("waiting") else "")
        cards.append(
            f'<a class="card" data-testid="pipeline-{_e(dag)}" '
            f'href="{_e(pipeline_href(base, dag))}"><h2>{_e(dag)}</h2>'
            f'<p>{cell(f"rounds-{dag}", s["rounds"], tag="span", cls="big")} round(s) '
            f'reported; dataset {_e(s.get("dataset") or "–")} '
            f'{cell(f"dataset-latest-{dag}", s.get("latest"), tag="span", cls="")}</p>'
            f'<p>latest mAP50-95: {cell(f"latest-map-before-{dag}", last.get("before"), digits=4, tag="span")}'  # noqa: E501
            f' → {cell(f"latest-map-after-{dag}", last.get("after"), digits=4, tag="span")}'
            f"</p>{waiting}</a>")
    body = "".join(cards) or ('<p class="muted" data-testid="no-pipelines">No pipeline you may '
                              "read has rounds yet.</p>")
    return page("HITL rounds", _header("Human-in-the-loop rounds", [("HITL", None)])
                + f'<section class="cards">{body}</section>', base=base, theme=theme)


def pipeline_page(view: dict, *, base: str, airflow: str, ls_url: str | None,
                  progress: dict[str, dict], theme: str | None = None) -> str:
    """One pipeline: chart, rounds, waiting rounds, people, dataset lineage."""
    dag = view["dag_id"]
    waiting = [r for r in view["rounds"] if r["stage"] == "labeling"]
    parts = [_header(dag, [("HITL", f"{base}/"), (dag, None)],
                     f'<a target="_top" href="{_e(airflow)}/dags/{_e(q(dag))}">DAG in Airflow</a>'),
             '<section><h2>mAP50-95 per round</h2>', map_chart(view["series"]), "</section>",
             "<section><h2>Drift per round</h2>", drift_chart(view.get("drift") or []),
             "</section>"]
    if waiting:
        parts.append("<section><h2>Waiting for people</h2>")
        for r in waiting:
            run = r["run_id"]
            parts.append(f'<h3><a href="{_e(run_href(base, dag, run))}">{_e(run)}</a> '
                         f'{_ls_link(ls_url, r.get("project_id"), run, "ls-link-waiting")}'
                         "</h3>")
            parts.append(progress_block(run, progress.get(run), r.get("deadline"),
                                        f"{base}/api/progress/{q(dag)}/{q(run)}"))
        parts.append("</section>")
    parts += ["<section><h2>Rounds</h2>",
              rounds_table(dag, view["rounds"], base=base, ls_url=ls_url), "</section>"]
    people = view.get("people")
    parts.append("<section><h2>People" + (f' in round {_e(people["run_id"])}' if people else "")
                 + "</h2>" + (people_table(people["run_id"], people["annotators"]) if people
                              else '<p class="muted">No round has measured people yet.</p>')
                 + "</section>")
    parts += ["<section><h2>Dataset</h2>", lineage_block(view.get("dataset"), base=base),
              "</section>"]
    return page(f"HITL: {dag}", "".join(parts), base=base, theme=theme)


def run_page(view: dict, *, base: str, airflow: str, ls_url: str | None,
             progress: dict | None, theme: str | None = None) -> str:
    """One round, as the DAG run's tab shows it."""
    dag, row = view["dag_id"], view["round"]
    run = row["run_id"]
    links = ((f'{_ls_link(ls_url, row["project_id"], run)} '
              if row.get("project_id") is not None else "")
             + f'<a href="{_e(pipeline_href(base, dag))}">pipeline dashboard</a> '
             f'<a target="_top" href="{_e(airflow_run_href(airflow, dag, run))}">run in Airflow'
             "</a>")
    parts = [_header(f"Round {run}", [("HITL", f"{base}/"), (dag, pipeline_href(base, dag)),
                                      (run, None)], links),
             f'<p>Status: <span class="chip {_e(row["stage"])}" data-testid="stage-{_e(run)}">'
             f'{_e(STAGE_TEXT.get(row["stage"], row["stage"]))}</span></p>']
    if row["stage"] == "none":
        parts.append('<p class="muted">This run has not written a round folder (yet): it has '
                     "not reached its first HITL step, or it is not a HITL round.</p>")
    if row["stage"] == "labeling":
        parts += ["<section><h2>Labeling progress</h2>",
                  progress_block(run, progress, row.get("deadline"),
                                 f"{base}/api/progress/{q(dag)}/{q(run)}"), "</section>"]
    if "unreadable" in row:
        parts.append(f'<p class="warn">Report unreadable: {_e(row["unreadable"])}</p>')
    elif row["stage"] == "reported":
        parts.append(_report_sections(dag, row, base=base))
    elif row.get("drift"):  # known from the drift step, before the round is reported
        parts.append(drift_block(dag, row, base=base))
    return page(f"HITL: {dag} {run}", "".join(parts), base=base, theme=theme)


def _stat(label: str, testid: str, value: Any, digits: int | None = None) -> str:
    return (f'<div class="stat"><div class="label">{_e(label)}</div>'
            f'{cell(testid, value, digits=digits, tag="div", cls="big")}</div>')


def _report_sections(dag: str, row: dict, *, base: str) -> str:
    run = row["run_id"]
    stats = "".join([
        _stat("mAP50-95 before", f"map-before-{run}", row["map50_95_before"], 4),
        _stat("mAP50-95 after", f"map-after-{run}", row["map50_95_after"], 4),
        _stat("selected", f"selected-{run}", row["selected"]),
        _stat("labeled", f"labeled-{run}", row["labeled"]),
        _stat("confirmed", f"confirmed-{run}", row["confirmed"]),
        _stat("edited", f"edited-{run}", row["edited"]),
        _stat("empty", f"empty-{run}", row["empty"]),
        _stat("rejected", f"rejected-{run}", row["rejected"]),
        _stat("skipped", f"skipped-{run}", row["skipped"]),
        _stat("human boxes", f"human-boxes-{run}", row["human_boxes"]),
        _stat("auto-accepted boxes", f"auto-boxes-{run}", row["auto_accepted_boxes"]),
        _stat("auto-accepted images", f"auto-images-{run}", row["auto_accepted_images"]),
        _stat("new pool images labeled", f"pool-labeled-{run}", row["pool_labeled"]),
        _stat("labels confirmed", f"labels-confirmed-{run}", row["labels_confirmed"]),
    ])
    fixed = "".join(f'<tr><td>{_e(k.replace("_", " "))}</td>'
                    f'{cell(f"fixed-{k}-{run}", row["fixed"][k])}</tr>' for k in KINDS)
    reasons = "".join(f"<tr><td>{_e(k)}</td>{cell(f'reason-{k}-{run}', v)}</tr>"
                      for k, v in sorted(row["by_reason"].items()))
    version = (f'<p>Dataset {_e(row.get("dataset") or "–")}: '
               f'{cell(f"base-version-{run}", row.get("base_version"), tag="span", cls="")} → '
               f'{cell(f"new-version-{run}", row.get("new_version"), tag="span", cls="")}; '
               f'model promoted: {cell(f"promoted-{run}", row.get("promoted"), tag="span", cls="")}'
               "</p>")
    plot = (f'<img class="plot" data-testid="plot-{_e(run)}" alt="round plot" '
            f'src="{_e(base)}/plot/{_e(q(dag))}/{_e(q(run))}.png">' if row["has_plot"] else "")
    return (
        f'<section><h2>Round numbers</h2><div class="stats">{stats}</div>{version}</section>'
        '<section class="two"><div><h2>Label errors fixed, by kind</h2>'
        f'<table data-testid="fixed-{_e(run)}"><tr><th>kind</th><th>fixed</th></tr>{fixed}'
        f'<tr><th>total</th>{cell(f"fixed-total-{run}", row["fixed_total"], tag="th")}</tr>'
        '</table></div><div><h2>Why images were selected</h2>'
        f'<table><tr><th>reason</th><th>images</th></tr>{reasons}</table></div></section>'
        f"{drift_block(dag, row, base=base)}"
        f'<section><h2>People</h2>{people_table(run, row["annotators"])}</section>'
        f'<section><h2>Plot</h2>{plot}<details><summary>Report text</summary>'
        f'<pre>{_e(row.get("text") or "")}</pre></details></section>')


def error_page(status: int, message: str, *, base: str, theme: str | None = None) -> str:
    return page(f"HITL: {status}", _header(f"{status}", [("HITL", f"{base}/")])
                + f'<p class="warn" data-testid="error">{_e(message)}</p>', base=base,
                theme=theme)
