"""``pgvault runbook``: the on-call runbook for one configuration, as Markdown or a self-contained HTML page.

Pure rendering: settings in, text out.  It reads no repository and connects to nothing, so it
can be generated anywhere the configuration is (a laptop, CI), and the same configuration always
gives the same bytes (docs/runbook.md is checked against a regeneration by a test).  Secrets cannot
reach it: every section is written from :class:`~pgvault.runbook.facts.Facts`, which holds none.

    facts.py        the non-secret facts of a configuration, and the example values commands use
    document.py     the blocks (headings, paragraphs, code, lists, tables) and both renderers
    procedures.py   at a glance, where things are, looking, restoring, break-glass, checklists
    alerts.py       one section per Prometheus alert: meaning and what to do
    scenarios.py    accidental DELETE, corruption, loss of a region
"""

from __future__ import annotations

from pgvault.config import Settings
from pgvault.runbook import procedures
from pgvault.runbook.alerts import alert_sections
from pgvault.runbook.document import Block, Heading, slug, to_html, to_markdown
from pgvault.runbook.facts import facts_from
from pgvault.runbook.scenarios import scenarios

FORMATS = ("markdown", "html")


def build(settings: Settings, config_path: str | None) -> list[Block]:
    """The runbook's blocks; ``config_path`` is where the hosts read the configuration (PGVAULT_CONFIG)."""
    f = facts_from(settings, config_path)
    body: list[Block] = [
        *procedures.start(f),
        *procedures.at_a_glance(f),
        *procedures.where(f),
        *procedures.look(f),
        *procedures.restore_database(f),
        *procedures.restore_table(f),
        *procedures.restore_cluster(f),
        *procedures.seed_replica(f),
        *procedures.break_glass(f),
        *procedures.checklists(f),
        *alert_sections(f),
        *scenarios(f),
    ]
    contents = [(b.text, slug(b.text)) for b in body if isinstance(b, Heading) and b.level == 2]
    return [*procedures.header(f, contents), *body]


def render(settings: Settings, config_path: str | None, fmt: str = "markdown") -> str:
    blocks = build(settings, config_path)
    return to_html(blocks) if fmt == "html" else to_markdown(blocks)
