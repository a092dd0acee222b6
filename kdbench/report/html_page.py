"""The report as one self-contained HTML page: a table of contents, every table in a horizontally scrolling box
(never the page) with its title as caption, and the plots embedded as data URIs (the page can be moved)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from kdbench.report.fmt import Table
from kdbench.report.text import tabulated

STYLE = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1360px;padding:0 1em}"
         ".scroll{overflow-x:auto;max-width:100%;margin:.5em 0 1.5em}table{border-collapse:collapse}"
         "caption{caption-side:bottom;text-align:left;color:#444;font-size:85%;padding-top:4px}"
         "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap;"
         "font-variant-numeric:tabular-nums}td:first-child,th:first-child{text-align:left}"
         "th{position:sticky;top:0;background:#f4f4f4}.legend{color:#444;font-size:90%}"
         "img{max-width:100%;height:auto}figure{margin:1em 0}figcaption{color:#444;font-size:85%}"
         "nav li{margin:2px 0}")


def heading(text: str, level: int) -> str:
    """``<hN id=anchor>``: level-2 headings make the table of contents."""
    anchor = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    return f"<h{level} id='{anchor}'>{html.escape(text)}</h{level}>"


def paragraph(text: str) -> str:
    """Each line a legend paragraph."""
    return "".join(f"<p class='legend'>{html.escape(line)}</p>" for line in text.splitlines())


def table(table: Table) -> str:
    """The title as the table's caption, the table in a scrolling box."""
    body = tabulated(table, "html")
    body = body.replace("<table>", f"<table><caption>{html.escape(table.title)}</caption>", 1)
    return f"<div class='scroll'>{body}</div>"


def problems(lines: list[str]) -> str:
    """The runs not in the tables as a list of code lines."""
    return "<ul>" + "".join(f"<li><code>{html.escape(p)}</code></li>" for p in lines) + "</ul>"


def figure(name: str, root: Path | None = None) -> str:
    """A plot embedded as a data URI (its name as the source where the file is not there)."""
    path = (root / name) if root is not None else Path(name)
    src = name
    if path.is_file():
        src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    caption = html.escape(Path(name).stem.replace("_", " "))
    return f"<figure><img src='{src}' alt='{caption}'><figcaption>{caption}</figcaption></figure>"


def page(body: str) -> str:
    """One self-contained page: a table of contents of the level-2 headings, then the body."""
    toc = "".join(f"<li><a href='#{anchor}'>{title}</a></li>"
                  for anchor, title in re.findall(r"<h2 id='([^']*)'>(.*?)</h2>", body))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>kdbench report</title><style>{STYLE}</style>"
            f"</head><body><h1>kdbench report</h1>\n<nav><ul>{toc}</ul></nav>\n{body}</body></html>\n")
