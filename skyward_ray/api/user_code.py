"""The user's own code, shipped to every node with the pool's Ray job.

Why: a node has none of the driver's files. Cloud nodes run a Python of their own; local nodes
share this interpreter but not its `sys.path` (each runs from its own machine directory). Whatever
crosses by reference (`jobs.helper`, the class of a returned dataclass, a `@ray.remote` actor, a
Tune trainable) must be importable there.

How: at pool entry every top-level module in `sys.modules` whose file is not installed (under
sysconfig's purelib/platlib/stdlib, a site-packages or dist-packages directory, or this Python's
prefix) and is not skyward_ray's own is the user's; `Image.includes` adds more. Each one's package
directory (or single `.py` file), minus the excludes, is copied to a staging directory (hard links
where possible) and handed to Ray as the job's `runtime_env["py_modules"]`: Ray zips each, stores it
once in the cluster's GCS (content-addressed) and puts it on the path of every worker. Modules then
travel by reference, so a class that comes back from a node is the driver's own class. The size is
checked here, before anything is provisioned.

`__main__` is pickled by value by cloudpickle already. A user module that is found but excluded is
registered by value instead (`register_pickle_by_value`), and so is the module of a
`@sky.function` imported only after the pool opened (see `function.py`). Staging the files for one
pool, and what that pool then ships, is `staging.py`: this module only finds them.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import shutil
import site
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from skyward_ray.errors import SpecError
from skyward_ray.planning.image import Image

#: never shipped, whatever the user asks: VCS data, caches, build output (virtualenvs, any
#: directory holding a pyvenv.cfg, are left out by the walk itself)
DEFAULT_EXCLUDES = (".git", "__pycache__", "*.pyc", "*.pyo", "build/", "dist/", "*.egg-info",
                    ".gitignore", ".rayignore")
#: skyward_ray's own packages: installed with it on local nodes, sent as `py_modules` to clouds
OWN_PACKAGES = frozenset({"skyward_ray", "node_providers", "catalog"})
MIB = 1024 * 1024


@dataclass(frozen=True)
class CodeFile:
    source: Path
    arcname: str  # path below the staging directory, starting with the top-level name
    size: int


@dataclass
class UserCode:
    """What one pool ships: top-level name → its sources, the files, and what was left out."""

    roots: dict[str, list[Path]] = field(default_factory=dict)
    files: list[CodeFile] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # the user's top-level modules dropped by excludes

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def stage(self, directory: Path) -> list[str]:
        """Copy the files below `directory` (hard links where the filesystem allows) and return the
        `py_modules` entries: one per top-level package or module."""
        for item in self.files:
            target = directory / item.arcname
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(item.source, target)
            except OSError:
                shutil.copy2(item.source, target)
        shipped = {f.arcname.split("/")[0] for f in self.files}
        return [str(directory / name) for name in sorted(shipped)]


def installed_locations() -> tuple[str, ...]:
    """Directories whose modules are installed distributions or the standard library."""
    paths = sysconfig.get_paths()
    found = {paths[key] for key in ("purelib", "platlib", "stdlib", "platstdlib") if key in paths}
    found.update(getattr(site, "getsitepackages", lambda: [])())
    found.add(getattr(site, "getusersitepackages", lambda: "")() or "")
    found.update(p for p in sys.path if os.path.basename(p.rstrip(os.sep)) in ("site-packages", "dist-packages"))
    found.update({sys.prefix, sys.exec_prefix})
    return tuple(sorted({os.path.realpath(p) for p in found if p}))


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + os.sep) for p in prefixes)


def module_sources(module: ModuleType, installed: tuple[str, ...] | None = None) -> list[Path]:
    """The user's files of a top-level module: its package directories, or its one `.py` file;
    empty when it is installed, built in, or not a plain source file."""
    installed = installed_locations() if installed is None else installed
    search = getattr(module, "__path__", None)
    if search is not None:
        # a namespace package's path can name one directory twice (sys.path holds '' and its absolute form)
        candidates = list(dict.fromkeys(os.path.realpath(p) for p in list(search) if os.path.isdir(p)))
    else:
        file = getattr(module, "__file__", None)
        candidates = [os.path.realpath(file)] if isinstance(file, str) and file.endswith(".py") else []
    return [Path(p) for p in candidates if os.path.exists(p) and not _under(p, installed)]


def discover() -> dict[str, list[Path]]:
    """Every top-level module of the user's in `sys.modules` (see the module docstring)."""
    installed = installed_locations()
    found: dict[str, list[Path]] = {}
    for name, module in list(sys.modules.items()):
        if "." in name or name in OWN_PACKAGES or name in ("__main__", "__mp_main__") or module is None:
            continue
        sources = module_sources(module, installed)
        if sources:
            found[name] = sources
    return found


def _included(entry: str) -> tuple[str, list[Path]]:
    """`Image.includes` entry → (top-level name, sources)."""
    if os.path.exists(entry):
        path = Path(os.path.realpath(entry))
        return (path.stem if path.is_file() else path.name), [path]
    top = entry.split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise SpecError(f"Image.includes: module {entry!r} cannot be found; give its directory or .py file instead")
    if spec.submodule_search_locations:
        return top, [Path(os.path.realpath(p)) for p in spec.submodule_search_locations]
    if spec.origin and spec.origin.endswith(".py"):
        return top, [Path(os.path.realpath(spec.origin))]
    raise SpecError(f"Image.includes: module {entry!r} is not Python source ({spec.origin}); it cannot be shipped")


def excluded(relative: str, is_dir: bool, absolute: str, patterns: tuple[str, ...]) -> bool:
    """Does a glob exclude match? Without a '/', a pattern matches the name at any depth; with one,
    `relative` (from the shipped package's parent: "jobs/data/x.csv"); a leading '/' matches the
    absolute path. A trailing '/' matches directories only."""
    name = relative.rsplit("/", 1)[-1]
    for raw in patterns:
        if raw.endswith("/") and not is_dir:
            continue
        pattern = raw.rstrip("/")
        if pattern.startswith("/"):
            hit = fnmatch.fnmatchcase(absolute, pattern)
        elif "/" in pattern:
            hit = fnmatch.fnmatchcase(relative, pattern)
        else:
            hit = fnmatch.fnmatchcase(name, pattern)
        if hit:
            return True
    return False


def _walk(name: str, source: Path, patterns: tuple[str, ...]) -> list[CodeFile]:
    if source.is_file():
        return [CodeFile(source, source.name, source.stat().st_size)]
    files = []
    for directory, dirnames, filenames in os.walk(source):
        below = os.path.relpath(directory, source)
        prefix = name if below == "." else f"{name}/{below.replace(os.sep, '/')}"
        keep = []
        for sub in sorted(dirnames):
            full = os.path.join(directory, sub)
            if os.path.exists(os.path.join(full, "pyvenv.cfg")):  # a virtualenv
                continue
            if not excluded(f"{prefix}/{sub}", True, full, patterns):
                keep.append(sub)
        dirnames[:] = keep
        for filename in sorted(filenames):
            full = os.path.join(directory, filename)
            if os.path.isfile(full) and not excluded(f"{prefix}/{filename}", False, full, patterns):
                files.append(CodeFile(Path(full), f"{prefix}/{filename}", os.path.getsize(full)))
    return files


def collect(image: Image) -> UserCode:
    """What `image` ships: the user's modules found now plus `image.includes`, minus the excludes.
    Raises `SpecError` (before anything is provisioned) when it weighs more than `max_code_mib`."""
    patterns = DEFAULT_EXCLUDES + tuple(image.excludes)
    code = UserCode()
    wanted = discover()
    for entry in image.includes:
        name, sources = _included(entry)
        if name in wanted and wanted[name] != sources:
            raise SpecError(f"Image.includes: {entry!r} ships as {name!r}, but {name!r} is already "
                            f"{', '.join(map(str, wanted[name]))}; rename one or exclude it")
        wanted[name] = sources
    for name, sources in sorted(wanted.items()):
        is_dir = sources[0].is_dir()
        if excluded(name, is_dir, str(sources[0]), patterns) or \
                excluded(sources[0].name, is_dir, str(sources[0]), patterns):
            code.excluded.append(name)
            continue
        files = [f for source in sources for f in _walk(name, source, patterns)]
        if not files:  # everything in it excluded: it cannot be imported there, so it goes by value
            code.excluded.append(name)
            continue
        code.roots[name] = sources
        code.files.extend(files)
    _check_size(code, image)
    return code


def _check_size(code: UserCode, image: Image) -> None:
    limit = image.max_code_mib * MIB
    if code.total_bytes <= limit:
        return
    largest = sorted(code.files, key=lambda f: f.size, reverse=True)[:5]
    listing = "\n".join(f"  {f.size / MIB:8.1f} MiB  {f.source}  ({f.arcname})" for f in largest)
    top = largest[0]
    suffix = os.path.splitext(top.arcname)[1]
    raise SpecError(
        f"Image: your code to ship ({', '.join(sorted(code.roots))}) weighs {code.total_bytes / MIB:.1f} MiB, over "
        f"max_code_mib={image.max_code_mib:g}. Largest files:\n{listing}\n"
        f"Fix: leave them out with sky.Image(excludes=[{top.arcname!r}]"
        + (f" or [\"*{suffix}\"]" if suffix else "")
        + "), keep data in storage the nodes read, or raise sky.Image(max_code_mib=...)."
    )
