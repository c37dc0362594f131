"""WebSocket routes; goci/asgi.py wraps them in the origin check and the auth stack."""

from __future__ import annotations

from django.urls import path

from builds.consumers import BuildConsumer

websocket_urlpatterns = [
    path("ws/builds/<int:build_id>/", BuildConsumer.as_asgi()),
]
