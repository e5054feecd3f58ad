"""0.2's new tables, and the delivery and API key columns, added to a 0.1 database while
0.1 serves (before the deploy).

Catalogue changes only, in one transaction: new columns neither rewrite nor scan their
table (their checks are added ``NOT VALID``), each new ``NOT NULL`` column keeps a database
default while 0.1 (which does not write it) inserts rows, and new checks hold new rows
only. If the transaction cannot have a table (``lock_timeout``), it rolls back whole and
``migrate`` can run again. ``0003_add_job_columns_for_0_2`` does the same for the job
table; ``0004_build_for_0_2`` validates the checks and builds the indexes while writes go
on; ``0005_remove_after_0_2_deploy`` removes what 0.1 still needs, once 0.2 runs.

With 0003-0005, it replaces the unreleased migrations 0002-0011 of the 0.2
development, with the schema they made. New tables get their indexes and constraints as
usual: they are empty.
"""

import uuid

import django.core.validators
import django.db.models.deletion
import django.db.models.functions.datetime
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

import modalkit_django.models.keys
from modalkit_django.models import operations


class Migration(migrations.Migration):
    dependencies = [
        ("modalkit_django", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="job",
            options={
                "ordering": ["-created_at"],
                "permissions": [
                    ("cancel_job", "Can cancel queued jobs"),
                    ("rerun_job", "Can re-run jobs (runs inference again)"),
                ],
            },
        ),
        migrations.AlterModelOptions(
            name="queuedelivery",
            options={
                "ordering": ["-created_at"],
                "permissions": [("redeliver_queuedelivery", "Can redeliver results")],
                "verbose_name_plural": "queue deliveries",
            },
        ),
        # New tables.
        migrations.CreateModel(
            name="SweepState",
            fields=[
                ("id", models.PositiveSmallIntegerField(default=1, editable=False, primary_key=True, serialize=False)),
                ("started_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "worker",
                    models.CharField(blank=True, help_text="The worker process that swept last.", max_length=255),
                ),
                ("sweeps", models.PositiveBigIntegerField(default=0, help_text="Sweeps run so far, by all workers.")),
                ("last_result", models.JSONField(blank=True, default=dict)),
                ("quiet_until", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "verbose_name": "sweep",
                "constraints": [
                    models.CheckConstraint(condition=models.Q(("id", 1)), name="modalkit_sweepstate_singleton")
                ],
            },
        ),
        migrations.CreateModel(
            name="Batch",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("model_name", models.CharField(max_length=100)),
                ("size", models.PositiveIntegerField(help_text="How many jobs the batch holds.")),
                ("completion_queue", models.CharField(blank=True, max_length=255)),
                ("meta", models.JSONField(blank=True, default=dict)),
                ("api_key_prefix", models.CharField(blank=True, max_length=16)),
                ("idempotency_key", models.CharField(blank=True, max_length=255)),
                ("request_fingerprint", models.CharField(blank=True, max_length=64)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("completed_at", models.DateTimeField(blank=True, null=True)),
                (
                    "owner",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="modalkit_batches",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "verbose_name_plural": "batches",
                "ordering": ["-created_at"],
                "indexes": [
                    models.Index(fields=["-created_at"], name="modalkit_batch_created_idx"),
                    models.Index(
                        condition=models.Q(("completed_at__isnull", True)),
                        fields=["created_at"],
                        name="modalkit_batch_open_idx",
                    ),
                ],
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("idempotency_key", ""), _negated=True),
                        fields=("owner", "idempotency_key"),
                        name="modalkit_batch_idempotency_key_unique",
                    ),
                    models.UniqueConstraint(
                        condition=models.Q(models.Q(("idempotency_key", ""), _negated=True), ("owner__isnull", True)),
                        fields=("idempotency_key",),
                        name="modalkit_batch_idempotency_key_unowned_unique",
                    ),
                ],
            },
        ),
        migrations.CreateModel(
            name="WorkerHeartbeat",
            fields=[
                ("name", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("hostname", models.CharField(max_length=255)),
                ("pid", models.PositiveIntegerField()),
                ("started_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("last_beat_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("stopped_at", models.DateTimeField(blank=True, null=True)),
                ("jobs_done", models.PositiveBigIntegerField(default=0, help_text="Jobs this process finished.")),
                (
                    "deliveries_sent",
                    models.PositiveBigIntegerField(default=0, help_text="Deliveries this process sent."),
                ),
                ("in_flight", models.PositiveIntegerField(default=0, help_text="Jobs running at the last beat.")),
                ("version", models.CharField(blank=True, help_text="modalkit-django's version.", max_length=32)),
            ],
            options={
                "ordering": ["-last_beat_at"],
                "indexes": [models.Index(fields=["-last_beat_at"], name="modalkit_worker_beat_idx")],
            },
        ),
        migrations.CreateModel(
            name="JobOutput",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("run", models.PositiveIntegerField(help_text="The job's runs when it was yielded.")),
                ("seq", models.PositiveIntegerField(help_text="Its index among its run's outputs.")),
                ("output", models.JSONField()),
                (
                    "job",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="outputs",
                        to="modalkit_django.job",
                    ),
                ),
            ],
            options={
                "ordering": ["job", "run", "seq"],
                "constraints": [
                    models.UniqueConstraint(fields=("job", "run", "seq"), name="modalkit_joboutput_unique")
                ],
            },
        ),
        # API keys: every key 0.1 made, and any 0.1 makes until the deploy, may send to
        # every queue, as in 0.1 (the default, a constant, fills the old rows in place).
        operations.AddFieldSafely(
            model_name="apikey",
            name="allowed_queues",
            field=models.JSONField(
                blank=True,
                default=modalkit_django.models.keys.default_allowed_queues,
                help_text='Queue names (or patterns such as "acme-*") this key may send results to; "*" allows any.',
            ),
            temporary_default=["*"],
        ),
        operations.AddFieldSafely(
            model_name="apikey",
            name="max_queued_jobs",
            field=models.PositiveIntegerField(
                blank=True,
                help_text='Jobs this key may have waiting at once; empty: MODALKIT["API"]["MAX_QUEUED_JOBS"].',
                null=True,
                validators=[django.core.validators.MinValueValidator(1)],
            ),
        ),
        operations.AddFieldSafely(
            model_name="apikey",
            name="rate_limit",
            field=models.PositiveIntegerField(
                blank=True,
                help_text='Submits per minute; empty: MODALKIT["API"]["RATE_LIMIT_PER_MINUTE"] (default: no limit).',
                null=True,
                validators=[django.core.validators.MinValueValidator(1)],
            ),
        ),
        # Deliveries: their times are the database's (defaults only, no rewrite).
        migrations.AddField(
            model_name="queuedelivery",
            name="attempts_since",
            field=models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
        ),
        migrations.AlterField(
            model_name="queuedelivery",
            name="created_at",
            field=models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
        ),
        migrations.AlterField(
            model_name="queuedelivery",
            name="next_attempt_at",
            field=models.DateTimeField(blank=True, db_default=django.db.models.functions.datetime.Now(), null=True),
        ),
        migrations.AlterField(
            model_name="queuedelivery",
            name="route",
            field=models.CharField(
                choices=[("success", "Success"), ("failure", "Failure"), ("batch", "Batch")], max_length=8
            ),
        ),
        # Checks hold new rows at once; 0003 reads the old ones.
        migrations.RemoveConstraint(model_name="queuedelivery", name="modalkit_delivery_route_valid"),
        operations.AddConstraintNotValid(
            model_name="queuedelivery",
            constraint=models.CheckConstraint(
                condition=models.Q(("route__in", ["success", "failure", "batch"])), name="modalkit_delivery_route_valid"
            ),
        ),
    ]
