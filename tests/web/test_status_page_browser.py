"""The status page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, which ``.ci/run`` installs) against ``livermore serve`` on a live registry. A claim,
a transition and a release each appear on the page without a reload (a marker set in the page's
window survives), and a click on an instance shows its activity log. The screenshot is saved to
``test-artifacts/status-page.png`` (git-ignored)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from pylivermore import Registry
from pylivermore.server import RedisServer
from tests.web.test_status_page import GIVE_UP, LONG, refused_to, viewer  # noqa: F401  (viewer: a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        message = "no chromium / chromedriver (apt-get install chromium chromium-driver; .ci/run does)"
        if os.environ.get("CI") or os.environ.get("PYLIVERMORE_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_claim_transition_and_release_appear_live(
    browser: object,
    serve: Callable[..., str],
    viewer: str,  # noqa: F811
    admin: redis.Redis,
    redis_server: RedisServer,
    namespace: str,
    report: Callable[[str], None],
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.wait import WebDriverWait

    assert isinstance(browser, WebDriver)
    base = serve(viewer, namespace)
    browser.get(base + "/")
    wait = WebDriverWait(browser, GIVE_UP)
    wait.until(lambda d: "updated" in d.find_element(By.ID, "status").text)  # the stream is open
    browser.execute_script("window.__sameDocument = 'not reloaded';")

    # Read and click through JavaScript, atomically: each update re-renders the rows, so an element
    # found by one WebDriver call may be stale by the next.
    find_row = "const r = document.querySelector(`#rows tr[data-id='${arguments[0]}']`);"

    def row_state(exchange_id: str) -> str | None:
        state = browser.execute_script(find_row + " return r ? r.dataset.state : null;", exchange_id)
        return None if state is None else str(state)

    def row_text(exchange_id: str) -> str:
        return str(browser.execute_script(find_row + " return r ? r.innerText : '';", exchange_id))

    with Registry.from_url(redis_server.url, namespace=namespace, **LONG) as registry:
        registry.claim("kraken", "Kraken")  # a second instance, for the picture
        lease = registry.claim(1, "Coinbase")
        lease.set_symbol_count(412)
        wait.until(lambda _: row_state("1") == "idle")
        lease.transition("starting")
        lease.transition("warming")
        wait.until(lambda _: row_state("1") == "warming")
        browser.execute_script("document.querySelector('#rows tr[data-id=\"1\"]').click();")  # a user's click
        events_js = "return [...document.querySelectorAll('#log-entries li')].map((li) => li.dataset.event);"
        wait.until(lambda d: len(d.execute_script(events_js)) == 3)
        assert browser.execute_script(events_js) == ["state_transition", "state_transition", "claim"]
        cells = row_text("1")
        assert "Coinbase" in cells
        assert str(lease.fencing_token) in cells
        assert "412" in cells
        assert "(connecting)" in cells  # the legacy view beside the state
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        assert browser.save_screenshot(str(shot))
        lease.release()
        wait.until(lambda _: row_state("1") is None)  # released: gone from the page
        assert row_state("kraken") == "idle"
    assert browser.execute_script("return window.__sameDocument;") == "not reloaded"
    user = viewer.split("//", 1)[1].split(":", 1)[0]
    assert refused_to(admin, user) == [], "the page sent something a read-only user may not"
    report(f"status page in headless Chromium: claim, transition and release shown live; screenshot {shot}")
