"""Plain URI code: normalising, listing patterns and folders, reading manifests.

No transforms here (those are in read.py and watch.py): the launcher (--commit_every),
startup checks and the exporters use the same rules as the pipeline's ImageURIs.
Reading and remote listing go through Beam's `FileSystems`, so local paths and ``gs://``
work alike; local patterns and folders are listed here (`walk_local`), because Beam's local
listing drops what it cannot stat.

URIs are normalised before deduplication: a ``file://`` prefix is stripped and local paths
are made absolute and normalised (``os.path.abspath``). Remote URIs are kept as written:
object names are opaque strings (``gs://b/a//x`` and ``gs://b/a/x`` are different objects).
Relative local paths are resolved against the launching process's working directory.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import posixpath
import re
import time
from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from PIL import Image

# The Pillow formats the decoder accepts (transforms/decode.py) and their file name
# extensions, as this Pillow registers them. Names without an extension (content-
# addressed buckets) are listed too: the decoder tells images from the rest by content.
IMAGE_FORMATS = (
    "JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "JPEG2000", "AVIF", "ICO", "TGA", "PCX"
)  # fmt: skip
IMAGE_EXTENSIONS = tuple(
    sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in IMAGE_FORMATS)
)
MANIFEST_EXTENSIONS = (".txt", ".csv", ".parquet")
MANIFEST_PREFIX = "manifest:"

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_GLOB_CHARS = frozenset("*?[")


class ManifestError(ValueError):
    """A manifest that cannot be read, with the reason in the message."""


def normalize_uri(uri: str, strip: bool = True) -> str:
    """Canonical spelling of a URI or pattern (see the module docstring).

    Transforms apply it to their inputs when built, so relative paths resolve on the launching
    machine rather than on a worker. strip: drop surrounding white space (flags typed on a
    command line); manifest entries are taken exactly as written (strip=False).
    """
    if strip:
        uri = uri.strip()
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if _SCHEME.match(uri):
        return uri
    return os.path.abspath(uri)


def is_manifest(spec: str) -> bool:
    """Whether an ImageURIs input names a manifest (``manifest:PATH`` or .txt/.csv/.parquet)."""
    return spec.startswith(MANIFEST_PREFIX) or spec.lower().endswith(MANIFEST_EXTENSIONS)


def is_remote(path: str) -> bool:
    return bool(_SCHEME.match(path))


def has_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


Problems = list[tuple[str, str]]  # (URI as recorded, readable reason) of listed entries


def _match(pattern: str, problems: Problems) -> list[str]:
    if not is_remote(pattern):
        return _match_local(pattern, problems)
    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def _recursive(directory: str) -> str:
    # FileSystems' "**" crosses "/" ("*" does not): everything under the directory.
    return directory.rstrip("/") + "/**"


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """FileSystems' pattern syntax (fnmatch, "*" within one folder, "**" across folders)
    for local paths, where only "/" separates folders: Beam's own "*" also stops at "\\",
    which a POSIX file name may hold (`back\\slash.png` would not match "*")."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if i < n and pattern[i] == "*":
                out.append(".*")
                i += 1
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + (i < n and pattern[i] == "!")
            j += j < n and pattern[j] == "]"
            j = pattern.find("]", j)
            if j < 0:
                out.append("\\[")
                continue
            body = pattern[i:j].replace("\\", "\\\\").replace("[", "\\[")
            i = j + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _match_local(pattern: str, problems: Problems) -> list[str]:
    """Local files that `pattern` (a glob, a folder/** or an exact path) names.

    Beam's local listing (os.walk, then a stat per file) drops every entry it cannot stat
    (dangling links, link loops, paths longer than PATH_MAX) and every folder it cannot
    read, and does not enter linked folders. Here every non-folder entry is listed by name
    (reading it later gives the reason it fails: see `read_error_reason`), linked folders
    are entered, and folders that cannot be listed go to `problems`.
    """
    if not has_glob(pattern):
        return [pattern] if os.path.lexists(pattern) and not os.path.isdir(pattern) else []
    static = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    root = static[: static.rfind("/")] or "/"
    if not os.path.isdir(root):
        return []
    regex = _glob_regex(pattern)
    return [p for p in walk_local(root, problems) if regex.match(p)]


def walk_local(root: str, problems: Problems) -> list[str]:
    """Every non-folder entry under the local folder `root`, recursively, linked folders
    entered (a link back to an enclosing folder is a problem, not a loop).

    Walks with folder file descriptors, so paths longer than PATH_MAX are listed too.
    """
    found: list[str] = []
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        _problem(problems, root, f"cannot list folder: {read_error_reason(e)}")
        return found
    try:
        st = os.fstat(fd)
        _walk(fd, root.rstrip("/") or "", {(st.st_dev, st.st_ino)}, found, problems)
    finally:
        os.close(fd)
    return found


def _walk(dir_fd: int, path: str, ancestors: set, found: list[str], problems: Problems) -> None:
    try:
        with os.scandir(dir_fd) as it:
            names = sorted(e.name for e in it)
    except OSError as e:
        _problem(problems, path or "/", f"cannot list folder: {read_error_reason(e)}")
        return
    for name in names:
        full = f"{path}/{name}"
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ENOENT, errno.ELOOP, errno.ENAMETOOLONG):
                found.append(full)  # a file, or a link that cannot be followed: read says why
            else:
                _problem(problems, full, f"cannot list folder: {read_error_reason(e)}")
            continue
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                _problem(
                    problems,
                    full,
                    "unreadable link: symbolic link loop (a link to a folder that holds it)",
                )
                continue
            _walk(fd, full, ancestors | {key}, found, problems)
        finally:
            os.close(fd)


def _problem(problems: Problems, path: str, reason: str) -> None:
    # Under a folder whose name is not UTF-8, the path and the reason hold its bytes too.
    problems.append((escaped_name(path), escaped_name(reason)))


def _not_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def escaped_name(path: str) -> str:
    """`path` as valid UTF-8 text: bytes of a non-UTF-8 file name (which Python holds as
    lone surrogates) written as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


NOT_UTF8 = (
    "file name is not valid UTF-8 (its bytes shown as \\xNN): a URI in the tables cannot "
    "hold it; rename the file"
)


def match_pattern(
    pattern: str,
    extensions: Sequence[str],
    skipped: list[str] | None = None,
    problems: Problems | None = None,
) -> tuple[list[str], str | None]:
    """Image paths that `pattern` names, and the reason when it names none.

    A glob keeps the matches ending in one of `extensions` (case-insensitive) or with no
    extension (`is_image_name`); the other matches are appended to `skipped`. A directory
    (local, or a remote prefix ending in "/" or with no object of that exact name) means
    every image under it, recursively. An existing file named exactly is kept whatever its
    extension: it was asked for by name (decoding rejects it if it is not an image).
    Entries that are listed but cannot be mined go to `problems` as (URI, reason): folders
    that cannot be listed, links to an enclosing folder, names that are not UTF-8.
    """
    problems = [] if problems is None else problems
    before = len(problems)
    if not has_glob(pattern):
        is_dir = pattern.endswith("/") or (not is_remote(pattern) and os.path.isdir(pattern))
        if not is_dir:
            exact = _match(pattern, problems)
            if exact:
                return _utf8_only(exact, problems), None
        paths = _match(_recursive(pattern), problems)
        if not paths and len(problems) == before:
            what = "no files under directory" if is_dir else "no such file or directory:"
            return [], f"{what} {pattern}"
    else:
        paths = _match(pattern, problems)
    images = sorted(p for p in paths if is_image_name(p, extensions))
    if skipped is not None and len(images) < len(paths):
        chosen = set(images)
        skipped.extend(sorted(p for p in paths if p not in chosen))
    if images or len(problems) > before:
        return _utf8_only(images, problems), None
    if not paths:
        return [], f"no files match {pattern}"
    return [], (
        f"no image files match {pattern}: {len(paths)} file(s) matched, "
        f"none ending in {'/'.join(extensions)} (see --extensions)"
    )


def _utf8_only(paths: list[str], problems: Problems) -> list[str]:
    # Beam's str coder, Parquet and the URI columns need UTF-8: such a name becomes an
    # error row with its bytes escaped, never a crashed run.
    bad = [p for p in paths if _not_utf8(p)]
    problems.extend((escaped_name(p), NOT_UTF8) for p in bad)
    return [p for p in paths if not _not_utf8(p)] if bad else paths


def read_error_reason(e: BaseException) -> str:
    """Readable reason for an exception raised opening, reading or listing a file."""
    # BeamIOError wraps the real exception per path (a match wraps a list error that wraps
    # the client's): describe the innermost one.
    details = getattr(e, "exception_details", None)
    while isinstance(details, dict) and details:
        e = next(iter(details.values()))
        details = getattr(e, "exception_details", None)
    code = getattr(e, "code", None)  # google.api_core errors carry the HTTP status
    filename = getattr(e, "filename", None)
    if getattr(e, "errno", None) == errno.ELOOP:
        return "unreadable link: symbolic link loop"
    if getattr(e, "errno", None) == errno.ENAMETOOLONG:
        return "path too long for this OS (PATH_MAX/NAME_MAX)"
    if isinstance(e, FileNotFoundError) and isinstance(filename, str) and os.path.islink(filename):
        return f"unreadable link: dangling symbolic link (to {os.readlink(filename)})"
    if isinstance(e, FileNotFoundError) or code == 404:
        return "file not found"
    if isinstance(e, PermissionError) or code == 403:
        return "permission denied"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# How long a startup check waits for the GCS endpoint to answer at all, and at most per
# attempt. The client's own retries (google-cloud-storage's DEFAULT_RETRY: 120 s, plus
# Beam's credential lookup) left an unreachable endpoint silent for ~170 s.
GCS_ANSWER_SECONDS = 20.0
GCS_ATTEMPT_SECONDS = 5.0
GCS_ENDPOINT = "https://storage.googleapis.com"


def gcs_endpoint() -> str:
    """The endpoint google-cloud-storage talks to: $STORAGE_EMULATOR_HOST (scheme
    included, as the client takes it), $API_ENDPOINT_OVERRIDE, or Google's."""
    for var in ("STORAGE_EMULATOR_HOST", "API_ENDPOINT_OVERRIDE"):
        if os.environ.get(var):
            value = os.environ[var]
            return value if "://" in value else f"http://{value}"
    return GCS_ENDPOINT


def endpoint_problem(seconds: float | None = None) -> str | None:
    """Why the GCS endpoint does not answer HTTP within `seconds` (default
    GCS_ANSWER_SECONDS), or None once it answers anything (any status: credentials and
    buckets are checked after). Retries with backoff until then; a refused connection
    three times running is final sooner (nothing listens there)."""
    import requests  # google-cloud-storage's transport: the same proxies and certificates

    seconds = GCS_ANSWER_SECONDS if seconds is None else seconds
    endpoint = gcs_endpoint()
    start = time.monotonic()
    deadline, pause, refused, reason = start + seconds, 0.25, 0, "no attempt"
    while True:
        left = deadline - time.monotonic()
        try:
            requests.get(endpoint, timeout=max(0.1, min(GCS_ATTEMPT_SECONDS, left)))
            return None
        except requests.ConnectionError as e:
            refused = refused + 1 if "refused" in str(e).lower() else 0
            reason = "connection refused" if refused else f"cannot connect: {_first_line(e)}"
        except requests.Timeout:
            refused, reason = 0, f"no answer within {GCS_ATTEMPT_SECONDS:g} s"
        except requests.RequestException as e:
            refused, reason = 0, _first_line(e)
        if refused >= 3 or time.monotonic() + pause >= deadline:
            break
        time.sleep(pause)  # backoff between attempts, not a wait for a condition
        pause = min(pause * 2, 4.0)
    where = " (from STORAGE_EMULATOR_HOST)" if os.environ.get("STORAGE_EMULATOR_HOST") else ""
    return (
        f"the GCS endpoint {endpoint}{where} does not answer ({reason}; gave up after "
        f"{time.monotonic() - start:.0f} s)"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def location_problem(uri: str) -> str | None:
    """Why the bucket of remote `uri` cannot be listed (missing, no access), or None.

    Local paths and reachable buckets give None. Lists at most one object under the static
    part of `uri` (before any glob), so it is cheap on a bucket of any size; meant for a
    check at startup, so that a missing bucket fails the run at once with a clear message.
    """
    if not is_remote(uri):
        return None
    scheme, rest = uri.split("://", 1)
    bucket = rest.split("/", 1)[0]
    static = re.split(r"[*?\[]", uri, maxsplit=1)[0]
    probe = static[: static.rfind("/") + 1] if "/" in rest else f"{scheme}://{bucket}/"
    try:
        FileSystems.match([probe + "*"], limits=[1])
    except Exception as e:
        reason = read_error_reason(e)
        if reason == "file not found":  # listing objects is 404 only without the bucket
            return f"bucket {scheme}://{bucket} does not exist"
        if reason == "permission denied":
            return f"no permission to list {scheme}://{bucket}"
        return f"cannot list {probe}: {reason}"
    return None


def resolve_entry(entry: str, base_dir: str) -> str:
    """`entry` from a manifest in `base_dir`, exactly as written (a name may begin or end
    with spaces), made absolute (relative to the manifest)."""
    if entry.startswith("file://"):
        entry = entry[len("file://") :]
    if is_remote(entry) or os.path.isabs(entry):
        return normalize_uri(entry, strip=False)
    if is_remote(base_dir):
        scheme, rest = base_dir.split("://", 1)
        bucket, _, prefix = rest.partition("/")
        # The leading "/" makes ".." stop at the bucket, as it stops at a filesystem's root.
        return f"{scheme}://{bucket}{posixpath.normpath(posixpath.join('/', prefix, entry))}"
    return normalize_uri(os.path.join(base_dir, entry), strip=False)


def _base_dir(path: str) -> str:
    if is_remote(path):
        return path.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def read_manifest(path: str, column: str | None = None) -> list[str]:
    """URIs listed in a manifest, resolved against its directory, in file order.

    .csv: header row; `column` (default "uri" if present, else the first column).
    .parquet: string column `column` (default "uri"). Anything else: text, one URI a line
    exactly as written (spaces and a leading "#" are part of the name: there are no
    comments), lines ending in LF or CRLF; empty lines and empty values are skipped.
    Raises ManifestError (missing file, missing column, no URIs at all, unreadable file).
    """
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read()
    except Exception as e:
        raise ManifestError(f"cannot read manifest {path}: {read_error_reason(e)}") from e
    lower = path.lower()
    if lower.endswith(".csv"):
        entries = _csv_entries(data, path, column)
    elif lower.endswith((".parquet", ".pq")):
        entries = _parquet_entries(data, path, column or "uri")
    else:
        # Not splitlines(): it also splits at characters a file name may hold (\x1c, ...).
        entries = [line.removesuffix("\r") for line in _text(data, path).split("\n")]
    base = _base_dir(path)
    uris = [resolve_entry(e, base) for e in entries if e]
    if not uris:
        raise ManifestError(f"manifest {path} lists no URIs")
    return uris


def _text(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(f"manifest {path} is not UTF-8 text ({e})") from e


def _csv_entries(data: bytes, path: str, column: str | None) -> list[str]:
    rows = [r for r in csv.reader(io.StringIO(_text(data, path), newline="")) if r]
    if not rows:
        raise ManifestError(f"manifest {path} lists no URIs (empty CSV)")
    header = [h.strip() for h in rows[0]]
    name = column if column is not None else ("uri" if "uri" in header else header[0])
    if name not in header:
        raise ManifestError(f"manifest {path} has no column {name!r} (columns: {header})")
    k = header.index(name)
    return [r[k] for r in rows[1:] if k < len(r)]


def _parquet_entries(data: bytes, path: str, column: str) -> list[str]:
    try:
        file = pq.ParquetFile(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise ManifestError(f"manifest {path} is not a readable Parquet file ({e})") from e
    schema = file.schema_arrow
    if column not in schema.names:
        raise ManifestError(f"manifest {path} has no column {column!r} (columns: {schema.names})")
    type_ = schema.field(column).type
    if not (pa.types.is_string(type_) or pa.types.is_large_string(type_)):
        raise ManifestError(f"manifest {path}: column {column!r} is {type_}, expected string")
    values = file.read(columns=[column]).column(column).to_pylist()
    return [v for v in values if v is not None]


def as_list(values: Iterable[str] | str, what: str) -> list[str]:
    # A bare string would be iterated character by character.
    if isinstance(values, str):
        raise TypeError(f"{what} must be a list of strings, not a str: pass [{values!r}]")
    values = list(values)
    if not values:
        raise ValueError(f"{what} must not be empty")
    if any(not isinstance(v, str) or not v.strip() for v in values):
        # "" would resolve to the working directory and mine everything under it.
        raise ValueError(f"{what} must be non-empty strings, got {values!r}")
    return values


def list_image_uris(
    inputs: list[str],
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    column: str | None = None,
    skipped: list[str] | None = None,
    problems: Problems | None = None,
) -> tuple[list[str], list[str]]:
    """ImageURIs on the launching machine: (sorted distinct URIs, inputs that yielded none).

    The same rules as ImageURIs; an input whose listing or manifest fails is returned in
    the second list instead of raising, for a pipeline to report as ImageURIs does.
    Listed entries that cannot be mined go to `problems` (see match_pattern).
    """
    found: set[str] = set()
    failed: list[str] = []
    for spec in as_list(inputs, "inputs"):
        try:
            if is_manifest(spec):
                uris = read_manifest(normalize_uri(spec.removeprefix(MANIFEST_PREFIX)), column)
            else:
                paths, reason = match_pattern(normalize_uri(spec), extensions, skipped, problems)
                if reason is not None:
                    failed.append(spec)
                    continue
                uris = [normalize_uri(p) for p in paths]
        except Exception:  # ManifestError, a listing error: the pipeline reports why
            failed.append(spec)
            continue
        found.update(uris)
    return sorted(found), failed


def watch_pattern(spec: str) -> str:
    """The FileSystems pattern that watching `spec` polls: a glob as written, a folder
    (no glob characters) recursively."""
    spec = normalize_uri(spec)
    return spec if has_glob(spec) else spec.rstrip("/") + "/**"


def is_image_name(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    """Whether `name` ends in one of `extensions` (case-insensitive), or has no extension
    at all (content-addressed objects: decoding tells whether it is an image)."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return "." not in base.lstrip(".") or base.lower().endswith(
        tuple(e.lower() for e in extensions)
    )
