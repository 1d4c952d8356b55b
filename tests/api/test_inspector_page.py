"""The inspector page in a real browser: headless Chromium against a real uvicorn server."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cites_risk.api.app import create_app
from cites_risk.profiling.roles import Role
from tests.api.conftest import Api, declaration, served

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(api: Api) -> Iterator[str]:
    with served(create_app(api.settings, api.service)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    profile = tempfile.mkdtemp(prefix="cites-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=DriverService(str(DRIVER)))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_an_inspector_scores_a_pasted_declaration_and_looks_it_up(
    api: Api, server: str, browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    wait = WebDriverWait(driver, 30)
    driver.get(f"{server}/inspector")
    driver.find_element(By.ID, "api-key").send_keys(api.keys[("US-FWS", Role.INSPECTOR)])

    # Paste JSON, score.
    driver.find_element(By.CSS_SELECTOR, "details:nth-of-type(2) summary").click()
    box = driver.find_element(By.ID, "declaration-json")
    box.send_keys(json.dumps(declaration("PAGE-1")))
    driver.find_element(By.ID, "score-json").click()
    wait.until(ec.visibility_of_element_located((By.ID, "result")))
    lane = driver.find_element(By.ID, "result-lane").text.lower()
    assert lane in ("red", "yellow", "green")
    reasons = driver.find_elements(By.CSS_SELECTOR, "#result-reasons li")
    assert len(reasons) >= 2 and "lane" in reasons[0].text.lower()
    assert "Ambystoma mexicanum" in driver.find_element(By.ID, "result-species").text

    # Look the stored result up by id, after a reload: the key survives in sessionStorage.
    driver.refresh()
    assert driver.find_element(By.ID, "api-key").get_attribute("value")
    driver.find_element(By.ID, "lookup-id").send_keys("PAGE-1")
    driver.find_element(By.ID, "lookup").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "result-id"), "PAGE-1"))
    assert driver.find_element(By.ID, "result-lane").text.lower() == lane

    # A bad key shows the problem's detail, not a blank page.
    driver.find_element(By.ID, "forget-key").click()
    driver.find_element(By.ID, "api-key").send_keys("nope.nope")
    driver.find_element(By.ID, "lookup").click()
    wait.until(ec.visibility_of_element_located((By.ID, "error")))
    assert "API key" in driver.find_element(By.ID, "error").text
