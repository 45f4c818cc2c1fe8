"""Building rtml's container images without a registry or a Docker engine.

A base image is made from Debian's own packages (``mmdebstrap`` with the host's apt sources, then
``buildah from scratch``), and the Containerfiles are built on it with ``buildah bud --layers``.
Everything lives under ``$RTML_CACHE_DIR/images`` (else ``~/.cache/rtml/images``): the base keyed
by the hash of its recipe and the apt sources, buildah's storage (so its layer cache survives
fresh clones), and one OCI archive per image for containerd to import. See docs/images.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from rtml.dev.errors import DevError
from rtml.dev.process import log_tail
from rtml.dev.tools import build_lock, cache_root

Progress = Callable[[str], None]

IMAGE_NAMES = ("runtime", "operator", "redis")
# Debian release of the base and the packages in it; bump BASE_RECIPE when the way the base is
# made changes, so a cached base is rebuilt.
DEBIAN_RELEASE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_RECIPE = "1"
APT_SOURCES_CANDIDATES = (
    Path("/etc/apt/sources.list.d/debian.sources"),
    Path("/etc/apt/sources.list"),
)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
REDIS_CONTAINERFILE = Path(__file__).resolve().parent / "containerfiles" / "redis" / "Containerfile"
PAUSE_CONTAINERFILE = Path(__file__).resolve().parent / "containerfiles" / "pause" / "Containerfile"
PAUSE_REF = "localhost/rtml-pause:3.10"
# Podman's defaults exceed what some machines allow (setrlimit fails); these fit under them.
DEFAULT_ULIMITS = ("nofile=20000:20000", "nproc=32768:32768")
# Debian package that provides each command, for the error message when one is missing.
_PACKAGE_OF = {"mmdebstrap": "mmdebstrap", "buildah": "buildah", "podman": "podman", "runc": "runc"}


class ImagesError(DevError):
    """An image could not be built or inspected."""


@dataclass(frozen=True)
class BuiltImage:
    """One image in the local storage and its OCI archive."""

    name: str
    ref: str
    image_id: str
    unpacked_bytes: int
    archive: Path
    archive_bytes: int


def images_dir() -> Path:
    """``<cache>/images``: the base tarballs, buildah's storage and the OCI archives."""
    return cache_root() / "images"


def container_env(directory: Path | None = None) -> dict[str, str]:
    """The environment for buildah and podman to keep all of their state under ``directory``
    (default :func:`images_dir`): a storage.conf (overlay driver) and a containers.conf
    (runc, cgroupfs, ulimits this machine allows) written there on first use."""
    root = (directory or images_dir()).resolve()
    storage_conf = root / "storage.conf"
    containers_conf = root / "containers.conf"
    storage = (
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{root / "storage"}"\n'
        f'runroot = "{root / "run"}"\n'
    )
    ulimits = ", ".join(f'"{u}"' for u in DEFAULT_ULIMITS)
    containers = (
        "[containers]\n"
        f"default_ulimits = [{ulimits}]\n"
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{root / "run" / "events.log"}"\n'
        f'tmp_dir = "{root / "run" / "libpod"}"\n'
        f'volume_path = "{root / "storage" / "volumes"}"\n'
    )
    root.mkdir(parents=True, exist_ok=True)
    for path, text in ((storage_conf, storage), (containers_conf, containers)):
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(storage_conf),
        "CONTAINERS_CONF": str(containers_conf),
        "BUILDAH_ISOLATION": "chroot",
    }


# What buildah and podman create on the host even with their storage elsewhere (the blob-info
# cache, the network run directory, conmon's and the containers' cgroup parent), and which files
# may be in them for the clean-up to remove them.
HOST_LEFTOVERS = (
    (Path("/var/lib/containers"), {"cache", "cache/blob-info-cache-v1.boltdb"}),
    (Path("/run/containers"), {"networks"}),
    (Path("/run/libpod"), None),
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "libpod_parent"


def _cgroup_parents() -> list[Path]:
    return sorted(CGROUP_ROOT.glob(f"*/{CGROUP_PARENT}")) + sorted(CGROUP_ROOT.glob(CGROUP_PARENT))


@contextlib.contextmanager
def host_leftovers_removed() -> Iterator[None]:
    """Remove what buildah and podman left on the host during the block, if it was not there
    before and holds nothing else: /var/lib/containers (only their blob-info cache),
    /run/containers, /run/libpod, and empty ``libpod_parent`` cgroups (never one with a process
    in it). Image storage itself is under the cache, not here."""
    existed = {path for path, _ in HOST_LEFTOVERS if path.exists()}
    cgroups_before = set(_cgroup_parents())
    try:
        yield
    finally:
        for path, allowed in HOST_LEFTOVERS:
            if path in existed or not path.is_dir():
                continue
            content = {str(p.relative_to(path)) for p in path.rglob("*")}
            if allowed is None or content <= allowed:
                shutil.rmtree(path, ignore_errors=True)
        for parent in set(_cgroup_parents()) - cgroups_before:
            # Children first; rmdir of a cgroup fails while a process is in it, so nothing
            # running is touched.
            for folder, _dirs, _files in os.walk(parent, topdown=False):
                with contextlib.suppress(OSError):
                    Path(folder).rmdir()


def require_commands(*names: str) -> dict[str, str]:
    """The paths of ``names``, or an error naming the Debian packages to install."""
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        packages = " ".join(_PACKAGE_OF.get(name, name) for name in missing)
        raise ImagesError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; rtml "
            f"builds its images with Debian's packages: apt-get install {packages}"
        )
    return {name: path for name, path in found.items() if path is not None}


@dataclass(frozen=True)
class Project:
    """The checkout the images are built from."""

    context: Path
    version: str
    source: str


def read_project(context: Path) -> Project:
    """Check that ``context`` is an rtml checkout and read the image version from the chart's
    appVersion (which must equal the pyproject version)."""
    context = context.resolve()
    pyproject = context / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
    except FileNotFoundError as error:
        raise ImagesError(
            f"{context} has no pyproject.toml; run this from the rtml checkout or pass "
            "--context with its path."
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ImagesError(f"{pyproject} is not valid TOML: {error}") from error
    if project.get("name") != "rtml":
        raise ImagesError(
            f"{pyproject} is not rtml's (its project name is {project.get('name')!r}); pass "
            "--context with the path of the rtml checkout."
        )
    chart = context / "charts" / "rtml" / "Chart.yaml"
    try:
        app_version = str(yaml.safe_load(chart.read_text())["appVersion"])
    except (OSError, KeyError, TypeError, yaml.YAMLError) as error:
        raise ImagesError(f"Could not read appVersion from {chart}: {error}") from error
    if app_version != project.get("version"):
        raise ImagesError(
            f"The chart's appVersion ({app_version}, {chart}) differs from the package version "
            f"({project.get('version')}, {pyproject}); the images are tagged with appVersion, "
            "so make them equal."
        )
    return Project(context=context, version=app_version, source=_git_remote(context))


def _git_remote(context: Path) -> str:
    git = shutil.which("git")
    if git is None:
        return ""
    result = subprocess.run(
        [git, "-C", str(context), "remote", "get-url", "origin"],
        capture_output=True,
        text=True,
        check=False,
    )
    url = result.stdout.strip()
    return url if result.returncode == 0 and "://" in url else ""


def apt_sources() -> Path:
    """The host's apt sources file (deb822 first), which the base is bootstrapped from and keeps
    (so ``apt-get`` works in builds on it)."""
    for path in APT_SOURCES_CANDIDATES:
        if path.is_file() and path.stat().st_size > 0:
            return path
    raise ImagesError(
        "Found no apt sources file ("
        + ", ".join(str(p) for p in APT_SOURCES_CANDIDATES)
        + "); the base image is bootstrapped from the host's Debian mirrors."
    )


def base_command(sources: Path, output: Path) -> list[str]:
    """The mmdebstrap command that makes the base root filesystem."""
    return [
        "mmdebstrap",
        "--variant=minbase",
        "--include=" + ",".join(BASE_PACKAGES),
        DEBIAN_RELEASE,
        str(output),
        str(sources),
    ]


def base_ref(sources: Path) -> str:
    """``localhost/rtml-base:<hash>``: the hash of the recipe and the apt sources' content."""
    digest = hashlib.sha256()
    digest.update(" ".join(base_command(Path("SOURCES"), Path("OUT"))).encode())
    digest.update(BASE_RECIPE.encode())
    digest.update(sources.read_bytes())
    return f"localhost/rtml-base:{digest.hexdigest()[:16]}"


class Builder:
    """buildah (and podman for inspection) with their state under one directory."""

    def __init__(self, directory: Path, progress: Progress) -> None:
        self.directory = directory
        self.progress = progress
        self.env = container_env(directory)
        self.logs = directory / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def run(self, argv: Sequence[str], what: str, log_name: str) -> str:
        """Run ``argv``; its output goes to a log file, whose tail is in the error."""
        log_file = self.logs / f"{log_name}.log"
        with log_file.open("wb") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            result = subprocess.run(
                list(argv), env=self.env, stdout=out, stderr=subprocess.STDOUT, check=False
            )
        if result.returncode != 0:
            raise ImagesError(
                f"{what} failed ({argv[0]} exited with status {result.returncode}); the last "
                f"lines of {log_file}:\n{log_tail(log_file)}"
            )
        return log_file.read_text(errors="replace")

    def capture(self, argv: Sequence[str], what: str) -> str:
        result = subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ImagesError(
                f"{what} failed ({argv[0]} exited with status {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip() or 'no output'}"
            )
        return result.stdout

    def image_id(self, ref: str) -> str | None:
        """The ID of ``ref`` in the storage, or None."""
        result = subprocess.run(
            ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        image_id = result.stdout.strip()
        return image_id if result.returncode == 0 and image_id else None

    def unpacked_size(self, ref: str) -> int:
        out = self.capture(
            ["podman", "image", "inspect", "--format", "{{.Size}}", ref],
            f"Reading the size of {ref}",
        )
        return int(out.strip())

    @contextlib.contextmanager
    def working_container(self, image: str) -> Iterator[str]:
        """A buildah working container from ``image``, always removed afterwards."""
        name = self.capture(["buildah", "from", "--pull=never", image], f"Using {image}").strip()
        try:
            yield name
        finally:
            subprocess.run(["buildah", "rm", name], env=self.env, capture_output=True, check=False)


def ensure_base(builder: Builder) -> str:
    """Build the Debian base image unless the storage already has it; return its reference."""
    sources = apt_sources()
    ref = base_ref(sources)
    if builder.image_id(ref) is not None:
        builder.progress(f"images: base {ref} cached")
        return ref
    require_commands("mmdebstrap")
    builder.progress(
        f"images: bootstrapping the {DEBIAN_RELEASE} base ({', '.join(BASE_PACKAGES)}) with "
        f"mmdebstrap from {sources} (about a minute)..."
    )
    started = time.monotonic()
    tarball = builder.directory / f"base-{ref.rsplit(':', 1)[1]}.tar"
    partial = tarball.with_suffix(".partial.tar")
    partial.unlink(missing_ok=True)
    try:
        builder.run(base_command(sources, partial), "Bootstrapping the base with mmdebstrap",
                    "base-mmdebstrap")  # fmt: skip
        with builder.working_container("scratch") as container:
            builder.run(["buildah", "add", container, str(partial), "/"],
                        "Adding the base root filesystem", "base-add")  # fmt: skip
            builder.run(
                [
                    "buildah", "config",
                    "--env", "LANG=C.UTF-8",
                    "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--cmd", "/bin/bash",
                    "--label", f"org.opencontainers.image.description=Debian {DEBIAN_RELEASE} "
                    f"minbase with {' '.join(BASE_PACKAGES)} (rtml local base)",
                    container,
                ],
                "Configuring the base image",
                "base-config",
            )  # fmt: skip
            builder.run(["buildah", "commit", "--rm", container, ref],
                        "Committing the base image", "base-commit")  # fmt: skip
    finally:
        partial.unlink(missing_ok=True)
    builder.progress(f"images: built base {ref} in {time.monotonic() - started:.0f}s")
    return ref


def _build(
    builder: Builder,
    name: str,
    containerfile: Path,
    context: Path,
    ref: str,
    base: str,
    build_args: dict[str, str],
) -> None:
    argv = [
        "buildah", "bud",
        "--isolation", "chroot",
        "--layers",
        "--pull=never",
        "--build-arg", f"BASE={base}",
        "-f", str(containerfile),
        "-t", ref,
    ]  # fmt: skip
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    ignore = containerfile.with_name(containerfile.name + ".dockerignore")
    if ignore.is_file():
        argv += ["--ignorefile", str(ignore)]
    if HOST_CA_BUNDLE.is_file():
        argv += ["--secret", f"id=pipca,src={HOST_CA_BUNDLE}"]
    argv.append(str(context))
    started = time.monotonic()
    output = builder.run(argv, f"Building {ref} from {containerfile}", f"build-{name}")
    cached = output.count("Using cache")
    builder.progress(
        f"images: {name}: {ref} ready in {time.monotonic() - started:.1f}s"
        + (f" ({cached} cached steps)" if cached else "")
    )


def _redis_version(builder: Builder, ref: str) -> str:
    """redis-server's Debian version in ``ref``, as major.minor (``7.0``)."""
    with builder.working_container(ref) as container:
        version = builder.capture(
            ["buildah", "run", "--isolation", "chroot", container, "--",
             "dpkg-query", "-W", "-f", "${Version}", "redis-server"],
            "Reading redis-server's version",
        ).strip()  # fmt: skip
    upstream = version.split(":", 1)[-1].split("-", 1)[0].split("+", 1)[0]
    parts = upstream.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        raise ImagesError(f"Cannot read a major.minor version from redis-server {version!r}.")
    return ".".join(parts[:2])


def _export(builder: Builder, name: str, ref: str) -> BuiltImage:
    """Write ``ref`` as an OCI archive unless the archive already holds this image ID."""
    image_id = builder.image_id(ref)
    if image_id is None:
        raise ImagesError(f"{ref} is not in the image storage after its build.")
    repo, tag = ref.rsplit(":", 1)
    archive = builder.directory / f"{repo.rsplit('/', 1)[1]}-{tag}.tar"
    stamp = archive.with_name(archive.name + ".id")
    current = stamp.read_text().strip() if stamp.is_file() else ""
    if not (archive.is_file() and current == image_id):
        started = time.monotonic()
        partial = archive.with_name(archive.name + ".partial")
        partial.unlink(missing_ok=True)
        stamp.unlink(missing_ok=True)
        try:
            builder.run(["buildah", "push", ref, f"oci-archive:{partial}:{ref}"],
                        f"Exporting {ref} as an OCI archive", f"push-{name}")  # fmt: skip
            partial.replace(archive)
        finally:
            partial.unlink(missing_ok=True)
        stamp.write_text(image_id + "\n")
        builder.progress(
            f"images: {name}: exported {archive.name} in {time.monotonic() - started:.0f}s"
        )
    return BuiltImage(
        name=name,
        ref=ref,
        image_id=image_id,
        unpacked_bytes=builder.unpacked_size(ref),
        archive=archive,
        archive_bytes=archive.stat().st_size,
    )


def image_refs(version: str, redis_version: str) -> dict[str, str]:
    """The references of the three images."""
    return {
        "runtime": f"localhost/rtml-runtime:{version}",
        "operator": f"localhost/rtml-operator:{version}",
        "redis": f"localhost/rtml-redis:{redis_version}",
    }


def build_images(
    context: Path,
    only: Sequence[str] = IMAGE_NAMES,
    progress: Progress = print,
    directory: Path | None = None,
) -> list[BuiltImage]:
    """Build (or reuse) the base and the images named in ``only``; export each to an OCI archive.

    ``context`` is the rtml checkout (the build context of the runtime and operator images)."""
    unknown = sorted(set(only) - set(IMAGE_NAMES))
    if unknown:
        raise ImagesError(f"Unknown image {', '.join(unknown)}; choose from {IMAGE_NAMES}.")
    project = read_project(context)
    require_commands("buildah", "podman")
    directory = (directory or images_dir()).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    builder = Builder(directory, progress)
    built: list[BuiltImage] = []
    with build_lock(directory / ".build.lock"), host_leftovers_removed():
        base = ensure_base(builder)
        args = {"VERSION": project.version, "SOURCE": project.source}
        for name in IMAGE_NAMES:
            if name not in only:
                continue
            if name == "redis":
                staging = "localhost/rtml-redis:building"
                progress("images: redis: building from Debian's redis-server package...")
                _build(builder, name, REDIS_CONTAINERFILE, REDIS_CONTAINERFILE.parent,
                       staging, base, {})  # fmt: skip
                ref = image_refs(project.version, _redis_version(builder, staging))["redis"]
                builder.capture(["buildah", "tag", staging, ref], f"Tagging {ref}")
                builder.capture(["buildah", "rmi", staging], f"Untagging {staging}")
                progress(f"images: redis: tagged {ref} (Debian's redis-server)")
            else:
                ref = image_refs(project.version, "")[name]
                folder = "bentos" if name == "runtime" else "operator"
                progress(f"images: {name}: building {ref} from {folder}/Containerfile...")
                _build(builder, name, project.context / folder / "Containerfile",
                       project.context, ref, base, args)  # fmt: skip
            built.append(_export(builder, name, ref))
    return built


def build_pause_image(
    pause_binary: Path, progress: Progress = print, directory: Path | None = None
) -> BuiltImage:
    """The node's sandbox image from the static `pause` binary (cached like the others)."""
    require_commands("buildah", "podman")
    directory = (directory or images_dir()).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    builder = Builder(directory, progress)
    context = directory / "pause-context"
    context.mkdir(exist_ok=True)
    shutil.copy2(pause_binary, context / "pause")
    with build_lock(directory / ".build.lock"), host_leftovers_removed():
        _build(builder, "pause", PAUSE_CONTAINERFILE, context, PAUSE_REF, "scratch", {})
        return _export(builder, "pause", PAUSE_REF)


def built_refs(version: str, directory: Path | None = None) -> dict[str, str]:
    """The references of the images already in the storage (no build), by name."""
    builder = Builder((directory or images_dir()).resolve(), progress=lambda _m: None)
    found: dict[str, str] = {}
    for name in ("runtime", "operator"):
        ref = image_refs(version, "")[name]
        if builder.image_id(ref) is not None:
            found[name] = ref
    listing = builder.capture(["buildah", "images", "--json"], "Listing the images")
    for image in json.loads(listing or "[]"):
        for tagged in image.get("names") or []:
            if tagged.startswith("localhost/rtml-redis:") and not tagged.endswith(":building"):
                found["redis"] = tagged
    return found


def human_size(size: int) -> str:
    """Bytes as MB with one decimal (10^6), as registries and ``podman images`` print them."""
    return f"{size / 1e6:.1f} MB"


if __name__ == "__main__":  # pragma: no cover - a debugging aid: python -m rtml.dev.images
    for image in build_images(Path.cwd(), progress=lambda m: print(m, file=sys.stderr)):
        print(image.ref, human_size(image.unpacked_bytes), human_size(image.archive_bytes))
