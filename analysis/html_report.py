"""report.html: report.md as one self-contained page, its plots inline as base64 data URIs.
MLflow's artifact viewer renders .html artifacts (in a sandboxed frame, where data URIs still
load), but its markdown viewer drops relative images, so the MLflow run gets report.html alone;
report.md stays in the local folder for GitHub and terminals. Wide tables scroll sideways.

    python -c "from analysis.html_report import to_html; from pathlib import Path; \
print(to_html('| a |\\n|---|\\n| 1 |', Path('.')))"
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

# Minimal styling: readable width, and table borders, which markdown's HTML has none of.
CSS = """
body { font-family: system-ui, sans-serif; max-width: 75em; margin: 1em auto; padding: 0 1em;
       line-height: 1.45; color: #222; }
/* a table wider than the page scrolls on its own, inside MLflow's artifact viewer too */
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; display: block;
        max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""
# no scheme: a local file
_RELATIVE_SRC = re.compile(r'src="(?![a-z][a-z0-9+.-]*:)([^"]+)"', re.IGNORECASE)


def inline_images(page: str, folder: Path) -> str:
    """Replace each relative `src="plots/x.png"` with the file's bytes as a data URI."""

    def data_uri(match: re.Match) -> str:
        path = folder / html.unescape(match.group(1))
        if path.suffix.lower() != ".png":
            raise ValueError(f"report.html can inline PNG images only, not {path}")
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode("ascii")}"'

    return _RELATIVE_SRC.sub(data_uri, page)


def to_html(report_md: str, folder: Path, title: str = "Ranking of depth configurations") -> str:
    """The report's markdown (tables included) as a complete page; images relative to `folder`."""
    body = markdown.markdown(report_md, extensions=["tables"], output_format="html")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"{inline_images(body, folder)}\n</body>\n</html>\n"
    )
