"""Tables and feedback: plain text for the terminal, Markdown and HTML for people.

Records carry text that came from a submission (error messages, file names, a student's folder
name). None of it is trusted: Markdown escapes every character with a meaning and keeps each text
on one line, HTML escapes everything, and a CSV cell cannot start a formula.
"""
from __future__ import annotations

import html
import re
from typing import Sequence

MARK = {"passed": "✓", "failed": "✗", "error": "!", "missing": "·"}


def points(value: float) -> str:
    """A score for people: at most two decimals, no trailing zeros (``1.2857`` -> ``'1.29'``)."""
    return f"{round(float(value), 2):g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width text table.

    >>> print(table(["a", "bb"], [[1, "x"]]))
    a  bb
    -  --
    1  x
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-!|~])")


def md(text: object) -> str:
    """Untrusted text as inert Markdown on one line: no heading, link, table cell, code span or HTML.

    >>> print(md("# 01: 10 / 10 | <script>"))
    \\# 01: 10 / 10 \\| &lt;script&gt;
    """
    one_line = " ".join(str(text).split())
    escaped = html.escape(one_line, quote=False)               # & < > first: no raw HTML
    return _MARKDOWN_SPECIAL.sub(r"\\\1", escaped)


def csv_cell(text: object) -> str:
    """A CSV cell a spreadsheet will not run: one that starts like a formula gets a leading quote.

    >>> csv_cell("=HYPERLINK(1)"), csv_cell("fine")
    ("'=HYPERLINK(1)", 'fine')
    """
    value = str(text)
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table of trusted values (``rows`` that hold untrusted text go through :func:`md` first)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_page(title: str, body_markdownish: list[tuple[str, object]]) -> str:
    """A small self-contained HTML page from (kind, content) blocks: ("h1"/"h2"/"p", text) or ("table", (headers, rows))."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
             "th{background:#f4f4f4}</style>"]
    for kind, content in body_markdownish:
        if kind == "table":
            headers, rows = content
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers) + "</tr>")
            for row in rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
            parts.append("</table>")
        else:
            parts.append(f"<{kind}>{html.escape(str(content))}</{kind}>")
    return "\n".join(parts) + "\n"


def summary_rows(records: list[dict]) -> list[list[object]]:
    return [[r["notebook"], r["submission"], r["status"], f"{points(r['score'])}/{points(r['max_score'])}", f"{r['seconds']:.1f}"]
            for r in records]


SUMMARY_HEADERS = ["notebook", "submission", "status", "score", "seconds"]


def _where(error: dict) -> str:
    line = f" ({error['first_line']})" if error.get("first_line") else ""
    return f"In [{error.get('cell')}]{line}" if error.get("cell") else ""


def feedback_markdown(record: dict) -> str:
    """Feedback for one submission: per exercise, its score and the message (no hidden inputs).

    Only the notebook's name, the scores and the statuses are the grader's own; every other text is
    escaped with :func:`md`.
    """
    lines = [f"# {md(record['notebook'])}: {points(record['score'])} / {points(record['max_score'])}", "",
             f"Status: **{md(record['status'])}** ({record['seconds']:.1f} s)"]
    if record.get("message"):
        lines += ["", md(record["message"])]
    rows = [[f"{MARK.get(e['status'], '?')} {md(e['id'])}", md(e["status"]), f"{points(e['score'])}/{points(e['max_score'])}",
             md(e["message"])] for e in record["exercises"]]
    if rows:
        lines += ["", markdown_table(["exercise", "status", "score", "feedback"], rows)]
    if record.get("cell_errors"):
        lines += ["", "Cells that raised an error (In [n] as after Restart and Run All):", ""]
        lines += [f"- {md(_where(e))}: {md(e.get('error', ''))}" for e in record["cell_errors"]]
    if record.get("flags"):
        lines += ["", "For the instructor:", ""] + [f"- {md(f['flag'])}" for f in record["flags"]]
    return "\n".join(lines) + "\n"


def feedback_html(record: dict) -> str:
    """The same feedback as :func:`feedback_markdown`, as a small self-contained HTML page (all escaped)."""
    blocks = [("h1", f"{record['notebook']}: {points(record['score'])} / {points(record['max_score'])}"),
              ("p", f"Status: {record['status']} ({record['seconds']:.1f} s)")]
    if record.get("message"):
        blocks.append(("p", record["message"]))
    rows = [[f"{MARK.get(e['status'], '?')} {e['id']}", e["status"], f"{points(e['score'])}/{points(e['max_score'])}",
             e["message"]] for e in record["exercises"]]
    if rows:
        blocks.append(("table", (["exercise", "status", "score", "feedback"], rows)))
    if record.get("cell_errors"):
        blocks.append(("table", (["cell", "error"], [[_where(e), e.get("error", "")] for e in record["cell_errors"]])))
    for flag in record.get("flags", []):
        blocks.append(("p", "For the instructor: " + flag["flag"]))
    return html_page(f"{record['notebook']} feedback", blocks)
