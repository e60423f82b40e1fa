"""`persona demo` on a small run (README command 1): its summary accounts for every record it sent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from persona.settings import ROOT, load_stack_settings
from persona.stack.procs import free_port
from persona.stack.services import LocalServices

pytestmark = pytest.mark.integration


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_demo_summary_adds_up() -> None:
    # It starts what is missing and stops what it started: here its own Kafka and Redis on free ports, unless this
    # checkout's services already run (then it uses them, on their ports).
    services = LocalServices.from_settings(load_stack_settings())
    env = dict(os.environ)
    if services.kafka.running() is None:
        env |= {"PERSONA_KAFKA_PORT": str(free_port()), "PERSONA_KAFKA_CONTROLLER_PORT": str(free_port())}
    if services.redis.running() is None:
        env["PERSONA_REDIS_PORT"] = str(free_port())
    out = subprocess.run([sys.executable, "-m", "persona.cli", "demo", "--records", "3000", "--users", "100"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    text = out.stdout
    sent = re.search(r"^sent ([\d,]+) = valid ([\d,]+) \+ refused at validation ([\d,]+) \((.*)\): adds up$", text, re.M)
    assert sent is not None, text[:3000] + "\n--- stderr:\n" + out.stderr[-3000:]
    total, valid, refused = (_number(g) for g in sent.groups()[:3])
    assert total == 3_000
    assert refused == sum(_number(n) for n in re.findall(r" ([\d,]+)(?:,|$)", sent.group(4) + ","))
    parts = re.search(r"^valid ([\d,]+) = applied ([\d,]+) \+ late ([\d,]+) \+ duplicates ([\d,]+)$", text, re.M)
    assert parts is not None
    v, applied, late, dup = (_number(g) for g in parts.groups())
    assert v == valid == applied + late + dup
    kept = re.search(r"^applied ([\d,]+) = in profiles ([\d,]+) \+ forgotten ([\d,]+) ", text, re.M)
    assert kept is not None and _number(kept.group(1)) == applied
    assert _number(kept.group(2)) + _number(kept.group(3)) == applied and _number(kept.group(3)) >= 0
    # Every pattern has a line, the escalation too; the sample is a human with a profile.
    for pattern in ("cart_abandonment", "repeated_cart_abandonment", "high_intent_mobile", "loyalty",
                    "repeat_visitor_not_converting"):
        assert re.search(rf"^  triggers {pattern} +\d+$", text, re.M), pattern
    assert "first profile in Redis" in text and "sample profile" in text and "suppressed:" in text
    # It ends with a plot of the run.
    png = re.search(r"the run as a plot: (\S+\.png)", text)
    assert png is not None and Path(png.group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sample = text[text.index("sample profile"):]
    assert re.search(r"^  bot +false$", sample, re.M) and re.search(r"^  events_total +\d+$", sample, re.M)
    # The recommender is on in the demo: the sample user's list, as `persona recommend` reads it from Redis.
    assert re.search(r"^their personal list \(persona recommend \S+, looked up in [\d.]+ ms\):\n  1\. p-", sample, re.M)
