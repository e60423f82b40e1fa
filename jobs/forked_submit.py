"""Build and submit a job graph in a forked child, so that the driver staying beside the mini-cluster stays light.

Building a DataStream graph imports PyFlink's runtime package (``pyflink.fn_execution``), which imports Apache
Beam, pandas and pyarrow: ~130 MB that the driver of ``persona run`` would hold for the job's whole life, for
nothing once the graph is submitted (docs/performance.md "Memory"). So the driver starts the JVM gateway itself,
forks, and the child builds the graph, submits it (``execute_async``) and exits. The driver keeps the JVM's job
client, a Java object the child left in the gateway, and follows the job through it.

Why a fork and not a fresh process: PyFlink's gateway exits when the Python watchdog that registered first stops
answering, and a second process that connects by ``PYFLINK_GATEWAY_PORT`` re-points the gateway's callbacks to
itself. The forked child shares the driver's connections to the gateway instead, and never registers anything;
the driver does not call the gateway while the child runs, so the two never use a connection at the same time.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from py4j.java_gateway import JavaObject
from pyflink.java_gateway import get_gateway


class BuildFailed(RuntimeError):
    """The child could not build or submit the graph (its error is on stderr)."""


def submit_in_child(submit: Callable[[], Any]) -> JavaObject:
    """Run ``submit`` (builds the graph and returns PyFlink's ``JobClient`` of ``execute_async``) in a forked
    child; return the Java ``JobClient`` it left. A ``SystemExit`` of the child (a configuration error, already
    printed) is raised again here with its code."""
    gateway = get_gateway()   # here, before the fork: the gateway's watchdog is this process, which outlives the job
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:   # the child: never returns
        os.close(read_end)
        reply, client = b"error", None
        try:
            # Held until the exit: a Java object's proxy that is collected tells the gateway to drop the object.
            client = submit()._j_job_client
            reply = b"client " + client._target_id.encode()
        except SystemExit as e:
            reply = b"exit %d" % (e.code if isinstance(e.code, int) else 1)
        except BaseException:   # noqa: BLE001 - told to the driver, which raises; the trace goes to stderr
            traceback.print_exc()
        finally:
            try:   # the driver may be gone (stopped while the child built): nothing to tell, and never return
                sys.stdout.flush()
                sys.stderr.flush()
                os.write(write_end, reply)
            except BaseException:   # noqa: BLE001, S110 - the exit below must run whatever happened
                pass
            # No interpreter shutdown: its finalizers would tell the gateway to drop the objects the job uses.
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        reply_text = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    kind, _, value = reply_text.partition(" ")
    if kind == "client":
        return JavaObject(value, gateway._gateway_client)
    if kind == "exit":
        raise SystemExit(int(value))
    raise BuildFailed(f"the job graph's build failed (child exit status {os.waitstatus_to_exitcode(status)}); "
                      "its error is above")
