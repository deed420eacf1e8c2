"""The web UI in a real browser (issue 16): headless Chromium from Debian driven by Selenium
through Debian's chromedriver, against a real server, scheduler and worker with real runs.

Screenshots of every page go to build/ui-screenshots/ (kept when a test fails). With
PINFLOW_UPDATE_SCREENSHOT=1 the README's pictures are replaced: docs/ui-dag.png (a DAG page),
docs/ui-gantt.png (a run page with its Gantt) and docs/ui-graph-200.png (a 200-task graph).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import cluster_for
from tests.support.cluster import Cluster

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "ui-screenshots"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

UI_DAG = """
import os
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def fetch():
        import time
        time.sleep(1.5)
        print("fetching", "{label}")
        return 41

    @task
    def report(n):
        print("report says {label}")
        if not os.path.exists({marker!r}):
            raise RuntimeError("no marker yet: {label}")
        return n + 1

    report(fetch())
"""

SLOW_DAG = """
import time
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def slow():
        time.sleep(60)

    slow()
"""


@pytest.fixture(scope="module", params=["sqlite"])
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    if not Path(CHROMEDRIVER).exists():
        why = "Debian's chromium and chromium-driver are not installed (`.ci/run` installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    yield from cluster_for(request, tmp_path_factory, schedulers=1, workers=2)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A browser half an hour off any whole-hour zone: local times are checked for real.
    service = Service(CHROMEDRIVER, env={**os.environ, "TZ": "Asia/Kolkata"})
    driver = webdriver.Chrome(service=service, options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


class Pages:
    """The browser, with what every step checks: no JavaScript error, a screenshot."""

    def __init__(self, driver: webdriver.Chrome, base: str) -> None:
        self.driver, self.base = driver, base
        SHOTS.mkdir(parents=True, exist_ok=True)

    def open(self, path: str, shot: str) -> None:
        self.driver.get(self.base + path)
        self.check(shot)

    def check(self, shot: str, status: int = 200) -> None:
        """A screenshot, and no JavaScript error; a page answered with an error `status`
        is logged by Chromium as a failed load, which is expected there and only there."""
        self.driver.save_screenshot(str(SHOTS / f"{shot}.png"))
        errors = [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        if status >= 400:
            said = f"status of {status} "
            errors = [e for e in errors if not (e["source"] == "network" and said in e["message"])]
        assert errors == [], f"JavaScript errors on {self.driver.current_url}: {errors}"

    def text(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 45) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except WebDriverException:
                pass
            time.sleep(0.2)
        self.driver.save_screenshot(str(SHOTS / "timed-out.png"))
        raise AssertionError(
            f"timed out waiting for {what} on {self.driver.current_url}: {self.text()[:500]}"
        )

    def login(self, token: str) -> None:
        self.driver.delete_all_cookies()
        self.open("/login", "login")
        self.driver.find_element(By.ID, "token").send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        self.wait(lambda: "/login" not in self.driver.current_url, "the login")

    def click_button(self, label: str) -> None:
        self.driver.find_element(By.XPATH, f"//button[normalize-space()='{label}']").click()

    def buttons(self) -> set[str]:
        return {b.text for b in self.driver.find_elements(By.TAG_NAME, "button")}

    def cookies(self) -> dict[str, str]:
        return {c["name"]: c["value"] for c in self.driver.get_cookies()}

    def answer_confirm(self, accept: bool) -> str:
        """Answer the page's confirm dialog; returns its question."""
        self.wait(lambda: self.driver.switch_to.alert is not None, "the confirm dialog", 10)
        alert = self.driver.switch_to.alert
        question = alert.text
        alert.accept() if accept else alert.dismiss()
        return question

    def attrs(self, css: str, *names: str) -> list[tuple[str | None, ...]]:
        """The named attributes of every element `css` selects, in document order."""
        return [
            tuple(e.get_attribute(n) for n in names)
            for e in self.driver.find_elements(By.CSS_SELECTOR, css)
        ]


def test_the_ui_from_login_to_diff(cluster: Cluster, browser, tmp_path: Path, uid: str):
    assert cluster.server is not None
    ui = Pages(browser, cluster.server.url)
    marker = tmp_path / "marker"
    dag_id, slow_id = f"ui_{uid}", f"slow_{uid}"
    repo = f"ui{uid}"
    work = cluster.repo(repo, tmp_path / "w")
    fill = {"dag_id": dag_id, "marker": str(marker)}
    old = cluster.push(
        work,
        "first version",
        **{
            "dags/ui.py": UI_DAG.format(label="v1", **fill),
            "dags/slow.py": SLOW_DAG.format(dag_id=slow_id),
        },
    )

    # Not logged in: every page sends the browser to the login form.
    ui.open("/", "redirect")
    assert "/login" in browser.current_url
    ui.login(cluster.tokens["admin"])
    ui.check("dags")
    assert dag_id in ui.text() and old[:12] in ui.text() and "first version" in ui.text()

    # Trigger from the DAG page; the run page follows it without a reload.
    ui.open(f"/dags/{dag_id}", "dag")
    browser.find_element(By.ID, "conf").send_keys("[1, 2]")
    ui.click_button("Trigger")
    assert "must be a JSON object" in ui.text(), "invalid conf was sent"
    browser.find_element(By.ID, "conf").clear()
    ui.click_button("Trigger")
    ui.wait(lambda: "/runs/" in browser.current_url, "the run page")
    browser.execute_script("window.pinflowNoReload = 1")
    run_url = browser.current_url
    first = browser.find_element(By.ID, "run-live").text
    assert "success" not in first, "the run page came too late to see the task run"
    ui.wait(lambda: "failed" in browser.find_element(By.ID, "run-live").text, "the run to fail")
    assert browser.execute_script("return window.pinflowNoReload") == 1, "the page reloaded"
    live = browser.find_element(By.ID, "run-live").text
    assert "fetch" in live and "success" in live and "report" in live
    ui.check("run-failed")

    # The failed task's log.
    report_log = browser.find_elements(By.XPATH, "//tr[th='report']//a[contains(., 'log of try')]")
    report_log[0].click()
    ui.wait(lambda: "no marker yet: v1" in browser.find_element(By.ID, "log").text, "the log")
    ui.check("run-log")

    # A new push, then "Clear failed": the task reruns on the run's own commit.
    new = cluster.push(work, "second version", **{"dags/ui.py": UI_DAG.format(label="v2", **fill)})
    marker.write_text("")
    ui.click_button("Clear failed")
    assert "again" in ui.answer_confirm(accept=True)
    ui.wait(lambda: "state success" in browser.find_element(By.ID, "run-live").text, "the rerun")
    live = browser.find_element(By.ID, "run-live").text
    assert old[:12] in live and new[:12] not in live  # both tries of report ran the old sha
    run_id = run_url.rsplit("/runs/", 1)[1]
    done = cluster.run(run_id)
    assert done["shas"] == [old]
    report = next(t for t in done["tasks"] if t["task_id"] == "report")
    assert [t["sha"] for t in report["tries"]] == [old, old] and report["result"] == 42
    ui.check("run")

    # A second run pins the new commit: the grid marks where the commit changed.
    cluster.wait(cluster.trigger(dag_id)["run_id"])
    ui.open(f"/dags/{dag_id}", "dag-grid")
    marks = browser.find_elements(By.CLASS_NAME, "commit-change")
    assert len(marks) == 1 and new[:7] in marks[0].text

    # Cancel a running run.
    slow_run = cluster.trigger(slow_id)["run_id"]
    cluster.wait_task(slow_run, "slow", "running")
    ui.open(f"/runs/{slow_run}", "run-slow")
    assert "Clear failed" not in ui.buttons()  # nothing failed
    # The Gantt is live: the running try's time goes up while the page stays open.
    took = "svg.gantt g.try.s-running[data-task='slow'] text.took"
    first = browser.find_element(By.CSS_SELECTOR, took).text
    url = browser.current_url
    ui.wait(lambda: browser.find_element(By.CSS_SELECTOR, took).text != first, "a live Gantt")
    assert browser.current_url == url  # redrawn by the live fragment, not a reload
    ui.click_button("Cancel run")
    assert "Cancel run" in ui.answer_confirm(accept=False)  # asked, and told no: still running
    assert cluster.run(slow_run)["state"] == "running"
    ui.click_button("Cancel run")
    ui.answer_confirm(accept=True)
    ui.wait(lambda: "state canceled" in browser.find_element(By.ID, "run-live").text, "cancel")
    ui.check("run-canceled")

    # Versions, and the diff between the two commits, both views; a file at a version.
    ui.open(f"/repos/{repo}/versions", "versions")
    assert "second version" in ui.text() and "first version" in ui.text()
    ui.click_button("Compare")
    ui.wait(lambda: "/diff" in browser.current_url, "the diff page")
    ui.check("diff")
    assert "modified: dags/ui.py" in ui.text()
    assert browser.find_elements(By.CSS_SELECTOR, "table.patch tr.add")
    numbers = ui.attrs("table.patch tr.add td.ln:nth-child(2)", "textContent")
    assert numbers and all(n[0].strip().isdigit() for n in numbers), numbers  # line numbers
    browser.find_element(By.LINK_TEXT, "side by side").click()
    ui.check("diff-split")
    assert browser.find_elements(By.CSS_SELECTOR, "table.split td.add")
    assert any(n[0].strip().isdigit() for n in ui.attrs("table.split td.ln", "textContent"))
    browser.find_element(By.LINK_TEXT, "dags/ui.py").click()
    ui.check("file")
    assert browser.find_elements(By.CSS_SELECTOR, ".code")
    ui.open(f"/repos/{repo}/versions", "versions-again")
    browser.find_element(By.LINK_TEXT, old[:12]).click()  # any file at any version
    ui.check("tree")
    browser.find_element(By.LINK_TEXT, "dags/slow.py").click()
    ui.check("file-old")
    assert "time.sleep(60)" in ui.text()

    # A read-only token sees everything and no action.
    ui.login(cluster.tokens["read"])
    for path, shot in (
        (run_url.split(cluster.server.url)[1], "run-read"),
        (f"/dags/{dag_id}", "dag-read"),
        ("/", "dags-read"),
    ):
        ui.open(path, shot)
        assert not {"Clear failed", "Clear task", "Cancel run", "Trigger", "pause"} & ui.buttons()
    ui.click_button("Log out")
    ui.wait(lambda: "/login" in browser.current_url, "the logout")
    ui.open("/", "after-logout")
    assert "/login" in browser.current_url


SHAPE_DAG = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule="@daily", start_date="2026-01-01", catchup=False):
    @task
    def extract():
        return 1

    @task
    def clean(x):
        return x

    @task(retries=1, retry_delay=0)
    def enrich(x, context):
        if context["try_number"] == 1:
            raise RuntimeError("first try fails")
        return x

    @task
    def load(a, b):
        return a + b

    @task
    def audit(x):
        return x

    e = extract()
    load(clean(e), enrich(e))
    audit(e)
"""
SHAPE_EDGES = {
    ("extract", "clean"),
    ("extract", "enrich"),
    ("clean", "load"),
    ("enrich", "load"),
    ("extract", "audit"),
}


def test_graph_gantt_durations_and_the_grid_by_logical_date(
    cluster: Cluster, browser, tmp_path: Path, uid: str
):
    """Issue 30: the DAG page draws a node per task and an arrow per dependency, coloured by
    the chosen run; the run page draws a Gantt bar per try (a retry is a bar of its own); a
    backfill of older dates lands on the left of the grid; times are the browser's own."""
    assert cluster.server is not None
    ui = Pages(browser, cluster.server.url)
    dag_id = f"shape_{uid}"
    work = cluster.repo(f"shape{uid}", tmp_path / "w")
    cluster.push(work, "shape", **{"dags/shape.py": SHAPE_DAG.format(dag_id=dag_id)})
    manual = cluster.wait(cluster.trigger(dag_id)["run_id"])
    assert manual["state"] == "success"
    with cluster.api("trigger") as api:
        made = api.post(
            f"/dags/{dag_id}/backfill", json={"start": "2026-11-01", "end": "2026-11-03"}
        )
    assert made.status_code == 201, made.text
    with cluster.api("read") as api:  # and the scheduled run of the latest tick, if any
        runs = api.get("/runs", params={"dag_id": dag_id}).json()["items"]
    for run in runs:
        cluster.wait(run["run_id"])

    ui.login(cluster.tokens["admin"])
    ui.open(f"/dags/{dag_id}", "dag-shape")
    nodes = ui.attrs("svg.graph g.node", "data-task", "data-state")
    assert sorted(n for n, _ in nodes) == sorted({t for e in SHAPE_EDGES for t in e})
    edges = set(ui.attrs("svg.graph path.edge", "data-from", "data-to"))
    assert edges == SHAPE_EDGES and len(ui.attrs("svg.graph path.edge", "d")) == len(SHAPE_EDGES)
    assert {state for _, state in nodes} == {"success"}
    assert browser.find_elements(By.CSS_SELECTOR, "svg.graph path.edge[marker-end]")
    legend = browser.find_element(By.CLASS_NAME, "legend").text
    assert "success" in legend and "up_for_retry" in legend

    # The grid: columns in logical-date order, the backfill's older dates first, whatever
    # the order the runs were created in; a mark for each run's type and for the retries.
    dates = [d for (d,) in ui.attrs("th.run-head", "data-logical-date")]
    assert len(dates) >= 4 and dates == sorted(dates), dates
    assert dates[:3] == [f"2026-11-0{d}T00:00:00Z" for d in (1, 2, 3)]
    kinds = [k for (k,) in ui.attrs("th.run-head abbr.mark-type", "title")]
    assert kinds[:3] == ["backfill run"] * 3 and "manual run" in kinds
    assert len(browser.find_elements(By.CSS_SELECTOR, "th.run-head .mark-retry")) == len(dates)
    # Cells are colours, never the word: the state is in the tooltip and for screen readers.
    cell = browser.find_element(By.CSS_SELECTOR, "tbody td.cell.s-success a")
    assert cell.text == "" and "success" in cell.get_attribute("title")
    headers = browser.find_elements(By.CSS_SELECTOR, "th.run-head")
    assert all(h.size["height"] < 60 for h in headers), "a grid header wrapped"
    # Durations: one bar per finished run of each task.
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.spark rect.bar")) == 5 * len(dates)

    # Times: the browser's zone (Asia/Kolkata, UTC+05:30), the UTC instant on hover.
    first = browser.find_element(By.CSS_SELECTOR, "th.run-head time")
    assert first.text == "11-01 05:30" and first.get_attribute("title").endswith("UTC")

    # The graph coloured by another run: the one picked in the list.
    Select(browser.find_element(By.ID, "graph-run")).select_by_index(1)
    ui.wait(lambda: "run=" in browser.current_url, "the graph of another run")
    ui.check("dag-shape-other-run")

    # The run page: a Gantt bar per try, the retry a bar of its own.
    ui.open(f"/runs/{manual['run_id']}", "run-shape")
    tries = ui.attrs("svg.gantt g.try", "data-task", "data-try")
    expected = [(t["task_id"], str(x["try_number"])) for t in manual["tasks"] for x in t["tries"]]
    assert sorted(tries) == sorted(expected) and ("enrich", "2") in tries
    assert len(expected) == 6
    assert not browser.find_elements(By.XPATH, "//button[normalize-space()='Clear failed']")
    text = ui.text()
    assert not re.search(r"\d\d:\d\d:\d\d\.\d", text), "a time with fractions of seconds"
    assert re.search(r"\d+\.\d s", text), "durations read like 1.2 s"
    if os.environ.get("PINFLOW_UPDATE_SCREENSHOT") == "1":
        shutil.copy(SHOTS / "dag-shape.png", ROOT / "docs" / "ui-dag.png")
        shutil.copy(SHOTS / "run-shape.png", ROOT / "docs" / "ui-gantt.png")

    # The runs list, filtered; bad filters and unknown refs are answered, never a 500.
    ui.open(f"/runs?dag_id={dag_id}&type=backfill", "runs-backfill")
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")) == 3
    bad = (
        ("/runs?state=sideways", 400, "state must be one of"),
        ("/runs?type=sometimes", 400, "type must be one of"),
        ("/runs?since=last-week", 400, "since must be a date"),
        ("/runs?until=2026-13-45", 400, "until must be a date"),
        (f"/runs?dag_id=nope_{uid}", 404, "does not exist"),
        (f"/dags/{dag_id}?run=no-such-run", 200, "is not one of this DAG's latest"),
        (f"/repos/shape{uid}/files/no-such-branch/dags/shape.py", 404, "no branch, tag or commit"),
        (f"/repos/shape{uid}/files/main/no/such/file.py", 404, "no/such/file.py"),
        (f"/repos/shape{uid}/diff?base=main&head=nowhere", 404, "no branch, tag or commit"),
        (f"/repos/shape{uid}/diff?base=main", 400, "give two commits"),
        (f"/repos/nope{uid}/versions", 404, f"nope{uid}"),
        (f"/runs/nope_{uid}", 404, "does not exist"),
    )
    for i, (path, status, says) in enumerate(bad):
        ui.driver.get(ui.base + path)
        ui.check(f"bad-input-{i}", status)
        assert says in ui.text(), (path, ui.text())
    with httpx.Client(base_url=cluster.server.url, cookies=ui.cookies()) as web:
        for path, status, _ in bad:  # the status itself, which the browser does not show
            assert web.get(path).status_code == status, path
    ui.open(f"/repos/shape{uid}/files/main/dags/shape.py", "file-at-branch")
    assert "def enrich" in ui.text() and "main as of now" in ui.text()
    short = manual["sha"][:7]  # a short sha, as the CLI takes it, in the file view and the diff
    ui.open(f"/repos/shape{uid}/files/{short}/dags/shape.py", "file-at-short-sha")
    assert "def enrich" in ui.text() and manual["sha"][:12] in ui.text()
    ui.open(f"/repos/shape{uid}/diff?base={short}&head=main", "diff-short-sha")
    assert manual["sha"][:12] in ui.text()


def test_the_backfill_form(cluster: Cluster, browser, tmp_path: Path, uid: str):
    """The DAG page's backfill form makes the runs and shows them; a bad range is named."""
    assert cluster.server is not None
    ui = Pages(browser, cluster.server.url)
    dag_id = f"bf_{uid}"
    work = cluster.repo(f"bf{uid}", tmp_path / "w")
    cluster.push(work, "bf", **{"dags/bf.py": SHAPE_DAG.format(dag_id=dag_id)})
    ui.login(cluster.tokens["admin"])
    ui.open(f"/dags/{dag_id}", "dag-backfill-form")

    def backfill(start: str, end: str) -> None:
        form = browser.find_element(By.ID, "backfill")
        browser.execute_script(  # a date input takes its value from a script alike everywhere
            "arguments[0].value = arguments[2]; arguments[1].value = arguments[3];",
            form.find_element(By.NAME, "start"),
            form.find_element(By.NAME, "end"),
            start,
            end,
        )
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    backfill("2026-10-05", "2026-10-01")
    ui.wait(lambda: "before start" in ui.text(), "the range's error")
    backfill("2026-10-01", "2026-10-02")
    ui.wait(lambda: "/runs?" in browser.current_url, "the runs page")
    ui.check("runs-after-backfill")
    assert "2 run(s) created" in ui.text()
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")) == 2


def test_actions_need_the_session_and_its_csrf_token(cluster: Cluster, tmp_path: Path, uid: str):
    """A forged form (no or a wrong CSRF token) and a read token change nothing."""
    import httpx

    assert cluster.server is not None
    base = cluster.server.url
    with httpx.Client(base_url=base, follow_redirects=False) as web:
        assert web.get("/").status_code == 303
        bad = web.post("/login", data={"token": "pf_wrong", "next": "/"})
        assert bad.status_code == 401 and "invalid" in bad.text
        ok = web.post("/login", data={"token": cluster.tokens["admin"], "next": "//evil.example"})
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        forged = web.post("/runs/whatever/cancel", data={"csrf": "0" * 64})
        assert forged.status_code == 403 and "CSRF" in forged.json()["detail"]


def test_api_docs_render_with_no_internet(cluster: Cluster, browser):
    """/docs is Swagger UI from pinflow's own package: in a browser that reaches nothing but
    the server, it renders the API's operations (it used to load its script from a CDN)."""
    import httpx

    assert cluster.server is not None
    page = httpx.get(f"{cluster.server.url}/docs").text
    assert "cdn." not in page and "https://" not in page, page
    browser.get(f"{cluster.server.url}/docs")
    ui = Pages(browser, cluster.server.url)
    ui.wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock"), "the operations")
    assert "/api/v1/dags/{dag_id}/runs" in ui.text()
    ui.check("api-docs")


MARKUP = '</pre><img src=x onerror="window.pwned=1"><script>window.pwned=2</script><svg onload="window.pwned=3">'  # noqa: E501

MARKUP_DAG = """
from pinflow import DAG, task

MARKUP = {markup!r}

with DAG("{dag_id}", schedule=None):
    @task
    def shout(context):
        print(MARKUP)
        return {{"note": MARKUP, "conf": context["conf"]}}

    @task
    def fail():
        raise ValueError(MARKUP)

    shout()
    fail()
"""


def test_markup_from_task_code_is_shown_as_text_never_run(
    cluster: Cluster, browser, tmp_path: Path, uid: str
):
    """Issue 25's untried list: HTML and script in a task's log, its result, its error, the
    run's conf and an import error reach the page as text; none of it runs in the browser."""
    import httpx

    assert cluster.server is not None
    dag_id = f"markup_{uid}"
    work = cluster.repo(f"markup{uid}", tmp_path / "w")
    cluster.push(
        work,
        "markup",
        **{
            "dags/m.py": MARKUP_DAG.format(markup=MARKUP, dag_id=dag_id),
            "dags/broken.py": f"from pinflow import DAG\nraise ValueError({MARKUP!r})\n",
        },
    )
    run = cluster.trigger(dag_id, conf={"note": MARKUP})
    cluster.wait(run["run_id"])
    ui = Pages(browser, cluster.server.url)
    ui.login(cluster.tokens["read"])
    for path, shows in (
        (f"/runs/{run['run_id']}?task=shout&try=1", "log"),  # the log; the conf; the result
        (f"/runs/{run['run_id']}?task=fail&try=1", "error"),  # the error in log and table
        ("/", "import-error"),
    ):
        ui.open(path, f"markup-{shows}")
        ui.wait(lambda: 'onerror="window.pwned=1"' in ui.text(), f"the markup as text on {path}")
        assert browser.execute_script("return window.pwned") is None, path
        planted = "img[src=x], script:not([src]):not([type]), svg[onload]"
        assert browser.execute_script(
            f"return [...document.querySelectorAll('{planted}')]"
            ".filter(e => (e.outerHTML || '').includes('pwned')).length"
        ) == 0, path  # fmt: skip
    with cluster.server.api("read") as api:
        raw = api.get(f"/runs/{run['run_id']}/tasks/shout/logs", params={"try": 1})
    assert MARKUP in raw.text and raw.headers["content-type"].startswith("text/plain")
    assert raw.headers["x-content-type-options"] == "nosniff"
    fragment = httpx.get(
        f"{cluster.server.url}/runs/{run['run_id']}/tasks/shout/log?try=1",
        cookies={"pinflow_session": cluster.tokens["read"]},
    )
    assert "&lt;script&gt;" in fragment.text and "<script>window.pwned" not in fragment.text


def test_a_graph_of_200_tasks(cluster: Cluster, browser, tmp_path: Path, uid: str):
    """A 200-task DAG (10 layers of 20, crossings and long edges) is drawn whole: a box per
    task, none on another, labels at their size, an arrow per dependency, and a page a person
    scrolls through rather than a smudge (`PINFLOW_UPDATE_SCREENSHOT=1`: docs/ui-graph-200.png)."""
    from tests.ui.test_graph import layered

    assert cluster.server is not None
    tasks = layered()
    lines = ["from pinflow import DAG, task", "", f'with DAG("big_{uid}", schedule=None):']
    lines += ["    @task", "    def step(*xs):", "        return 0", ""]
    for t in tasks:
        ups = ", ".join(t["upstream"])
        lines.append(f'    {t["task_id"]} = step.override(task_id="{t["task_id"]}")({ups})')
    work = cluster.repo(f"big{uid}", tmp_path / "w")
    cluster.push(work, "200 tasks", **{"dags/big.py": "\n".join(lines) + "\n"})
    ui = Pages(browser, cluster.server.url)
    ui.login(cluster.tokens["read"])
    ui.open(f"/dags/big_{uid}", "dag-200")
    boxes = browser.execute_script(
        """return [...document.querySelectorAll('svg.graph g.node')].map(g => {
             const r = g.querySelector('rect.box').getBoundingClientRect();
             const t = g.querySelector('text');
             return [g.dataset.task, r.left, r.top, r.width, r.height,
                     parseFloat(getComputedStyle(t).fontSize)]; })"""
    )
    assert sorted(b[0] for b in boxes) == sorted(t["task_id"] for t in tasks)
    assert all(b[5] >= 12 for b in boxes), "labels shrunk below 12px"
    for i, (a, ax, ay, aw, ah, _) in enumerate(boxes):
        for b, bx, by, _, _, _ in boxes[i + 1 :]:
            assert abs(ax - bx) >= aw or abs(ay - by) >= ah, f"{a} and {b} overlap"
    edges = {e for e in ui.attrs("svg.graph path.edge", "data-from", "data-to")}
    assert edges == {(u, t["task_id"]) for t in tasks for u in t["upstream"]}
    svg = browser.find_element(By.CSS_SELECTOR, "svg.graph")
    assert int(svg.get_attribute("height")) <= 20 * 1.6 * 44  # rows about its fullest layer
    # Pointing at a task brings out its own edges.
    webdriver.ActionChains(browser).move_to_element(
        browser.find_element(By.CSS_SELECTOR, "svg.graph g.node[data-task='t105'] rect.box")
    ).perform()
    near = {e for e in ui.attrs("svg.graph path.edge.near", "data-from", "data-to")}
    assert near and all("t105" in e for e in near)
    ui.check("dag-200-hover")
    if os.environ.get("PINFLOW_UPDATE_SCREENSHOT") == "1":
        shutil.copy(SHOTS / "dag-200-hover.png", ROOT / "docs" / "ui-graph-200.png")
