"""Bulk actions on thousands of rows: a confirmation page that counts them by status,
then the services' set-based verbs, a bounded number of statements, workers woken."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from modalkit_django.models import Job, QueueDelivery

from .test_admin_scale import make_deliveries, make_jobs

pytestmark = pytest.mark.django_db

JOBS = reverse("admin:modalkit_django_job_changelist")
DELIVERIES = reverse("admin:modalkit_django_queuedelivery_changelist")
ROWS = 3000


def notes(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def select_all(action: str, page_ids: list[Any], **extra: str) -> dict[str, Any]:
    """What the changelist posts after "Select all N": the page's ids, and select_across."""
    return {"action": action, "select_across": "1", "_selected_action": [str(pk) for pk in page_ids], **extra}


def test_cancel_asks_first_with_counts_by_status(admin_client: Client) -> None:
    queued = make_jobs(4, status="queued", failure_queue="failures")
    make_jobs(2, status="running", modal_call_id="fc-1")
    make_jobs(3, status="running")  # no Modal call to cancel: left alone
    make_jobs(5, status="succeeded")
    response = admin_client.post(JOBS, select_all("cancel_jobs", [queued[0].id], index="0"))
    assert response.status_code == 200
    assert response.templates[0].name == "admin/modalkit_django/confirm_action.html"
    counts = {count.status: (count.selected, count.touched) for count in response.context["counts"]}
    assert counts == {"queued": (4, 4), "running": (5, 2), "succeeded": (5, 0)}
    assert (response.context["selected"], response.context["touched"]) == (14, 6)
    page = response.content.decode()
    assert 'value="Yes, cancel 6 jobs"' in page and 'name="select_across" value="1"' in page
    assert Job.objects.filter(status="canceled").count() == 0  # nothing done yet


def test_nothing_to_do_offers_no_confirm_button(admin_client: Client) -> None:
    [done] = make_jobs(1, status="succeeded")
    response = admin_client.post(JOBS, {"action": "cancel_jobs", "index": "0", "_selected_action": [str(done.id)]})
    page = response.content.decode()
    assert "nothing to cancel" in page and "Yes, cancel" not in page


def test_cancel_across_pages_of_thousands_of_jobs(
    admin_client: Client, recording_waker: Any, django_capture_on_commit_callbacks: Any
) -> None:
    queued = make_jobs(ROWS, status="queued", failure_queue="failures")
    make_jobs(7, status="succeeded")
    url = f"{JOBS}?status__exact=queued"
    confirm = admin_client.post(url, select_all("cancel_jobs", [job.id for job in queued[:100]], index="0"))
    assert confirm.context["touched"] == ROWS and f'action="{url}"' in confirm.content.decode()
    selection = select_all("cancel_jobs", [job.id for job in queued[:100]], post="yes")
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as captured:
        response = admin_client.post(url, selection)
    assert response.status_code == 302
    # Set-based: a few statements (bulk writes go in chunks of a couple of thousand rows), never one per row.
    assert len(captured) < 30, [q["sql"][:80] for q in captured.captured_queries]
    assert Job.objects.filter(status="canceled").count() == ROWS
    assert Job.objects.filter(status="succeeded").count() == 7
    assert f"Canceled {ROWS} job(s)." in notes(response)
    # Each canceled job's failure queue hears about it, woken through the wake-up seam.
    assert QueueDelivery.objects.filter(route="failure").count() == ROWS
    assert sum(len(ids) for ids in recording_waker.deliveries) == ROWS


def test_rerun_reports_by_status(
    admin_client: Client, recording_waker: Any, django_capture_on_commit_callbacks: Any
) -> None:
    failed = make_jobs(ROWS // 2, status="failed")
    make_jobs(ROWS // 2, status="expired")
    make_jobs(3, status="queued")
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as captured:
        response = admin_client.post(JOBS, select_all("rerun_jobs", [failed[0].id], post="yes"))
    assert len(captured) < 30
    assert Job.objects.filter(status="queued", reruns=1).count() == ROWS
    assert f"Re-queued {ROWS} job(s) ({ROWS // 2:,} expired, {ROWS // 2:,} failed)." in notes(response)
    assert "Left alone: 3 queued." in notes(response)
    assert sum(len(ids) for ids in recording_waker.jobs) == ROWS


def test_redeliver_across_a_filter(
    admin_client: Client, recording_waker: Any, django_capture_on_commit_callbacks: Any
) -> None:
    jobs = make_jobs(ROWS)
    dead = make_deliveries(jobs[: ROWS - 10], status="dead", attempts=5)
    sent = make_deliveries(jobs[ROWS - 10 :], status="sent", queue_name="elsewhere")
    url = f"{DELIVERIES}?status__exact=dead"
    confirm = admin_client.post(url, select_all("redeliver", [dead[0].id], index="0"))
    assert [(c.status, c.selected, c.touched) for c in confirm.context["counts"]] == [("dead", ROWS - 10, ROWS - 10)]
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as captured:
        response = admin_client.post(url, select_all("redeliver", [dead[0].id], post="yes"))
    assert len(captured) < 30
    assert QueueDelivery.objects.filter(status="pending", attempts=0).count() == ROWS - 10
    assert QueueDelivery.objects.get(pk=sent[0].pk).status == "sent"
    assert f"Redelivering {ROWS - 10} message(s)." in notes(response)
    assert sum(len(ids) for ids in recording_waker.deliveries) == ROWS - 10


def test_confirming_still_needs_the_permission(client: Client, django_user_model: Any) -> None:
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_job"))
    client.force_login(viewer)
    [job] = make_jobs(1, status="queued")
    client.post(JOBS, {"action": "cancel_jobs", "_selected_action": [str(job.id)], "post": "yes"})
    job.refresh_from_db()
    assert job.status == "queued"
