"""What one namespace's Model may ask of the cluster, decided before anything is applied. Pure.

A Model's author controls its pods' image and service account; with a shared operator those are
the two ways to run other code, or to run with other rights, than the platform team chose. The
operator-wide settings (`RTML_ALLOWED_RUNTIME_IMAGES`, `RTML_ALLOW_SERVICE_ACCOUNT_NAME`; chart
values `runtime.allowedImages`, `runtime.allowServiceAccountName`) say what is allowed; a Model
asking for more is not rolled out, and the pods already running keep serving (docs/tenancy.md).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from rtml.api.model import Model
from rtml.operator.conditions import Cond


def image_allowed(image: str, patterns: tuple[str, ...]) -> bool:
    """Whether `image` matches one of the fnmatch patterns (case-sensitive, as references are:
    `*` also crosses `/`, so a pattern names a repository with its `:` or `@`)."""
    return any(fnmatchcase(image, p) for p in patterns)


def tenancy_problem(
    model: Model, allowed_images: tuple[str, ...], allow_service_account_name: bool
) -> Cond | None:
    """Why this Model's spec may not be rolled out under the operator's tenancy settings
    (a Ready=False condition whose reason names the rule), or None when it may."""
    runtime = model.spec.runtime
    # Only an image the Model names is checked: the operator's own default is the admin's choice.
    if runtime.image is not None and not image_allowed(runtime.image, allowed_images):
        allowed = ", ".join(repr(p) for p in allowed_images) or "none"
        return Cond(
            "Ready",
            "False",
            "ImageNotAllowed",
            f"spec.runtime.image {runtime.image!r} matches none of the images this operator "
            f"allows ({allowed}); use an allowed image or remove spec.runtime.image, or have "
            "the cluster's admin add a pattern to RTML_ALLOWED_RUNTIME_IMAGES (chart value "
            "runtime.allowedImages)",
        )
    if runtime.service_account_name and not allow_service_account_name:
        return Cond(
            "Ready",
            "False",
            "ServiceAccountNotAllowed",
            f"spec.runtime.serviceAccountName is {runtime.service_account_name!r}, but this "
            "operator does not let a Model choose its pods' service account; remove it, or have "
            "the cluster's admin set RTML_ALLOW_SERVICE_ACCOUNT_NAME=true (chart value "
            "runtime.allowServiceAccountName)",
        )
    return None
