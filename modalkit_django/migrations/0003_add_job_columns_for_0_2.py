"""0.2's job columns, added to a 0.1 database while 0.1 serves (before the deploy).

Catalogue changes only, in one transaction of their own (the job table is held from the
first change to the commit, so nothing else is done in it): new columns neither rewrite
nor scan the table (their checks are added ``NOT VALID``), each new ``NOT NULL`` column
keeps a database default while 0.1 (which does not write it) inserts jobs, and the new
check holds new rows only. If the transaction cannot have the table (``lock_timeout``),
it rolls back whole and ``migrate`` can run again.
"""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.db import migrations, models

from modalkit_django.models import operations


class Migration(migrations.Migration):
    dependencies = [
        ("modalkit_django", "0002_add_for_0_2"),
    ]

    operations = [
        # New columns, in the order the 0.2 development added them.
        operations.AddFieldSafely(
            model_name="job",
            name="idempotency_key",
            field=models.CharField(blank=True, max_length=255),
            temporary_default="",
        ),
        migrations.AddField(
            model_name="job",
            name="queued_at",
            field=models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
        ),
        operations.AddFieldSafely(
            model_name="job",
            name="request_fingerprint",
            field=models.CharField(blank=True, max_length=64),
            temporary_default="",
        ),
        operations.AddFieldSafely(
            model_name="job",
            name="api_key_prefix",
            field=models.CharField(blank=True, max_length=16),
            temporary_default="",
        ),
        migrations.AddField(
            model_name="job",
            name="modal_call_id",
            field=models.CharField(blank=True, max_length=64, null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="expires_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        operations.AddFieldSafely(
            model_name="job",
            name="priority",
            field=models.SmallIntegerField(choices=[(0, "Low"), (1, "Normal"), (2, "High")], default=1),
            temporary_default=1,
        ),
        migrations.AddField(
            model_name="job",
            name="progress",
            field=models.FloatField(blank=True, null=True),
        ),
        operations.AddFieldSafely(
            model_name="job",
            name="progress_message",
            field=models.CharField(blank=True, max_length=255),
            temporary_default="",
        ),
        # A new column of NULLs: PostgreSQL adds its foreign key without reading the table.
        migrations.AddField(
            model_name="job",
            name="batch",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="jobs",
                to="modalkit_django.batch",
            ),
        ),
        operations.AddFieldSafely(
            model_name="job",
            name="output_count",
            field=models.PositiveIntegerField(default=0),
            temporary_default=0,
        ),
        operations.AddFieldSafely(
            model_name="job",
            name="runs",
            field=models.PositiveIntegerField(
                default=0, help_text="Times a worker claimed this job, re-runs included."
            ),
            temporary_default=0,
        ),
        operations.AddConstraintNotValid(
            model_name="job",
            constraint=models.CheckConstraint(
                condition=models.Q(("priority__in", [0, 1, 2])), name="modalkit_job_priority_valid"
            ),
        ),
    ]
