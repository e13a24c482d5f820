"""fastavro and the schema registry's Confluent API for the tests: an
independent writer and reader of the Avro records kbridge reads and writes.

usage: avro-io.py produce BROKERS TOPIC REGISTRY SCHEMA_FILE < specs
       avro-io.py read BROKERS TOPIC REGISTRY COUNT

produce registers SCHEMA_FILE under TOPIC-value, then reads one JSON spec
per line and writes each as a record of TOPIC: {"value": ...} (a record in
Avro's JSON encoding, read with fastavro.json_reader) in the Confluent wire
format (magic byte 0, the registered id; "id": N writes another id), or
{"raw_hex": "..."} for bytes as they are. For each spec with a value it
prints {"id": ..., "json": ...}: the record as fastavro's json_writer
writes it (Avro's JSON encoding).

read consumes COUNT records of TOPIC from its start and prints, for each,
{"id": ..., "json": ...}: the schema id of its frame and the record decoded
by fastavro with that schema (fetched from the registry by id), in Avro's
JSON encoding; or {"error": "..."} for a record it cannot decode.
"""
import io
import json
import sys
import urllib.request

import fastavro


def registry_call(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    req.add_header("Content-Type", "application/vnd.schemaregistry.v1+json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def as_json(schema, record):
    out = io.StringIO()
    fastavro.json_writer(out, schema, [record])
    return json.loads(out.getvalue().strip())


def produce(brokers, topic, registry, schema_file):
    from kafka import KafkaProducer

    text = open(schema_file).read()
    sid = registry_call(f"{registry}/subjects/{topic}-value/versions", {"schema": text})["id"]
    schema = fastavro.parse_schema(json.loads(text))
    producer = KafkaProducer(bootstrap_servers=brokers, acks="all")
    for line in sys.stdin:
        spec = json.loads(line)
        if "raw_hex" in spec:
            value = bytes.fromhex(spec["raw_hex"])
        else:
            record = next(fastavro.json_reader(io.StringIO(json.dumps(spec["value"])), schema))
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, schema, record)
            value = b"\x00" + spec.get("id", sid).to_bytes(4, "big") + buf.getvalue()
            print(json.dumps({"id": sid, "json": as_json(schema, record)}), flush=True)
        producer.send(topic, value=value)
    producer.flush()


def read(brokers, topic, registry, count):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=brokers, auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=30000)
    schemas = {}
    seen = 0
    for m in consumer:
        v = m.value
        try:
            if len(v) < 5 or v[0] != 0:
                raise ValueError("not in the wire format")
            sid = int.from_bytes(v[1:5], "big")
            if sid not in schemas:
                text = registry_call(f"{registry}/schemas/ids/{sid}")["schema"]
                schemas[sid] = fastavro.parse_schema(json.loads(text))
            record = fastavro.schemaless_reader(io.BytesIO(v[5:]), schemas[sid])
            print(json.dumps({"id": sid, "json": as_json(schemas[sid], record)}), flush=True)
        except Exception as e:  # noqa: BLE001 - reported, the test decides
            print(json.dumps({"error": str(e)}), flush=True)
        seen += 1
        if seen >= int(count):
            break


if sys.argv[1] == "produce":
    produce(*sys.argv[2:6])
else:
    read(*sys.argv[2:6])
