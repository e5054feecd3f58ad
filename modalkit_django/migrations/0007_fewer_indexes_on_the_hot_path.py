"""Fewer indexes written as a worker claims and finishes jobs and records their sends.

Each claim and finish rewrites a job row, and each delivery is inserted and then updated,
with an entry in every index of its table. Three of those indexes served nothing:

- the job's ``owner_id`` index, which ``modalkit_job_owner_idx`` (owner, created) leads with;
- the job's ``batch_id`` index, replaced by a partial one: most jobs have no batch;
- the delivery's ``message_id`` LIKE index (``varchar_pattern_ops``), which PostgreSQL
  gets beside the unique one for ``unique=True``; message ids are only looked up whole.

The foreign-key indexes are dropped without touching the foreign keys (a plain
``AlterField`` would drop, re-create and re-validate them, and keep the indexes).
"""

from django.conf import settings
from django.db import migrations, models

# Django's names for the foreign keys' indexes (0001, 0006); the same on every database.
FOREIGN_KEY_INDEXES = {
    "owner_id": "modalkit_django_job_owner_id_f57e7928",
    "batch_id": "modalkit_django_job_batch_id_df436025",
}
MESSAGE_ID_LIKE_INDEX = "modalkit_django_queuedelivery_message_id_859de490_like"


def drop_foreign_key_indexes(apps, schema_editor):
    for name in FOREIGN_KEY_INDEXES.values():
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


def restore_foreign_key_indexes(apps, schema_editor):
    table = apps.get_model("modalkit_django", "Job")._meta.db_table
    quote = schema_editor.quote_name
    for column, name in FOREIGN_KEY_INDEXES.items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(table)} ({quote(column)})")


def drop_message_id_like_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(MESSAGE_ID_LIKE_INDEX)}")


def restore_message_id_like_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        table = apps.get_model("modalkit_django", "QueueDelivery")._meta.db_table
        quote = schema_editor.quote_name
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {quote(MESSAGE_ID_LIKE_INDEX)} ON {quote(table)} "
            f"({quote('message_id')} varchar_pattern_ops)"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("modalkit_django", "0006_batches_priorities_progress_workers"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="job",
                    name="batch",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=models.deletion.CASCADE,
                        related_name="jobs",
                        to="modalkit_django.batch",
                    ),
                ),
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
            database_operations=[migrations.RunPython(drop_foreign_key_indexes, restore_foreign_key_indexes)],
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("batch__isnull", False)), fields=["batch"], name="modalkit_job_batch_idx"
            ),
        ),
        migrations.RunPython(drop_message_id_like_index, restore_message_id_like_index),
    ]
