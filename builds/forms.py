"""Forms of the dashboard: the build filters and the "Run pipeline" form.

They only parse and check what the user typed; queueing a build is
services.build_create's work, and the pipeline's own problems come from it.
"""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.core.files.uploadedfile import UploadedFile
from django.db.models import Q, QuerySet
from django.http import QueryDict

from builds.models import Build, Project, Status
from builds.pipeline import MAX_BYTES, PipelineError, Problem


class BuildFilterForm(forms.Form):
    """The dashboard's filters; a GET form, so that a filtered list is a URL to share."""

    project = forms.ModelChoiceField(
        queryset=Project.objects.none(),
        to_field_name="slug",
        required=False,
        empty_label="All projects",
    )
    status = forms.ChoiceField(choices=[("", "Any status"), *Status.choices], required=False)
    branch = forms.CharField(max_length=255, required=False, strip=True)

    def __init__(self, *args: Any, projects: QuerySet[Project], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only the user's projects are choices: another one's slug is "not a valid
        # choice", the same answer as a slug that does not exist.
        self.fields["project"].queryset = projects  # type: ignore[attr-defined]

    def filter(self, builds: QuerySet[Build]) -> QuerySet[Build]:
        """The builds that match; none while a filter is invalid (a list that ignored
        the bad filter would look like the answer to it)."""
        if not self.is_valid():
            return builds.none()
        data = self.cleaned_data
        if data["project"] is not None:
            builds = builds.filter(project=data["project"])
        if data["status"]:
            builds = builds.filter(status=data["status"])
        if data["branch"]:
            # Triggers store a full ref (refs/heads/main) or a bare branch name (main).
            branch = data["branch"].removeprefix("refs/heads/")
            builds = builds.filter(Q(ref=branch) | Q(ref=f"refs/heads/{branch}"))
        return builds


class RunPipelineForm(forms.Form):
    """Queue a build of a pipeline that is pasted or uploaded."""

    # templates/builds/project_detail.html draws these two by hand, to tie the problems
    # to the textarea (aria-describedby) and list them with their line:column.
    pipeline = forms.CharField(
        label="Pipeline YAML",
        required=False,
        strip=False,  # line and column numbers of problems refer to the text as sent
        widget=forms.Textarea,
    )
    pipeline_file = forms.FileField(label="or upload a file", required=False)
    ref = forms.CharField(
        label="Ref",
        max_length=255,
        required=False,
        help_text="A branch name or a full ref (refs/heads/main, refs/tags/v1).",
    )
    commit = forms.CharField(label="Commit", max_length=64, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.problems: list[Problem] = []

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        upload: UploadedFile | None = data.get("pipeline_file")
        if upload is not None:
            if data.get("pipeline", "").strip():
                self.add_error("pipeline_file", "Paste the YAML or upload a file, not both.")
                return data
            text = self._read(upload)
            if text is None:
                return data
            data["pipeline"] = text
            self._show_text(text)
        elif not data.get("pipeline", "").strip():
            self.add_error("pipeline", "Paste the pipeline's YAML or upload its file.")
        return data

    def _read(self, upload: UploadedFile) -> str | None:
        if upload.size is not None and upload.size > MAX_BYTES:
            self.add_error(
                "pipeline_file",
                f"The file is {upload.size} bytes; a pipeline may be at most {MAX_BYTES}.",
            )
            return None
        raw: bytes = upload.read(MAX_BYTES + 1)
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            self.add_error("pipeline_file", f"The file is not UTF-8 text (byte {exc.start}).")
            return None

    def _show_text(self, text: str) -> None:
        # An uploaded file's text goes into the textarea, so that a re-rendered form
        # shows what was checked and the user can fix it there.
        data = cast(QueryDict, self.data).copy()  # bound to request.POST
        data["pipeline"] = text
        self.data = data

    def add_pipeline_problems(self, error: PipelineError) -> None:
        """Show every problem of the pipeline beside the text, with line:column."""
        self.problems = error.problems
        for problem in error.problems:
            where = f"{problem.line}:{problem.column}"
            path = f" {problem.path}:" if problem.path else ""
            self.add_error("pipeline", f"{where}{path} {problem.message}")
