"""The HTML page of `maskmine inspect`: run figures, the summary picture, one row per image."""

from __future__ import annotations

import dataclasses
import html


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """One rendered image. `overlay` is relative to the page; `note` says what went wrong."""

    uri: str
    width: int
    height: int
    masks: int
    masks_generated: int
    masks_shown: int
    overlay: str
    note: str = ""


@dataclasses.dataclass(frozen=True)
class RunFacts:
    output: str
    images: int
    masks: int
    errors: int
    run_ids: list[str]
    models: list[str]  # "model_type checkpoint_sha256[:12]"
    generator_params: list[str]  # JSON strings
    error_rows: list[tuple[str, str, str]]  # (image_uri, stage, error), the first few


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def render_page(facts: RunFacts, summary: str, entries: list[ImageEntry]) -> str:
    """HTML linking `summary` (relative path) and each entry's overlay."""
    rows = []
    for entry in entries:
        shown = (
            f"{entry.masks}"
            if entry.masks_shown == entry.masks
            else f"{entry.masks} ({entry.masks_shown} drawn: highest predicted IoU)"
        )
        generated = "?" if entry.masks_generated < 0 else str(entry.masks_generated)
        note = f'<p class="note">{_e(entry.note)}</p>' if entry.note else ""
        rows.append(
            f'<tr><td><a href="{_e(entry.overlay)}"><img src="{_e(entry.overlay)}" '
            f'width="256" alt="masks of {_e(entry.uri)}"></a></td>'
            f"<td><code>{_e(entry.uri)}</code><br>{entry.width} x {entry.height} px<br>"
            f"masks kept: {_e(shown)}<br>masks generated: {generated}{note}</td></tr>"
        )
    errors = "".join(
        f"<tr><td><code>{_e(uri)}</code></td><td>{_e(stage)}</td><td>{_e(err)}</td></tr>"
        for uri, stage, err in facts.error_rows
    )
    error_table = (
        f"<h2>Errors (first {len(facts.error_rows)} of {facts.errors})</h2>"
        f"<table><tr><th>input</th><th>stage</th><th>error</th></tr>{errors}</table>"
        if facts.error_rows
        else ""
    )
    params = "".join(f"<li><code>{_e(p)}</code></li>" for p in facts.generator_params)
    models = ", ".join(f"<code>{_e(m)}</code>" for m in facts.models) or "none"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>maskmine: {_e(facts.output)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 6px; text-align: left; vertical-align: top; }}
.note {{ color: #b00; }}
</style></head><body>
<h1>maskmine run <code>{_e(facts.output)}</code></h1>
<p>{facts.images} images mined, {facts.masks} masks, {facts.errors} errors.
Runs: {", ".join(f"<code>{_e(r)}</code>" for r in facts.run_ids) or "none"}.
Models: {models}.</p>
<p>Generator parameters:</p><ul>{params}</ul>
<h2>Summary</h2>
<a href="{_e(summary)}"><img src="{_e(summary)}" width="880" alt="run summary"></a>
<h2>Images ({len(entries)} shown of {facts.images})</h2>
<p>Each mask is tinted in its own colour, its box outlined and its prompt point marked with
a dot of the same colour. Click a picture for full size.</p>
<table>{"".join(rows)}</table>
{error_table}
</body></html>
"""
