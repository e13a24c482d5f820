"""Google's own protobuf runtime for the tests (an independent encoder and
decoder of what kbridge reads and writes).

usage: protobuf-io.py produce BROKERS TOPIC DESCRIPTOR_SET MESSAGE < specs
       protobuf-io.py decode DESCRIPTOR_SET MESSAGE < hex lines

produce reads one JSON spec per line and writes each as a record of TOPIC,
printing for each encoded one its canonical JSON (json_format.MessageToDict)
and the record's bytes in hex: {"json": ..., "hex": ...}. A spec:
{"value": {...}} (encoded as MESSAGE), optionally "framed": ID (the
Confluent wire format: magic byte 0, the 4-byte id, message index [0]) and
"key": "..."; or {"raw_hex": "..."} for bytes as they are.

decode reads a record value in hex per line and prints its canonical JSON.
"""
import json
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass


def message_class(desc, name):
    files = descriptor_pb2.FileDescriptorSet.FromString(open(desc, "rb").read())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    return GetMessageClass(pool.FindMessageTypeByName(name))


def produce(brokers, topic, desc, name):
    from kafka import KafkaProducer

    cls = message_class(desc, name)
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


def decode(desc, name):
    cls = message_class(desc, name)
    for line in sys.stdin:
        msg = cls.FromString(bytes.fromhex(line.strip()))
        print(json.dumps(json_format.MessageToDict(msg)), flush=True)


if sys.argv[1] == "produce":
    produce(*sys.argv[2:6])
else:
    decode(*sys.argv[2:4])
