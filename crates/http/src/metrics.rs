//! `GET /metrics`: Prometheus text exposition of the engine's snapshot. Names mirror
//! kafka_exporter where the concept is the same (`kafka_consumergroup_lag`,
//! `kafka_topic_partition_current_offset`, ...), so existing dashboards and alerts apply; the
//! rest are `sluice_*`. Queue groups have `sluice_queue_*` families labelled by `group`.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use sluice_engine::queue::QueueDescription;
use sluice_engine::{Engine, MetricsSnapshot};

/// Prometheus text of the partitions', topics', groups' and queue groups' metrics.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4",
        content_type = "text/plain; version=0.0.4", body = String)))]
pub(crate) async fn metrics(State(engine): State<Engine>) -> impl IntoResponse {
    let text = tokio::task::spawn_blocking(move || {
        let mut text = render(&engine.metrics());
        render_queues(&mut text, &engine.list_queues());
        text
    })
    .await
    .expect("metrics do not panic");
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// A metric family over some item: name, help text, and how to read the value.
type Family<T> = (&'static str, &'static str, fn(&T) -> u64);

/// Escapes a label value as the exposition format requires.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    writeln!(out, "# HELP {name} {help}").expect("writing to a String");
    writeln!(out, "# TYPE {name} {kind}").expect("writing to a String");
}

/// The snapshot as Prometheus text.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let partition_gauges: [Family<sluice_engine::PartitionMetrics>; 3] = [
        ("kafka_topic_partition_current_offset", "High watermark of the partition.", |p| {
            p.high_watermark
        }),
        (
            "kafka_topic_partition_oldest_offset",
            "First offset still stored in the partition.",
            |p| p.log_start_offset,
        ),
        ("sluice_partition_size_bytes", "Bytes stored in the partition's segments.", |p| {
            p.size_bytes
        }),
    ];
    for (name, help, value) in partition_gauges {
        family(&mut out, name, "gauge", help);
        for partition in &snapshot.partitions {
            let (topic, number) = (label(&partition.topic), partition.partition);
            writeln!(
                out,
                "{name}{{topic=\"{topic}\",partition=\"{number}\"}} {}",
                value(partition)
            )
            .expect("String");
        }
    }
    let topic_counters: [Family<sluice_engine::TopicMetrics>; 5] = [
        ("sluice_produced_records_total", "Records appended to the topic.", |t| t.produced_records),
        ("sluice_produced_bytes_total", "Bytes of batches appended to the topic.", |t| {
            t.produced_bytes
        }),
        ("sluice_fetched_records_total", "Records returned by fetches of the topic.", |t| {
            t.fetched_records
        }),
        ("sluice_fetched_bytes_total", "Bytes of batches returned by fetches of the topic.", |t| {
            t.fetched_bytes
        }),
        (
            "sluice_duplicate_records_total",
            "Records not appended because their id was in the dedup window.",
            |t| t.duplicates,
        ),
    ];
    for (name, help, value) in topic_counters {
        family(&mut out, name, "counter", help);
        for topic in &snapshot.topics {
            writeln!(out, "{name}{{topic=\"{}\"}} {}", label(&topic.topic), value(topic))
                .expect("String");
        }
    }
    family(
        &mut out,
        "kafka_consumergroup_current_offset",
        "gauge",
        "Committed offset of the group on the partition.",
    );
    for group in snapshot.groups.iter().filter(|group| group.committed.is_some()) {
        let labels = format!(
            "consumergroup=\"{}\",topic=\"{}\",partition=\"{}\"",
            label(&group.group),
            label(&group.topic),
            group.partition
        );
        writeln!(
            out,
            "kafka_consumergroup_current_offset{{{labels}}} {}",
            group.committed.unwrap_or(0)
        )
        .expect("String");
    }
    family(
        &mut out,
        "kafka_consumergroup_lag",
        "gauge",
        "High watermark minus the group's committed offset.",
    );
    for group in &snapshot.groups {
        let labels = format!(
            "consumergroup=\"{}\",topic=\"{}\",partition=\"{}\"",
            label(&group.group),
            label(&group.topic),
            group.partition
        );
        writeln!(out, "kafka_consumergroup_lag{{{labels}}} {}", group.lag).expect("String");
    }
    family(&mut out, "kafka_consumergroup_members", "gauge", "Members in the group.");
    let mut seen = std::collections::BTreeSet::new();
    for group in &snapshot.groups {
        if seen.insert(&group.group) {
            writeln!(
                out,
                "kafka_consumergroup_members{{consumergroup=\"{}\"}} {}",
                label(&group.group),
                group.members
            )
            .expect("String");
        }
    }
    out
}

/// A queue-group metric family: name, type, help text, and how to read the value.
type QueueFamily = (&'static str, &'static str, &'static str, fn(&QueueDescription) -> u64);

/// Appends the queue groups' families to `out`: gauges of what their messages are doing now and
/// counters since the server started, one line per group.
pub fn render_queues(out: &mut String, queues: &[QueueDescription]) {
    let families: [QueueFamily; 8] = [
        ("sluice_queue_ack_pending", "gauge", "Messages leased and not yet settled.", |q| {
            q.counts.leased
        }),
        ("sluice_queue_waiting", "gauge", "Messages waiting for a retry after a failure.", |q| {
            q.counts.waiting
        }),
        (
            "sluice_queue_in_flight",
            "gauge",
            "Messages delivered at least once and not settled (the max_in_flight measure).",
            |q| q.counts.in_flight,
        ),
        (
            "sluice_queue_parked_keys",
            "gauge",
            "Keys parked after their message went to the dead-letter topic.",
            |q| q.counts.parked_keys,
        ),
        ("sluice_queue_delivered_total", "counter", "Deliveries of the group's messages.", |q| {
            q.totals.delivered
        }),
        (
            "sluice_queue_redelivered_total",
            "counter",
            "Deliveries after the first of a message.",
            |q| q.totals.redelivered,
        ),
        ("sluice_queue_acked_total", "counter", "Messages acknowledged.", |q| q.totals.acked),
        (
            "sluice_queue_dead_lettered_total",
            "counter",
            "Messages written to the dead-letter topic.",
            |q| q.totals.dead_lettered,
        ),
    ];
    for (name, kind, help, value) in families {
        family(out, name, kind, help);
        for queue in queues {
            writeln!(out, "{name}{{group=\"{}\"}} {}", label(&queue.name), value(queue))
                .expect("String");
        }
    }
}
