"""0.2's checks validated and its indexes built while 0.1 writes (before the deploy).

Each step reads the table under a lock that lets reads and writes through: ``VALIDATE
CONSTRAINT`` and ``CREATE INDEX CONCURRENTLY``. Not atomic (PostgreSQL builds concurrently
only outside a transaction), and each step can run again: a build that failed half-way
left an ``INVALID`` index, which the next ``migrate`` drops and builds again.
"""

from django.db import migrations, models

from modalkit_django.models import operations


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("modalkit_django", "0003_add_job_columns_for_0_2"),
    ]

    operations = [
        # The checks 0002 and 0003 added NOT VALID: the old rows are read now.
        operations.ValidateConstraint(model_name="apikey", name="modalkit_django_apikey_max_queued_jobs_check"),
        operations.ValidateConstraint(model_name="apikey", name="modalkit_django_apikey_rate_limit_check"),
        operations.ValidateConstraint(model_name="job", name="modalkit_django_job_output_count_check"),
        operations.ValidateConstraint(model_name="job", name="modalkit_django_job_runs_check"),
        operations.ValidateConstraint(model_name="queuedelivery", name="modalkit_delivery_route_valid"),
        operations.ValidateConstraint(model_name="job", name="modalkit_job_priority_valid"),
        # Indexes, built while writes go on.
        operations.AddUniqueIndexConcurrently(
            model_name="job",
            constraint=models.UniqueConstraint(
                condition=models.Q(("idempotency_key", ""), _negated=True),
                fields=("owner", "idempotency_key"),
                name="modalkit_job_idempotency_key_unique",
            ),
        ),
        operations.AddUniqueIndexConcurrently(
            model_name="job",
            constraint=models.UniqueConstraint(
                condition=models.Q(models.Q(("idempotency_key", ""), _negated=True), ("owner__isnull", True)),
                fields=("idempotency_key",),
                name="modalkit_job_idempotency_key_unowned_unique",
            ),
        ),
        operations.AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status", "queued")), fields=["queued_at"], name="modalkit_job_waiting_idx"
            ),
        ),
        operations.AddIndexConcurrently(
            model_name="job",
            index=models.Index(fields=["status", "-created_at"], name="modalkit_job_status_idx"),
        ),
        operations.AddIndexConcurrently(
            model_name="job",
            index=models.Index(fields=["model_name", "-created_at"], name="modalkit_job_model_idx"),
        ),
        operations.AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status", "queued")),
                fields=["-priority", "queued_at"],
                name="modalkit_job_priority_idx",
            ),
        ),
        operations.AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                condition=models.Q(("expires_at__isnull", False), ("status", "queued")),
                fields=["expires_at"],
                name="modalkit_job_deadline_idx",
            ),
        ),
        operations.AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                condition=models.Q(("batch__isnull", False)), fields=["batch"], name="modalkit_job_batch_idx"
            ),
        ),
        operations.AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                condition=models.Q(("batch__isnull", False), ("status__in", ("queued", "running"))),
                fields=["batch"],
                name="modalkit_job_batch_open_idx",
            ),
        ),
        operations.AddIndexConcurrently(
            model_name="queuedelivery",
            index=models.Index(fields=["status", "-created_at"], name="modalkit_delivery_status_idx"),
        ),
        operations.AddIndexConcurrently(
            model_name="queuedelivery",
            index=models.Index(fields=["backend", "-created_at"], name="modalkit_delivery_backend_idx"),
        ),
        operations.AddIndexConcurrently(
            model_name="queuedelivery",
            index=models.Index(fields=["queue_name", "-created_at"], name="modalkit_delivery_queue_idx"),
        ),
    ]
