"""The audit page's filters: a GET form, so that a filtered list is a URL to share (and
the CSV export takes the same query)."""

from __future__ import annotations

from datetime import datetime

from django import forms

from goci.audit.reading import BOUND_HELP, Filters, bound

MAX_PAGE = 100_000  # an OFFSET every database takes (as the build lists')


class AuditFilterForm(forms.Form):
    project = forms.CharField(max_length=100, required=False, strip=True)
    actor = forms.CharField(max_length=150, required=False, strip=True)
    action = forms.CharField(
        max_length=50, required=False, strip=True, help_text="e.g. member or member.add"
    )
    since = forms.CharField(max_length=40, required=False, strip=True, help_text=BOUND_HELP)
    until = forms.CharField(
        max_length=40, required=False, strip=True, help_text="a date takes in that whole day"
    )
    page = forms.IntegerField(min_value=1, max_value=MAX_PAGE, required=False)

    def _bound(self, name: str, *, end: bool) -> datetime | None:
        value: str = self.cleaned_data[name]
        if not value:
            return None
        try:
            return bound(value, end=end)
        except ValueError as exc:
            raise forms.ValidationError(str(exc).capitalize() + ".") from None

    def clean_since(self) -> datetime | None:
        return self._bound("since", end=False)

    def clean_until(self) -> datetime | None:
        return self._bound("until", end=True)

    def filters(self) -> Filters:
        data = self.cleaned_data
        return Filters(
            actor=data["actor"] or None,
            action=data["action"] or None,
            since=data["since"],
            until=data["until"],
        )
