"""Health: ``GET /health`` (liveness), ``GET /ready`` (readiness) and ``manage.py modalkit health``.

:mod:`.probes` checks what a job needs (the database, the broker, the queue backends,
Modal); :mod:`.views` answers the probes of load balancers and orchestrators.
"""
