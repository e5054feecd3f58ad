"""Health: ``GET /health`` (liveness), ``GET /ready`` (readiness) and ``manage.py modalkit health``.

:mod:`.probes` checks what this process cannot serve without (the database, its
migrations, the configuration) and what only degrades the service (the broker, the queue
backends, Modal); :mod:`.views` answers the probes of load balancers and orchestrators.
"""
