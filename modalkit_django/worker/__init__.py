"""The worker process's asyncio runtime: what ``manage.py taskiq worker`` runs.

- :mod:`.tasks`: the TaskIQ tasks (wake-ups, nudges for the engine) and the waker that sends them;
- :mod:`.engine`: claims runnable jobs in batches, runs them (inference → finish → first
  send), keeps their leases, and sends due deliveries;
- :mod:`.detached` and :mod:`.streaming`: inference as Modal calls that outlive the
  worker, and as streams of progress;
- :mod:`.sweeper`: the periodic repair of lost messages, dead workers and due deliveries;
- :mod:`.heartbeats`: each worker process's row, for operators;
- :mod:`.lifecycle`: what a worker does when it starts and stops;
- :mod:`.database`: where its database work runs, waiting out outages.

It calls the job service's shared steps (:mod:`modalkit_django.jobs.messages`,
:mod:`~modalkit_django.jobs.completion`), never the API's use cases.
"""
