"""What a person sees: a label-error task in the real Label Studio, in headless Chromium.

The test logs in as a person, opens a task chosen for a suspected class swap, checks that the
image's current labels are drawn and the suspicion is shown on its box, deletes one box
through the UI and submits. Collect and merge must then show exactly that edit.

Chromium is Debian's (``make setup`` installs it), driven by Playwright's Python package with
``executable_path``: no browser is downloaded. Screenshots are kept in ``test-artifacts/``
(or ``$HITL_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hitl_dev.labelstudio import DEFAULT_PASSWORD, DEFAULT_USERNAME
from tests.integration.conftest import ARTIFACTS
from tests.integration.review_round import LABELS, collect_and_merge, review_round

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
#: The rows of the Regions list (rc-tree keeps one hidden row for measuring).
REGION_ROWS = '.lsf-outliner-tree .lsf-tree-treenode:not([aria-hidden="true"])'


def login(page, url: str) -> None:
    page.goto(f"{url}/user/login/")
    page.fill("#email", DEFAULT_USERNAME)
    page.fill("#password", DEFAULT_PASSWORD)
    page.click('button[aria-label="Log In"]')
    page.wait_for_url(lambda u: "/user/login" not in u, timeout=60_000)


def test_a_person_sees_the_labels_and_the_suspicion_and_one_edit_is_merged(label_studio,
                                                                           browser):
    rr = review_round(label_studio, images=(1, 2))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    login(page, label_studio.url)
    page.goto(f"{label_studio.url}/projects/{rr.project}/data?task={rr.tasks[1]}")
    rows = page.locator(REGION_ROWS)
    rows.first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)  # let the canvas draw the regions
    page.screenshot(path=str(ARTIFACTS / "review-before.png"))

    # the current labels are drawn (and the model's box beside them), each with its class
    titles = [rows.nth(i).inner_text() for i in range(rows.count())]
    assert len(titles) == 3, titles
    assert sum("circle" in t for t in titles) == 1 and sum("square" in t for t in titles) == 1
    # the suspicion is visible, tied to its box, with its strength; and in the header
    body = page.locator("body")
    assert "class swap? this circle looks like a star (0.80)" in (
        page.locator(".lsf-outliner-tree").inner_text()
        + " ".join(page.locator(".lsf-outliner-tree textarea, .lsf-outliner-tree input")
                   .evaluate_all("els => els.map(e => e.value)")))
    assert "Suspected label errors (1):" in body.inner_text()

    # one edit through the UI: delete the square, then submit
    rows.filter(has_text="square").first.click()
    page.keyboard.press("Backspace")
    page.wait_for_timeout(500)
    assert page.locator(REGION_ROWS).count() == 2
    page.screenshot(path=str(ARTIFACTS / "review-edited.png"))
    page.click('[data-testid="bottombar-submit-button"]')
    page.locator('[data-testid="bottombar-update-button"]').wait_for(timeout=60_000)
    page.close()

    collected, merged, coco = collect_and_merge(label_studio, rr)
    assert (collected["labeled"], collected["pending"]) == (1, 1)
    base = rr.rnd.store.load(rr.version)

    def boxes(data, image_id):
        return sorted(({k: v for k, v in a.items() if k != "verified"}
                       for a in data["annotations"] if a["image_id"] == image_id),
                      key=lambda a: a["id"])

    # exactly that edit: the square is gone, the circle is the same label, now verified
    assert [a["id"] for a in boxes(coco, 1)] == [11]
    assert boxes(coco, 1) == [a for a in boxes(base, 1) if a["id"] == 11]
    for image_id in set(LABELS) - {1}:
        assert boxes(coco, image_id) == boxes(base, image_id)
    if os.environ.get("HITL_UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(ARTIFACTS / "review-before.png",
                    REPO / "docs" / "screenshots" / "label-error-review-test.png")
