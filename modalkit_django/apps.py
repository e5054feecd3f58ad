import logging
import threading
from typing import Any

from django.apps import AppConfig
from django.core.signals import request_started

logger = logging.getLogger(__name__)

# The receiver that starts the broker, disconnected once it has.
_START_BROKER = "modalkit:start-broker"


class ModalkitConfig(AppConfig):
    name = "modalkit_django"
    verbose_name = "ModalKit jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core.signals import setting_changed
        from taskiq import TaskiqEvents

        from . import broker, checks, conf
        from .api.auth import keys
        from .clients import inference_backends
        from .health import probes
        from .jobs import wakeups
        from .queues import queues
        from .worker import engine, lifecycle, tasks

        checks.register()
        # In this order: the settings are read again before anything is rebuilt from them.
        receivers = (
            conf.clear_caches,
            broker.reset,
            inference_backends.reset,
            queues.reset,
            engine.forget_engines,
            keys.clear,
        )
        for index, receiver in enumerate(receivers):
            setting_changed.connect(receiver, dispatch_uid=f"modalkit:setting_changed:{index}")
        # Any setting may change what the system checks say (SILENCED_SYSTEM_CHECKS, DATABASES…).
        setting_changed.connect(probes.forget, dispatch_uid="modalkit:setting_changed:health")
        broker.add_worker_hook(TaskiqEvents.WORKER_STARTUP, lifecycle.on_startup)
        broker.add_worker_hook(TaskiqEvents.WORKER_SHUTDOWN, lifecycle.on_shutdown)
        wakeups.set_waker(tasks.BrokerWaker())
        request_started.connect(start_broker_on_first_request, dispatch_uid=_START_BROKER)


def start_broker_on_first_request(sender: Any, **kwargs: Any) -> None:
    """Start the broker (with the in-process one, the embedded worker and its sweep) when a
    process serves its first request, whichever server runs it (WSGI, ASGI, runserver).

    Not in ``ready()``: ``migrate``, ``check``, ``shell`` and the TaskIQ worker set
    Django up too, and must not start a worker of their own. Not on first use only: jobs
    a restart left queued resume with the first request (a load balancer's health probe,
    typically) rather than with the next submit. Django's test client is no server: under
    it the broker starts on first use, as before. The start runs on a thread of its own,
    so that a broker that is slow to answer (``broker.start()`` waits up to 10 s) never
    holds up the request, or the event loop it runs on.
    """
    if getattr(sender, "__module__", "") == "django.test.client":
        return
    request_started.disconnect(dispatch_uid=_START_BROKER)
    threading.Thread(target=_start_broker, name="modalkit-broker-start", daemon=True).start()


def _start_broker() -> None:
    from . import broker
    from .exceptions import ModalkitImproperlyConfigured

    try:
        broker.start()
    except ModalkitImproperlyConfigured as exc:  # manage.py check reports it as well
        logger.error("The broker cannot start: %s", exc)
