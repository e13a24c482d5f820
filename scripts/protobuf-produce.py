"""Produces Protobuf records for the tests with Google's own protobuf
runtime (an independent encoder): reads one JSON spec per line on stdin
and writes each as a record of TOPIC, printing for each encoded one its
canonical JSON (json_format.MessageToDict) and the record's bytes in hex:
{"json": ..., "hex": ...}.

usage: protobuf-produce.py BROKERS TOPIC DESCRIPTOR_SET MESSAGE < specs

A spec: {"value": {...}} (encoded as MESSAGE), optionally "framed": ID (the
Confluent wire format: magic byte 0, the 4-byte id, message index [0]) and
"key": "..."; or {"raw_hex": "..."} for bytes as they are.
"""
import json
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from kafka import KafkaProducer

brokers, topic, desc, name = sys.argv[1:5]
files = descriptor_pb2.FileDescriptorSet.FromString(open(desc, "rb").read())
pool = descriptor_pool.DescriptorPool()
for f in files.file:
    pool.Add(f)
cls = GetMessageClass(pool.FindMessageTypeByName(name))
producer = KafkaProducer(bootstrap_servers=brokers, acks="all")
for line in sys.stdin:
    spec = json.loads(line)
    if "raw_hex" in spec:
        value = bytes.fromhex(spec["raw_hex"])
    else:
        msg = json_format.ParseDict(spec["value"], cls())
        value = msg.SerializeToString()
        if "framed" in spec:
            value = b"\x00" + spec["framed"].to_bytes(4, "big") + b"\x00" + value
        print(json.dumps({"json": json_format.MessageToDict(msg), "hex": value.hex()}), flush=True)
    key = spec.get("key")
    producer.send(topic, value=value, key=key.encode() if key else None)
producer.flush()
