"""The admin and its dashboard in a real headless browser (Chromium driven by Playwright).

Playwright's own browser download cannot reach the internet here: these tests drive the
system's Chromium (Debian's ``chromium`` package), which ``make test`` installs when it can.
Playwright's sync API runs an event loop in this thread, where Django refuses ORM calls: each
test writes its rows first, then opens the browser, and reads nothing from the database
while it is open.

The pages are measured as an operator sees them, at 1400 by 900 pixels with the admin's
sidebar open: no page scrolls sideways (nor does a list inside its box), an id is one line
high, and the columns that matter are on screen.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

import modalkit_django
from modalkit_django import broker
from modalkit_django.models import ApiKey, Batch, Job, JobStatus, QueueDelivery, WorkerHeartbeat

CHROMIUM = os.environ.get("MODALKIT_CHROMIUM", "/usr/bin/chromium")

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need Playwright: pip install -r requirements-dev.txt"
)
if not shutil.which(CHROMIUM):
    pytest.skip(
        f"browser tests need Chromium at {CHROMIUM}: apt-get install -y chromium (or set MODALKIT_CHROMIUM)",
        allow_module_level=True,
    )

# Wake-ups recorded, not sent: an action's wake-up (a re-run) would otherwise start the
# test process's embedded worker, which would then run the queued jobs later tests seed.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("recording_waker")]
PASSWORD = "browser-pw"
Page = Any
WIDTH, HEIGHT = 1400, 900  # the operator's screen the issue measured


@contextmanager
def browser(live_server: Any, *, user: str = "admin") -> Iterator[Page]:
    """A logged-in admin page: the real login form, submitted by the browser."""
    with playwright_api.sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox refuses to start as root, which CI runs as.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            context = chromium.new_context(viewport={"width": WIDTH, "height": HEIGHT})
            # The copy buttons write to the clipboard; the test reads it back.
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{live_server.url}/admin/login/?next=/admin/")
            page.fill("#id_username", user)
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_selector("#site-name")
            assert page.url.endswith("/admin/"), page.url
            yield page
        finally:
            chromium.close()


@pytest.fixture(autouse=True)
def _no_embedded_worker() -> None:
    """The seeded backlog stays as seeded: an embedded worker an earlier test started (it
    polls for runnable jobs) would run it. Stopped; a page that wakes workers starts one."""
    broker.reset()


@pytest.fixture
def superuser() -> User:
    return User.objects.create_superuser("admin", "admin@example.com", PASSWORD)


DEAD_ERROR = (
    "POST https://hooks.example.com/results?token=s3cr3t answered 503 Service Unavailable after 8 attempts; "
    "the receiver said: upstream timeout while writing the payload to its storage bucket"
)


def seed() -> dict[str, Any]:
    """An hour of traffic on two models: a spread of latencies, a few failures, a backlog,
    a job scheduled for later, and deliveries on two backends (two of them dead)."""
    now = timezone.now()
    jobs, deliveries = [], []
    for n in range(120):
        finished = now - dt.timedelta(seconds=25 * n + 7)
        run = 0.4 + (n % 7) * 0.35 + (2.5 if n % 23 == 0 else 0)
        wait = 0.2 + (n % 5) * 0.6 + (n % 17 == 0) * 6
        status = JobStatus.FAILED if n % 11 == 3 else JobStatus.SUCCEEDED
        started = finished - dt.timedelta(seconds=run)
        queued = started - dt.timedelta(seconds=wait)
        error = {"type": "InferenceError", "message": f"CUDA out of memory on row {n}"}
        job = Job(
            model_name="vision" if n % 3 == 0 else "sentiment",
            status=status,
            message={"text": f"row {n}"},
            error=error if status == JobStatus.FAILED else None,
            result=None if status == JobStatus.FAILED else {"label": "positive"},
            created_at=queued,
            queued_at=queued,
            started_at=started,
            finished_at=finished,
            attempts=1,  # each ran once
            success_queue="results",
            failure_queue="errors",
        )
        jobs.append(job)
        dead = n in (4, 40)
        deliveries.append(
            QueueDelivery(
                job=job,
                route=QueueDelivery.Route.FAILURE if status == JobStatus.FAILED else QueueDelivery.Route.SUCCESS,
                queue_name="errors" if status == JobStatus.FAILED else "results",
                backend="webhook" if n % 4 == 0 else "default",
                message_id=str(uuid.uuid4()),
                payload={},
                status=QueueDelivery.Status.DEAD if dead else QueueDelivery.Status.SENT,
                attempts=8 if dead else 1,
                last_error=DEAD_ERROR if dead else "",
                created_at=finished,
                sent_at=None if dead else finished + dt.timedelta(seconds=0.05 + (n % 9) * 0.04),
            )
        )
    for n in range(6):
        queued = now - dt.timedelta(minutes=13 - n, seconds=20)
        jobs.append(
            Job(model_name="sentiment", status=JobStatus.QUEUED, message={}, created_at=queued, queued_at=queued)
        )
    # Submitted now to run in 20 minutes: queued_at is its run_after, in the future.
    due = now + dt.timedelta(minutes=20)
    scheduled = Job(model_name="vision", status=JobStatus.QUEUED, message={}, queued_at=due, run_after=due)
    started = now - dt.timedelta(seconds=3)
    running = Job(
        model_name="vision",
        status=JobStatus.RUNNING,
        message={},
        queued_at=started - dt.timedelta(seconds=1.5),
        started_at=started,
        progress=0.42,
        progress_message="page 42 of 100",
    )
    jobs += [scheduled, running]
    Job.objects.bulk_create(jobs)
    WorkerHeartbeat.objects.create(name="web-1:41:a1", hostname="web-1", pid=41, in_flight=1)
    QueueDelivery.objects.bulk_create(deliveries)
    newest_dead = QueueDelivery.objects.filter(status=QueueDelivery.Status.DEAD).order_by("-created_at").first()
    assert newest_dead is not None
    return {
        "succeeded": Job.objects.filter(status=JobStatus.SUCCEEDED).count(),
        "queued": 6,
        "dead": str(newest_dead.id),
        "finished_job": str(jobs[0].id),
        "failed_job": str(jobs[3].id),
        "scheduled_job": str(scheduled.id),
    }


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: a temporary folder, or the docs' (``make screenshots``)."""
    folder = Path(os.environ.get("MODALKIT_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- What a page must look like at 1400 pixels -----------------------------------------------


def assert_fits(page: Page) -> None:
    """Nothing scrolls sideways: neither the page nor a changelist inside its own box."""
    widths = page.evaluate(
        """() => ({
            page: [document.documentElement.scrollWidth, window.innerWidth],
            boxes: Array.from(document.querySelectorAll('#changelist .results, .mk-dashboard .module'))
                .map(box => [box.scrollWidth, box.clientWidth]),
        })"""
    )
    scrolled, viewport = widths["page"]
    assert scrolled <= viewport, f"the page is {scrolled} px wide in a {viewport} px window"
    for scrolled, box in widths["boxes"]:
        assert scrolled <= box, f"a list is {scrolled} px wide in its {box} px box"


def assert_one_line(page: Page, selector: str) -> int:
    """Every element matching ``selector`` is one line of text high; how many there are."""
    heights = page.eval_on_selector_all(
        selector,
        """elements => elements.map(element => [
            element.getBoundingClientRect().height, parseFloat(getComputedStyle(element).lineHeight)])""",
    )
    assert heights, f"nothing matches {selector}"
    for height, line in heights:
        assert 0 < height < 1.5 * line, f"{selector}: {height} px high, lines of {line} px"
    return len(heights)


def assert_rows_one_line(page: Page) -> None:
    """Each row of the list is one line high (an id no longer wraps over four)."""
    rows = page.eval_on_selector_all(
        "#result_list tbody tr",
        """rows => rows.map(row => {
            const cell = getComputedStyle(row.querySelector('td, th'));
            const padding = parseFloat(cell.paddingTop) + parseFloat(cell.paddingBottom);
            return [row.getBoundingClientRect().height, parseFloat(cell.lineHeight) + padding];
        })""",
    )
    for height, one_line in rows:
        assert height < one_line * 1.5, f"a row is {height} px high; one line is {one_line} px"


def assert_on_screen(page: Page, *headers: str) -> None:
    """The list's columns with these headers are within the window, not off to the right."""
    shown = page.eval_on_selector_all(
        "#result_list thead th",
        "ths => ths.map(th => [th.innerText.trim().toLowerCase(), th.getBoundingClientRect().right])",
    )
    rights = dict(shown)
    for header in headers:
        assert header in rights, f"no {header!r} column in {list(rights)}"
        assert rights[header] <= WIDTH, f"the {header!r} column ends at {rights[header]} px"


def breadcrumbs_style(page: Page) -> dict[str, str]:
    """How the admin's breadcrumb bar is drawn on this page (the element Django styles)."""
    style = page.evaluate(
        """() => {
            const bar = document.querySelector('nav[aria-label] .breadcrumbs');
            const style = getComputedStyle(bar);
            return {tag: bar.tagName, background: style.backgroundColor, color: style.color,
                    padding: style.padding, font: style.fontSize, height: bar.getBoundingClientRect().height,
                    text: bar.innerText};
        }"""
    )
    assert style["background"] not in ("rgba(0, 0, 0, 0)", "transparent"), style
    return style


def django_breadcrumbs(page: Page, live_server: Any) -> dict[str, str]:
    """The breadcrumbs of a page Django draws itself (the jobs list), to compare with."""
    page.goto(f"{live_server.url}/admin/modalkit_django/job/")
    page.wait_for_selector("#changelist")
    return breadcrumbs_style(page)


def same_breadcrumbs(mine: dict[str, Any], django: dict[str, Any]) -> None:
    for key in ("tag", "background", "padding"):
        assert mine[key] == django[key], (key, mine, django)
    # One line of links, as high as Django's own.
    assert abs(mine["height"] - django["height"]) < 2, (mine, django)


# --- The pages --------------------------------------------------------------------------------


def test_jobs_list_fits_1400_pixels_one_line_a_job(live_server: Any, superuser: User, shots: Path) -> None:
    rows = seed()
    with browser(live_server) as page:
        page.click("a[href$='/modalkit_django/job/']")
        page.wait_for_selector("#result_list")
        # A page of the newest jobs (however many the admin shows a page), in several statuses.
        assert page.locator("#result_list tbody tr").count() >= 20
        table = page.locator("#result_list").inner_text()
        assert "running" in table and "succeeded" in table and "failed" in table
        assert_fits(page)
        assert_rows_one_line(page)
        assert assert_one_line(page, "#result_list .mk-id") >= 20
        assert_on_screen(page, "id", "status", "model", "priority", "created", "wait", "run")
        page.screenshot(path=shots / "jobs.png")  # the top of the list, at 1400 x 900
        assert (shots / "jobs.png").stat().st_size > 10_000
        # Short ids, the whole id on hover and a copy button beside each.
        first = page.locator("#result_list tbody tr").first
        full_id = first.locator(".mk-id").get_attribute("title")
        assert len(first.locator(".mk-id").inner_text()) == 8 and len(full_id) == 36
        copy = first.locator("button.mk-copy")
        assert copy.get_attribute("aria-label") == f"Copy the full id {full_id}"
        copy.click()
        page.wait_for_selector("button.mk-copy.mk-copied")
        assert page.evaluate("navigator.clipboard.readText()") == full_id
        # Times to the second, the exact time on hover; wait and run as durations.
        finished = page.locator(f"#result_list tr:has(.mk-id[title='{rows['finished_job']}'])")
        assert re.fullmatch(r"[A-Z][a-z]{2} \d{1,2}, \d\d:\d\d:\d\d", finished.locator("td.field-created").inner_text())
        assert re.match(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", finished.locator("td.field-created time").get_attribute("title")
        )
        for column in ("wait", "run"):
            assert re.fullmatch(r"[\d.]+ (ms|s)", finished.locator(f"td.field-{column}").inner_text()), column
        # The running job: its progress in the run column, with its message on hover.
        bar = page.locator("#result_list td.field-run progress.modalkit-progress")
        assert bar.get_attribute("value") == "42" and "page 42 of 100" in bar.get_attribute("title")
        # The job scheduled for later: a badge of its own, and when it is due; no wait yet.
        scheduled = page.locator(f"#result_list tr:has(.mk-id[title='{rows['scheduled_job']}'])")
        assert scheduled.locator(".mk-status-scheduled").inner_text() == "scheduled"
        assert re.fullmatch(r"scheduled in (19|20) min", scheduled.locator("td.field-status_cell").inner_text())
        assert scheduled.locator("td.field-wait").inner_text() == "-"

        # Queued and scheduled apart: the filter sets one from the other.
        page.click("#changelist-filter a[href*='status__exact=queued']")
        page.wait_for_url("**status__exact=queued**")
        assert page.locator("#result_list tbody tr").count() == rows["queued"]
        assert page.locator("#result_list .mk-status-scheduled").count() == 0
        page.click("#changelist-filter a[href*='status__exact=scheduled']")
        page.wait_for_url("**status__exact=scheduled**")
        assert page.locator("#result_list tbody tr").count() == 1
        assert page.locator("#result_list .mk-id").get_attribute("title") == rows["scheduled_job"]

        page.goto(f"{live_server.url}/admin/modalkit_django/job/")
        page.click(f"#result_list a:has(.mk-id[title='{rows['finished_job']}'])")
        page.wait_for_selector("#content h2")
        assert rows["finished_job"] in page.content()
        # The job's delivery, listed inline on its page.
        assert page.locator("text=results").count() >= 1
        assert_fits(page)


def test_a_failed_jobs_page_shows_its_error_first_and_what_can_be_done(
    live_server: Any, superuser: User, shots: Path
) -> None:
    rows = seed()
    with browser(live_server) as page:
        page.goto(f"{live_server.url}/admin/modalkit_django/job/{rows['failed_job']}/change/")
        error = page.locator("#mk-row-error")
        assert error.locator("strong").inner_text() == "InferenceError"
        assert "CUDA out of memory on row 3" in error.inner_text()
        # Above the fold, and above the job's fields.
        box = error.bounding_box()
        assert box["y"] + box["height"] <= HEIGHT
        assert box["y"] < page.locator("fieldset").first.bounding_box()["y"]
        # A finished job: re-run it, or redeliver its delivery; nothing to cancel.
        actions = page.locator("#mk-row-actions")
        assert actions.locator("button[data-action=rerun_jobs]").inner_text() == "Re-run this job"
        assert actions.locator("button[data-action=redeliver]").inner_text() == "Redeliver its delivery"
        assert actions.locator("button[data-action=cancel_jobs]").count() == 0
        assert actions.bounding_box()["y"] + actions.bounding_box()["height"] <= HEIGHT
        assert_fits(page)
        page.screenshot(path=shots / "job-failed.png")
        assert (shots / "job-failed.png").stat().st_size > 10_000

        # The button is the changelist's action: its confirmation page first, then back here.
        actions.locator("button[data-action=rerun_jobs]").click()
        page.wait_for_selector("#action-counts")
        assert page.locator("#touched-count").inner_text() == "1"
        same_breadcrumbs(breadcrumbs_style(page), django_breadcrumbs_of(page, live_server))
        page.click("input[type=submit][value^='Yes, re-run']")
        page.wait_for_url(f"**/job/{rows['failed_job']}/change/")
        assert "Re-queued 1 job(s)." in page.locator("ul.messagelist").inner_text()
    # Queued again (the embedded worker may have run it since).
    assert Job.objects.get(pk=rows["failed_job"]).reruns == 1


def django_breadcrumbs_of(page: Page, live_server: Any) -> dict[str, str]:
    """Django's own breadcrumbs, read in a second tab so that this page stays as it is."""
    other = page.context.new_page()
    try:
        return django_breadcrumbs(other, live_server)
    finally:
        other.close()


def test_without_the_permissions_a_job_page_offers_no_buttons(live_server: Any, superuser: User) -> None:
    rows = seed()
    viewer = User.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_job", "view_queuedelivery"]))
    with browser(live_server, user="viewer") as page:
        page.goto(f"{live_server.url}/admin/modalkit_django/job/{rows['failed_job']}/change/")
        assert "CUDA out of memory" in page.locator("#mk-row-error").inner_text()  # the error: still first
        assert page.locator("#mk-row-actions").count() == 0
        assert page.locator("button[data-action]").count() == 0


def test_dashboard_shows_the_seeded_numbers_and_charts(live_server: Any, superuser: User, shots: Path) -> None:
    rows = seed()
    with browser(live_server) as page:
        django = django_breadcrumbs(page, live_server)
        page.click("a[href$='/modalkit_django/job/dashboard/']")
        page.wait_for_selector("#mk-throughput svg")
        assert page.locator("svg.mk-chart").count() == 7
        assert page.locator("svg.mk-chart > title").first.text_content() == "Finished jobs per 5 minutes, last hour"
        assert page.locator("#mk-status-succeeded .mk-number").inner_text() == str(rows["succeeded"])
        assert page.locator("#mk-status-queued .mk-number").inner_text() == "6"
        # The job due in 20 minutes is scheduled, not queued, and not the oldest queued one:
        # that is still the backlog's first, queued 13 min 20 s ago (not "0 ms", at a time to come).
        assert page.locator("#mk-status-scheduled .mk-number").inner_text() == "1"
        assert re.search(r"next due .* \(in (19|20) min", page.locator("#mk-status-scheduled").inner_text())
        assert page.locator("#mk-oldest-queued .mk-number").inner_text().startswith("13 min")
        assert page.locator("#mk-dead-deliveries .mk-number").inner_text() == "2"
        assert page.locator("#mk-live-workers .mk-number").inner_text() == "1"
        assert page.locator("#mk-throughput rect.mk-finished").count() >= 10
        assert page.locator("#mk-latency td").filter(has_text="Inference").count() == 1
        # Dead deliveries: short ids, the error redacted and cut between words.
        assert assert_one_line(page, "#mk-dead .mk-id") == 4
        assert "s3cr3t" not in page.content()
        # Breadcrumbs drawn as Django draws its own, on Django 5.2 as on 6.
        mine = breadcrumbs_style(page)
        same_breadcrumbs(mine, django)
        assert mine["text"].replace("\u203a", " ").split()[-2:] == ["Jobs", "Dashboard"]
        assert_fits(page)
        page.screenshot(path=shots / "dashboard.png", full_page=True)
        assert (shots / "dashboard.png").stat().st_size > 10_000

        page.click("a[href*='window=day']")
        page.wait_for_url("**window=day")
        assert page.locator("#mk-status-succeeded .mk-number").inner_text() == str(rows["succeeded"])

        page.click(f"a.mk-dead-link[href*='{rows['dead']}']")
        page.wait_for_url(f"**/queuedelivery/{rows['dead']}/change/")
        assert "answered 503 Service Unavailable" in page.locator("#mk-row-error").inner_text()
        assert page.locator("#mk-row-actions button[data-action=redeliver]").count() == 1


def test_deliveries_list_fits_and_cuts_errors_between_words(live_server: Any, superuser: User, shots: Path) -> None:
    seed()
    with browser(live_server) as page:
        page.goto(f"{live_server.url}/admin/modalkit_django/queuedelivery/")
        page.wait_for_selector("#result_list")
        assert_fits(page)  # (an error wraps between its words; the ids beside it do not)
        assert assert_one_line(page, "#result_list .mk-id") >= 40  # the delivery's and its job's
        assert_on_screen(page, "id", "job", "to", "status", "tries", "last error", "created")
        page.screenshot(path=shots / "deliveries.png")  # the newest, a dead one among them
        assert (shots / "deliveries.png").stat().st_size > 10_000
        page.click("#changelist-filter a[href*='status__exact=dead']")
        page.wait_for_url("**status__exact=dead**")
        assert page.locator("#result_list tbody tr").count() == 2
        assert_fits(page)
        assert_one_line(page, "#result_list .mk-id")
        error = page.locator("#result_list td.field-error_cell .mk-words").first
        whole, shown = error.get_attribute("title"), error.inner_text().replace("\n", " ")
        assert whole == DEAD_ERROR.replace("s3cr3t", "***")  # redacted, then cut
        # Cut where a word ends, with an ellipsis: never mid-word.
        assert shown.endswith("…") and whole.startswith(shown[:-1]) and whole[len(shown) - 1] == " "


@pytest.mark.parametrize(
    ("model", "shown"),
    [
        ("batch", ("id", "model", "size", "created", "completed")),
        ("workerheartbeat", ("name", "state", "started", "last beat", "jobs done", "in flight")),
        ("apikey", ("name", "owner", "prefix", "allowed queues", "created", "state")),
    ],
)
def test_the_other_lists_fit_too(live_server: Any, superuser: User, model: str, shown: tuple[str, ...]) -> None:
    seed()
    batch = Batch.objects.create(model_name="sentiment-multilingual-large", size=3)
    Job.objects.filter(pk__in=Job.objects.values("pk")[:3]).update(batch=batch)
    WorkerHeartbeat.objects.create(
        name="ip-10-0-113-27.eu-west-1.compute.internal:4242:9f3a",
        hostname="ip-10-0-113-27.eu-west-1.compute.internal",
        pid=4242,
    )
    key, _ = modalkit_django.create_api_key(owner=superuser, name="nightly batch import for the data team")
    ApiKey.objects.filter(pk=key.pk).update(
        allowed_queues=["acme-results", "acme-failures", "acme-*"], rate_limit=600, max_queued_jobs=50
    )
    with browser(live_server) as page:
        page.goto(f"{live_server.url}/admin/modalkit_django/{model}/")
        page.wait_for_selector("#result_list")
        assert_fits(page)
        assert_rows_one_line(page)
        assert_on_screen(page, *shown)
        if model == "batch":
            assert_one_line(page, "#result_list .mk-id")


def test_the_new_key_page_has_djangos_breadcrumbs(live_server: Any, superuser: User) -> None:
    with browser(live_server) as page:
        django = django_breadcrumbs(page, live_server)
        page.goto(f"{live_server.url}/admin/modalkit_django/apikey/add/")
        page.fill("#id_name", "ci")
        page.select_option("#id_owner", label="admin")
        page.click("input[name=_save]")
        page.wait_for_selector("text=Copy it now")
        mine = breadcrumbs_style(page)
        same_breadcrumbs(mine, django)
        # Django 6 draws the separators in CSS, 5.2 in the text.
        assert mine["text"].replace("\u203a", " ").split()[:5] == ["Home", "ModalKit", "jobs", "API", "keys"]
        assert_fits(page)


def test_a_bulk_action_goes_through_its_confirmation_page(live_server: Any, superuser: User) -> None:
    rows = seed()
    with browser(live_server) as page:
        page.goto(f"{live_server.url}/admin/modalkit_django/job/?status__exact=queued")
        page.wait_for_selector("#result_list")
        page.check("#action-toggle")
        page.select_option("select[name=action]", "cancel_jobs")
        page.click("button[name=index]")
        page.wait_for_selector("#action-counts")
        assert page.locator("#touched-count").inner_text() == str(rows["queued"])
        page.click("input[type=submit][value^='Yes, cancel']")
        page.wait_for_selector("ul.messagelist")
        assert f"Canceled {rows['queued']} job(s)" in page.locator("ul.messagelist").inner_text()
    # The scheduled job was not in the "queued" list, and is queued still.
    assert list(Job.objects.filter(status=JobStatus.QUEUED).values_list("pk", flat=True)) == [
        uuid.UUID(rows["scheduled_job"])
    ]
    assert Job.objects.filter(status=JobStatus.CANCELED).count() == rows["queued"]
