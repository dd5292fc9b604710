//! PostgreSQL as an event store: one table with a unique (stream, version) key, the usual way
//! to get expected-version appends from a relational database. An append at an exact expected
//! version inserts version `expected + 1`; a concurrent append of the same version fails on the
//! key. PostgreSQL's defaults are durable (`fsync = on`, `synchronous_commit = on`): a commit
//! returns after its WAL is flushed. Concurrent commits share flushes (group commit), as Sluice's
//! appends share fdatasyncs.

use std::time::Instant;

use anyhow::Context;
use tokio_postgres::NoTls;

use crate::{append_plan, elapsed_ns, payload, retry, Budget, MeasureArgs, Sample};

const SCHEMA: &str = "DROP TABLE IF EXISTS events;
    CREATE TABLE events (
        stream text NOT NULL,
        version bigint NOT NULL,
        event_type text NOT NULL,
        data text NOT NULL,
        appended_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (stream, version)
    )";

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("postgres connection: {error}");
        }
    });
    Ok(client)
}

pub async fn run(args: &MeasureArgs) -> anyhow::Result<Vec<Sample>> {
    let setup = retry("PostgreSQL", || connect(&args.url)).await?;
    let settings = setup
        .query_one(
            "SELECT current_setting('fsync'), current_setting('synchronous_commit'), version()",
            &[],
        )
        .await?;
    let (fsync, synchronous): (String, String) = (settings.get(0), settings.get(1));
    anyhow::ensure!(
        fsync == "on" && synchronous == "on",
        "PostgreSQL runs with fsync={fsync}, synchronous_commit={synchronous}; the bench wants its durable defaults"
    );
    // The event's data: a JSON string of 1 KiB, as the other systems carry.
    let data = format!("\"{}\"", String::from_utf8(payload(args.payload.saturating_sub(2)))?);
    let mut samples = Vec::new();
    if args.runs("append") {
        for &clients in &args.pg_clients {
            setup.batch_execute(SCHEMA).await?;
            samples.push(append(args, clients, 1, &data, "append-c64").await?);
        }
        setup.batch_execute(SCHEMA).await?;
        samples.push(append(args, 1, 1, &data, "append-c1").await?);
        setup.batch_execute(SCHEMA).await?;
        samples.push(append(args, args.batch_writers, 100, &data, "append-b100").await?);
        setup.batch_execute("DROP TABLE IF EXISTS events").await?;
    }
    Ok(samples)
}

/// `clients` connections, each owning a share of the streams, append `per_append` events per
/// transaction at exact expected versions until the budget of events is spent.
async fn append(
    args: &MeasureArgs,
    clients: usize,
    per_append: usize,
    data: &str,
    workload: &str,
) -> anyhow::Result<Sample> {
    let budget = Budget::new(args.messages, args.deadline());
    let mut connections = Vec::new();
    for _ in 0..clients {
        connections.push(connect(&args.url).await?);
    }
    let start = Instant::now();
    let latencies_ns = crate::run_clients(connections.into_iter().enumerate().map(|(index, client)| {
            let (budget, data) = (budget.clone(), data.to_owned());
            let mut plan = append_plan(index, clients, args.append_streams);
            async move {
                let one = client
                    .prepare("INSERT INTO events (stream, version, event_type, data) VALUES ($1, $2, 'Posted', $3)")
                    .await?;
                let many = client
                    .prepare(
                        "INSERT INTO events (stream, version, event_type, data)
                         SELECT $1, version, 'Posted', $3 FROM generate_series($2::bigint, $2::bigint + $4::bigint - 1) AS version",
                    )
                    .await?;
                let mut latencies = Vec::new();
                while budget.claim_many(per_append as u64) {
                    let (stream, first) = plan.next(per_append as u64);
                    let sent = Instant::now();
                    let inserted = if per_append == 1 {
                        client.execute(&one, &[&stream, &(first as i64), &data]).await
                    } else {
                        client
                            .execute(&many, &[&stream, &(first as i64), &data, &(per_append as i64)])
                            .await
                    }
                    .with_context(|| format!("appending {stream}@{first}"))?;
                    anyhow::ensure!(inserted == per_append as u64, "inserted {inserted} rows");
                    latencies.push(elapsed_ns(sent));
                    budget.complete(per_append as u64);
                }
                Ok::<_, anyhow::Error>(latencies)
            }
        }))
    .await?;
    let elapsed = budget.elapsed(start);
    let setting = if per_append == 1 {
        format!("{clients} connections; 1 row per transaction, unique (stream, version)")
    } else {
        format!("{clients} connections; {per_append} rows per transaction, unique key")
    };
    Ok(Sample {
        workload: workload.to_owned(),
        setting,
        durable: "yes",
        messages: budget.done(),
        elapsed,
        latencies_ns,
        latency_of: if per_append == 1 { "one insert (commit)" } else { "one transaction" },
    }
    .finish())
}
