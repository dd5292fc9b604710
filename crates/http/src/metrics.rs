//! `GET /metrics`: Prometheus text exposition of the engine's snapshot. Names mirror
//! kafka_exporter where the concept is the same (`kafka_consumergroup_lag`,
//! `kafka_topic_partition_current_offset`, ...), so existing dashboards and alerts apply; the
//! rest are `sluice_*`.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use sluice_engine::{Engine, MetricsSnapshot};

/// Prometheus text of the partitions', topics' and groups' metrics.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4",
        content_type = "text/plain; version=0.0.4", body = String)))]
pub(crate) async fn metrics(State(engine): State<Engine>) -> impl IntoResponse {
    let snapshot =
        tokio::task::spawn_blocking(move || engine.metrics()).await.expect("metrics do not panic");
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], render(&snapshot))
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
        "Committed offset of the group on the partition.",
        "gauge",
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
        "High watermark minus the group's committed offset.",
        "gauge",
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
    family(&mut out, "kafka_consumergroup_members", "Members in the group.", "gauge");
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
