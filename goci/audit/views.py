"""The audit log's page and its CSV export: the same filters, the same rules (reading.py).

Admins read every event; maintainers and owners those of their projects. A member with
a lower role gets 403 naming the role; another tenant's project is a 404.
"""

from __future__ import annotations

import csv
import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from builds import access
from builds.logs import Pieces, stream_text
from goci.audit.forms import AuditFilterForm
from goci.audit.models import AuditEvent
from goci.audit.reading import events_for

PAGE_SIZE = 50
CSV_COLUMNS = [
    "time",
    "actor",
    "action",
    "project",
    "object_type",
    "object_id",
    "via",
    "address",
    "user_agent",
    "details",
]


def _filtered(request: HttpRequest, form: AuditFilterForm) -> QuerySet[AuditEvent]:
    """The events the filters select among those the user may read (404, 403)."""
    try:
        events = events_for(request.user, form.cleaned_data["project"] or None)
    except access.Denied as exc:
        raise PermissionDenied(str(exc)) from exc
    if events is None:
        raise Http404("no such project")
    return form.filters().apply(events)


@login_required
@require_GET
def events(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET)
    context: dict[str, Any] = {"form": form, "events": [], "page": 1, "has_next": False}
    if not form.is_valid():
        return render(request, "audit/event_list.html", context, status=400)
    found = _filtered(request, form)
    page = form.cleaned_data["page"] or 1
    start = (page - 1) * PAGE_SIZE
    # One row more than a page tells whether there is a next one, without COUNT(*).
    rows = list(found[start : start + PAGE_SIZE + 1])
    context.update(
        events=rows[:PAGE_SIZE],
        page=page,
        has_next=len(rows) > PAGE_SIZE,
        project=form.cleaned_data["project"],
        filtered=any(form.cleaned_data[name] for name in ("actor", "action", "since", "until")),
        everything=request.user.is_superuser and not form.cleaned_data["project"],
    )
    return render(request, "audit/event_list.html", context)


@login_required
@require_GET
def export(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Every event the filters select, newest first, as CSV."""
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        context = {"form": form, "events": [], "page": 1, "has_next": False}
        return render(request, "audit/event_list.html", context, status=400)
    # Streamed as the logs are (an async iterator under ASGI): the export may be long.
    response = stream_text(request, _csv_rows(_filtered(request, form)))
    response["Content-Type"] = "text/csv; charset=utf-8"
    slug = form.cleaned_data["project"]
    name = f"audit-{slug}.csv" if slug else "audit.csv"
    # slug is letters, digits, - and _ once found (a project) or any text for an admin.
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
    response["Content-Disposition"] = f'attachment; filename="{safe}"'
    return response


class _Line:
    """csv.writer's file: each row it writes is returned instead of kept."""

    def write(self, text: str) -> str:
        return text


def _csv_rows(events: QuerySet[AuditEvent]) -> Pieces:
    writer = csv.writer(_Line())
    yield writer.writerow(CSV_COLUMNS)
    for event in events.iterator(chunk_size=2000):
        yield writer.writerow(
            _cell(value)
            for value in (
                event.created_at.isoformat(),
                event.actor_name,
                event.action,
                event.project_slug,
                event.object_type,
                event.object_id,
                event.via,
                event.address,
                event.user_agent,
                json.dumps(event.details, sort_keys=True),
            )
        )


def _cell(value: str) -> str:
    # A spreadsheet runs a cell that starts with one of these as a formula: a project
    # name or a user agent could be "=HYPERLINK(...)".
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
