"""The HTML page of `maskmine inspect`: run figures, the summary picture, one row per image."""

from __future__ import annotations

import dataclasses
import html


@dataclasses.dataclass(frozen=True)
class MaskScore:
    """One drawn mask as the page lists it: its colour in the overlay ("#rrggbb"), its
    scores and its area (px)."""

    colour: str
    predicted_iou: float
    stability_score: float
    area: int


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """One rendered image. `overlay` is relative to the page; `note` says what went wrong;
    `scores`: the drawn masks, highest predicted IoU first."""

    uri: str
    width: int
    height: int
    masks: int
    masks_generated: int
    masks_shown: int
    overlay: str
    note: str = ""
    scores: list[MaskScore] = dataclasses.field(default_factory=list)


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
    drawn_extras: str = ""  # e.g. "; boxes outlined" when inspect drew more than masks


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _score_table(scores: list[MaskScore]) -> str:
    """A folded table of the drawn masks' colours and scores."""
    if not scores:
        return ""
    rows = "".join(
        f'<tr><td><span class="swatch" style="background:{_e(m.colour)}"></span></td>'
        f"<td>{i + 1}</td><td>{m.predicted_iou:.3f}</td><td>{m.stability_score:.3f}</td>"
        f"<td>{m.area}</td></tr>"
        for i, m in enumerate(scores)
    )
    return (
        f"<details><summary>scores of the {len(scores)} masks drawn</summary>"
        '<table class="scores"><tr><th>colour</th><th>#</th><th>predicted IoU</th>'
        f"<th>stability</th><th>area (px)</th></tr>{rows}</table></details>"
    )


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
            f"masks kept: {_e(shown)}<br>masks generated: {generated}{note}"
            f'<br><a href="{_e(entry.overlay)}">overlay</a>{_score_table(entry.scores)}</td></tr>'
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
.scores td, .scores th {{ padding: 1px 6px; border: none; text-align: right; }}
.swatch {{ display: inline-block; width: 1em; height: 1em; border: 1px solid #333; }}
</style></head><body>
<h1>maskmine run <code>{_e(facts.output)}</code></h1>
<p>{facts.images} images mined, {facts.masks} masks, {facts.errors} errors.
Runs: {", ".join(f"<code>{_e(r)}</code>" for r in facts.run_ids) or "none"}.
Models: {models}.</p>
<p>Generator parameters:</p><ul>{params}</ul>
<h2>Summary</h2>
<a href="{_e(summary)}"><img src="{_e(summary)}" width="880" alt="run summary"></a>
<h2>Images ({len(entries)} shown of {facts.images})</h2>
<p>Each mask is filled in its own colour at partial opacity and outlined in it, larger
masks under smaller ones{_e(facts.drawn_extras)}. Click a picture for full size; each
image lists the scores of the masks drawn, in their colours.</p>
<table>{"".join(rows)}</table>
{error_table}
</body></html>
"""
