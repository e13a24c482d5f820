"""Google's own protobuf runtime for the tests (an independent encoder and
decoder of what kbridge reads and writes).

usage: protobuf-io.py produce BROKERS TOPIC DESCRIPTOR_SET MESSAGE [REGISTRY PROTO_FILE] < specs
       protobuf-io.py decode DESCRIPTOR_SET MESSAGE < hex lines

produce reads one JSON spec per line and writes each as a record of TOPIC,
printing for each encoded one its canonical JSON (json_format.MessageToDict)
and the record's bytes in hex: {"json": ..., "hex": ...}. A spec:
{"value": {...}} (encoded as MESSAGE), optionally "framed": ID (the
Confluent wire format: magic byte 0, the 4-byte id, message index [0]) and
"key": "..."; or {"raw_hex": "..."} for bytes as they are. With REGISTRY
and PROTO_FILE (the .proto the descriptor set was made of), that text is
registered first under TOPIC-value (schemaType PROTOBUF), and a spec with
"registered": true is framed with the id the registry gave and MESSAGE's
message indexes, as Confluent's serializer writes them (zig-zag varints:
their count, then each; [0] as the single byte 0).

decode reads a record value in hex per line and prints its canonical JSON.
"""
import json
import sys
import urllib.request

from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass


def message_class(desc, name):
    files = descriptor_pb2.FileDescriptorSet.FromString(open(desc, "rb").read())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    return GetMessageClass(pool.FindMessageTypeByName(name))


def varint(n):
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b, z = z & 0x7F, z >> 7
        out.append(b | 0x80 if z else b)
        if not z:
            return bytes(out)


def message_indexes(cls):
    d, path = cls.DESCRIPTOR, []
    while d.containing_type is not None:
        path.append(list(d.containing_type.nested_types).index(d))
        d = d.containing_type
    path.append(list(d.file.message_types_by_name.values()).index(d))
    path.reverse()
    if path == [0]:
        return b"\x00"
    return varint(len(path)) + b"".join(varint(i) for i in path)


def register(registry, topic, proto_file):
    body = json.dumps({"schemaType": "PROTOBUF", "schema": open(proto_file).read()}).encode()
    req = urllib.request.Request(f"{registry}/subjects/{topic}-value/versions", data=body, method="POST")
    req.add_header("Content-Type", "application/vnd.schemaregistry.v1+json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["id"]


def produce(brokers, topic, desc, name, registry=None, proto_file=None):
    from kafka import KafkaProducer

    cls = message_class(desc, name)
    sid = register(registry, topic, proto_file) if registry else None
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
            elif spec.get("registered"):
                value = b"\x00" + sid.to_bytes(4, "big") + message_indexes(cls) + value
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
    produce(*sys.argv[2:8])
else:
    decode(*sys.argv[2:4])
