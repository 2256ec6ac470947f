"""The report page renders in a real headless Chromium, images and all (slow suite:
`make test-slow` installs Debian's chromium)."""

import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from components.report_html import histogram_png, img_tag, render_page, table, to_png


@pytest.mark.slow
def test_report_page_renders_with_images(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (make test-slow installs it with apt)")
    gen = torch.Generator().manual_seed(0)
    digits = torch.rand(8, 1, 28, 28, generator=gen)
    losses = {"original": {"forget": np.random.default_rng(0).lognormal(-5, 0.5, 500)},
              "unlearned": {"forget": np.random.default_rng(1).lognormal(-4, 0.5, 500)}}
    page = render_page("Unlearning report", [
        ("Audit", table(["audit", "value"], [["backdoor_asr", "0.000"]])),
        ("Outputs", img_tag(to_png(digits), "forget inputs")),
        ("Losses", img_tag(histogram_png(losses), "histograms")),
    ])
    (tmp_path / "report.html").write_text(page)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1000,1200", (tmp_path / "report.html").as_uri()],
        check=True, capture_output=True, timeout=180,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), float)
    assert pixels.shape == (1200, 1000)
    # the page is mostly white; the digit grid and the histogram put real ink on it
    ink = (pixels < 128).mean()
    assert 0.01 < ink < 0.5, ink
