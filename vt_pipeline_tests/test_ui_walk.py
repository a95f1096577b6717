"""The operator's walk through the Dagster UI, in a real browser (Debian's headless Chromium).

One `vt-pipeline ui` (emulators, one Livehunt run, webserver and daemon) serves the whole walk;
an enrichment click is sent to its OpenCTI emulator so the daemon's sensor starts a real run.
Every check reads text (or the line boxes of a table cell), never pixels: what issue 21 found
wrong must not be on the pages any more, and what the README's "Dagster UI" section tells a
newcomer to click must be there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from vt_pipeline.emulators.rabbitmq import free_port

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromium-driver (setup.sh)"
    ),
]
ENRICHMENT_CONNECTOR = "8a4f2b6e-3c1d-4e5f-9a7b-1c2d3e4f5a6b"  # the default enrichment id
WAIT = 90.0  # seconds a page (or the daemon) gets on this loaded machine


class UI:
    """`vt-pipeline ui` in a temporary Dagster home, and what it printed."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.log = home / "ui.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vt_pipeline.cli", "ui", "--port", str(self.port)],
            env={**os.environ, "DAGSTER_HOME": str(home)},
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_serving(self) -> None:
        deadline = time.monotonic() + 300
        while True:
            assert self.process.poll() is None, f"vt-pipeline ui exited:\n{self.output()}"
            try:
                with urllib.request.urlopen(f"{self.base}/server_info", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no UI in time:\n{self.output()}"
            time.sleep(1)

    def opencti_url(self) -> str:
        found = re.search(r"OpenCTI emulator: (http://[0-9.:]+)", self.output())
        assert found, self.output()
        return found.group(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    server = UI(tmp_path_factory.mktemp("ui_home"))
    try:
        server.wait_serving()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1600,1200")
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def post_json(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def body(browser: WebDriver) -> str:
    return browser.find_element(By.TAG_NAME, "body").text


def wait_for(browser: WebDriver, done: Callable[[str], bool], what: str) -> str:
    """The page's text once `done` holds for it (pages load by parts)."""
    deadline = time.monotonic() + WAIT
    while True:
        text = body(browser)
        if done(text):
            return text
        assert time.monotonic() < deadline, f"{what}; the page says:\n{text[:3000]}"
        time.sleep(0.5)


def visit(browser: WebDriver, url: str, *needles: str) -> str:
    browser.get(url)
    return wait_for(browser, lambda t: all(n in t for n in needles), f"{url}: no {needles}")


def click(browser: WebDriver, text: str) -> None:
    """Click the button (or link) whose text is exactly `text`."""
    xpath = f"//*[self::button or self::a][normalize-space(.)='{text}']"
    deadline = time.monotonic() + WAIT
    while not (found := browser.find_elements(By.XPATH, xpath)):
        assert time.monotonic() < deadline, f"nothing to click named {text!r}"
        time.sleep(0.5)
    browser.execute_script("arguments[0].click()", found[0])


def section(text: str, start: str, end: str) -> str:
    """The part of a page's text between two headings."""
    head = text.index(start)
    return text[head : text.index(end, head)]


def test_an_operators_walk_through_the_ui(ui: UI, browser: WebDriver) -> None:
    base = ui.base
    # The enrichment click goes first: the daemon's sensor and run take a while to answer it.
    opencti = ui.opencti_url()
    entity = post_json(
        f"{opencti}/_emulator/entities",
        {"entity_type": "StixFile", "hashes": {"SHA-256": "a" * 64}},
    )["id"]
    post_json(
        f"{opencti}/_emulator/enrich", {"entity_id": entity, "connector_id": ENRICHMENT_CONNECTOR}
    )

    # 6. The start matches the README: no "use dg dev", no other dagster.yaml.
    started = ui.output()
    assert "Dagster instance:" in started and "(dagster.yaml: the repository's)" in started
    assert "SupersessionWarning" not in started and "will not be used" not in started
    copied = (ui.home / "dagster.yaml").read_text()
    assert copied.endswith((Path(__file__).parents[1] / "dagster.yaml").read_text())

    # 7. The first page shows the run vt-pipeline ui made, as a run of livehunt_job.
    text = visit(browser, f"{base}/overview", "livehunt_job")
    assert "No runs or scheduled ticks" not in text

    # 1, 3, 8. The Livehunt asset: fresh, readable metadata, no JSON blobs, no Dagster internals.
    text = visit(browser, f"{base}/assets/livehunt_notifications", "Metadata", "Passing")
    assert "Freshness policy" in text and "Warns if more than 20 minutes" in text
    metadata = section(text, "Metadata", "Lineage")
    for name in ("notifications", "notifications_new", "vt_calls", "vt_calls_by_endpoint"):
        assert f"\n{name}\n" in metadata, name
    assert "{}" not in metadata and "notifications_already_known" not in metadata
    assert "vt_calls_ioc_stream" not in metadata  # one table, not an integer per endpoint

    # 5. Plots: what an operator watches, no plot per endpoint or drop reason.
    click(browser, "Plots")
    text = wait_for(browser, lambda t: "When graphing values" in t, "no plots")
    plots = section(text, "Plots", "When graphing values").split("\n")[1:]
    assert sorted(p for p in plots if p) == [
        "notifications",
        "notifications_new",
        "notifications_read",
        "run_vt_calls",
        "vt_calls",
    ]

    # 1. Partitions: from VirusTotal's retention on, not months of windows that cannot be read.
    text = visit(browser, f"{base}/assets/livehunt_notifications?view=partitions", "Missing (")
    missing = int(re.search(r"Missing \((\d+)\)", text).group(1))  # type: ignore[union-attr]
    materialized = int(re.search(r"Materialized \((\d+)\)", text).group(1))  # type: ignore[union-attr]
    assert materialized >= 3 and materialized + missing <= 14 * 24 + 1
    # ...and the launchpad shows every window, none "outside this range".
    click(browser, "Materialize…")
    text = wait_for(browser, lambda t: "Partition selection" in t, "no launchpad")
    shown = re.search(r"Showing (\d+) of (\d+) partitions", text)
    assert shown and shown.group(1) == shown.group(2), text
    assert "outside this range" not in text
    click(browser, "Cancel")

    # 3. The files: breakdowns as tables, no integer per drop reason.
    text = visit(browser, f"{base}/assets/livehunt_files", "dropped_by_reason")
    metadata = section(text, "Metadata", "Lineage")
    assert "dropped_age" not in metadata and "dropped_positives" not in metadata
    assert "reason\nnotifications" in metadata.replace(" ", "\n")

    # 3. The check: a result per window, problems as text (none here).
    text = visit(browser, f"{base}/assets/livehunt_stix_bundles?view=checks", "Passed")
    assert "problem_count" in text

    # 4. Links into OpenCTI open what they name, on the emulator too.
    window = delivered_window(ui.home)
    browser.get(f"{base}/assets/livehunt_opencti_delivery?view=partitions&partition={window}")
    wait_for(browser, lambda t: "opencti_incidents" in t, "no delivery links")
    hrefs = [a.get_attribute("href") or "" for a in browser.find_elements(By.TAG_NAME, "a")]
    works = [h for h in hrefs if "/dashboard/data/ingestion/connectors/" in h]
    incidents = [h for h in hrefs if "/dashboard/id/incident--" in h]
    assert works and incidents, hrefs
    text = visit(browser, works[0], "Works (")
    assert "VirusTotal Livehunt" in text and "complete" in text and "Not found" not in text
    text = visit(browser, incidents[0], "Incident")
    assert "Not found" not in text and "External references" in text

    # 2. The quota asset: the limit in force, work named as an operator knows it.
    text = visit(browser, f"{base}/assets/virustotal_quota", "calls_by_work")
    # The automation panel loads after the metadata: wait for it rather than read it half-drawn.
    text = wait_for(
        browser, lambda t: "virustotal_quota_sensor" in t, "the quota asset lists no sensor"
    )
    assert "No automations found" not in text
    assert "none: VirusTotal sets no limit for the key" in text
    for work in ("Livehunt windows", "backfills", "enrichment clicks", "auto-enrichment"):
        assert work in text, work
    assert "budget_day_job" not in text and "__ASSET_JOB" not in text and "budget_limit" not in text
    # ...and its sensor's tick says what it recorded (the label's tooltip).
    visit(
        browser, f"{base}/locations/vt_pipeline/sensors/virustotal_quota_sensor", "runs requested"
    )
    tag = browser.find_elements(By.XPATH, "//*[normalize-space(text())='0 runs requested']")[0]
    ActionChains(browser).move_to_element(tag).perform()
    wait_for(browser, lambda t: "Recorded virustotal_quota: VT calls" in t, "no tick message")

    # 3. The enrichment run's table: short cells, no word broken across lines.
    run_id = wait_for_enrichment_run(ui.home)
    visit(browser, f"{base}/runs/{run_id}", "STEP_OUTPUT")
    click(browser, "View full message")
    wait_for(browser, lambda t: "request_id" in t and "StixFile" in t, "no requests table")
    cells = browser.find_elements(By.XPATH, "//td[normalize-space(.)='StixFile']")
    cells += browser.find_elements(By.XPATH, "//td[normalize-space(.)='failed']")
    assert cells, "no type or outcome cell"
    for cell in cells:
        lines = browser.execute_script(
            "const r = document.createRange(); r.selectNodeContents(arguments[0]);"
            "return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size;",
            cell,
        )
        assert lines == 1, f"{cell.text!r} broken over {lines} lines"
    # the hash once, cut, in the table; the message in full below it
    assert browser.find_elements(By.XPATH, f"//td[normalize-space(.)='{'a' * 16}…']")
    assert "enrichment clicks" in body(browser)


def delivered_window(home: Path) -> str:
    """A window whose delivery sent something (the open hour may have kept nothing)."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_materializations(
            dg.AssetKey("livehunt_opencti_delivery"), limit=10
        ).records
    for record in records:
        metadata = record.asset_materialization.metadata  # type: ignore[union-attr]
        if "opencti_incidents" in metadata:
            return str(record.partition_key)
    raise AssertionError("no window was delivered with Incidents")


def wait_for_enrichment_run(home: Path) -> str:
    """The id of the vt_enrichment_job run the daemon launched for the click, once it ended."""
    deadline = time.monotonic() + 240
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while True:
            runs = instance.get_runs(dg.RunsFilter(job_name="vt_enrichment_job"), limit=1)
            if runs and runs[0].is_finished:
                return runs[0].run_id
            assert time.monotonic() < deadline, "no enrichment run ended in time"
            time.sleep(2)
