"""The graph is built in a forked child (jobs/forked_submit.py): what it leaves, and how its failures come back."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import jobs.forked_submit as forked
from jobs.forked_submit import BuildFailed, submit_in_child

# A stand-in for py4j's client of the JVM gateway: the fork's protocol needs no JVM.
_CLIENT = SimpleNamespace(address="127.0.0.1", port=0,
                          gateway_property=SimpleNamespace(auto_field=False, enable_memory_management=False))


@pytest.fixture(autouse=True)
def no_jvm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked, "get_gateway", lambda: SimpleNamespace(_gateway_client=_CLIENT))


def test_the_driver_gets_the_childs_job_client_and_none_of_its_imports(tmp_path: Path) -> None:
    assert "this_module_is_only_in_the_child" not in sys.modules

    def submit() -> Any:
        sys.modules["this_module_is_only_in_the_child"] = SimpleNamespace()   # as PyFlink's runtime imports would be
        (tmp_path / "built_by").write_text(str(os.getpid()))
        return SimpleNamespace(_j_job_client=SimpleNamespace(_target_id="o736"))

    client = submit_in_child(submit)
    assert client._target_id == "o736" and client._gateway_client is _CLIENT
    assert int((tmp_path / "built_by").read_text()) != os.getpid()
    assert "this_module_is_only_in_the_child" not in sys.modules


def test_a_configuration_error_in_the_child_exits_the_driver_with_its_code() -> None:
    def submit() -> Any:
        raise SystemExit(2)

    with pytest.raises(SystemExit) as exc:
        submit_in_child(submit)
    assert exc.value.code == 2


def test_a_failed_build_names_itself_and_its_trace_is_on_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    def submit() -> Any:
        raise ValueError("no such table: raw_events")

    with pytest.raises(BuildFailed, match="the job graph's build failed"):
        submit_in_child(submit)
    assert "ValueError: no such table: raw_events" in capfd.readouterr().err
