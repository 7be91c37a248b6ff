"""``python -m resilient config check|show`` and the in-process pieces of zero-code mode."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from resilient.config import _hooks, _zero_code
from resilient.config._cli import config_main, run_main
from resilient.httpx import ResilientTransport
from tests.config.conftest import Writer


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = config_main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_check_accepts_a_valid_file(write: Writer) -> None:
    """A valid file exits 0 and names its policies."""
    write("resilient.toml", "[policies.payments]\nretry = 3\n")
    assert _run("check") == (0, "resilient.toml: ok (policies: payments)\n", "")


def test_check_rejects_a_bad_file_with_every_error(write: Writer) -> None:
    """A bad file exits 1 and prints each error with file, key path, value and rule."""
    path = write("bad.toml", "[policies.payments]\nretry = { attempts = 0 }\nbulkhead = { max_concurent = 1 }\n")
    code, out, err = _run("check", str(path))
    assert (code, out) == (1, "")
    assert f"{path}: policies.payments.retry.attempts must be >= 1, got 0" in err
    assert "policies.payments.bulkhead.max_concurent is not a known key; did you mean 'max_concurrent'" in err


def test_show_prints_each_value_and_its_origin(write: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each effective key is shown with the file, the variable or "default" it came from."""
    write("resilient.toml", "[policies.payments]\nretry = 3\n")
    monkeypatch.setenv("RESILIENT_POLICIES__PAYMENTS__RETRY__INITIAL_DELAY", "0.5")
    code, out, _ = _run("show")
    lines = {line.split("#")[0].strip(): line.split("#")[1].strip() for line in out.splitlines()[1:]}
    assert code == 0
    assert lines["policies.payments.retry.attempts = 3"] == "resilient.toml"
    assert lines["policies.payments.retry.initial_delay = 0.5"] == "RESILIENT_POLICIES__PAYMENTS__RETRY__INITIAL_DELAY"
    assert lines["policies.payments.retry.max_delay = 10.0"] == "default"


def test_the_module_entry_point_exits_non_zero_on_a_bad_file(write: Writer, tmp_path: Path) -> None:
    """``python -m resilient config check`` is the same command, with exit status 1 on error."""
    write("resilient.toml", "[policies.x]\nretry = 0\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESILIENT_")}
    done = subprocess.run(
        [sys.executable, "-m", "resilient", "config", "check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "resilient.toml: policies.x.retry.attempts must be >= 1, got 0"


def test_usage_errors_exit_2() -> None:
    """Unknown sub-commands and a run without a command print the usage and exit 2."""
    assert _run("nope")[0] == 2
    assert run_main(["--"], io.StringIO()) == 2


def test_run_refuses_to_start_on_a_bad_file(write: Writer) -> None:
    """``run`` validates first: a bad file exits 1 and the command never starts."""
    path = write("bad.toml", "[policies.x]\nretry = 0\n")
    err = io.StringIO()
    assert run_main(["--config", str(path), "--", "true"], err) == 1
    assert "policies.x.retry.attempts must be >= 1" in err.getvalue()


def test_a_client_is_never_wrapped_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The patched ``Client.__init__`` leaves a resilient transport alone, and wraps a plain one once."""
    monkeypatch.setattr(httpx.Client, "__init__", httpx.Client.__init__)  # both restored after the test
    monkeypatch.setattr(httpx.AsyncClient, "__init__", httpx.AsyncClient.__init__)
    _zero_code._patch_httpx(httpx)
    _zero_code._patch_httpx(httpx)  # a second install is a no-op
    own = ResilientTransport(httpx.MockTransport(lambda request: httpx.Response(200)))
    assert httpx.Client(transport=own)._transport is own
    plain = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    assert isinstance(plain._transport, ResilientTransport)


def test_an_app_is_never_wrapped_twice() -> None:
    """`wrap_wsgi` of an already wrapped app returns it unchanged."""

    def app(environ: object, start_response: object) -> list[bytes]:
        return [b"ok"]

    wrapped = _zero_code.wrap_wsgi(app)
    assert wrapped is not app
    assert _zero_code.wrap_wsgi(wrapped) is wrapped


def test_a_hook_runs_after_the_module_is_first_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`when_imported` patches a module right after its code runs, and at once if it is loaded already."""
    (tmp_path / "hooked_probe.py").write_text("VALUE = 1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[int] = []
    _hooks.when_imported("hooked_probe", lambda module: seen.append(module.VALUE))
    assert seen == []
    import hooked_probe  # type: ignore[import-not-found]  # noqa: PLC0415 - the import under test

    assert seen == [1]
    _hooks.when_imported("hooked_probe", lambda module: seen.append(module.VALUE + 1))
    assert seen == [1, 2]
    sys.modules.pop("hooked_probe")
    _hooks._HOOKS.pop("hooked_probe")
    assert hooked_probe.VALUE == 1


def test_our_sitecustomize_chains_to_the_one_it_hides(tmp_path: Path) -> None:
    """A sitecustomize already on PYTHONPATH still runs under ``resilient run``."""
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['CHAINED'] = 'yes'\n", encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESILIENT_")}
    env["PYTHONPATH"] = str(tmp_path)
    code = "import os, sys; print(os.environ.get('CHAINED'), 'resilient.config._zero_code' in sys.modules)"
    done = subprocess.run(  # noqa: S603 - our own command line
        [sys.executable, "-m", "resilient", "run", "--", sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.stdout.split() == ["yes", "True"], done.stderr


def test_the_shipped_example_file_is_valid() -> None:
    """examples/resilient.toml passes ``config check``."""
    example = Path(__file__).resolve().parents[2] / "examples" / "resilient.toml"
    assert _run("check", str(example))[0] == 0
