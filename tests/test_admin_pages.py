"""The admin's other pages: batches with their jobs by status, workers live or not,
a job's progress and partial outputs, and the way to the dashboard."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from modalkit_django.conf import get_settings
from modalkit_django.models import Batch, Job, WorkerHeartbeat

from . import flow
from .test_admin_scale import make_jobs

pytestmark = pytest.mark.django_db


def test_batch_list_and_page_count_its_jobs_by_status(admin_client: Client) -> None:
    batch = Batch.objects.create(model_name="sentiment", size=6)
    make_jobs(4, status="succeeded", batch=batch)
    make_jobs(2, status="queued", batch=batch)
    make_jobs(3, status="failed")  # another batch's, or none
    page = admin_client.get(reverse("admin:modalkit_django_batch_changelist")).content.decode()
    assert str(batch.id) in page and "sentiment" in page
    page = admin_client.get(reverse("admin:modalkit_django_batch_change", args=[batch.id])).content.decode()
    jobs = reverse("admin:modalkit_django_job_changelist")
    assert f'{jobs}?batch={batch.id}&amp;status__exact=succeeded">4</a>' in page
    assert f'{jobs}?batch={batch.id}&amp;status__exact=queued">2</a>' in page
    assert "failed" not in page.split("modalkit-batch-counts")[1].split("</ul>")[0]
    assert admin_client.get(reverse("admin:modalkit_django_batch_add")).status_code == 403


def test_workers_are_live_stopped_or_dead(admin_client: Client) -> None:
    now = timezone.now()
    window = 3 * get_settings().worker.heartbeat_seconds  # three missed beats
    beats = WorkerHeartbeat.objects
    live = beats.create(name="h:1:a", hostname="h", pid=1, last_beat_at=now - dt.timedelta(seconds=window - 5))
    dead = beats.create(name="h:2:b", hostname="h", pid=2, last_beat_at=now - dt.timedelta(seconds=window + 5))
    stopped = beats.create(name="h:3:c", hostname="h", pid=3, stopped_at=now, jobs_done=7)
    page = admin_client.get(reverse("admin:modalkit_django_workerheartbeat_changelist")).content.decode()
    rows = page.split("<tr")
    for worker, state in ((live, "live"), (dead, "dead"), (stopped, "stopped")):
        [row] = [row for row in rows if f">{worker.name}</span></a>" in row]
        assert f">{state}</b>" in row
    assert admin_client.get(reverse("admin:modalkit_django_workerheartbeat_add")).status_code == 403
    beats.create(name="other:1:a", hostname="other", pid=1)
    url = reverse("admin:modalkit_django_workerheartbeat_changelist")
    page = admin_client.get(url, {"hostname": "other"}).content.decode()
    assert "other:1:a" in page and "h:1:a" not in page


def test_job_progress_bar_and_partial_outputs(admin_client: Client) -> None:
    [job] = make_jobs(1, status="running", priority=Job.Priority.HIGH, progress=0.42, progress_message="tokens <b>")
    flow.give_outputs(job, [{"text": "<i>Once</i>"}, {"text": "upon"}])
    page = admin_client.get(reverse("admin:modalkit_django_job_changelist")).content.decode()
    # In the run column: how far it got, with its message (escaped) and how long it has run.
    assert '<progress class="modalkit-progress" value="42" max="100" title="tokens &lt;b&gt;; running for ' in page
    assert "High" in page  # the priority column
    page = admin_client.get(reverse("admin:modalkit_django_job_change", args=[job.id])).content.decode()
    assert "partial outputs" in page.lower() and "&lt;i&gt;Once&lt;/i&gt;" in page and "<i>Once" not in page
    assert 'value="42"' in page


def test_the_jobs_list_links_to_the_dashboard(admin_client: Client) -> None:
    url = reverse("admin:modalkit_django_dashboard")
    assert url == reverse("admin:modalkit_django_job_changelist") + "dashboard/"
    page = admin_client.get(reverse("admin:modalkit_django_job_changelist")).content.decode()
    assert f'<a href="{url}" class="viewlink" id="modalkit-dashboard-link">Dashboard</a>' in page


def test_the_dashboard_is_for_staff_only(client: Client, admin_client: Any) -> None:
    response = client.get(reverse("admin:modalkit_django_dashboard"))
    assert response.status_code == 302 and "/login/" in response.url


def breadcrumbs(html: str) -> str:
    """The opening tag of the page's breadcrumbs: ``ol`` on Django 6, ``div`` on 5.2."""
    match = re.search(r'<nav aria-label="Breadcrumbs">\s*<(\w+) class="breadcrumbs">', html)
    assert match, "no breadcrumbs in the admin's own place"
    return match[1]


def test_our_pages_draw_breadcrumbs_as_django_draws_its_own(admin_client: Client, admin_user: Any) -> None:
    jobs = reverse("admin:modalkit_django_job_changelist")
    django = breadcrumbs(admin_client.get(jobs).content.decode())  # Django's own template
    [job] = make_jobs(1, status="queued")
    pages = {
        "dashboard": admin_client.get(reverse("admin:modalkit_django_dashboard")),
        "new key": admin_client.post(
            reverse("admin:modalkit_django_apikey_add"), {"name": "k", "owner": admin_user.pk}
        ),
        "confirmation": admin_client.post(jobs, {"action": "cancel_jobs", "index": "0", "_selected_action": [job.pk]}),
    }
    for name, response in pages.items():
        html = response.content.decode()
        assert breadcrumbs(html) == django, name
        if django == "ol":
            assert '<li aria-current="page">' in html, name
        else:
            assert "&rsaquo;" in html.split('class="breadcrumbs">')[1].split("</div>")[0], name
    dashboard = pages["dashboard"].content.decode()
    assert f'<a href="{jobs}">Jobs</a>' in dashboard
    assert f'<a href="{reverse("admin:app_list", args=["modalkit_django"])}">ModalKit jobs</a>' in dashboard
