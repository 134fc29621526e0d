"""The README's configuration reference, generated from the fields' help strings."""
from __future__ import annotations

import dataclasses

from khar_mmsa.config.khar_config import KHaRConfig


def config_reference_markdown() -> str:
    """The README's configuration reference table: one row per field, in the dataclass's order."""
    rows = ["| key | section | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(KHaRConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        sections = ", ".join(f.metadata["sections"])
        allowed = f" One of: {', '.join(f'`{c}`' for c in f.metadata['choices'])}." if f.metadata["choices"] else ""
        rows.append(f"| `{f.name}` | {sections} | `{default!r}` | {f.metadata['help'].replace('|', '/')}{allowed} |")
    return "\n".join(rows)
