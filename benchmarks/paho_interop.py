"""Eclipse paho.mqtt.testing's broker conformance checks (interoperability/client_test.py, MQTT 3.1.1)
against a broker, by name: the issue's two (keepalive: a silent client's will is published;
redelivery: an unacknowledged QoS 1/2 message is sent again when the session resumes) or any others.

paho.mqtt.testing is not on PyPI and none of its code is in this project: check it out anywhere
and point ``--paho`` at it.

    python benchmarks/paho_interop.py --paho ~/src/paho.mqtt.testing --port 1883 \\
        test_keepalive test_redelivery_on_reconnect

Prints one line per test (PASS/FAIL and seconds) and exits 1 if any failed. The suite logs in
anonymously; a broker that requires a username fails at connect, which is reported as such.
"""

import argparse
import contextlib
import io
import sys
import time
import unittest
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paho", required=True, type=Path, help="a checkout of eclipse/paho.mqtt.testing")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("tests", nargs="*", default=["test_keepalive", "test_redelivery_on_reconnect"])
    args = parser.parse_args()
    sys.path.insert(0, str(args.paho / "interoperability"))
    import client_test

    client_test.host, client_test.port = args.host, args.port
    client_test.topics = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
    client_test.wildtopics = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
    client_test.nosubscribe_topics = ("test/nosubscribe",)
    failed = 0
    for name in args.tests:
        suite = unittest.TestSuite([client_test.Test(name)])
        out = io.StringIO()
        t0 = time.monotonic()
        with contextlib.redirect_stdout(out):
            result = unittest.TextTestRunner(stream=out, verbosity=0).run(suite)
        ok = result.wasSuccessful()
        failed += not ok
        why = (
            ""
            if ok
            else " | "
            + " ".join(
                line.strip()
                for line in out.getvalue().splitlines()
                if "assert" in line.lower() or "error" in line.lower()
            )[:300]
        )
        print(f"{'PASS' if ok else 'FAIL'} {name} ({time.monotonic() - t0:.1f} s){why}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
