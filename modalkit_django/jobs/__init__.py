"""The job service's use cases: what the API, the admin and the CLI call.

One module per use case, each knowing the models and nothing of asyncio or TaskIQ:

- :mod:`.submit`: a single job (``submit_job``) and what follows its commit;
- :mod:`.batches`: many jobs in one request (``submit_batch``, ``get_batch``, ``list_batch_jobs``);
- :mod:`.queries`: reading jobs (``get_job``, ``list_jobs``);
- :mod:`.control`: cancel, re-run, redeliver, one row or a whole selection;
- :mod:`.keys`: API keys;
- :mod:`.scheduling`: a request's priority, not-before time and deadline;
- :mod:`.messages` and :mod:`.completion`: what lands on a queue when a job or a batch
  finishes, which the worker calls too;
- :mod:`.wakeups`: the port through which they wake workers, without knowing the broker;
- :mod:`.stats`: counts for operators.

A host project imports these from :mod:`modalkit_django` itself (its declared public API).
"""
