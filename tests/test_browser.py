"""The admin and its dashboard in a real headless browser (Chromium driven by Playwright).

Playwright's own browser download cannot reach the internet here: these tests drive the
system's Chromium (Debian's ``chromium`` package), which ``make test`` installs when it can.
Playwright's sync API runs an event loop in this thread, where Django refuses ORM calls: each
test writes its rows first, then opens the browser, and reads nothing from the database
while it is open.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from modalkit_django.models import Job, JobStatus, QueueDelivery, WorkerHeartbeat

CHROMIUM = os.environ.get("MODALKIT_CHROMIUM", "/usr/bin/chromium")

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need Playwright: pip install -r requirements-dev.txt"
)
if not shutil.which(CHROMIUM):
    pytest.skip(
        f"browser tests need Chromium at {CHROMIUM}: apt-get install -y chromium (or set MODALKIT_CHROMIUM)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "browser-pw"
Page = Any


@contextmanager
def browser(live_server: Any, *, user: str = "admin") -> Iterator[Page]:
    """A logged-in admin page: the real login form, submitted by the browser."""
    with playwright_api.sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox refuses to start as root, which CI runs as.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
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


@pytest.fixture
def superuser() -> User:
    return User.objects.create_superuser("admin", "admin@example.com", PASSWORD)


def seed() -> dict[str, Any]:
    """An hour of traffic on two models: a spread of latencies, a few failures, a backlog,
    and deliveries on two backends (two of them dead)."""
    now = timezone.now()
    jobs, deliveries = [], []
    for n in range(120):
        finished = now - dt.timedelta(seconds=25 * n + 7)
        run = 0.4 + (n % 7) * 0.35 + (2.5 if n % 23 == 0 else 0)
        wait = 0.2 + (n % 5) * 0.6 + (n % 17 == 0) * 6
        status = JobStatus.FAILED if n % 11 == 3 else JobStatus.SUCCEEDED
        started = finished - dt.timedelta(seconds=run)
        queued = started - dt.timedelta(seconds=wait)
        job = Job(
            model_name="vision" if n % 3 == 0 else "sentiment",
            status=status,
            message={"text": f"row {n}"},
            created_at=queued,
            queued_at=queued,
            started_at=started,
            finished_at=finished,
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
                last_error="ConnectError: connection refused" if dead else "",
                created_at=finished,
                sent_at=None if dead else finished + dt.timedelta(seconds=0.05 + (n % 9) * 0.04),
            )
        )
    for n in range(6):
        queued = now - dt.timedelta(minutes=13 - n, seconds=20)
        jobs.append(
            Job(model_name="sentiment", status=JobStatus.QUEUED, message={}, created_at=queued, queued_at=queued)
        )
    started = now - dt.timedelta(seconds=3)
    jobs.append(Job(model_name="vision", status=JobStatus.RUNNING, message={}, queued_at=started, started_at=started))
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
    }


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: a temporary folder, or the docs' (``make screenshots``)."""
    folder = Path(os.environ.get("MODALKIT_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_jobs_list_and_a_job_page(live_server: Any, superuser: User, shots: Path) -> None:
    rows = seed()
    with browser(live_server) as page:
        page.click("a[href$='/modalkit_django/job/']")
        page.wait_for_selector("#result_list")
        # A page of the newest jobs (however many the admin shows a page), in several statuses.
        assert page.locator("#result_list tbody tr").count() >= 20
        table = page.locator("#result_list").inner_text()
        assert "running" in table and "succeeded" in table and "failed" in table
        page.click("#changelist-filter a[href*='status__exact=queued']")
        page.wait_for_url("**status__exact=queued**")
        assert page.locator("#result_list tbody tr").count() == rows["queued"]
        page.goto(f"{live_server.url}/admin/modalkit_django/job/")
        page.set_viewport_size({"width": 1600, "height": 1000})
        page.screenshot(path=shots / "jobs.png")  # the top of a long list
        assert (shots / "jobs.png").stat().st_size > 10_000
        page.click(f"#result_list a[href*='{rows['finished_job']}']")
        page.wait_for_selector("#content h2")
        assert rows["finished_job"] in page.content()
        # The job's delivery, listed inline on its page.
        assert page.locator("text=results").count() >= 1


def test_dashboard_shows_the_seeded_numbers_and_charts(live_server: Any, superuser: User, shots: Path) -> None:
    rows = seed()
    with browser(live_server) as page:
        page.goto(f"{live_server.url}/admin/modalkit_django/job/")
        page.click("a[href$='/modalkit_django/job/dashboard/']")
        page.wait_for_selector("#mk-throughput svg")
        assert page.locator("svg.mk-chart").count() == 7
        assert page.locator("svg.mk-chart > title").first.text_content() == "Finished jobs per 5 minutes, last hour"
        assert page.locator("#mk-status-succeeded .mk-number").inner_text() == str(rows["succeeded"])
        assert page.locator("#mk-status-queued .mk-number").inner_text() == "6"
        # The oldest of the backlog was queued 13 min 20 s ago.
        assert page.locator("#mk-oldest-queued .mk-number").inner_text().startswith("13 min")
        assert page.locator("#mk-dead-deliveries .mk-number").inner_text() == "2"
        assert page.locator("#mk-live-workers .mk-number").inner_text() == "1"
        assert page.locator("#mk-throughput rect.mk-finished").count() >= 10
        assert page.locator("#mk-latency td").filter(has_text="Inference").count() == 1
        page.screenshot(path=shots / "dashboard.png", full_page=True)
        assert (shots / "dashboard.png").stat().st_size > 10_000

        page.click("a[href*='window=day']")
        page.wait_for_url("**window=day")
        assert page.locator("#mk-status-succeeded .mk-number").inner_text() == str(rows["succeeded"])

        page.click(f"a.mk-dead-link[href*='{rows['dead']}']")
        page.wait_for_url(f"**/queuedelivery/{rows['dead']}/change/")
        assert "connection refused" in page.content()


def test_deliveries_list_filters_by_status(live_server: Any, superuser: User) -> None:
    seed()
    with browser(live_server) as page:
        page.goto(f"{live_server.url}/admin/modalkit_django/queuedelivery/")
        page.wait_for_selector("#result_list")
        page.click("#changelist-filter a[href*='status__exact=dead']")
        page.wait_for_url("**status__exact=dead**")
        assert page.locator("#result_list tbody tr").count() == 2


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
    assert Job.objects.filter(status=JobStatus.QUEUED).count() == 0
    assert Job.objects.filter(status=JobStatus.CANCELED).count() == rows["queued"]
