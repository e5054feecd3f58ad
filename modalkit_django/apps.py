from django.apps import AppConfig


class ModalkitConfig(AppConfig):
    name = "modalkit_django"
    verbose_name = "ModalKit jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core.signals import setting_changed

        from . import broker, checks, conf
        from .inference import backends
        from .queues import queues

        checks.register()
        for receiver in (conf.clear_caches, broker.reset, backends.reset_inference_backend, queues.reset):
            setting_changed.connect(receiver, dispatch_uid=f"modalkit:{receiver.__module__}.{receiver.__qualname__}")
