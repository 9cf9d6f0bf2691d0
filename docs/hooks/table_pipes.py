"""mkdocs hook: a `\\|` inside a code span of a table row renders as `|`.

GitHub needs the backslash there (a bare pipe would end the cell, even inside backticks), and
shows the code without it. Python-Markdown's tables already keep a pipe inside backticks in its
cell but print the backslash, so the site drops it: one source reads right in both.
"""

from __future__ import annotations

import re
from typing import Any

CODE_SPAN = re.compile(r"`[^`\n]*`")


def _unescape(span: re.Match[str]) -> str:
    return span.group(0).replace("\\|", "|")


def on_page_markdown(markdown: str, **_: Any) -> str:
    lines = markdown.split("\n")
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.startswith("|") and "\\|" in line:
            lines[i] = CODE_SPAN.sub(_unescape, line)
    return "\n".join(lines)
