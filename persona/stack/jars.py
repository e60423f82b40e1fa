"""Resolve the declared JVM artefacts (docker/jars/*/pom.xml) with Maven into a git-ignored cache, once."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from pathlib import Path

from persona.settings import ROOT
from persona.stack.prereqs import check_maven
from persona.stack.procs import StackError

POM_DIR = ROOT / "docker" / "jars"
GROUPS = ("connector", "kafka")
log = logging.getLogger(__name__)


def _fingerprint(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()[:16]


def ensure_jars(jars_dir: Path, groups: tuple[str, ...] = GROUPS) -> dict[str, Path]:
    """Make sure each group's jars are in ``jars_dir/<group>``; a re-run with an unchanged pom is a no-op."""
    out: dict[str, Path] = {}
    for group in groups:
        pom = POM_DIR / group / "pom.xml"
        target = jars_dir / group
        marker = target / ".resolved"
        if marker.exists() and marker.read_text().strip() == _fingerprint(pom):
            out[group] = target
            continue
        check_maven()
        log.info("resolving %s jars with Maven into %s", group, target)
        staging = jars_dir / f".{group}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={staging}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not list(staging.glob("*.jar")):
            detail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise StackError(f"mvn could not resolve {pom.relative_to(ROOT)}: {' | '.join(detail)}")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        marker.write_text(_fingerprint(pom) + "\n")
        out[group] = target
    return out
