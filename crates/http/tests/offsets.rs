//! The offset-for-time lookup finds the first record at or after a time, answers the high
//! watermark past the newest, and refuses a malformed time.
#![allow(clippy::unwrap_used)]

mod common;

use serde_json::{json, Value};

#[test]
fn offsets_for_times() {
    let server = common::start("t", 1);
    let base = format!("http://{}", server.address);
    let records: Vec<Value> =
        [1000, 2000, 3000].iter().map(|time| json!({"value": time, "timestamp": time})).collect();
    ureq::post(format!("{base}/v1/topics/t/records"))
        .send_json(json!({"records": records}))
        .unwrap();
    let lookup = |at: &str| -> (u16, Value) {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        let response =
            agent.get(format!("{base}/v1/topics/t/partitions/0/offset?at={at}")).call().unwrap();
        let status = response.status().as_u16();
        (status, serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap())
    };
    assert_eq!(
        lookup("1970-01-01T00:00:02Z"),
        (200, json!({"offset": 1, "found": true, "high_watermark": 3}))
    );
    assert_eq!(lookup("1970-01-01T00:00:01.500Z").1["offset"], json!(1));
    assert_eq!(lookup("1969-01-01T00:00:00Z").1["offset"], json!(0));
    assert_eq!(
        lookup("2999-01-01T00:00:00Z").1,
        json!({"offset": 3, "found": false, "high_watermark": 3})
    );
    let (status, body) = lookup("yesterday");
    assert_eq!(status, 400, "{body}");
    assert_eq!(lookup("1970-01-01T00:00:02Z&x=1").0, 400);
}
