"""Each request's origin for the audit log (goci.audit.context): through the pages, the
API or the admin, from the client's address and user agent."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest
from django.http.response import HttpResponseBase

from goci.audit import context


def via(path: str) -> str:
    if path.startswith("/api/"):
        return context.API
    if path.startswith("/admin/"):
        return context.ADMIN
    return context.UI


class AuditOrigin:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        with context.acting(context.Origin(via=via(request.path_info), request=request)):
            return self.get_response(request)
