"""Reads a whole topic with kafka-python (not librdkafka, so independently of
kbridge's own client) using raw Fetch requests, so that the batch attributes
(the compression codec) are visible too. Used by the tests and the demo.

usage: kafka-read.py BROKERS TOPIC [--text]

Prints one JSON object per record (or, with --text, a readable line):
{"partition", "offset", "key_hex", "value_hex", "headers": [[k, v_hex]], "codec"}
codec: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
"""
import json
import sys
import time

from kafka.client_async import KafkaClient
from kafka.protocol.fetch import FetchRequest
from kafka.protocol.list_offsets import ListOffsetsRequest
from kafka.record.memory_records import MemoryRecords
from kafka.structs import TopicPartition


def hexs(b):
    return None if b is None else b.hex()


def main():
    brokers, topic = sys.argv[1], sys.argv[2]
    text = "--text" in sys.argv[3:]
    codecs = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
    client = KafkaClient(bootstrap_servers=brokers, api_version=(2, 5))
    deadline = time.time() + 30
    while True:
        client.poll(future=client.cluster.request_update(), timeout_ms=2000)
        parts = client.cluster.partitions_for_topic(topic)
        if parts:
            break
        if time.time() > deadline:
            sys.exit(f"topic {topic} has no partitions")
        client.add_topic(topic)
    for p in sorted(parts):
        leader = client.cluster.leader_for_partition(TopicPartition(topic, p))
        while not client.ready(leader):
            client.poll(timeout_ms=100)
        lo = ListOffsetsRequest[1](replica_id=-1, topics=[(topic, [(p, -1)])])
        f = client.send(leader, lo)
        client.poll(future=f)
        high = f.value.topics[0][1][0][3]
        offset = 0
        while offset < high:
            req = FetchRequest[4](
                replica_id=-1, max_wait_time=100, min_bytes=1, max_bytes=64 << 20,
                isolation_level=0, topics=[(topic, [(p, offset, 64 << 20)])])
            f = client.send(leader, req)
            client.poll(future=f)
            if f.failed():
                raise f.exception
            part = f.value.topics[0][1][0]
            if part[1] != 0:
                sys.exit(f"fetch error {part[1]} for {topic}/{p}")
            records = MemoryRecords(part[-1])
            progressed = False
            while True:
                batch = records.next_batch()
                if batch is None:
                    break
                codec = batch.compression_type
                for r in batch:
                    if r.offset < offset:
                        continue
                    if text:
                        key = r.key.decode(errors="replace") if r.key is not None else "-"
                        print(f"{topic} partition={p} offset={r.offset} key={key} "
                              f"batch={codecs.get(codec, codec)} value={r.value.decode(errors='replace')}")
                    else:
                        print(json.dumps({
                            "partition": p, "offset": r.offset, "key_hex": hexs(r.key),
                            "value_hex": hexs(r.value),
                            "headers": [[k, hexs(v)] for k, v in r.headers], "codec": codec}))
                    offset = r.offset + 1
                    progressed = True
            if not progressed:
                break
    client.close()


if __name__ == "__main__":
    main()
