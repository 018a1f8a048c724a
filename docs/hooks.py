"""MkDocs hook: the configuration page's option table is rendered from ``CAIConfig`` (one source)."""

from __future__ import annotations

import dataclasses

MARKER = "<!-- caiconfig-table -->"


def config_table() -> str:
    """A Markdown table of every ``CAIConfig`` field: name, default and its ``OPTION_HELP`` line."""
    from cai_aug.engine.config import OPTION_HELP, CAIConfig

    rows = ["| Field | Default | Meaning |", "| --- | --- | --- |"]
    for field in dataclasses.fields(CAIConfig):
        if field.default is not dataclasses.MISSING:
            default = repr(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = repr(field.default_factory())
        else:
            default = "(required)"
        meaning = OPTION_HELP[field.name].replace("|", "\\|")
        rows.append(f"| `{field.name}` | `{default}` | {meaning} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    """Replace the marker on any page with the generated table."""
    if MARKER in markdown:
        return markdown.replace(MARKER, config_table())
    return markdown
