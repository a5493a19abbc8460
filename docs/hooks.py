"""MkDocs hook: fills the config reference page from cprec/config.py at build time, so the
page cannot drift from the schemas (cprec.cli.reference reads the fields' comments)."""

from __future__ import annotations

MARKER = "<!-- config-reference -->"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 (MkDocs' signature)
    if MARKER not in markdown:
        return markdown
    from cprec.cli.reference import reference_markdown

    return markdown.replace(MARKER, reference_markdown())
