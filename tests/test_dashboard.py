"""The admin's jobs dashboard: its numbers, its charts and its page."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from modalkit_django.dashboard import portable, postgres
from modalkit_django.dashboard.charts import Series, bar_chart, human_seconds, series_chart
from modalkit_django.dashboard.queries import SENT_ROUTES, WINDOWS, dashboard_numbers
from modalkit_django.dashboard.windows import percentile
from modalkit_django.models import Job, JobStatus, QueueDelivery, WorkerHeartbeat

pytestmark = pytest.mark.django_db(databases=["default", "embedded"])

HOUR = WINDOWS["hour"]
# Mid-bucket, so that "n minutes ago" never straddles a bucket edge.
NOW = dt.datetime(2026, 12, 1, 12, 2, 30, tzinfo=dt.UTC)
Status = QueueDelivery.Status


def ago(**delta: float) -> dt.datetime:
    return NOW - dt.timedelta(**delta)


def job(status: str, *, model: str = "sentiment", using: str = "default", **times: Any) -> Job:
    times.setdefault("created_at", times.get("queued_at", ago(minutes=30)))
    times.setdefault("queued_at", times["created_at"])
    return Job.objects.using(using).create(model_name=model, status=status, message={"text": "x"}, **times)


def finished(status: str = JobStatus.SUCCEEDED, *, at: dt.datetime, wait: float, run: float, **kwargs: Any) -> Job:
    started = at - dt.timedelta(seconds=run)
    return job(status, queued_at=started - dt.timedelta(seconds=wait), started_at=started, finished_at=at, **kwargs)


def delivery(of: Job, status: str, *, backend: str = "default", sent_after: float | None = None, **kwargs: Any) -> Any:
    using = kwargs.pop("using", "default")
    return QueueDelivery.objects.using(using).create(
        job=of,
        route=kwargs.pop("route", QueueDelivery.Route.SUCCESS),
        queue_name=kwargs.pop("queue_name", "results"),
        backend=backend,
        message_id=str(uuid.uuid4()),
        payload={},
        status=status,
        created_at=of.finished_at or NOW,
        sent_at=of.finished_at + dt.timedelta(seconds=sent_after) if sent_after is not None else None,
        **kwargs,
    )


def seed(using: str = "default") -> None:
    """Two models; queue waits 1..10 s and inference 2..20 s, finished over the last hour."""
    for second in range(1, 11):
        done = finished(at=ago(minutes=second * 5), wait=second, run=2 * second, using=using)
        delivery(done, Status.SENT, sent_after=second / 10, using=using)
    failed = finished(JobStatus.FAILED, at=ago(minutes=1), wait=4, run=1, model="vision", using=using)
    delivery(failed, Status.DEAD, backend="sqs", route=QueueDelivery.Route.FAILURE, last_error="boom", using=using)
    # Finished before the window: not counted.
    finished(at=ago(hours=3), wait=100, run=100, using=using)
    job(JobStatus.QUEUED, queued_at=ago(minutes=42), model="vision", using=using)
    job(JobStatus.QUEUED, queued_at=ago(minutes=3), using=using)
    job(JobStatus.RUNNING, queued_at=ago(minutes=2), started_at=ago(minutes=1), using=using)


def test_counts_live_states_now_and_finished_ones_within_the_window() -> None:
    seed()
    numbers = dashboard_numbers(HOUR, now=NOW)
    assert numbers.jobs_by_status == {
        "queued": 2, "scheduled": 0, "running": 1, "succeeded": 10, "failed": 1, "canceled": 0, "expired": 0,
    }  # fmt: skip
    assert numbers.jobs == {
        "sentiment": {"queued": 1, "running": 1, "succeeded": 10},
        "vision": {"queued": 1, "failed": 1},
    }
    assert numbers.jobs_by_model == {"sentiment": 12, "vision": 2}
    assert numbers.oldest_queued_seconds == 42 * 60
    # A day's window also holds the job that finished three hours ago.
    assert dashboard_numbers(WINDOWS["day"], now=NOW).jobs_by_status["succeeded"] == 11


def test_throughput_and_latencies_per_bucket_and_over_the_window() -> None:
    seed()
    numbers = dashboard_numbers(HOUR, now=NOW)
    assert len(numbers.buckets) == 12 and numbers.buckets[-1].start == dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    # Buckets from 11:05 to 12:00: one job finished 11:12:30, 11:17:30 … 11:57:30, the failed one 12:01:30.
    assert [bucket.finished for bucket in numbers.buckets] == [0] + [1] * 11
    assert [bucket.failed for bucket in numbers.buckets] == [0] * 11 + [1]
    assert numbers.finished == 11
    assert numbers.buckets[0].queue_wait.p50 is None
    assert numbers.buckets[1].queue_wait.p50 == 10 and numbers.buckets[1].inference.p95 == 20
    assert numbers.buckets[10].delivery.p50 == pytest.approx(0.1)
    assert numbers.buckets[-1].queue_wait.p50 == 4
    waits = sorted([*range(1, 11), 4])
    assert numbers.queue_wait.p50 == pytest.approx(percentile(waits, 0.5)) == 5.0
    assert numbers.queue_wait.p95 == pytest.approx(percentile(waits, 0.95))
    assert numbers.inference.p50 == pytest.approx(percentile(sorted([*range(2, 21, 2), 1]), 0.5))
    # Only sent success/failure deliveries count: 0.1 … 1.0 s after their job finished.
    assert numbers.delivery.p50 == pytest.approx(0.55)
    assert numbers.delivery.p95 == pytest.approx(percentile([n / 10 for n in range(1, 11)], 0.95))


def test_deliveries_by_backend_dead_ones_and_live_workers() -> None:
    seed()
    old = finished(at=ago(days=3), wait=1, run=1)
    stale = delivery(old, Status.DEAD, backend="webhook", last_error="410 Gone")
    delivery(old, Status.RETRYING, backend="webhook")
    WorkerHeartbeat.objects.create(name="a", hostname="h", pid=1, last_beat_at=timezone.now())
    WorkerHeartbeat.objects.create(name="b", hostname="h", pid=2, last_beat_at=timezone.now() - dt.timedelta(hours=1))
    WorkerHeartbeat.objects.create(
        name="c", hostname="h", pid=3, last_beat_at=timezone.now(), stopped_at=timezone.now()
    )

    numbers = dashboard_numbers(HOUR, now=timezone.now())
    numbers_at_noon = dashboard_numbers(HOUR, now=NOW)
    assert numbers_at_noon.deliveries == {"default": {"sent": 10}, "sqs": {"dead": 1}}
    # Dead and unsent deliveries of all time need an operator, however old.
    assert numbers.attention == {"pending": 0, "retrying": 1, "dead": 2}
    assert [dead.backend for dead in numbers.dead] == ["sqs", "webhook"]
    assert numbers.dead[1].id == stale.id and numbers.dead[1].last_error == "410 Gone"
    assert numbers.live_workers == 1


def test_a_delivery_counts_from_its_creation_even_after_its_job_was_rerun() -> None:
    rerun = finished(at=ago(minutes=10), wait=1, run=1)
    delivery(rerun, Status.SENT, sent_after=0.25)
    # Re-run and finished again since: the old delivery took 0.25 s all the same.
    Job.objects.filter(pk=rerun.pk).update(finished_at=ago(minutes=1))
    numbers = dashboard_numbers(HOUR, now=NOW)
    assert numbers.delivery.p50 == pytest.approx(0.25) and numbers.delivery.p95 == pytest.approx(0.25)
    assert numbers.buckets[9].delivery.p50 == pytest.approx(0.25)  # created 11:52:30, in the 11:50 bucket


def test_python_ranking_agrees_with_postgresql_on_either_database() -> None:
    seed()
    seed(using="embedded")
    since = HOUR.start(NOW)
    in_sql = postgres.window_stats(HOUR, since, using="default", sent_routes=SENT_ROUTES)
    in_python = portable.window_stats(HOUR, since, using="default", sent_routes=SENT_ROUTES)
    on_sqlite = dashboard_numbers(HOUR, now=NOW, using="embedded")
    assert on_sqlite.jobs == dashboard_numbers(HOUR, now=NOW).jobs
    for stats in (in_python, on_sqlite.stats):
        assert stats.jobs == in_sql.jobs and stats.deliveries == in_sql.deliveries
        assert [(b.start, b.finished, b.failed) for b in stats.buckets] == [
            (b.start, b.finished, b.failed) for b in in_sql.buckets
        ]
        for mine, theirs in zip(stats.buckets, in_sql.buckets, strict=True):
            for stage in ("queue_wait", "inference", "delivery"):
                assert getattr(mine, stage).p50 == pytest.approx(getattr(theirs, stage).p50, abs=1e-3)
                assert getattr(mine, stage).p95 == pytest.approx(getattr(theirs, stage).p95, abs=1e-3)
        for stage in ("queue_wait", "inference", "delivery"):
            mine, theirs = getattr(stats, stage), getattr(in_sql, stage)
            assert (mine.p50, mine.p95) == pytest.approx((theirs.p50, theirs.p95), abs=1e-3)


def test_six_statements_however_many_rows(django_assert_num_queries: Any) -> None:
    seed()
    with django_assert_num_queries(6):
        dashboard_numbers(HOUR, now=NOW)
    for _ in range(3):
        seed()
    with django_assert_num_queries(6):
        dashboard_numbers(WINDOWS["day"], now=NOW)


def test_percentile_interpolates_like_postgresql() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([float(n) for n in range(1, 11)], 0.95) == pytest.approx(9.55)


def test_charts_are_accessible_svg_with_escaped_labels() -> None:
    svg = bar_chart("Jobs by model", [("<script>x</script>", 3), ("vision", 0)])
    assert svg.startswith('<svg class="mk-chart" role="img"') and "<title" in svg
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "vision: 0" in svg
    line = series_chart("Wait", ["12:00", "12:05"], [Series("p50", [None, 1.5], "mk-p50")], unit="s")
    assert "<polyline" in line and "12:05 p50: 1.5 s" in line and "12:00 p50" not in line
    assert [human_seconds(s) for s in (None, 0.34, 4.25, 192, 7500, 90000)] == [
        "-", "340 ms", "4.2 s", "3 min 12 s", "2 h 5 min", "1 d 1 h",
    ]  # fmt: skip


def test_the_page_renders_numbers_charts_and_links(admin_client: Client) -> None:
    now = timezone.now()
    done = finished(JobStatus.FAILED, at=now - dt.timedelta(minutes=10), wait=1, run=2)
    delivery(done, Status.DEAD, backend="sqs", last_error="boom")
    job(JobStatus.QUEUED, queued_at=now - dt.timedelta(minutes=7, seconds=5))
    page = admin_client.get(reverse("admin:modalkit_django_dashboard"))
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('<svg class="mk-chart"') == 7
    # The charts are drawn on the server: the page's own content runs no script.
    assert "<script" not in html[html.index('id="content-main"') :]
    assert re.search(r'id="mk-status-queued">.*?<span class="mk-number">1</span>', html)
    assert re.search(r'id="mk-oldest-queued">.*?<span class="mk-number">7 min [0-9]+ s</span>', html, re.S)
    dead = QueueDelivery.objects.get(status=Status.DEAD)
    assert reverse("admin:modalkit_django_queuedelivery_change", args=[dead.id]) in html
    assert "?status__exact=queued" in html
    assert admin_client.get(reverse("admin:modalkit_django_dashboard"), {"window": "day"}).status_code == 200


def test_the_page_of_an_empty_database_says_so(admin_client: Client) -> None:
    html = admin_client.get(reverse("admin:modalkit_django_dashboard"), {"window": "day"}).content.decode()
    assert html.count('<svg class="mk-chart"') == 7
    assert "nothing queued" in html and "No deliveries in this window." in html
    assert "None: every delivery went out or is still being retried." in html


def test_an_unknown_window_is_a_400_and_viewing_needs_the_job_permission(admin_client: Client) -> None:
    response = admin_client.get(reverse("admin:modalkit_django_dashboard"), {"window": "week"})
    assert response.status_code == 400 and b"Unknown window 'week'" in response.content
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(reverse("admin:modalkit_django_dashboard")).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_job"))
    assert client.get(reverse("admin:modalkit_django_dashboard")).status_code == 200


def test_scheduled_jobs_are_counted_apart_and_never_the_oldest_queued() -> None:
    seed()
    # Due later by the database's clock (the one workers claim by): submitted to run in an
    # hour, and one backing off for a minute (its queued_at is when it is due again).
    later, soon = timezone.now() + dt.timedelta(hours=1), timezone.now() + dt.timedelta(minutes=1)
    job(JobStatus.QUEUED, queued_at=later, run_after=later)
    job(JobStatus.QUEUED, queued_at=soon, run_after=soon, model="vision")
    # Backed off, and due again: it waits, and counts from when it became due.
    job(JobStatus.QUEUED, queued_at=ago(minutes=45), run_after=ago(minutes=45))
    numbers = dashboard_numbers(HOUR, now=NOW)
    assert numbers.jobs_by_status["queued"] == 3 and numbers.jobs_by_status["scheduled"] == 2
    assert numbers.jobs["vision"] == {"queued": 1, "scheduled": 1, "failed": 1}
    assert numbers.oldest_queued_seconds == 45 * 60
    assert numbers.next_due_at == soon


def test_only_scheduled_jobs_is_nothing_waiting() -> None:
    later = timezone.now() + dt.timedelta(hours=1)
    job(JobStatus.QUEUED, queued_at=later, run_after=later)
    numbers = dashboard_numbers(HOUR, now=NOW)
    assert numbers.oldest_queued_at is None and numbers.oldest_queued_seconds is None
    assert (numbers.jobs_by_status["queued"], numbers.jobs_by_status["scheduled"]) == (0, 1)


def test_the_page_shows_scheduled_jobs_with_when_the_next_is_due(admin_client: Client) -> None:
    now = timezone.now()
    due = now + dt.timedelta(minutes=20)
    job(JobStatus.QUEUED, queued_at=due, run_after=due)
    html = admin_client.get(reverse("admin:modalkit_django_dashboard")).content.decode()
    assert re.search(r'id="mk-status-scheduled">.*?<span class="mk-number">1</span>', html, re.S)
    assert re.search(r"next due \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(in (19|20) min", html)
    assert "?status__exact=scheduled" in html
    # Not "0 ms", queued at a time still to come.
    assert re.search(r'id="mk-oldest-queued">.*?<span class="mk-number">-</span>', html, re.S)
    assert "nothing due; the scheduled jobs wait for their time" in html


def test_dead_deliveries_are_shown_redacted_with_short_ids(admin_client: Client) -> None:
    done = finished(at=timezone.now() - dt.timedelta(minutes=1), wait=1, run=1)
    dead = delivery(done, Status.DEAD, last_error="POST https://h.example/r?token=s3cr3t answered 503 " + "word " * 30)
    html = admin_client.get(reverse("admin:modalkit_django_dashboard")).content.decode()
    assert "s3cr3t" not in html and "token=***" in html
    assert f'<span class="mk-id" title="{dead.id}">{str(dead.id)[:8]}</span>' in html
    assert "word word …" in html  # cut after a word
