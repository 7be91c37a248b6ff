"""Run host frameworks' own test suites with and without resilient's middleware mounted.

    python scripts/host_suites.py                 # Starlette and Flask
    python scripts/host_suites.py starlette       # one host
    python scripts/host_suites.py --keep flask    # keep the temp dir (venv, sdist, reports)

For each host: the sdist of the version installed here (``pip download --no-binary :all:
--no-deps``) is unpacked into a temp dir, a throwaway venv gets the host (from that sdist),
its test requirements (at the versions of its ``uv.lock``) and resilient (editable, from
this checkout), and the host's suite
runs twice: plain, then with a pytest plugin (``-p resilient_mount``) that mounts the
middleware on every app the suite builds, every feature on and every limit out of reach:

- Starlette: ``Starlette.__init__`` puts ``Middleware(ResilientMiddleware, ...)`` first in
  ``user_middleware``, where ``app.add_middleware`` would (inside ``ServerErrorMiddleware``).
- Flask: ``Flask.__init__`` wraps ``app.wsgi_app`` in ``ResilientWSGIMiddleware``, as the
  docs tell users to.

The plugin (loaded in both runs, so both see the same guard) refuses any connection
outside the loopback range: the suites are read to dial nothing else, and the guard makes
sure. The script prints the tests that fail in one run and not in the other; the target is
none. It takes minutes and CPU: it is not part of the default test run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: host -> (distribution to install from the sdist with extras, test requirements, pytest arguments)
HOSTS: dict[str, tuple[str, list[str], list[str]]] = {
    "starlette": (
        "[full]",
        ["pytest", "trio", "blockbuster", "opentelemetry-sdk", "importlib-metadata"],
        ["tests", "-p", "no:cacheprovider", "-q"],
    ),
    "flask": (
        "[async,dotenv]",
        ["pytest", "asgiref", "greenlet", "python-dotenv"],
        ["tests", "-p", "no:cacheprovider", "-q"],
    ),
}

PLUGIN = '''
"""Mount resilient's middleware on every app the host's suite builds (see scripts/host_suites.py)."""

import ipaddress
import os
import socket

MOUNT = os.environ.get("RESILIENT_MOUNT") == "1"
OPTIONS = {
    "rate_limit": "1000000000/second",
    "max_in_flight": 100000,
    "timeout": 300.0,
    "max_body_size": 1_000_000_000,
    "ratelimit_headers_on_success": True,
}
_connect = socket.socket.connect


def _loopback_only(self, address):
    """The suites run in process; anything but loopback (or a unix socket) is refused."""
    if isinstance(address, tuple):
        host = address[0]
        try:
            allowed = ipaddress.ip_address(host).is_loopback
        except ValueError:
            allowed = host == "localhost"
        if not allowed:
            raise OSError(f"host-suites: refused to connect to {host!r}")
    return _connect(self, address)


socket.socket.connect = _loopback_only


def _mount_starlette():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    from resilient.asgi import ResilientMiddleware

    init = Starlette.__init__

    def mounted(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.user_middleware.insert(0, Middleware(ResilientMiddleware, **OPTIONS))

    Starlette.__init__ = mounted


def _mount_flask():
    from flask import Flask

    from resilient.wsgi import ResilientWSGIMiddleware

    init = Flask.__init__

    def mounted(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.wsgi_app = ResilientWSGIMiddleware(self.wsgi_app, **OPTIONS)

    Flask.__init__ = mounted


if MOUNT:
    {"starlette": _mount_starlette, "flask": _mount_flask}[os.environ["RESILIENT_HOST"]]()
'''


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, check=False, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def prepare(host: str, work: Path) -> tuple[Path, Path]:
    """Download and unpack the host's sdist, build a venv with it, its test needs and resilient."""
    version = importlib.metadata.version(host)
    sdists = work / "sdist"
    pip = [sys.executable, "-m", "pip"]
    done = run([*pip, "download", "-q", "--no-binary", ":all:", "--no-deps", f"{host}=={version}", "-d", str(sdists)])
    if done.returncode:
        sys.exit(f"could not download the {host} {version} sdist")
    [archive] = sdists.glob(f"{host}-{version}.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    source = work / f"{host}-{version}"
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    extras, needs, _ = HOSTS[host]
    pinned = [pin(need, locked(source)) for need in needs]
    done = run([str(python), "-m", "pip", "install", "-q", "-e", str(ROOT), f"{source}{extras}", *pinned])
    if done.returncode:
        sys.exit(f"could not install {host}'s test requirements")
    (work / "resilient_mount.py").write_text(PLUGIN)
    return source, python


def locked(source: Path) -> dict[str, str]:
    """The versions the host's own lock file (``uv.lock`` in its sdist) pins, by package name."""
    lock = source / "uv.lock"
    if not lock.exists():
        return {}
    packages = tomllib.loads(lock.read_text())["package"]
    return {package["name"]: package["version"] for package in packages if "version" in package}


def pin(need: str, versions: dict[str, str]) -> str:
    """A test requirement at the version the host's suite is run with upstream, when it says."""
    version = versions.get(need)
    return need if version is None else f"{need}=={version}"


def suite(host: str, source: Path, python: Path, work: Path, *, mounted: bool) -> dict[str, str]:
    """Run the host's suite once; its outcome per test id (``passed``, ``failed``, ``skipped``)."""
    label = "mounted" if mounted else "plain"
    report = work / f"{host}-{label}.xml"
    env = {
        "PATH": f"{python.parent}:/usr/bin:/bin",
        "PYTHONPATH": str(work),
        "RESILIENT_HOST": host,
        "RESILIENT_MOUNT": "1" if mounted else "0",
        "HOME": str(work),
    }
    _, _, arguments = HOSTS[host]
    command = [str(python), "-m", "pytest", *arguments, "-p", "resilient_mount", f"--junitxml={report}"]
    done = run(command, cwd=source, env=env, capture_output=True)
    (work / f"{host}-{label}.log").write_text(done.stdout + done.stderr)
    print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:], flush=True)
    return outcomes(report)


def outcomes(report: Path) -> dict[str, str]:
    """Test id -> outcome, from pytest's JUnit XML."""
    seen: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314 - our own pytest's report
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        seen[name] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return seen


def compare(host: str, plain: dict[str, str], mounted: dict[str, str]) -> int:
    """Print the counts and every test whose outcome differs; the number of differences."""
    for label, results in (("plain", plain), ("mounted", mounted)):
        counts = {kind: list(results.values()).count(kind) for kind in ("passed", "failed", "skipped")}
        print(f"{host} {label}: {counts}")
    differ = sorted(name for name in plain.keys() | mounted.keys() if plain.get(name) != mounted.get(name))
    for name in differ:
        print(f"  DIFFERS {name}: plain={plain.get(name)} mounted={mounted.get(name)}")
    print(f"{host}: {len(differ)} test(s) differ")
    return len(differ)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hosts", nargs="*", help=f"any of {', '.join(HOSTS)} (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and print its path")
    args = parser.parse_args()
    unknown = set(args.hosts) - HOSTS.keys()
    if unknown:
        parser.error(f"unknown host(s): {', '.join(sorted(unknown))}; known: {', '.join(HOSTS)}")
    differences = 0
    for host in args.hosts or list(HOSTS):
        work = Path(tempfile.mkdtemp(prefix=f"host-suite-{host}-"))
        try:
            source, python = prepare(host, work)
            plain = suite(host, source, python, work, mounted=False)
            mounted = suite(host, source, python, work, mounted=True)
            differences += compare(host, plain, mounted)
        finally:
            if args.keep:
                print(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
