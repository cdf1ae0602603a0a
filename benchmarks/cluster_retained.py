"""Does a clustered broker give a new subscriber a retained message published on another node a moment
before? (What the TSO relies on to see its peers online, ``testbed.standalone.wait_until_online``.)

A local NATS cluster (``tsodso broker nats --nodes 3``, MQTT 3.1.1). Each try: a publisher on node 3 sends
a retained QoS 1 message on a fresh topic; ``--gap`` seconds later a subscriber on node 1 subscribes (QoS 1)
and waits 2 s for it. A try where it never came counts as missed; the subscriber then subscribes again
(MQTT 3.1.1 3.8.4: the broker sends the retained messages again) and waits 3 s more.

With ``--port P`` the same tries run on the one broker listening at 127.0.0.1:P (e.g. Mosquitto on 1883),
publisher and subscriber on it: the comparison with a broker that is not a cluster.

    .venv/bin/python benchmarks/cluster_retained.py [--tries 30] [--gap 0 0.005 0.02] [--port P]
"""

import argparse
import asyncio
import time
import uuid

import gmqtt

from tsodso.broker.launch import RunningCluster, start_broker


async def connected(port: int, client_id: str, inbox: list[bytes]) -> gmqtt.Client:
    client = gmqtt.Client(client_id, clean_session=True)
    client.on_message = lambda _c, _topic, payload, _qos, _props: inbox.append(payload) or 0
    await client.connect("127.0.0.1", port, version=gmqtt.constants.MQTTv311, keepalive=30)
    return client


async def arrived(inbox: list[bytes], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while not inbox and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return bool(inbox)


async def tries(first: int, last: int, n: int, gap_s: float) -> tuple[int, int]:
    """(missed, fetched by subscribing again) over ``n`` tries: publisher on port ``last``, subscriber on ``first``."""
    missed = fetched = 0
    for _ in range(n):
        tag = uuid.uuid4().hex[:8]
        topic, inbox = f"bench/{tag}/state", []
        publisher = await connected(last, f"pub-{tag}", [])
        subscriber = await connected(first, f"sub-{tag}", inbox)
        publisher.publish(topic, b"online", qos=1, retain=True)
        await asyncio.sleep(gap_s)
        subscriber.subscribe(topic, qos=1)
        if not await arrived(inbox, 2.0):
            missed += 1
            subscriber.subscribe(topic, qos=1)
            fetched += await arrived(inbox, 3.0)
        publisher.publish(topic, b"", qos=1, retain=True)  # the retained copy cleared
        await publisher.disconnect()
        await subscriber.disconnect()
    return missed, fetched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=30)
    parser.add_argument("--gap", type=float, nargs="+", default=[0.0, 0.005, 0.02], help="publish → subscribe (s)")
    parser.add_argument("--port", type=int, help="one broker already listening at 127.0.0.1:PORT instead of a cluster")
    args = parser.parse_args()
    cluster = None
    if args.port:
        first = last = args.port
    else:
        cluster = start_broker("nats", nodes=3)
        assert isinstance(cluster, RunningCluster)
        first, last = cluster.members[0].port, cluster.members[-1].port
    try:
        print("| publish → subscribe | tries | missed | fetched by subscribing again |")
        print("| --- | --- | --- | --- |")
        for gap_s in args.gap:
            missed, fetched = asyncio.run(tries(first, last, args.tries, gap_s))
            print(f"| {gap_s * 1000:g} ms | {args.tries} | {missed} | {fetched} of {missed} |")
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
