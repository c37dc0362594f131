"""Forms of the dashboard: the build filters, the "Run pipeline" form, and the forms
that make and manage projects and their members.

They only parse and check what the user typed; changing anything is the work of
builds/services.py, and the problems it finds (a pipeline's, a taken slug, the last
owner) come from it and are shown beside the field they concern.
"""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db.models import Q, QuerySet
from django.http import QueryDict

from builds import secrets, services
from builds.models import Build, Project, Role, Status, default_secret_events
from builds.pipeline import EVENTS, MAX_BYTES, PipelineError, Problem, load


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


class _Form(forms.Form):
    """Labels without Django's trailing colon, as on the dashboard's other forms."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


class _ProjectFields(_Form):
    name = forms.CharField(max_length=200, required=False, help_text="Defaults to the slug.")
    repo_url = forms.CharField(
        label="Repository URL",
        max_length=500,
        required=False,
        # Not a URLField: git@host:group/repo.git is a repository address too.
        help_text="Where the code lives, e.g. https://git.example.com/shop.git",
    )
    default_branch = forms.CharField(label="Default branch", max_length=200, initial="main")

    def clean_repo_url(self) -> str:
        url: str = self.cleaned_data["repo_url"]
        if problem := services.repo_url_problem(url):
            raise forms.ValidationError(problem)
        return url


class ProjectCreateForm(_ProjectFields):
    """A new project (services.project_create); its maker becomes its owner."""

    slug = forms.CharField(
        max_length=100,
        help_text="Letters, digits, - and _; it names the project in URLs and the API.",
    )
    field_order = ["slug", "name", "repo_url", "default_branch"]

    def clean_slug(self) -> str:
        slug: str = self.cleaned_data["slug"]
        problem = services.slug_problem(slug)
        if problem:
            raise forms.ValidationError(problem[0].upper() + problem[1:] + ".")
        return slug


class ProjectSettingsForm(_ProjectFields):
    """A project's settings, as a maintainer may change them (services.project_update)."""

    pipeline_path = forms.CharField(
        label="Pipeline file",
        max_length=200,
        help_text="The file name shown with a pipeline's problems, e.g. .goci.yml",
    )
    auto_cancel = forms.BooleanField(
        label="Cancel superseded builds",
        required=False,
        help_text="A new push to a branch, or a new commit on a pull request, cancels that "
        "branch's or pull request's unfinished builds of older commits.",
    )
    public = forms.BooleanField(
        label="Public status badge",
        required=False,
        help_text="The status badge needs no token. Builds and logs stay for members.",
    )
    pipeline = forms.CharField(
        label="Stored pipeline",
        required=False,
        strip=False,
        max_length=MAX_BYTES,
        widget=forms.Textarea(attrs={"rows": 8, "class": "code", "spellcheck": "false"}),
        help_text="What Run and schedules run when the project has no repository (YAML).",
    )

    def clean_pipeline(self) -> str:
        text: str = self.cleaned_data.get("pipeline", "")
        if text.strip():
            try:
                load(text, self.cleaned_data.get("pipeline_path") or ".goci.yml")
            except PipelineError as error:
                raise forms.ValidationError(str(error)) from error
        return text


class WriteOnlyTextarea(forms.Textarea):
    """A secret's value is never sent back to the browser, not even to the user who
    just typed it into a form with a problem."""

    def format_value(self, value: Any) -> None:
        return None


class SecretForm(_Form):
    """Set a secret of a project (builds.secrets.secret_set, which checks the rules)."""

    name = forms.CharField(
        max_length=secrets.MAX_NAME,
        help_text="A-Z, 0-9 and _, e.g. DEPLOY_TOKEN; a step asks for it with "
        "env: {TOKEN: {from_secret: deploy_token}}.",
    )
    value = forms.CharField(
        max_length=secrets.MAX_VALUE,
        required=False,
        strip=False,
        widget=WriteOnlyTextarea(attrs={"rows": 3, "autocomplete": "off", "spellcheck": "false"}),
        help_text=f"At least {secrets.MIN_VALUE} characters; it is never shown again. "
        "Leave it empty to change only the rules of an existing secret.",
    )
    events = forms.MultipleChoiceField(
        choices=[(event, event) for event in EVENTS],
        initial=default_secret_events,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="The builds that get it; pull requests only if you tick it.",
    )
    branches = forms.CharField(
        max_length=1000,
        required=False,
        help_text="Branch globs, comma-separated (e.g. main, release/*); empty: any.",
    )

    def clean_name(self) -> str:
        name: str = self.cleaned_data["name"].strip()
        try:
            return secrets.check_name(name)
        except secrets.SecretError as exc:
            raise forms.ValidationError(f"{str(exc)[:1].upper()}{str(exc)[1:]}.") from None

    def clean_branches(self) -> list[str]:
        return [b.strip() for b in self.cleaned_data["branches"].split(",") if b.strip()]


class ProjectDeleteForm(_Form):
    """Deleting takes the slug typed again: a click alone cannot lose every build."""

    confirm = forms.CharField(label="Type the project's slug to confirm", max_length=100)

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project

    def clean_confirm(self) -> str:
        typed: str = self.cleaned_data["confirm"]
        if typed != self.project.slug:
            raise forms.ValidationError(
                f"Type {self.project.slug} exactly to delete this project; nothing was deleted."
            )
        return typed


class ProjectTransferForm(_Form):
    """Make another member an owner (services.project_transfer)."""

    username = forms.ChoiceField(label="New owner")

    def __init__(self, *args: Any, candidates: list[User], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.candidates = {user.get_username(): user for user in candidates}
        self.fields["username"].choices = [  # type: ignore[attr-defined]
            ("", "Choose a member"),
            *((name, name) for name in self.candidates),
        ]

    def clean_username(self) -> User:
        return self.candidates[self.cleaned_data["username"]]


class MemberRoleForm(_Form):
    """A member's role. Every role is accepted here: whether this user may give it is
    the view's question (access.require_member_change), answered with a 403."""

    role = forms.ChoiceField(choices=Role.choices)


class MemberAddForm(MemberRoleForm):
    """Add a user, by username, with a role."""

    username = forms.CharField(max_length=150)
    field_order = ["username", "role"]

    def clean_username(self) -> User:
        username: str = self.cleaned_data["username"].strip()
        user = User.objects.filter(username=username, is_active=True).first()
        if user is None:
            raise forms.ValidationError(
                f"There is no user named {username!r}: check the spelling, or ask an "
                "administrator to create it (goci user add NAME)."
            )
        return user
