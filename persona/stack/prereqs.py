"""Checks of the prerequisites named in the README, each failing with a message that says what to install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from persona.stack.procs import StackError


def check_python() -> None:
    if sys.version_info[:2] != (3, 11):
        raise StackError(f"Python 3.11 is required (PyFlink 2.2 wheels); this is {sys.version.split()[0]}")


def java_major() -> int:
    java = shutil.which("java")
    if java is None:
        raise StackError("Java 17 is required: `java` is not on PATH (Debian: apt-get install openjdk-17-jdk)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise StackError(f"could not read the Java version from `java -version`: {out.strip()[:120]}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def check_java() -> None:
    major = java_major()
    if major < 17:
        raise StackError(f"Java 17 or newer is required; `java -version` says {major}")


def check_maven() -> None:
    if shutil.which("mvn") is None:
        raise StackError("Maven is required to resolve the jars: `mvn` is not on PATH (Debian: apt-get install maven)")


def check_jdk() -> None:
    for tool in ("javac", "jar"):
        if shutil.which(tool) is None:
            raise StackError(f"a JDK is required to build the batching operator: `{tool}` is not on PATH "
                             "(Debian: apt-get install openjdk-17-jdk-headless)")


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise StackError("`redis-server` is not on PATH (Debian: apt-get install redis-server)")
    return path


def check_all() -> None:
    check_python()
    check_java()
    check_maven()
    check_jdk()
    redis_server_binary()
