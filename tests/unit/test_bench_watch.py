"""The harness stops waiting for a system that has died, and says why with the end of its log."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness import Watched, _wait_drained
from persona.stack.procs import StackError
from state.keys import RedisKeys


def test_a_running_system_is_no_problem(tmp_path: Path) -> None:
    assert Watched("peer", lambda: None, tmp_path / "peer.log").problem() is None


def test_a_dead_system_is_named_with_its_exit_code_and_the_end_of_its_log(tmp_path: Path) -> None:
    log = tmp_path / "peer.log"
    log.write_text("\n".join(f"line {i}" for i in range(40)) + "\nKafkaError: broker down\n")
    problem = Watched("peer", lambda: 1, log).problem()
    assert problem is not None
    assert problem.startswith("bench: the peer exited with 1 before it drained")
    assert problem.endswith("KafkaError: broker down")
    assert "line 16" in problem and "line 15" not in problem   # the last 25 lines only


def test_an_empty_or_absent_log_is_said_so(tmp_path: Path) -> None:
    (tmp_path / "empty.log").write_text("")
    assert Watched("job", lambda: -9, tmp_path / "empty.log").problem() == (
        f"bench: the job exited with -9 before it drained ({tmp_path / 'empty.log'} is empty)")
    assert Watched("baseline", lambda: 2).problem() == "bench: the baseline exited with 2 before it drained"


def test_the_wait_ends_at_once_when_the_system_is_dead(tmp_path: Path) -> None:
    class NoRedis:   # never asked: the dead system is seen before Redis is read
        def __getattr__(self, name: str) -> None:
            raise AssertionError(f"Redis was read ({name})")
    with pytest.raises(StackError, match="the peer exited with 3"):
        _wait_drained(NoRedis(), RedisKeys("p:"), {"u1": 1}, ["u1"], deadline_s=60,   # type: ignore[arg-type]
                      watched=Watched("peer", lambda: 3))
