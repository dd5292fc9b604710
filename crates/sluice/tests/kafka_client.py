"""A real Kafka client (confluent-kafka, i.e. librdkafka) against Sluice's Kafka door, for
crates/sluice/tests/kafka.rs. `.ci/run` installs confluent-kafka.

  kafka_client.py produce-consume BOOTSTRAP TOPIC COUNT
      Produces COUNT keyed records (idempotent, acks=all), then consumes every partition from
      the beginning with assign(); prints one JSON object.
  kafka_client.py group-consume BOOTSTRAP TOPIC GROUP MAX IDLE_SECONDS
      Subscribes as a member of GROUP and consumes until MAX records or IDLE_SECONDS without
      one (once it has partitions), commits what it consumed, leaves; prints one JSON object.
  kafka_client.py produce-until-failure BOOTSTRAP TOPIC
      Produces (idempotent, acks=all) until deliveries fail (the server was killed) or 60 s
      pass; prints "PARTITION OFFSET VALUE" for every acknowledged record as it is acknowledged.
"""

import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition


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


def group_consume(bootstrap, topic, group, limit, idle_seconds):
    errors, consumed = [], []
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 500,
    })
    c.subscribe([topic])
    started = time.time()
    last = None
    while len(consumed) < limit and time.time() - started < 60:
        message = c.poll(0.2)
        if message is None:
            if last is not None and time.time() - last > idle_seconds:
                break
            if last is None and c.assignment():
                last = time.time()
            continue
        if message.error():
            errors.append(str(message.error()))
            continue
        last = time.time()
        consumed.append([message.partition(), message.offset(), message.value().decode()])
    if consumed:
        try:
            c.commit(asynchronous=False)
        except KafkaException as error:
            # After another member left, the group is at a new generation until this one
            # rejoins: Kafka refuses the commit the same way.
            errors.append(f"commit: {error}")
    c.close()
    print(json.dumps({"errors": errors, "consumed": consumed}))


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
    elif mode == "group-consume":
        group_consume(bootstrap, topic, sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
    elif mode == "produce-until-failure":
        produce_until_failure(bootstrap, topic)
    else:
        sys.exit(f"unknown mode {mode}")
