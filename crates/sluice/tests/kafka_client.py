"""A real Kafka client (confluent-kafka, i.e. librdkafka) against Sluice's Kafka door, for
crates/sluice/tests/kafka.rs. `.ci/run` installs confluent-kafka.

  kafka_client.py produce-consume BOOTSTRAP TOPIC COUNT
      Produces COUNT keyed records (idempotent, acks=all), then consumes every partition from
      the beginning with assign(); prints one JSON object.
  kafka_client.py produce-until-failure BOOTSTRAP TOPIC
      Produces (idempotent, acks=all) until deliveries fail (the server was killed) or 60 s
      pass; prints "PARTITION OFFSET VALUE" for every acknowledged record as it is acknowledged.
"""

import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition


def producer(bootstrap, extra=None):
    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
    }
    config.update(extra or {})
    return Producer(config)


def produce_consume(bootstrap, topic, count):
    delivered, errors = [], []

    def report(error, message):
        if error is not None:
            errors.append(str(error))
        else:
            delivered.append([message.partition(), message.offset(), message.value().decode()])

    p = producer(bootstrap)
    for i in range(count):
        p.produce(topic, key=f"k{i % 17}".encode(), value=f"v{i}".encode(), on_delivery=report)
        p.poll(0)
    left = p.flush(30)
    partitions = len(p.list_topics(topic, timeout=10).topics[topic].partitions)

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "kafka-test", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in range(partitions)])
    consumed = []
    deadline = time.time() + 30
    while len(consumed) < count and time.time() < deadline:
        message = c.poll(0.5)
        if message is None:
            continue
        if message.error():
            errors.append(str(message.error()))
            continue
        consumed.append([message.partition(), message.offset(), message.key().decode(), message.value().decode()])
    c.close()
    print(json.dumps({"unflushed": left, "partitions": partitions, "errors": errors,
                      "delivered": delivered, "consumed": consumed}))


def produce_until_failure(bootstrap, topic):
    failed = []

    def report(error, message):
        if error is not None:
            failed.append(str(error))
        else:
            print(message.partition(), message.offset(), message.value().decode(), flush=True)

    p = producer(bootstrap, {"message.timeout.ms": 4000, "retries": 1000000})
    i = 0
    started = time.time()
    while not failed and time.time() - started < 60:
        try:
            p.produce(topic, key=f"k{i % 13}".encode(), value=f"v{i}".encode(), on_delivery=report)
            i += 1
        except BufferError:
            pass
        p.poll(0.001 if i % 50 == 0 else 0)
    p.flush(10)


if __name__ == "__main__":
    mode, bootstrap, topic = sys.argv[1:4]
    if mode == "produce-consume":
        produce_consume(bootstrap, topic, int(sys.argv[4]))
    elif mode == "produce-until-failure":
        produce_until_failure(bootstrap, topic)
    else:
        sys.exit(f"unknown mode {mode}")
