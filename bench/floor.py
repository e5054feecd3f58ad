"""The floor: what a Django team would hand-write for the same work, served the same way.

``POST /floor/submit``: one INSERT of a job row and one TaskIQ ``.kiq`` on the upstream
Redis stream broker, then 202, through Django's ASGI handler and ``MIDDLEWARE``, as a
team would serve it. ``POST /api/floor/submit``: the same view on the API's lean path
(``modalkit_django.asgi``; marked for it, as the API's own views are), to tell what the
path gives from what group commit gives. ``POST /api/floor/predict``: a minimal ninja
endpoint behind the same API-key auth as the project, returning a constant, on the lean
path too: the cost of ninja and auth alone, against which ``/api/predict`` is measured.
"""

import json
import os

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI
from taskiq_redis import RedisStreamBroker

from modalkit_django.api.auth import ApiKeyBearer
from modalkit_django.api.site import lean, lean_urls
from modalkit_django.models import Job

broker = RedisStreamBroker(
    os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), queue_name=os.environ["BENCH_QUEUE"]
)


@broker.task(task_name="modalkit.run_job")
async def run_job(job_id: str) -> None:
    return None


_started = False


@csrf_exempt
async def submit(request: HttpRequest) -> JsonResponse:
    global _started
    if not _started:
        await broker.startup()
        _started = True
    body = json.loads(request.body)
    job = await Job.objects.acreate(model_name="sentiment", message=body["message"], meta=body.get("meta", {}))
    await run_job.kiq(str(job.id))
    return JsonResponse({"job_id": str(job.id), "status": job.status}, status=202)


api = NinjaAPI(urls_namespace="floor")


@api.post("/predict", auth=ApiKeyBearer())
async def predict(request: HttpRequest) -> dict[str, object]:
    return {"status": "success", "sentiment": "positive", "confidence": 0.95}


@csrf_exempt
async def lean_submit(request: HttpRequest) -> JsonResponse:
    return await submit(request)


urlpatterns = [
    path("floor/submit", submit),
    path("api/floor/submit", lean(lean_submit)),
    path("api/floor/", lean_urls(api)),
]
