"""What 0.1 needed and 0.2 does not, removed once 0.2 runs everywhere (after the deploy).

Every step is a catalogue change or a concurrent index drop: the temporary defaults
0002 and 0003 left for 0.1's inserts, the ``enqueued_at`` column and the index 0.1
claimed by, and three indexes no 0.2 query uses but every write keeps up:

- the job's ``owner_id`` index, which ``modalkit_job_owner_idx`` (owner, created) leads with;
- the delivery's ``message_id`` LIKE index (``varchar_pattern_ops``), which PostgreSQL
  gets beside the unique one for ``unique=True``; message ids are only looked up whole.

The foreign key's index is dropped without touching the foreign key (a plain
``AlterField`` would drop, re-create and re-validate it, and keep the index).

``after_deploy = True``: until it runs, 0.2 processes start and answer ``/ready``.
"""

from django.conf import settings
from django.db import migrations, models

from modalkit_django.models import operations

# Django's names for indexes 0.1 made; the same on every database.
JOB_OWNER_INDEX = "modalkit_django_job_owner_id_f57e7928"
MESSAGE_ID_LIKE_INDEX = "modalkit_django_queuedelivery_message_id_859de490_like"


def drop_index(name, postgresql_only=False):
    def forwards(apps, schema_editor):
        quote = schema_editor.quote_name
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quote(name)}")
        elif not postgresql_only:
            schema_editor.execute(f"DROP INDEX IF EXISTS {quote(name)}")

    return forwards


def restore_job_owner_index(apps, schema_editor):
    quote = schema_editor.quote_name
    table = apps.get_model("modalkit_django", "Job")._meta.db_table
    concurrently = " CONCURRENTLY" if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(
        f"CREATE INDEX{concurrently} IF NOT EXISTS {quote(JOB_OWNER_INDEX)} ON {quote(table)} ({quote('owner_id')})"
    )


def restore_message_id_like_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        quote = schema_editor.quote_name
        table = apps.get_model("modalkit_django", "QueueDelivery")._meta.db_table
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {quote(MESSAGE_ID_LIKE_INDEX)} ON {quote(table)} "
            f"({quote('message_id')} varchar_pattern_ops)"
        )


class Migration(migrations.Migration):
    atomic = False
    after_deploy = True

    dependencies = [
        ("modalkit_django", "0004_build_for_0_2"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        operations.DropTemporaryDefault(model_name="apikey", name="allowed_queues"),
        operations.DropTemporaryDefault(model_name="job", name="idempotency_key"),
        operations.DropTemporaryDefault(model_name="job", name="request_fingerprint"),
        operations.DropTemporaryDefault(model_name="job", name="api_key_prefix"),
        operations.DropTemporaryDefault(model_name="job", name="priority"),
        operations.DropTemporaryDefault(model_name="job", name="progress_message"),
        operations.DropTemporaryDefault(model_name="job", name="output_count"),
        operations.DropTemporaryDefault(model_name="job", name="runs"),
        operations.RemoveIndexConcurrently(model_name="job", name="modalkit_job_queued_idx"),
        migrations.RemoveField(model_name="job", name="enqueued_at"),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="job",
                    name="owner",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=models.deletion.CASCADE,
                        related_name="modalkit_jobs",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(drop_index(JOB_OWNER_INDEX), restore_job_owner_index)],
        ),
        migrations.RunPython(drop_index(MESSAGE_ID_LIKE_INDEX, postgresql_only=True), restore_message_id_like_index),
    ]
