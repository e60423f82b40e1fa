"""Resolve the declared JVM artefacts (docker/jars/*/pom.xml) with Maven into a git-ignored cache, once, and build
the project's one Java operator (docker/jars/batcher, docs/performance.md) into the connector folder beside them."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from pathlib import Path

from persona.settings import ROOT
from persona.stack.prereqs import check_jdk, check_maven
from persona.stack.procs import StackError

POM_DIR = ROOT / "docker" / "jars"
GROUPS = ("connector", "kafka")
BATCHER_SRC = POM_DIR / "batcher" / "src"
BATCHER_JAR = "persona-batcher.jar"
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
    if "connector" in out:
        build_batcher(out["connector"])
    return out


def _sources_fingerprint() -> str:
    h = hashlib.sha256()
    for src in sorted(BATCHER_SRC.rglob("*.java")):
        h.update(src.relative_to(BATCHER_SRC).as_posix().encode() + b"\0" + src.read_bytes())
    return h.hexdigest()[:16]


def build_batcher(target: Path) -> Path:
    """Compile the batching operator against the Flink jars of the installed PyFlink wheel (the very version the
    job runs) into ``target/persona-batcher.jar``; a re-run with unchanged sources is a no-op."""
    import pyflink

    jar = target / BATCHER_JAR
    marker = target / ".batcher"
    want = _sources_fingerprint()
    if jar.exists() and marker.exists() and marker.read_text().strip() == want:
        return jar
    check_jdk()
    home = Path(pyflink.__file__).parent
    classes = target.parent / ".batcher-classes"
    shutil.rmtree(classes, ignore_errors=True)
    classes.mkdir(parents=True)
    sources = [str(p) for p in sorted(BATCHER_SRC.rglob("*.java"))]
    log.info("building the batching operator into %s", jar)
    steps = (["javac", "--release", "11", "-nowarn", "-cp", f"{home / 'lib'}/*:{home / 'opt'}/*", "-d", str(classes),
              *sources], ["jar", "cf", str(jar.with_suffix(".partial")), "-C", str(classes), "."])
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            detail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise StackError(f"could not build the batching operator ({cmd[0]}): {' | '.join(detail)}")
    jar.with_suffix(".partial").rename(jar)
    shutil.rmtree(classes, ignore_errors=True)
    marker.write_text(want + "\n")
    return jar
