from django.apps import AppConfig


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
