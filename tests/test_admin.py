"""The admin: operators browse and filter read-only rows, and act through services."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse
from django.utils import timezone

import modalkit_django
from modalkit_django.exceptions import PermanentDeliveryError
from modalkit_django.jobs.keys import authenticate_api_key
from modalkit_django.models import ApiKey, Job, QueueDelivery, SendResult

from . import flow

pytestmark = pytest.mark.django_db

OUTPUT = {"status": "success", "sentiment": "positive", "confidence": 0.9}


@pytest.fixture
def staff(admin_client: Client) -> Client:
    return admin_client


def finished_job(**kwargs: Any) -> tuple[Job, list[QueueDelivery]]:
    job = modalkit_django.submit_job(message={"text": "good"}, **kwargs)
    [job] = flow.claim([job.id])
    return job, flow.finish([(job, OUTPUT)])


def test_job_list_filters_and_searches(staff: Client, user: Any) -> None:
    done, _ = finished_job(success_queue="results", meta={"customer": "acme"})
    queued = modalkit_django.submit_job(message={"text": "x"}, meta={"customer": "globex"}, owner=user)
    url = reverse("admin:modalkit_django_job_changelist")

    page = staff.get(url).content.decode()
    assert str(done.id) in page and str(queued.id) in page

    page = staff.get(url, {"status__exact": "queued"}).content.decode()
    assert str(queued.id) in page and str(done.id) not in page

    page = staff.get(url, {"q": str(queued.id)}).content.decode()
    assert str(queued.id) in page and str(done.id) not in page

    page = staff.get(url, {"owner": "alice"}).content.decode()
    assert str(queued.id) in page and str(done.id) not in page

    # Free text is no longer searched (a scan of every row's JSON): the page says what search takes.
    response = staff.get(url, {"q": "acme"})
    page = response.content.decode()
    assert str(done.id) not in page and str(queued.id) not in page
    assert "Search takes a job id or a batch id (a UUID)." in [str(m) for m in get_messages(response.wsgi_request)]


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
        page = staff.get(url, params).content.decode()
        assert str(sent.id) in page
    assert str(dead.id) not in staff.get(url, {"queue_name": "results"}).content.decode()


def test_cancel_and_rerun_actions_go_through_services(staff: Client) -> None:
    queued = modalkit_django.submit_job(message={"text": "x"})
    done, _ = finished_job()
    url = reverse("admin:modalkit_django_job_changelist")
    selection = {"action": "cancel_jobs", "_selected_action": [str(queued.id), str(done.id)]}
    response = staff.post(url, {**selection, "index": "0"})
    assert response.status_code == 200  # the confirmation page: nothing changed yet
    queued.refresh_from_db()
    assert queued.status == "queued"
    response = staff.post(url, {**selection, "post": "yes"})
    assert response.status_code == 302
    queued.refresh_from_db()
    done.refresh_from_db()
    assert (queued.status, done.status) == ("canceled", "succeeded")
    notes = [str(message) for message in get_messages(response.wsgi_request)]
    assert "Canceled 1 job(s)." in notes
    assert "Left alone: 1 succeeded." in notes

    staff.post(url, {"action": "rerun_jobs", "_selected_action": [str(done.id)], "post": "yes"})
    done.refresh_from_db()
    assert (done.status, done.reruns) == ("queued", 1)


def test_redeliver_action_resets_the_delivery(staff: Client) -> None:
    _, [delivery] = finished_job(success_queue="q")
    flow.record([SendResult(delivery, error=PermanentDeliveryError("no"))])
    url = reverse("admin:modalkit_django_queuedelivery_changelist")
    response = staff.post(url, {"action": "redeliver", "_selected_action": [str(delivery.id)], "post": "yes"})
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert "Redelivering 1 message(s)." in [str(m) for m in get_messages(response.wsgi_request)]


KEY = re.compile(r"mk_[\w-]{43}")


@pytest.mark.django_db(transaction=True)
def test_api_key_created_in_the_admin_is_shown_once_and_works(staff: Client, admin_user: Any) -> None:
    response = staff.post(reverse("admin:modalkit_django_apikey_add"), {"name": "ci", "owner": admin_user.pk})
    assert response.status_code == 200  # rendered at once: no redirect to carry the key over
    page = response.content.decode()
    [raw_key] = KEY.findall(page)
    assert page.count(raw_key) == 1
    api_key = ApiKey.objects.get(name="ci")
    assert api_key.digest == ApiKey.digest_of(raw_key)
    # Neither the messages cookie (signed, not encrypted) nor the session holds it.
    assert all(raw_key not in morsel.value for morsel in [*response.cookies.values(), *staff.cookies.values()])
    assert all(raw_key not in str(message) for message in get_messages(response.wsgi_request))
    assert all(raw_key not in str(session.get_decoded()) for session in Session.objects.all())
    page = staff.get(reverse("admin:modalkit_django_apikey_change", args=[api_key.pk])).content.decode()
    assert raw_key not in page
    client = Client(headers={"Authorization": f"Bearer {raw_key}"})
    response = client.post("/api/predict", {"message": {"text": "good"}}, content_type="application/json")
    assert response.status_code == 200


@pytest.fixture
def key_staff(client: Client, django_user_model: Any) -> Any:
    """A staff user with every API key permission, and none about users."""
    carol = django_user_model.objects.create_user("carol", password="pw", is_staff=True)
    carol.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_apikey", "view_apikey", "change_apikey", "delete_apikey"])
    )
    client.force_login(carol)
    return carol


def test_key_staff_add_keys_for_themselves_only(client: Client, key_staff: Any, other_user: Any) -> None:
    url = reverse("admin:modalkit_django_apikey_add")
    form = client.get(url).context["adminform"].form
    assert list(form.fields["owner"].queryset) == [key_staff]
    response = client.post(url, {"name": "theirs", "owner": other_user.pk})
    assert response.status_code == 200 and "owner" in response.context["adminform"].form.errors
    assert not ApiKey.objects.filter(name="theirs").exists()
    # Their own key, with the project's grants and limits: they may not grant themselves more.
    response = client.post(url, {"name": "mine", "owner": key_staff.pk, "allowed_queues": "*", "rate_limit": "9"})
    assert response.status_code == 200 and KEY.search(response.content.decode())
    mine = ApiKey.objects.get(name="mine")
    assert (mine.owner, mine.allowed_queues, mine.rate_limit) == (key_staff, [], None)


def test_key_staff_see_and_revoke_their_own_keys_only(client: Client, key_staff: Any, other_user: Any) -> None:
    mine, _ = modalkit_django.create_api_key(owner=key_staff, name="mine")
    theirs, theirs_raw = modalkit_django.create_api_key(owner=other_user, name="theirs")
    changelist = reverse("admin:modalkit_django_apikey_changelist")
    page = client.get(changelist).content.decode()
    assert mine.prefix in page and theirs.prefix not in page
    for view in ("change", "delete", "history"):
        response = client.get(reverse(f"admin:modalkit_django_apikey_{view}", args=[theirs.pk]))
        assert response.status_code == 302 and response.url == reverse("admin:index")  # "does not exist"
    # Their own key they may rename, but not grant it queues or raise its limits.
    response = client.post(
        reverse("admin:modalkit_django_apikey_change", args=[mine.pk]),
        {"name": "renamed", "allowed_queues": "*", "rate_limit": "999"},
    )
    assert response.status_code == 302
    mine.refresh_from_db()
    assert (mine.name, mine.allowed_queues, mine.rate_limit) == ("renamed", [], None)
    client.post(changelist, {"action": "revoke", "_selected_action": [mine.pk, theirs.pk]})
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.revoked_at is not None and theirs.revoked_at is None
    assert authenticate_api_key(raw_key=theirs_raw) == theirs


def test_user_admins_manage_everyones_keys(client: Client, key_staff: Any, other_user: Any) -> None:
    key_staff.user_permissions.add(Permission.objects.get(codename="change_user"))
    client.force_login(type(key_staff).objects.get(pk=key_staff.pk))  # drop the permission cache
    theirs, _ = modalkit_django.create_api_key(owner=other_user, name="theirs")
    assert theirs.prefix in client.get(reverse("admin:modalkit_django_apikey_changelist")).content.decode()
    response = client.post(
        reverse("admin:modalkit_django_apikey_add"),
        {"name": "for-bob", "owner": other_user.pk, "allowed_queues": "bob-*", "max_queued_jobs": "3"},
    )
    assert response.status_code == 200
    key = ApiKey.objects.get(name="for-bob")
    assert (key.owner, key.allowed_queues, key.max_queued_jobs) == (other_user, ["bob-*"], 3)


def test_api_key_grants_and_limits_are_edited_one_queue_per_line(staff: Client, user: Any) -> None:
    api_key, _ = modalkit_django.create_api_key(owner=user, name="k")
    url = reverse("admin:modalkit_django_apikey_change", args=[api_key.pk])
    form = {"name": "k", "rate_limit": "60", "max_queued_jobs": "5"}
    response = staff.post(url, {**form, "allowed_queues": " acme-*\r\n\r\nresults\nacme-*\n"})
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert (api_key.allowed_queues, api_key.rate_limit, api_key.max_queued_jobs) == (["acme-*", "results"], 60, 5)
    assert "acme-*\nresults" in staff.get(url).content.decode()  # the form shows it as it is typed
    assert "acme-*, results" in staff.get(reverse("admin:modalkit_django_apikey_changelist")).content.decode()

    for queues, limit in (("good\nbad\x1bname", "60"), ("x" * 256, "60"), ("ok", "0")):
        response = staff.post(url, {**form, "allowed_queues": queues, "rate_limit": limit})
        assert response.status_code == 200 and response.context["adminform"].form.errors
    api_key.refresh_from_db()
    assert (api_key.allowed_queues, api_key.rate_limit) == (["acme-*", "results"], 60)

    staff.post(url, {**form, "allowed_queues": "", "rate_limit": ""})
    api_key.refresh_from_db()
    assert (api_key.allowed_queues, api_key.rate_limit) == ([], None)  # none granted; the setting's limit


ODD_QUERIES = [
    "q=%00",
    "q=a%00b",
    "status__exact=%00",
    "status=%00",
    "status__in=%00",
    "created_at__gte=%00",
    "created_at__year=%00",
    "o=%00",
    "p=%00",
    "%00=1",
    "q=ok&revoked_at__isnull=%00",
    "queue_name=%00",
    "route__exact=%00",
    "backend=%00",
    "model_name=%00",
    "owner=%00",
    "batch=not-a-uuid",
    "q=not-a-uuid",
    "o=3",
]


@pytest.mark.parametrize("model", ["job", "queuedelivery", "apikey"])
@pytest.mark.parametrize("query", ODD_QUERIES)
def test_changelists_survive_odd_query_strings(staff: Client, user: Any, model: str, query: str) -> None:
    finished_job(success_queue="results")
    modalkit_django.create_api_key(owner=user, name="k")
    response = staff.get(f"{reverse(f'admin:modalkit_django_{model}_changelist')}?{query}")
    assert response.status_code in (200, 302, 400)
    if response.status_code == 302:
        assert response.url.endswith("?e=1")


@pytest.mark.parametrize("model", ["job", "queuedelivery", "apikey"])
@pytest.mark.parametrize("selected", ["\x00", "abc", "1\x00"])
def test_actions_refuse_odd_row_ids(staff: Client, model: str, selected: str) -> None:
    url = reverse(f"admin:modalkit_django_{model}_changelist")
    response = staff.post(url, {"action": "delete_selected", "_selected_action": [selected]})
    assert response.status_code == 400


def test_errors_are_shown_with_url_secrets_redacted(staff: Client) -> None:
    job, [delivery] = finished_job(success_queue="results")
    secret_error = "POST https://hooks.example.com/x?token=abc123&v=2 answered 410 Gone"
    flow.record([SendResult(delivery, error=PermanentDeliveryError(secret_error))])
    Job.objects.filter(pk=job.pk).update(
        error={"type": "Upstream", "message": "fetch 'https://bob:hunter2@files.example.com/a?sig=s3cr3t' failed"}
    )
    pages = [
        staff.get(reverse("admin:modalkit_django_queuedelivery_changelist")),
        staff.get(reverse("admin:modalkit_django_queuedelivery_change", args=[delivery.pk])),
        staff.get(reverse("admin:modalkit_django_job_change", args=[job.pk])),
    ]
    for response in pages:
        page = response.content.decode()
        assert "abc123" not in page and "s3cr3t" not in page and "hunter2" not in page
        assert "https://hooks.example.com/x?token=***&amp;v=***" in page
    assert "https://bob:***@files.example.com/a?sig=***" in pages[2].content.decode()


def test_revoke_action(staff: Client, user: Any) -> None:
    api_key, raw_key = modalkit_django.create_api_key(owner=user, name="k")
    changelist = reverse("admin:modalkit_django_apikey_changelist")
    assert '<b class="mk-status mk-status-active">active</b>' in staff.get(changelist).content.decode()
    staff.post(changelist, {"action": "revoke", "_selected_action": [api_key.pk]})
    assert authenticate_api_key(raw_key=raw_key) is None
    assert '<b class="mk-status mk-status-revoked" title="revoked 20' in staff.get(changelist).content.decode()


def test_actions_need_their_own_permissions(client: Client, django_user_model: Any) -> None:
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_job", "view_queuedelivery"]))
    client.force_login(viewer)
    job, _ = finished_job(success_queue="q")
    url = reverse("admin:modalkit_django_job_changelist")
    page = client.get(url).content.decode()
    assert "rerun_jobs" not in page and "cancel_jobs" not in page
    client.post(url, {"action": "rerun_jobs", "_selected_action": [str(job.id)], "post": "yes"})
    job.refresh_from_db()
    assert job.status == "succeeded"  # refused: viewing is not re-running

    viewer.user_permissions.add(Permission.objects.get(codename="rerun_job"))
    viewer = django_user_model.objects.get(pk=viewer.pk)  # drop the permission cache
    client.force_login(viewer)
    assert "rerun_jobs" in client.get(url).content.decode()
    client.post(url, {"action": "rerun_jobs", "_selected_action": [str(job.id)], "post": "yes"})
    job.refresh_from_db()
    assert job.status == "queued"
    deliveries = client.get(reverse("admin:modalkit_django_queuedelivery_changelist")).content.decode()
    assert "redeliver" not in deliveries


# --- A row's own page: the error first, then its actions as buttons -----------------------------


def buttons(page: str) -> dict[str, dict[str, Any]]:
    """The action buttons on a page: the action's name → the form it posts."""
    found = {}
    for form in re.findall(r'<form method="post" action="([^"]+)">(.*?)</form>', page, re.S):
        url, body = form
        fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', body)
        action = dict(fields)["action"]
        found[action] = {"url": url, "fields": fields, "label": re.search(r"<button[^>]*>([^<]+)</button>", body)[1]}
    return found


def post_fields(fields: list[tuple[str, str]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, value in fields:
        data.setdefault(name, []).append(value)
    return data


def job_page(client: Client, job: Job) -> str:
    return client.get(reverse("admin:modalkit_django_job_change", args=[job.id])).content.decode()


def test_a_job_page_offers_what_applies_to_its_state(staff: Client) -> None:
    queued = modalkit_django.submit_job(message={"text": "x"})
    done, [delivery] = finished_job(success_queue="q")
    running = modalkit_django.submit_job(message={"text": "y"})
    [running] = flow.claim([running.id])
    on_call = modalkit_django.submit_job(message={"text": "z"})
    [on_call] = flow.claim([on_call.id])
    Job.objects.filter(pk=on_call.pk).update(modal_call_id="fc-1")

    assert list(buttons(job_page(staff, queued))) == ["cancel_jobs"]
    assert list(buttons(job_page(staff, running))) == []  # no Modal call: it cannot be stopped
    assert list(buttons(job_page(staff, on_call))) == ["cancel_jobs"]
    offered = buttons(job_page(staff, done))
    assert list(offered) == ["rerun_jobs", "redeliver"]
    assert offered["rerun_jobs"]["url"] == reverse("admin:modalkit_django_job_changelist")
    assert ("_selected_action", str(done.id)) in offered["rerun_jobs"]["fields"]
    assert offered["redeliver"]["url"] == reverse("admin:modalkit_django_queuedelivery_changelist")
    assert ("_selected_action", str(delivery.id)) in offered["redeliver"]["fields"]
    assert offered["redeliver"]["label"] == "Redeliver its delivery"


def test_a_failed_jobs_error_comes_first_redacted(staff: Client) -> None:
    job, _ = finished_job(success_queue="q")
    Job.objects.filter(pk=job.pk).update(
        status="failed", error={"type": "Upstream", "message": "GET https://x.example/a?sig=s3cr3t failed"}
    )
    page = job_page(staff, job)
    assert page.index('id="mk-row-error"') < page.index('id="mk-row-actions"') < page.index("<fieldset")
    assert "<strong>Upstream</strong>" in page and "sig=***" in page and "s3cr3t" not in page


def test_the_buttons_follow_the_users_permissions(client: Client, django_user_model: Any) -> None:
    queued = modalkit_django.submit_job(message={"text": "x"})
    done, _ = finished_job(success_queue="q")
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_job", "view_queuedelivery"]))
    client.force_login(viewer)
    assert buttons(job_page(client, queued)) == buttons(job_page(client, done)) == {}
    assert 'id="mk-row-actions"' not in job_page(client, done)

    viewer.user_permissions.add(Permission.objects.get(codename="cancel_job"))
    client.force_login(django_user_model.objects.get(pk=viewer.pk))  # drop the permission cache
    assert list(buttons(job_page(client, queued))) == ["cancel_jobs"]
    assert buttons(job_page(client, done)) == {}  # re-running is a permission of its own


def test_a_button_confirms_through_the_changelist_then_comes_back(staff: Client) -> None:
    done, _ = finished_job(success_queue="q")
    page = reverse("admin:modalkit_django_job_change", args=[done.id])
    button = buttons(job_page(staff, done))["rerun_jobs"]
    data = post_fields(button["fields"])
    assert data["_next"] == [page]
    confirm = staff.post(button["url"], data)
    assert confirm.status_code == 200 and confirm.templates[0].name == "admin/modalkit_django/confirm_action.html"
    html = confirm.content.decode()
    assert f'<input type="hidden" name="_next" value="{page}">' in html
    assert f'href="{page}" class="button cancel-link"' in html  # "No" goes back to the job
    done.refresh_from_db()
    assert done.status == "succeeded"  # nothing yet

    response = staff.post(button["url"], {**data, "post": "yes", "index": []})
    assert response.status_code == 302 and response.url == page
    done.refresh_from_db()
    assert (done.status, done.reruns) == ("queued", 1)
    assert "Re-queued 1 job(s)." in [str(m) for m in get_messages(response.wsgi_request)]


def test_a_button_never_sends_the_operator_off_the_site(staff: Client) -> None:
    done, _ = finished_job(success_queue="q")
    url = reverse("admin:modalkit_django_job_changelist")
    data = {"action": "rerun_jobs", "_selected_action": [str(done.id)], "post": "yes"}
    response = staff.post(url, {**data, "_next": "https://evil.example/"})
    assert response.status_code == 302 and response.url == url


def test_a_delivery_page_shows_its_error_and_redeliver(staff: Client, client: Client, django_user_model: Any) -> None:
    _, [delivery] = finished_job(success_queue="q")
    flow.record([SendResult(delivery, error=PermanentDeliveryError("POST https://h.example/?token=abc: 410 Gone"))])
    url = reverse("admin:modalkit_django_queuedelivery_change", args=[delivery.id])
    page = staff.get(url).content.decode()
    assert "<strong>Delivery dead</strong>" in page and "token=***" in page and "token=abc" not in page
    assert list(buttons(page)) == ["redeliver"]
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_queuedelivery"))
    client.force_login(viewer)
    assert buttons(client.get(url).content.decode()) == {}


def test_queued_and_scheduled_jobs_are_listed_apart(staff: Client) -> None:
    due = modalkit_django.submit_job(message={"text": "now"})
    in_two_hours = modalkit_django.Schedule(run_after=timezone.now() + dt.timedelta(hours=2, seconds=30))
    later = modalkit_django.submit_job(message={"text": "later"}, schedule=in_two_hours)
    url = reverse("admin:modalkit_django_job_changelist")
    page = staff.get(url).content.decode()
    [row] = [row for row in page.split("<tr") if str(later.id) in row]
    assert '<b class="mk-status mk-status-scheduled"' in row and ">in 2 h</time>" in row
    [row] = [row for row in page.split("<tr") if str(due.id) in row]
    assert '<b class="mk-status mk-status-queued">queued</b>' in row
    page = staff.get(url, {"status__exact": "queued"}).content.decode()
    assert str(due.id) in page and str(later.id) not in page
    page = staff.get(url, {"status__exact": "scheduled"}).content.decode()
    assert str(later.id) in page and str(due.id) not in page
    assert "?status__exact=scheduled" in page  # a choice of the status filter


def test_the_batch_list_searches_by_batch_id_and_says_what_it_takes(staff: Client) -> None:
    batches = reverse("admin:modalkit_django_batch_changelist")
    by_id = staff.get(batches, {"q": "6f1c1bd4-3b8f-4c55-9a3c-9e2b0e3a7c11"})
    assert by_id.status_code == 200
    assert [str(message) for message in get_messages(by_id.wsgi_request)] == []
    by_name = staff.get(batches, {"q": "my batch"}, follow=True)
    assert by_name.status_code == 200
    assert [str(message) for message in get_messages(by_name.wsgi_request)] == ["Search takes a batch id (a UUID)."]
