"""The lean ASGI path serves exactly the API's routes; a host's own views beside them under
``/api/`` (a plain view, a NinjaAPI of its own) go through Django's handler and ``MIDDLEWARE``."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import httpx
import pytest
from django.http import HttpRequest, JsonResponse
from django.test import override_settings
from django.urls import include, path
from ninja import NinjaAPI

from modalkit_django.asgi import ApiHandler, get_asgi_application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("recording_waker")]


def hello(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user": str(request.user), "method": request.method})


def host_urlconf() -> types.ModuleType:
    host_api = NinjaAPI(urls_namespace="host-v1")

    @host_api.get("/whoami")
    def whoami(request: Any) -> dict[str, str]:
        return {"user": str(request.user)}

    urlconf = types.ModuleType("host_urls")
    urlconf.urlpatterns = [  # type: ignore[attr-defined]
        path("api/hello", hello),
        path("api/v1/", host_api.urls),
        path("", include("modalkit_django.urls")),
    ]
    return urlconf


@pytest.fixture
def lean(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the lean path served."""
    served: list[str] = []
    serve = ApiHandler.serve

    async def spy(self: ApiHandler, scope: dict[str, Any], *args: Any) -> None:
        served.append(scope["path"])
        await serve(self, scope, *args)

    monkeypatch.setattr(ApiHandler, "serve", spy)
    return served


def calls(api_key: str, *requests: tuple[str, str]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=get_asgi_application())
        headers = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=headers) as client:
            return [
                await client.request(method, url, json={"message": {"text": "good"}} if method == "POST" else None)
                for method, url in requests
            ]

    return asyncio.run(run())


def test_a_hosts_views_beside_ours_keep_their_middleware(api_key: str, lean: list[str]) -> None:
    with override_settings(ROOT_URLCONF=host_urlconf()):
        hello_get, hello_post, whoami, submitted, health = calls(
            api_key,
            ("GET", "/api/hello"),
            ("POST", "/api/hello"),
            ("GET", "/api/v1/whoami"),
            ("POST", "/api/async/predict"),
            ("GET", "/health"),
        )
    # The host's: request.user (AuthenticationMiddleware), CSRF enforced, every header.
    assert (hello_get.status_code, hello_get.json()) == (200, {"user": "AnonymousUser", "method": "GET"})
    assert hello_post.status_code == 403  # CsrfViewMiddleware: no token
    assert (whoami.status_code, whoami.json()) == (200, {"user": "AnonymousUser"})
    for response in (hello_get, whoami, health):
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    # Ours, on the lean path: SecurityMiddleware's headers, no other middleware.
    assert submitted.status_code == 202
    assert submitted.headers["X-Content-Type-Options"] == "nosniff"
    assert "X-Frame-Options" not in submitted.headers
    assert lean == ["/api/async/predict"]


def test_ours_are_lean_wherever_the_include_mounts_them(api_key: str, lean: list[str]) -> None:
    urlconf = types.ModuleType("elsewhere_urls")
    urlconf.urlpatterns = [path("ml/", include("modalkit_django.urls"))]  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=urlconf):
        submitted, missing, health = calls(
            api_key, ("POST", "/ml/api/async/predict"), ("GET", "/api/async/predict"), ("GET", "/ml/health")
        )
    assert (submitted.status_code, missing.status_code, health.status_code) == (202, 404, 200)
    assert lean == ["/ml/api/async/predict"]


def test_a_path_under_a_script_name_is_resolved_as_django_would(api_key: str, lean: list[str]) -> None:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=get_asgi_application(), root_path="/prefix")
        headers = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=headers) as client:
            return await client.get("/prefix/api/jobs")

    assert asyncio.run(run()).status_code == 200
    assert lean == ["/prefix/api/jobs"]


def test_api_prefix_is_deprecated_and_ignored() -> None:
    with pytest.warns(DeprecationWarning, match="api_prefix"):
        get_asgi_application(api_prefix="/v2/")
