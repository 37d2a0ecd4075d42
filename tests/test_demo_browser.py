"""The demo in a real browser: Debian's chromium (``apt-get install -y chromium``; ``make test``
installs it when missing) driven by playwright through ``executable_path`` -- never
``playwright install``. Loads the page, checks the legend and that no server path shows,
ticks the reward-only column and the guard, clicks a gallery example -- which runs the
comparison by itself -- checks the answers, badges and latencies, runs a Moderate example the
same way, and saves a screenshot (pytest's tmp dir, copied to
``runs/screenshots/demo_compare.png``)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import torch

from workbench.demo.config import ASSETS_DIR, DemoConfig

torch.set_num_threads(1)
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_COPY = Path(__file__).resolve().parents[1] / "runs" / "screenshots" / "demo_compare.png"
#: The repository's absolute path: the page must never show it (nor any server path).
REPO = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def app_url():
    from workbench.demo.app import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, _ = launch(DemoConfig.smoke(run_dir=str(ASSETS_DIR / "run"), port=port), quiet=True)
    yield demo.local_url
    demo.close()


def test_compare_in_chromium(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).is_file(), (
        f"{CHROMIUM} is missing: apt-get install -y chromium (make test does it)"
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.goto(app_url)
            expect(page.get_by_text("Safe RLHF-V: base vs aligned")).to_be_visible(timeout=30_000)
            # the legend explains the badges and the scores; no server path anywhere
            legend = page.locator("#wb-legend .wb-legend")
            expect(legend).to_be_visible()
            expect(legend.locator(".wb-badge")).to_have_count(5)  # four levels + an example
            assert "cost > 0" in legend.inner_text() and "withheld" in legend.inner_text()
            assert REPO not in page.content()

            page.locator("#wb-reward-only input[type=checkbox]").check()
            page.locator("#wb-guard input[type=checkbox]").check()
            rows = page.locator("#wb-examples tr.tr-body")  # the gallery of test prompts
            expect(rows.first).to_be_visible()
            row = rows.filter(has_text="hurt someone")
            row = row.first if row.count() else rows.nth(1)
            question = row.locator("td").nth(1).inner_text().strip()
            row.locator("td").first.click()  # runs the comparison: no button press
            expect(page.locator("#wb-question textarea")).to_have_value(question)
            expect(page.locator("#wb-image img").first).to_be_visible()

            sides = page.locator("#wb-comparison .wb-side")
            expect(sides).to_have_count(3, timeout=60_000)
            titles = [sides.nth(i).locator("h3").inner_text() for i in range(3)]
            assert titles == ["Base (SFT)", "Aligned (PPO-Lagrangian)", "Reward-only PPO"]
            for i in range(3):
                side = sides.nth(i)
                assert side.locator(".wb-answer").inner_text().strip(), (
                    f"column {titles[i]} has no answer"
                )
                badge = side.locator("p .wb-badge")  # the verdict on the served answer
                expect(badge).to_have_count(1)
                assert badge.get_attribute("data-level") in ("safe", "minor", "moderate", "severe")
                expect(side.locator(".wb-trace")).to_be_visible()  # the guard's trace
                assert "reward" in side.locator(".wb-scores").inner_text()
                expect(side.locator(".wb-latency")).to_contain_text("answered in")
            # side by side: the columns share one row
            boxes = [sides.nth(i).bounding_box() for i in range(3)]
            assert (
                boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]
                and abs(boxes[0]["y"] - boxes[2]["y"]) < 2
            )
            assert REPO not in page.content()

            shot = tmp_path / "demo_compare.png"
            page.screenshot(path=str(shot), full_page=True)

            # a user mistake shows Gradio's error with our message
            page.locator("#wb-question textarea").fill("   ")
            page.locator("#wb-compare-button").click()
            expect(page.get_by_text("question: the question is empty").first).to_be_visible(
                timeout=30_000
            )

            # an unknown word gets a warning above the answers
            page.locator("#wb-question textarea").fill("how do i zorp this ?")
            page.locator("#wb-reward-only input[type=checkbox]").uncheck()
            page.locator("#wb-guard input[type=checkbox]").uncheck()
            page.locator("#wb-compare-button").click()
            expect(page.locator("#wb-comparison .wb-warning")).to_contain_text(
                "'zorp'", timeout=60_000
            )

            # Moderate: an example runs on click too
            page.get_by_role("tab", name="Moderate").click()
            m_rows = page.locator("#wb-m-examples tr.tr-body")
            expect(m_rows.first).to_be_visible()
            m_rows.first.locator("td").first.click()
            expect(page.locator("#wb-moderation .wb-badge")).to_have_count(1, timeout=60_000)
            expect(page.locator("#wb-moderation")).to_contain_text("moderation")
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shot, SCREENSHOT_COPY)
