"""The admin: operators browse and filter read-only rows, and act through services."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from modalkit_django import services
from modalkit_django.exceptions import PermanentDeliveryError
from modalkit_django.models import ApiKey, Job, QueueDelivery, SendResult

from . import flow

pytestmark = pytest.mark.django_db

OUTPUT = {"status": "success", "sentiment": "positive", "confidence": 0.9}


@pytest.fixture
def staff(admin_client: Client) -> Client:
    return admin_client


def finished_job(**kwargs: Any) -> tuple[Job, list[QueueDelivery]]:
    job = services.submit_job(message={"text": "good"}, **kwargs)
    [job] = flow.claim([job.id])
    return job, flow.finish([(job, OUTPUT)])


def test_job_list_filters_and_searches(staff: Client) -> None:
    done, _ = finished_job(success_queue="results", meta={"customer": "acme"})
    queued = services.submit_job(message={"text": "x"}, meta={"customer": "globex"})
    url = reverse("admin:modalkit_django_job_changelist")

    page = staff.get(url).content.decode()
    assert str(done.id) in page and str(queued.id) in page

    page = staff.get(url, {"status__exact": "queued"}).content.decode()
    assert str(queued.id) in page and str(done.id) not in page

    page = staff.get(url, {"q": "acme"}).content.decode()
    assert str(done.id) in page and str(queued.id) not in page

    page = staff.get(url, {"q": str(queued.id)}).content.decode()
    assert str(queued.id) in page and str(done.id) not in page

    page = staff.get(url, {"success_queue": "results"}).content.decode()
    assert str(done.id) in page and str(queued.id) not in page


def test_job_page_shows_deliveries_and_escapes_payloads(staff: Client) -> None:
    job, [delivery] = finished_job(success_queue="results", meta={"note": "<script>alert(1)</script>"})
    page = staff.get(reverse("admin:modalkit_django_job_change", args=[job.id])).content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "results" in page and delivery.status in page


def test_jobs_and_deliveries_are_read_only(staff: Client) -> None:
    job, _ = finished_job(success_queue="q")
    assert staff.get(reverse("admin:modalkit_django_job_add")).status_code == 403
    assert staff.get(reverse("admin:modalkit_django_queuedelivery_add")).status_code == 403
    response = staff.post(reverse("admin:modalkit_django_job_change", args=[job.id]), {"status": "queued"})
    assert response.status_code == 403
    job.refresh_from_db()
    assert job.status == "succeeded"


def test_delivery_list_filters_by_status_backend_route_and_queue(staff: Client) -> None:
    _, [sent] = finished_job(success_queue="results")
    _, [dead] = finished_job(success_queue="other")
    flow.record([SendResult(sent, external_id="x")])
    flow.record([SendResult(dead, error=PermanentDeliveryError("410 Gone"))])
    url = reverse("admin:modalkit_django_queuedelivery_changelist")
    page = staff.get(url, {"status__exact": "dead"}).content.decode()
    assert str(dead.id) in page and str(sent.id) not in page
    assert "410 Gone" in page
    for params in ({"backend": "memory"}, {"route__exact": "success"}, {"queue_name": "results"}):
        assert str(sent.id) in staff.get(url, params).content.decode()


def test_cancel_and_rerun_actions_go_through_services(staff: Client) -> None:
    queued = services.submit_job(message={"text": "x"})
    done, _ = finished_job()
    url = reverse("admin:modalkit_django_job_changelist")
    response = staff.post(url, {"action": "cancel_jobs", "_selected_action": [str(queued.id), str(done.id)]})
    assert response.status_code == 302
    queued.refresh_from_db()
    done.refresh_from_db()
    assert (queued.status, done.status) == ("canceled", "succeeded")
    notes = [str(message) for message in get_messages(response.wsgi_request)]
    assert "Canceled 1 job(s)." in notes
    assert "Left alone: 1 succeeded." in notes

    staff.post(url, {"action": "rerun_jobs", "_selected_action": [str(done.id)]})
    done.refresh_from_db()
    assert (done.status, done.reruns) == ("queued", 1)


def test_redeliver_action_resets_the_delivery(staff: Client) -> None:
    _, [delivery] = finished_job(success_queue="q")
    flow.record([SendResult(delivery, error=PermanentDeliveryError("no"))])
    url = reverse("admin:modalkit_django_queuedelivery_changelist")
    staff.post(url, {"action": "redeliver", "_selected_action": [str(delivery.id)]})
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)


@pytest.mark.django_db(transaction=True)
def test_api_key_created_in_the_admin_is_shown_once_and_works(staff: Client, admin_user: Any) -> None:
    response = staff.post(
        reverse("admin:modalkit_django_apikey_add"), {"name": "ci", "owner": admin_user.pk}, follow=True
    )
    [note] = [str(message) for message in get_messages(response.wsgi_request) if "API key:" in str(message)]
    raw_key = note.split()[2]
    api_key = ApiKey.objects.get(name="ci")
    assert api_key.digest == ApiKey.digest_of(raw_key)
    page = staff.get(reverse("admin:modalkit_django_apikey_change", args=[api_key.pk])).content.decode()
    assert raw_key not in page
    client = Client(headers={"Authorization": f"Bearer {raw_key}"})
    response = client.post("/api/predict", {"message": {"text": "good"}}, content_type="application/json")
    assert response.status_code == 200


def test_revoke_action(staff: Client, user: Any) -> None:
    api_key, raw_key = services.create_api_key(owner=user, name="k")
    staff.post(
        reverse("admin:modalkit_django_apikey_changelist"), {"action": "revoke", "_selected_action": [api_key.pk]}
    )
    assert services.authenticate_api_key(raw_key=raw_key) is None


def test_actions_need_their_own_permissions(client: Client, django_user_model: Any) -> None:
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_job", "view_queuedelivery"]))
    client.force_login(viewer)
    job, _ = finished_job(success_queue="q")
    url = reverse("admin:modalkit_django_job_changelist")
    page = client.get(url).content.decode()
    assert "rerun_jobs" not in page and "cancel_jobs" not in page
    client.post(url, {"action": "rerun_jobs", "_selected_action": [str(job.id)]})
    job.refresh_from_db()
    assert job.status == "succeeded"  # refused: viewing is not re-running

    viewer.user_permissions.add(Permission.objects.get(codename="rerun_job"))
    viewer = django_user_model.objects.get(pk=viewer.pk)  # drop the permission cache
    client.force_login(viewer)
    assert "rerun_jobs" in client.get(url).content.decode()
    client.post(url, {"action": "rerun_jobs", "_selected_action": [str(job.id)]})
    job.refresh_from_db()
    assert job.status == "queued"
    deliveries = client.get(reverse("admin:modalkit_django_queuedelivery_changelist")).content.decode()
    assert "redeliver" not in deliveries
