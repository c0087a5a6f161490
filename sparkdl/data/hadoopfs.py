"""Files beside tables, on any Hadoop URI (file://, hdfs://, s3a://, plain paths), through Spark's JVM.

Only driver-side work goes through here: existence and permission checks before a long job, JSON sidecars, model
bundles and weights files copied between the driver's disk and the cluster's file system. Tables go through Spark's
DataFrame writers and their output committers.

Every call turns the Hadoop client's Java exceptions into one-line :class:`DataError` s that name the URI and the
cause (missing, permission denied as which user, name node unreachable), so a job stops before its expensive part.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

from sparkdl.errors import DataError


def is_local(uri: str | os.PathLike) -> bool:
    """A plain path or a ``file:`` URI (the driver's own disk)."""
    scheme = urllib.parse.urlsplit(str(uri)).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(uri: str | os.PathLike) -> Path:
    """``file:///x`` / ``file:/x`` / ``/x`` -> ``Path('/x')``."""
    text = str(uri)
    if text.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(text).path))
    return Path(text)


def _java_cause(exc: BaseException) -> tuple[str, str]:
    """(simple Java class name, first line of its message) of a Py4J error; ("", str) otherwise."""
    java = getattr(exc, "java_exception", None)
    if java is None:
        return "", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # RemoteException / wrapped IO errors: the innermost cause names what went wrong
    cause = java
    while cause.getCause() is not None and cause.getCause() != cause:
        cause = cause.getCause()
    name = str(cause.getClass().getSimpleName())
    message = str(cause.getMessage() or java.getMessage() or name)
    return name, message.strip().splitlines()[0].strip()


def _translate(exc: BaseException, uri: str, doing: str, user: str | None = None) -> DataError:
    name, message = _java_cause(exc)
    if name == "AccessControlException" or "Permission denied" in message:
        who = f" (Hadoop user {user!r})" if user else ""
        return DataError(f"permission denied {doing} {uri}{who}: {message}")
    if name == "FileNotFoundException":
        return DataError(f"{uri} does not exist ({message})")
    if name in ("ConnectException", "UnknownHostException", "NoRouteToHostException", "SocketTimeoutException",
                "ConnectTimeoutException"):  # fmt: skip
        return DataError(f"cannot reach the file system of {uri} ({name}: {message}); check the name node address")
    if name == "UnsupportedFileSystemException" or "No FileSystem for scheme" in message:
        return DataError(f"no Hadoop file system for {uri} ({message}); add the connector jar or fix the scheme")
    return DataError(f"{doing} {uri} failed: {name + ': ' if name else ''}{message}")


@contextmanager
def _hadoop(spark, uri: str, doing: str):
    from py4j.protocol import Py4JJavaError

    try:
        yield
    except Py4JJavaError as exc:
        raise _translate(exc, uri, doing, _user(spark)) from None


def _fs_path(spark, uri: str):
    jvm = spark.sparkContext._jvm
    with _hadoop(spark, uri, "opening"):
        path = jvm.org.apache.hadoop.fs.Path(uri)
        fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        # relative paths resolve against the file system's working directory (parents are then well defined)
        return fs, fs.makeQualified(path)


def _user(spark) -> str:
    return str(spark.sparkContext._jvm.org.apache.hadoop.security.UserGroupInformation.getCurrentUser().getShortUserName())


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def qualify(spark, uri: str) -> str:
    """The fully qualified form Spark itself reports (e.g. ``/data/x`` -> ``file:/data/x``)."""
    _fs, path = _fs_path(spark, uri)
    return str(path.toString())


def exists(spark, uri: str) -> bool:
    fs, path = _fs_path(spark, uri)
    with _hadoop(spark, uri, "looking up"):
        return bool(fs.exists(path))


def is_dir(spark, uri: str) -> bool:
    fs, path = _fs_path(spark, uri)
    with _hadoop(spark, uri, "looking up"):
        return bool(fs.exists(path) and fs.getFileStatus(path).isDirectory())


def _access(spark, fs, path, uri: str, action: str, doing: str) -> None:
    from py4j.protocol import Py4JJavaError

    if str(fs.getScheme()) == "file":
        # the OS decides on the driver's own disk (Hadoop's generic check does not know root may write anywhere)
        mode = (os.R_OK if "READ" in action else 0) | (os.W_OK if "WRITE" in action else 0)
        mode |= os.X_OK if "EXECUTE" in action else 0
        if not os.access(local_path(str(path.toUri().getPath())), mode):
            raise DataError(f"permission denied {doing} {uri} (OS user {_os_user()!r})")
        return
    FsAction = spark.sparkContext._jvm.org.apache.hadoop.fs.permission.FsAction
    try:
        fs.access(path, getattr(FsAction, action))
    except Py4JJavaError as exc:
        raise _translate(exc, uri, doing, _user(spark)) from None


def check_readable(spark, uri: str, what: str) -> None:
    """``uri`` exists and this Hadoop user may read it (and list it, for a directory)."""
    fs, path = _fs_path(spark, uri)
    with _hadoop(spark, uri, f"reading {what}"):
        if not fs.exists(path):
            raise DataError(f"{what} {uri} does not exist (or is not reachable with this Hadoop configuration)")
        directory = fs.getFileStatus(path).isDirectory()
    _access(spark, fs, path, uri, "READ_EXECUTE" if directory else "READ", f"reading {what}")


def check_writable(spark, uri: str, what: str, overwrite: bool) -> None:
    """``uri`` may be written: absent (or ``overwrite``), and its nearest existing ancestor is a writable directory."""
    fs, path = _fs_path(spark, uri)
    with _hadoop(spark, uri, f"writing {what}"):
        if fs.exists(path):
            if not overwrite:
                raise DataError(f"{what} {uri} already exists: pass --overwrite (overwrite=True) or choose another path")
            parent = path.getParent() or path
        else:
            parent = path.getParent()
            while parent is not None and not fs.exists(parent):
                parent = parent.getParent()
        if parent is None:
            return
        if not fs.getFileStatus(parent).isDirectory():
            raise DataError(f"cannot write {what} {uri}: {parent.toString()} is a file, not a directory")
    _access(spark, fs, parent, uri, "WRITE_EXECUTE", f"writing {what}")


def is_file(spark, uri: str) -> bool:
    fs, path = _fs_path(spark, uri)
    with _hadoop(spark, uri, "looking up"):
        return bool(fs.exists(path) and fs.getFileStatus(path).isFile())


def list_dir(spark, uri: str) -> list[tuple[str, bool]]:
    """(name, is_directory) of each entry of the directory ``uri``, sorted by name."""
    fs, path = _fs_path(spark, uri)
    with _hadoop(spark, uri, "listing"):
        return sorted((str(st.getPath().getName()), bool(st.isDirectory())) for st in fs.listStatus(path))


def rename(spark, src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``, which must not exist (Hadoop would move ``src`` *into* an existing directory)."""
    fs, src_path = _fs_path(spark, src)
    _fs2, dst_path = _fs_path(spark, dst)
    with _hadoop(spark, src, "renaming"):
        if fs.exists(dst_path):
            raise DataError(f"cannot rename {src} to {dst}: {dst} exists")
        if not fs.rename(src_path, dst_path):
            raise DataError(f"could not rename {src} to {dst}")


def real_uri(spark, uri: str) -> str:
    """The fully qualified URI with, on the driver's own disk, every symlink resolved (two spellings of one place
    compare equal: a relative path, ``file://``, the default file system, a symlinked directory)."""
    qualified = qualify(spark, uri).rstrip("/") or "/"
    if urllib.parse.urlsplit(qualified).scheme == "file":
        # Hadoop's Path.toString() is not percent-encoded: take the path as is (no unquoting)
        # (and no '#'/'?' parsing: those are plain characters in a file name)
        path = qualified[len("file:"):]
        if path.startswith("//"):
            path = "/" + path[2:].split("/", 1)[-1] if "/" in path[2:] else "/"
        return "file:" + os.path.realpath(path)
    return qualified


def mkdirs(spark, uri: str) -> None:
    fs, path = _fs_path(spark, uri)
    with _hadoop(spark, uri, "creating"):
        fs.mkdirs(path)


def delete(spark, uri: str) -> None:
    fs, path = _fs_path(spark, uri)
    with _hadoop(spark, uri, "deleting"):
        if fs.exists(path):
            fs.delete(path, True)


def write_bytes(spark, uri: str, data: bytes) -> None:
    fs, path = _fs_path(spark, uri)
    with _hadoop(spark, uri, "writing"):
        out = fs.create(path, True)
        try:
            out.write(bytearray(data))
        finally:
            out.close()


def read_bytes(spark, uri: str) -> bytes:
    fs, path = _fs_path(spark, uri)
    with _hadoop(spark, uri, "reading"):
        if not fs.exists(path):
            raise DataError(f"{uri} does not exist")
        stream = fs.open(path)
        try:
            return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()


def copy_to_local(spark, uri: str, dest: str | os.PathLike) -> Path:
    """Copy a file or a directory tree from ``uri`` to the local path ``dest`` (which must not exist)."""
    fs, path = _fs_path(spark, uri)
    dest = Path(dest)
    jvm = spark.sparkContext._jvm
    with _hadoop(spark, uri, "copying"):
        if not fs.exists(path):
            raise DataError(f"{uri} does not exist")
        # useRawLocalFileSystem=True: no .crc files beside the copies
        fs.copyToLocalFile(False, path, jvm.org.apache.hadoop.fs.Path(dest.resolve().as_uri()), True)
    return dest


def put_file(spark, local: str | os.PathLike, uri: str) -> None:
    """Copy one local file to ``uri`` (replaced if it exists)."""
    fs, path = _fs_path(spark, uri)
    jvm = spark.sparkContext._jvm
    with _hadoop(spark, uri, "writing"):
        fs.copyFromLocalFile(False, True, jvm.org.apache.hadoop.fs.Path(Path(local).resolve().as_uri()), path)


def read_file(spark, uri: str) -> bytes:
    """A file's bytes, through a local temporary copy (no bulk bytes over py4j)."""
    with tempfile.TemporaryDirectory(prefix="sparkdl-read-") as tmp:
        return copy_to_local(spark, uri, Path(tmp) / "file").read_bytes()


def put_dir(spark, local_dir: str | os.PathLike, uri: str, overwrite: bool) -> None:
    """Copy a local directory to ``uri`` so that it appears complete or not at all: it is written under
    ``<uri>.partial`` and renamed (atomic on HDFS; a copy-then-delete on object stores)."""
    fs, path = _fs_path(spark, uri)
    jvm = spark.sparkContext._jvm
    partial = jvm.org.apache.hadoop.fs.Path(uri.rstrip("/") + ".partial")
    with _hadoop(spark, uri, "writing"):
        if fs.exists(path):
            if not overwrite:
                raise DataError(f"{uri} already exists: pass --overwrite or choose another path")
        if fs.exists(partial):
            fs.delete(partial, True)
        fs.mkdirs(partial)
        for child in sorted(Path(local_dir).iterdir()):
            fs.copyFromLocalFile(False, True, jvm.org.apache.hadoop.fs.Path(child.resolve().as_uri()), partial)
        # the previous copy stays until the new one is complete: moved aside, the new one renamed in, then deleted
        replaced = jvm.org.apache.hadoop.fs.Path(uri.rstrip("/") + ".replaced")
        if fs.exists(path):
            if fs.exists(replaced):
                fs.delete(replaced, True)
            if not fs.rename(path, replaced):
                raise DataError(f"could not move the previous {uri} aside to {replaced.toString()}")
        if not fs.rename(partial, path):
            raise DataError(f"could not rename {partial.toString()} to {uri}")
        if fs.exists(replaced):
            fs.delete(replaced, True)


@contextmanager
def local_copy(spark, uri: str, prefix: str = "sparkdl-"):
    """A local path holding ``uri``'s content for the ``with`` block: the path itself when ``uri`` is local,
    else a temporary copy (removed afterwards). The copy keeps the file name (formats are told by suffix)."""
    if is_local(uri):
        yield local_path(uri)
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        name = Path(urllib.parse.urlsplit(uri).path.rstrip("/")).name or "content"
        yield copy_to_local(spark, uri, tmp / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sidecar_uri(table_uri: str, suffix: str) -> str:
    """``.../images.parquet`` + ``meta.json`` -> ``.../images.meta.json`` (the file lives beside the table)."""
    base = table_uri.rstrip("/")
    if base.endswith(".parquet"):
        base = base[: -len(".parquet")]
    return f"{base}.{suffix}"
