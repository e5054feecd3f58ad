"""A batch's inference when the pipeline's ``predict`` is a generator: one stream per job.

::

    claimed jobs ─▶ one stream per job (StreamingCalls.astream) ─▶ outcome ─▶ finish, as usual
                        │ progress, partial outputs
                        ▼
                    Reporter: coalesced, one UPDATE per batch every PROGRESS_WRITE_SECONDS

A chatty generator (a token at a time) must not cost PostgreSQL a statement per token:
the reporter keeps each job's latest progress and the partial outputs since its last
write, and writes them for the whole batch at most every :data:`PROGRESS_WRITE_SECONDS`.
The first write of a run clears what an earlier run of the job stored, and every output
is numbered in its run (``Job.runs``), so that a client reading the stream of a retried or
re-run job never gets two runs' outputs spliced (``GET /jobs/{id}/events`` says so with a
``reset`` event).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from ..clients.base import InferenceBackend, Prediction, StreamingCalls, prediction_from_outcome, streaming_pipeline
from ..exceptions import InferenceError, InferenceTimeout
from ..inference.progress import Event, outcome_of
from ..models.jobs import ProgressReport

if TYPE_CHECKING:
    from ..models import Job

__all__ = ["MAX_PARTIAL_OUTPUT_BYTES", "PROGRESS_WRITE_SECONDS", "predict_streaming", "streams"]

logger = logging.getLogger(__name__)

# At most one write per batch this often: a few statements a second, however chatty.
PROGRESS_WRITE_SECONDS = 0.2
# A larger partial output is not stored (the final result has no such limit).
MAX_PARTIAL_OUTPUT_BYTES = 64 * 1024

# Writes the reports of jobs still held under the lease; returns the ids written.
Write = Callable[[list[ProgressReport], uuid.UUID], Awaitable[set[uuid.UUID]]]


def streams(backend: InferenceBackend) -> StreamingCalls | None:
    """The backend, if jobs run as streams: it can, and the pipeline's ``predict`` is a generator."""
    return backend if isinstance(backend, StreamingCalls) and streaming_pipeline() else None


async def predict_streaming(
    backend: StreamingCalls, jobs: Sequence[Job], *, deadline: float, write: Write, max_outputs: int
) -> list[Prediction]:
    """One prediction per job, in order, all within ``deadline`` seconds; progress written meanwhile."""
    token = jobs[0].lease_token
    assert token is not None
    ends_at = asyncio.get_running_loop().time() + deadline
    streams: dict[uuid.UUID, asyncio.Task[Prediction]] = {}
    # A job reclaimed or canceled meanwhile: its stream stops now, not at its next event.
    reporter = Reporter(
        [job.id for job in jobs], write, token, max_outputs=max_outputs, on_lost=lambda job_id: streams[job_id].cancel()
    )
    for job in jobs:
        streams[job.id] = asyncio.create_task(_stream(backend, job, reporter, ends_at, deadline))
    writing = asyncio.create_task(reporter.run())
    try:
        outcomes = await asyncio.gather(*streams.values(), return_exceptions=True)
    finally:
        reporter.close()
        await writing
    return [_prediction(outcome) for outcome in outcomes]


def _prediction(outcome: Prediction | BaseException) -> Prediction:
    if isinstance(outcome, asyncio.CancelledError):  # by the reporter: the lease is gone
        return InferenceError("The job's lease ended while it ran", error_type="LeaseLost")
    if isinstance(outcome, BaseException) and not isinstance(outcome, InferenceError):
        raise outcome
    return outcome


async def _stream(backend: StreamingCalls, job: Job, reporter: Reporter, ends_at: float, deadline: float) -> Prediction:
    try:
        async with asyncio.timeout_at(ends_at):
            async with contextlib.aclosing(backend.astream(job.model_name, job.message)) as events:  # type: ignore[type-var]
                async for event in events:
                    if (outcome := outcome_of(event)) is not None:
                        return prediction_from_outcome(outcome)
                    if not reporter.report(job.id, event):
                        # Reclaimed or canceled meanwhile: its result would not be stored.
                        return InferenceError("The job's lease ended while it ran", error_type="LeaseLost")
        return InferenceError("The pipeline's stream ended without an outcome", error_type="StreamEnded")
    except TimeoutError:
        return InferenceTimeout(f"Inference did not finish within {deadline:g} s")
    except InferenceError as exc:
        return exc
    except Exception as exc:
        # A bug in a backend fails this job visibly instead of leaving it leased.
        logger.exception("Streaming from %s failed", type(backend).__name__)
        return InferenceError(str(exc), error_type=type(exc).__name__)


class Reporter:
    """A batch's unwritten progress, written together every :data:`PROGRESS_WRITE_SECONDS`."""

    def __init__(
        self,
        job_ids: list[uuid.UUID],
        write: Write,
        token: uuid.UUID,
        *,
        max_outputs: int,
        on_lost: Callable[[uuid.UUID], object],
    ) -> None:
        self.write = write
        self.on_lost = on_lost
        self.token = token
        self.max_outputs = max_outputs
        # The first write clears an earlier attempt's progress.
        self.pending = {job_id: ProgressReport(job_id, reset=True) for job_id in job_ids}
        self.outputs = dict.fromkeys(job_ids, 0)
        self.lost: set[uuid.UUID] = set()
        self.closed = asyncio.Event()
        self.wake = asyncio.Event()
        self.wake.set()

    def report(self, job_id: uuid.UUID, event: Event) -> bool:
        """Keep one event for the next write; ``False`` once the job is no longer held."""
        if job_id in self.lost:
            return False
        report = self.pending.get(job_id)
        if report is None:
            # Its outputs follow those already handed to a write.
            report = self.pending[job_id] = ProgressReport(job_id, start=self.outputs[job_id])
        if event.get("type") == "progress":
            report.progress, report.message = float(event["progress"]), str(event.get("message", ""))
        elif event.get("type") == "output":
            self._add_output(report, event.get("output"))
        self.wake.set()
        return True

    def _add_output(self, report: ProgressReport, output: object) -> None:
        if not isinstance(output, dict):
            logger.warning("Job %s: a partial output that is not an object was dropped", report.job_id)
            return
        if self.outputs[report.job_id] >= self.max_outputs:
            if self.outputs[report.job_id] == self.max_outputs:
                logger.warning(
                    "Job %s: over %d partial outputs; the rest are not stored", report.job_id, self.max_outputs
                )
                self.outputs[report.job_id] += 1
            return
        if len(json.dumps(output)) > MAX_PARTIAL_OUTPUT_BYTES:
            logger.warning(
                "Job %s: a partial output over %d bytes was not stored", report.job_id, MAX_PARTIAL_OUTPUT_BYTES
            )
            return
        report.outputs.append(output)
        self.outputs[report.job_id] += 1

    def close(self) -> None:
        """The streams ended: write what is left, then stop."""
        self.closed.set()
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            closing = self.closed.is_set()
            await self.flush()
            if closing:
                return
            # The pause that coalesces writes; cut short when the streams end.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), PROGRESS_WRITE_SECONDS)

    async def flush(self) -> None:
        reports, self.pending = list(self.pending.values()), {}
        if not reports:
            return
        try:
            held = await self.write(reports, self.token)
        except Exception:
            # The database stayed away past run_db's retries: keep the news for the next
            # write (the result itself goes through finish, which waits in the same way).
            logger.exception("Writing the progress of %d jobs failed; kept for the next write", len(reports))
            for report in reports:
                self.pending[report.job_id] = _merged(report, self.pending.get(report.job_id))
            return
        for report in reports:
            if report.job_id not in held and report.job_id not in self.lost:
                self.lost.add(report.job_id)
                self.on_lost(report.job_id)


def _merged(earlier: ProgressReport, later: ProgressReport | None) -> ProgressReport:
    """One report with the news of both, ``earlier``'s first."""
    if later is None:
        return earlier
    return ProgressReport(
        earlier.job_id,
        start=earlier.start,
        progress=later.progress if later.progress is not None else earlier.progress,
        message=later.message if later.message is not None else earlier.message,
        outputs=[*earlier.outputs, *later.outputs],
        reset=earlier.reset or later.reset,
    )
