"""Tables and feedback: plain text for the terminal, Markdown and HTML for people."""
from __future__ import annotations

import html
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


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
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


def feedback_markdown(record: dict) -> str:
    """Feedback for one submission: per exercise, its score and the message (no hidden inputs)."""
    lines = [f"# {record['notebook']}: {points(record['score'])} / {points(record['max_score'])}", "",
             f"Status: **{record['status']}** ({record['seconds']:.1f} s)"]
    if record.get("message"):
        lines += ["", record["message"]]
    rows = [[f"{MARK.get(e['status'], '?')} {e['id']}", e["status"], f"{points(e['score'])}/{points(e['max_score'])}", e["message"]]
            for e in record["exercises"]]
    if rows:
        lines += ["", markdown_table(["exercise", "status", "score", "feedback"], rows)]
    return "\n".join(lines) + "\n"


def feedback_html(record: dict) -> str:
    """The same feedback as :func:`feedback_markdown`, as a small self-contained HTML page."""
    blocks = [("h1", f"{record['notebook']}: {record['score']:g} / {record['max_score']:g}"),
              ("p", f"Status: {record['status']} ({record['seconds']:.1f} s)")]
    if record.get("message"):
        blocks.append(("p", record["message"]))
    rows = [[f"{MARK.get(e['status'], '?')} {e['id']}", e["status"], f"{e['score']:g}/{e['max_score']:g}", e["message"]]
            for e in record["exercises"]]
    if rows:
        blocks.append(("table", (["exercise", "status", "score", "feedback"], rows)))
    return html_page(f"{record['notebook']} feedback", blocks)
