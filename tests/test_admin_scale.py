"""The admin's lists at scale: counts that are estimated or capped, filters that never
list a column's values, searches through the primary key, and a query count per page
that does not grow with the rows shown. (Timings: bench/admin_scale.py.)"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from modalkit_django.admin import paging
from modalkit_django.models import Batch, Job, QueueDelivery

pytestmark = pytest.mark.django_db

JOBS = reverse("admin:modalkit_django_job_changelist")
DELIVERIES = reverse("admin:modalkit_django_queuedelivery_changelist")


def make_jobs(count: int, **fields: Any) -> list[Job]:
    now = timezone.now()
    defaults: dict[str, Any] = {"model_name": "sentiment", "message": {"text": "x"}, "status": "succeeded"}
    jobs = [Job(**{**defaults, **fields}, created_at=now - timezone.timedelta(seconds=i)) for i in range(count)]
    return Job.objects.bulk_create(jobs)


def make_deliveries(jobs: list[Job], **fields: Any) -> list[QueueDelivery]:
    defaults: dict[str, Any] = {"route": "success", "queue_name": "results", "backend": "memory", "payload": {}}
    rows = [QueueDelivery(job=job, message_id=f"{job.id}:success", **{**defaults, **fields}) for job in jobs]
    return QueueDelivery.objects.bulk_create(rows)


def sql(captured: CaptureQueriesContext) -> str:
    return "\n".join(query["sql"] for query in captured.captured_queries)


def test_a_filtered_count_stops_at_the_cap(admin_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paging, "CAP", 10)
    make_jobs(25, status="queued")
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(JOBS, {"status__exact": "queued"})
    cl = response.context["cl"]
    assert (cl.result_count, cl.count_label) == (11, "10+")
    assert "10+ jobs" in response.content.decode()
    assert "LIMIT 11" in sql(captured)
    assert 'COUNT(*) AS "__count" FROM "modalkit_django_job"' not in sql(captured)  # never a full count
    # Pages stop at the cap: an OFFSET never walks far.
    assert cl.paginator.num_pages == 1


def test_the_unfiltered_count_is_the_tables_estimate(admin_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paging, "CAP", 10)
    make_jobs(40)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE modalkit_django_job")
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(JOBS)
    cl = response.context["cl"]
    assert cl.paginator.kind == "estimated" and cl.count_label == "about 40"
    assert "reltuples" in sql(captured)
    assert "COUNT(" not in sql(captured).upper()
    assert "about 40 jobs" in response.content.decode()


def test_small_lists_are_counted_exactly(admin_client: Client) -> None:
    make_jobs(3)
    cl = admin_client.get(JOBS).context["cl"]
    assert (cl.result_count, cl.count_label, cl.paginator.kind) == (3, "3", "exact")


def test_filters_come_from_configuration_not_from_the_table(admin_client: Client) -> None:
    make_deliveries(make_jobs(2))
    for url in (JOBS, DELIVERIES):
        with CaptureQueriesContext(connection) as captured:
            page = admin_client.get(url).content.decode()
        assert "DISTINCT" not in sql(captured).upper()
        assert "GROUP BY" not in sql(captured).upper()
    page = admin_client.get(JOBS).content.decode()
    assert "?model_name=sentiment" in page  # the model of modalkit.yaml, a choice
    assert "?priority__exact=2" in page
    assert 'name="owner"' in page and 'name="batch"' in page  # input boxes
    page = admin_client.get(DELIVERIES).content.decode()
    assert "?backend=memory" in page  # the alias of MODALKIT["QUEUES"]
    assert 'name="queue_name"' in page


def test_input_filters_match_exactly(admin_client: Client, user: User) -> None:
    batch = Batch.objects.create(model_name="sentiment", size=1)
    [mine] = make_jobs(1, owner=user, batch=batch)
    [other] = make_jobs(1)
    make_deliveries([mine], queue_name="results-7")
    make_deliveries([other], queue_name="results-70")
    for params in ({"owner": "alice"}, {"batch": str(batch.id)}):
        page = admin_client.get(JOBS, params).content.decode()
        assert str(mine.id) in page and str(other.id) not in page
    page = admin_client.get(JOBS, {"owner": "ali"}).content.decode()
    assert str(mine.id) not in page  # exact, not contains
    page = admin_client.get(DELIVERIES, {"queue_name": "results-7"}).content.decode()
    assert str(mine.id) in page and str(other.id) not in page
    response = admin_client.get(JOBS, {"batch": "nope"})
    assert response.status_code == 400


def test_a_pasted_id_is_a_primary_key_lookup(admin_client: Client) -> None:
    batch = Batch.objects.create(model_name="sentiment", size=1)
    [job, in_batch, other] = make_jobs(3)
    Job.objects.filter(pk=in_batch.pk).update(batch=batch)
    [delivery, other_delivery] = make_deliveries([job, other])
    with CaptureQueriesContext(connection) as captured:
        page = admin_client.get(JOBS, {"q": f" {job.id} "}).content.decode()
    assert str(job.id) in page and str(other.id) not in page
    assert "UPPER" not in sql(captured) and "::text" not in sql(captured)
    page = admin_client.get(JOBS, {"q": str(batch.id)}).content.decode()
    assert str(in_batch.id) in page and str(job.id) not in page
    # Deliveries: by their own id, their job's id, or their message id.
    for term in (str(delivery.id), str(job.id), delivery.message_id):
        page = admin_client.get(DELIVERIES, {"q": term}).content.decode()
        assert str(delivery.id) in page and str(other_delivery.id) not in page, term


def test_only_indexed_columns_sort(admin_client: Client) -> None:
    make_jobs(3)
    columns = admin_client.get(JOBS).context["cl"].list_display
    for column, field in (("priority", "priority"), ("status_cell", "status"), ("model_cell", "model_name")):
        with CaptureQueriesContext(connection) as captured:  # no index to sort by
            response = admin_client.get(JOBS, {"o": str(columns.index(column))})
        assert response.status_code == 200
        selects = [q["sql"] for q in captured.captured_queries if "ORDER BY" in q["sql"]]
        assert selects and all('"created_at" DESC' in query for query in selects), column
        assert all(f'"{field}" ASC' not in query for query in selects)
    page = admin_client.get(JOBS).content.decode()
    assert "sortable" not in page.split("column-priority")[0][-40:]
    assert "sortable" in page.split("column-created")[0][-60:]


def test_the_list_reads_no_payloads(admin_client: Client) -> None:
    make_deliveries(make_jobs(3))
    for url, column in ((JOBS, '"modalkit_django_job"."message"'), (DELIVERIES, '"payload"')):
        with CaptureQueriesContext(connection) as captured:
            admin_client.get(url)
        assert column not in sql(captured)


@pytest.mark.parametrize("url", [JOBS, DELIVERIES, reverse("admin:modalkit_django_batch_changelist")])
def test_a_page_costs_the_same_queries_for_5_rows_as_for_50(admin_client: Client, user: User, url: str) -> None:
    def queries(rows: int) -> int:
        Job.objects.all().delete()
        Batch.objects.all().delete()
        batches = Batch.objects.bulk_create([Batch(model_name="sentiment", size=1) for _ in range(rows)])
        jobs = make_jobs(rows, owner=user, progress=0.5, progress_message="half")
        for job, batch in zip(jobs, batches, strict=True):
            job.batch = batch
        Job.objects.bulk_update(jobs, ["batch"])
        make_deliveries(jobs)
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(url)
        assert len(response.context["cl"].result_list) == rows
        return len(captured)

    assert queries(5) == queries(50)


def test_a_job_page_costs_the_same_queries_for_1_delivery_as_for_30(admin_client: Client) -> None:
    def queries(deliveries: int) -> int:
        [job] = make_jobs(1)
        rows = [
            QueueDelivery(
                job=job, route="success", queue_name="q", backend="memory", payload={}, message_id=f"{job.id}:{i}"
            )
            for i in range(deliveries)
        ]
        QueueDelivery.objects.bulk_create(rows)
        admin_client.get(reverse("admin:modalkit_django_job_change", args=[job.id]))  # warm the caches
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(reverse("admin:modalkit_django_job_change", args=[job.id]))
        assert response.status_code == 200
        return len(captured)

    assert queries(1) == queries(30)


def test_an_unknown_page_or_id_is_not_an_error(admin_client: Client) -> None:
    make_jobs(2)
    assert admin_client.get(reverse("admin:modalkit_django_job_change", args=[uuid.uuid4()])).status_code == 302


def test_the_fast_row_checkbox_is_djangos_own_markup() -> None:
    from django.contrib import admin

    [job] = make_jobs(1)
    model_admin = admin.site._registry[Job]
    assert model_admin.action_checkbox(job) == admin.ModelAdmin.action_checkbox(model_admin, job)


@pytest.mark.parametrize("status", ["queued", "scheduled"])
def test_queued_and_scheduled_are_found_through_an_index(admin_client: Client, status: str) -> None:
    """``status = 'queued'`` first (the status index, or a partial index on queued jobs),
    then ``run_after`` on those rows only: never a scan of the table."""
    later = timezone.now() + timezone.timedelta(hours=1)
    make_jobs(3000)
    make_jobs(50, status="queued")
    make_jobs(10, status="queued", run_after=later, queued_at=later)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE modalkit_django_job")
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(JOBS, {"status__exact": status})
    assert response.context["cl"].result_count == (50 if status == "queued" else 10)
    selects = [q["sql"] for q in captured.captured_queries if 'FROM "modalkit_django_job"' in q["sql"]]
    assert len(selects) == 2  # the capped count, then the page
    with connection.cursor() as cursor:
        for select in selects:
            cursor.execute("EXPLAIN " + select)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Seq Scan on modalkit_django_job" not in plan, plan
            assert re.search(r"Index (Only )?Scan|Bitmap Index Scan", plan), plan
            assert "modalkit_job_" in plan, plan
