//! A member of a stream-mode consumer group: `poll` delivers records of the partitions the
//! server assigned to it, `commit` makes its progress durable. At-least-once: records delivered
//! but not committed before a rebalance or crash are delivered again.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{ClientError, Http};

/// The server's code for "member unknown": the member timed out or the server restarted.
const UNKNOWN_MEMBER: u16 = 1010;

/// How a consumer joins its group.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerOptions {
    /// Start at the earliest record in partitions the group never committed (else the latest).
    pub from_earliest: bool,
    /// The member is removed after this long without a poll.
    pub session_timeout: Duration,
    /// Most records one poll returns.
    pub max_records: u32,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self { from_earliest: false, session_timeout: Duration::from_secs(30), max_records: 500 }
    }
}

/// A delivered record with its value decoded as `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<T> {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Its key, if it has a UTF-8 one.
    pub key: Option<String>,
    /// Its value.
    pub value: T,
    /// Its headers.
    pub headers: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct Joined {
    member_id: String,
    generation: u64,
}

#[derive(Deserialize)]
struct Fetched {
    records: Vec<RecordJson>,
    generation: u64,
}

/// A record as the server's fetch and lease endpoints encode it: `key` if UTF-8 else
/// `key_base64`, `value` if JSON else `value_base64`, header values as text or `null`.
#[derive(Deserialize)]
pub(crate) struct RecordJson {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) key: Option<String>,
    #[serde(default)]
    pub(crate) key_base64: Option<String>,
    pub(crate) value: Option<Value>,
    #[serde(default)]
    pub(crate) value_base64: Option<String>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, Value>,
}

/// A group member consuming `T` values.
#[derive(Debug)]
pub struct Consumer<T> {
    http: Http,
    group: String,
    topics: Vec<String>,
    options: ConsumerOptions,
    member_id: String,
    generation: u64,
    values: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Consumer<T> {
    pub(crate) async fn join(
        http: Http,
        group: &str,
        topics: &[&str],
        options: ConsumerOptions,
    ) -> Result<Self, ClientError> {
        let topics: Vec<String> = topics.iter().map(|topic| (*topic).to_owned()).collect();
        let joined = join(&http, group, &topics, options).await?;
        Ok(Self {
            http,
            group: group.to_owned(),
            topics,
            options,
            member_id: joined.member_id,
            generation: joined.generation,
            values: PhantomData,
        })
    }

    /// This member's id in the group.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// Delivers the next records of this member's partitions, waiting up to `wait` for some.
    /// Rejoins the group once if the server no longer knows this member.
    ///
    /// # Errors
    /// Server refusals, transport failures, and values that do not decode as `T`.
    pub async fn poll(&mut self, wait: Duration) -> Result<Vec<Delivery<T>>, ClientError> {
        let fetched = match self.fetch(wait).await {
            Err(error) if error.code() == Some(UNKNOWN_MEMBER) => {
                let joined = join(&self.http, &self.group, &self.topics, self.options).await?;
                self.member_id = joined.member_id;
                self.fetch(wait).await?
            }
            other => other?,
        };
        self.generation = fetched.generation;
        fetched
            .records
            .into_iter()
            .map(|record| {
                let value = serde_json::from_value(record.value.unwrap_or(Value::Null))?;
                Ok(Delivery {
                    topic: record.topic,
                    partition: record.partition,
                    offset: record.offset,
                    key: record.key,
                    value,
                    headers: record.headers,
                })
            })
            .collect()
    }

    async fn fetch(&self, wait: Duration) -> Result<Fetched, ClientError> {
        let path = format!(
            "/v1/groups/{}/members/{}/records?max_records={}&wait_ms={}",
            self.group,
            self.member_id,
            self.options.max_records,
            wait.as_millis()
        );
        self.http.call(Method::GET, &path, None::<&()>).await
    }

    /// Commits everything delivered so far.
    ///
    /// # Errors
    /// Code 1011 if the group rebalanced since the last poll (poll again; the records of
    /// partitions that moved will be delivered to their new owner), and other server refusals or
    /// transport failures.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let path = format!("/v1/groups/{}/members/{}/commit", self.group, self.member_id);
        let _: Value = self
            .http
            .call(Method::POST, &path, Some(&json!({"generation": self.generation})))
            .await?;
        Ok(())
    }

    /// Leaves the group, handing this member's partitions to the others at once.
    ///
    /// # Errors
    /// Transport failures (the server then drops the member when its session times out).
    pub async fn close(self) -> Result<(), ClientError> {
        let path = format!("/v1/groups/{}/members/{}", self.group, self.member_id);
        self.http.call_raw(Method::DELETE, &path, None::<&()>).await.map(drop)
    }
}

async fn join(
    http: &Http,
    group: &str,
    topics: &[String],
    options: ConsumerOptions,
) -> Result<Joined, ClientError> {
    let body = json!({
        "topics": topics,
        "from": if options.from_earliest { "earliest" } else { "latest" },
        "session_timeout_ms": u64::try_from(options.session_timeout.as_millis()).unwrap_or(u64::MAX),
    });
    http.call(Method::POST, &format!("/v1/groups/{group}/members"), Some(&body)).await
}
