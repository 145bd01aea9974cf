"""The runbook as structured blocks, and its two renderings: Markdown and a self-contained HTML page.

Both renderings come from the same blocks, so they cannot drift apart, and neither needs a
Markdown library: the blocks use a small inline subset (```code```, ``**bold**``, ``[text](href)``)
that both renderers understand.  HTML escapes every piece of text; it loads nothing from outside
(inline CSS, no scripts, no fonts), so the page can be opened from a USB stick in a data centre.
Heading ids follow GitHub's slugs, so ``#alert-pgvaultbackupmissing`` works in both renderings.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    level: int  # 1..4
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Code:
    """A shell block; every ``pgvault ...`` line in it must parse with pgvault's own CLI (a test)."""

    lines: tuple[str, ...]
    lang: str = "sh"


@dataclass(frozen=True)
class Items:
    items: tuple[str, ...]
    style: str = "bullet"  # bullet | ordered | checklist


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


Block = Heading | Para | Code | Items | Table


def code(*lines: str, lang: str = "sh") -> Code:
    return Code(tuple(lines), lang)


def items(*texts: str, style: str = "bullet") -> Items:
    return Items(tuple(texts), style)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    return Table(tuple(header), tuple(tuple(r) for r in rows))


def slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


# Inline markup: `code`, **bold**, [text](href); everything else is plain text.
_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\[([^\]]+)\]\(([^)\s]+)\)")


def _inline_html(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        if m.group(1) is not None:
            out.append(f"<code>{html.escape(m.group(1))}</code>")
        elif m.group(2) is not None:
            out.append(f"<strong>{_inline_html(m.group(2))}</strong>")
        else:
            out.append(f'<a href="{html.escape(m.group(4))}">{_inline_html(m.group(3))}</a>')
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _fence(lines: Sequence[str]) -> str:
    longest = max((len(r) for ln in lines for r in re.findall(r"`+", ln)), default=0)
    return "`" * max(3, longest + 1)


_MARKS = {"bullet": "-", "ordered": "{}.", "checklist": "- [ ]"}


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Code):
            fence = _fence(b.lines)
            out.append("\n".join([fence + b.lang, *b.lines, fence]))
        elif isinstance(b, Items):
            out.append("\n".join(f"{_MARKS[b.style].format(i)} {t}" for i, t in enumerate(b.items, 1)))
        else:
            rows = [b.header, tuple("---" for _ in b.header), *b.rows]
            out.append("\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows))
    return "\n\n".join(out) + "\n"


_CSS = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #1f2328; }
h1, h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { margin-top: 2.5rem; }
code { font: .9em ui-monospace, monospace; background: #f6f8fa; padding: .1em .3em; border-radius: 4px; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; border-radius: 6px; }
pre code { background: none; padding: 0; }
table { border-collapse: collapse; } th, td { border: 1px solid #d0d7de; padding: .3em .6em; text-align: left; }
ul.checklist { list-style: none; padding-left: 1em; }
@media print { pre { white-space: pre-wrap; } h2 { break-before: page; } }
""".strip()


def to_html(blocks: Sequence[Block]) -> str:
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "pgvault runbook")
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(re.sub(r'`', '', title))}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f'<h{b.level} id="{html.escape(slug(b.text))}">{_inline_html(b.text)}</h{b.level}>')
        elif isinstance(b, Para):
            out.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Code):
            body = "\n".join(html.escape(ln) for ln in b.lines)
            out.append(f'<pre><code class="language-{html.escape(b.lang)}">{body}</code></pre>')
        elif isinstance(b, Items):
            tag = "ol" if b.style == "ordered" else "ul"
            cls = ' class="checklist"' if b.style == "checklist" else ""
            box = '<input type="checkbox"> ' if b.style == "checklist" else ""
            lis = "".join(f"<li>{box}{_inline_html(t)}</li>" for t in b.items)
            out.append(f"<{tag}{cls}>{lis}</{tag}>")
        else:
            head = "".join(f"<th>{_inline_html(c)}</th>" for c in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
