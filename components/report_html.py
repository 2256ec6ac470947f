"""A self-contained HTML page for a reviewer: image grids, the audit table, loss histograms.

Every image is a PNG embedded as a data URI, so the page is one file that opens anywhere
(an MLflow artifact, an e-mail attachment) with nothing to fetch.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import torch
from PIL import Image

SCALE = 3  # 28x28 digits are too small to judge at 1:1


def to_png(images: torch.Tensor, scale: int = SCALE) -> bytes:
    """One row of images (N, C, H, W in [0, 1]) side by side, 2 px apart, as PNG bytes."""
    arr = (images.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    n, c, h, w = arr.shape
    row = np.full((h, n * (w + 2), 3), 255, np.uint8)
    for i, img in enumerate(arr):
        tile = np.repeat(img, 3, axis=0) if c == 1 else img
        row[:, i * (w + 2) : i * (w + 2) + w] = tile.transpose(1, 2, 0)
    out = Image.fromarray(row).resize((row.shape[1] * scale, h * scale), Image.NEAREST)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def histogram_png(losses: dict[str, dict[str, np.ndarray]]) -> bytes:
    """Per-sample loss histograms: one panel per model, one curve per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(losses), figsize=(4.2 * len(losses), 3.2), squeeze=False)
    every = np.concatenate([v for sets in losses.values() for v in sets.values()])
    bins = np.logspace(np.log10(max(every.min(), 1e-5)), np.log10(every.max() + 1e-9), 40)
    for ax, (model, sets) in zip(axes[0], losses.items(), strict=True):
        for name, values in sets.items():
            ax.hist(values, bins=bins, histtype="step", density=True, label=name, linewidth=1.5)
        ax.set_xscale("log")
        ax.set_title(model)
        ax.set_xlabel("per-sample loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
.pass{color:#0a0;font-weight:bold}.fail{color:#c00;font-weight:bold}
img{image-rendering:pixelated;display:block}"""


def render_page(title: str, sections: list[tuple[str, str]]) -> str:
    """The page: a title and (heading, HTML body) sections."""
    parts = [f"<h2>{html.escape(h)}</h2>\n{body}" for h, body in sections]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n"
            + "\n".join(parts) + "</body></html>\n")
