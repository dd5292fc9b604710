//! CloudEvents in all three HTTP modes land as records with `ce_*` headers, the event id
//! deduplicates, the partition key is the record key, and events missing a required attribute
//! are refused. The server runs in-process on a real socket on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use serde_json::{json, Value};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().new_agent()
}

fn post(
    address: SocketAddr,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut request = agent()
        .post(format!("http://{address}/v1/topics/events/records"))
        .content_type(content_type);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send(body).unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap())
}

fn fetch_all(address: SocketAddr) -> Vec<Value> {
    let mut records = Vec::new();
    for partition in 0..2 {
        let url =
            format!("http://{address}/v1/topics/events/partitions/{partition}/records?offset=0");
        let body: Value = serde_json::from_str(
            &agent().get(url).call().unwrap().into_body().read_to_string().unwrap(),
        )
        .unwrap();
        records.extend(body["records"].as_array().unwrap().iter().cloned());
    }
    records
}

#[test]
fn structured_batch_and_binary_events_become_records_with_ce_headers() {
    let server = common::start("events", 2);
    let address = server.address;
    let event = json!({"specversion": "1.0", "id": "e-1", "source": "/orders", "type": "order.placed",
        "datacontenttype": "application/json", "partitionkey": "order-9", "data": {"total": 5}});
    let (status, body) = post(address, "application/cloudevents+json", &[], &event.to_string());
    assert_eq!(status, 200, "{body}");

    let batch = json!([
        {"specversion": "1.0", "id": "e-2", "source": "/orders", "type": "order.paid", "data_base64": "AAEC"},
        {"specversion": "1.0", "id": "e-1", "source": "/orders", "type": "order.placed", "data": {"total": 5}}
    ]);
    let (status, body) =
        post(address, "application/cloudevents-batch+json", &[], &batch.to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["offsets"][1]["duplicate"],
        json!(true),
        "a re-sent event id is not appended twice: {body}"
    );

    let binary = [
        ("ce-specversion", "1.0"),
        ("ce-id", "e-3"),
        ("ce-source", "/shipping"),
        ("ce-type", "shipped"),
    ];
    let (status, body) = post(address, "text/plain", &binary, "on its way");
    assert_eq!(status, 200, "{body}");

    let records = fetch_all(address);
    assert_eq!(records.len(), 3, "{records:?}");
    let placed = records.iter().find(|record| record["headers"]["ce_id"] == json!("e-1")).unwrap();
    assert_eq!(placed["key"], json!("order-9"));
    assert_eq!(placed["value"], json!({"total": 5}));
    assert_eq!(placed["headers"]["ce_type"], json!("order.placed"));
    assert_eq!(placed["headers"]["content-type"], json!("application/json"));
    let paid = records.iter().find(|record| record["headers"]["ce_id"] == json!("e-2")).unwrap();
    assert_eq!(paid["value_base64"], json!("AAEC"));
    let shipped = records.iter().find(|record| record["headers"]["ce_id"] == json!("e-3")).unwrap();
    assert_eq!(shipped["headers"]["ce_source"], json!("/shipping"));
    assert_eq!(shipped["headers"]["content-type"], json!("text/plain"));
    assert_eq!(shipped["value_base64"], json!("b24gaXRzIHdheQ=="));
}

#[test]
fn events_missing_a_required_attribute_are_refused_and_nothing_is_stored() {
    let server = common::start("events", 2);
    let address = server.address;
    let no_source = json!({"specversion": "1.0", "id": "x", "type": "t"});
    let (status, body) = post(address, "application/cloudevents+json", &[], &no_source.to_string());
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("'source'"), "{body}");
    let old_version = json!({"specversion": "0.3", "id": "x", "source": "s", "type": "t"});
    let (status, body) =
        post(address, "application/cloudevents+json", &[], &old_version.to_string());
    assert!(status == 400 && body["message"].as_str().unwrap().contains("1.0"), "{body}");
    let (status, _) =
        post(address, "application/cloudevents-batch+json", &[], "{\"not\": \"an array\"}");
    assert_eq!(status, 400);
    let (status, _) =
        post(address, "text/plain", &[("ce-specversion", "1.0"), ("ce-id", "x")], "data");
    assert_eq!(status, 400);
    assert!(fetch_all(address).is_empty());
}
