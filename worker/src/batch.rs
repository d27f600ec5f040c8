//! Processing the commands that arrived together (issue 6). A lone command takes the single
//! calls and is synced at once; under backlog, the commands claimed for syncing share batched
//! Customer.io reads (`sync::prefetch`) whenever that costs fewer calls than one per contact.
//! Duplicates of a command already being synced wait for it and are then satisfied by it.

use std::sync::Arc;

use futures_util::{stream, StreamExt};
use lapin::message::Delivery;
use shared::command::{Command, SyncV1};
use tokio::sync::Semaphore;

use crate::{
    consumer::Consumer,
    events::EventLog,
    sync::{self, prefetch, Failure, Start},
};

struct Item {
    delivery: Delivery,
    cmd: SyncV1,
    log: EventLog,
}

/// Processes and settles every delivery of a batch. Never panics the consume loop.
pub async fn process(consumer: Arc<Consumer>, batch: Vec<Delivery>, permits: Arc<Semaphore>) {
    let ctx = consumer.ctx.clone();
    let parallel = consumer.concurrency.max(1);

    // Decode; what is not a command is dead-lettered with the reason.
    let mut items = Vec::with_capacity(batch.len());
    for delivery in batch {
        match Command::decode(&delivery.data) {
            Ok(Command::SyncV1(cmd)) => {
                let log = EventLog::new(cmd.event_id);
                items.push(Item { delivery, cmd, log });
            }
            Err(reason) => {
                let event_id = crate::consumer::event_id_of(&delivery.properties).unwrap_or_default();
                tracing::error!(%event_id, %reason, "dead-lettering a message that is not a command");
                let attempts = Consumer::attempts_before(&delivery) + 1;
                consumer.dead_letter(&delivery, attempts, &reason).await;
            }
        }
    }

    // Start each: record the event and try to claim its sync.
    let started: Vec<(Item, Result<Start, Failure>)> = stream::iter(items)
        .map(|mut it| {
            let (ctx, permits) = (ctx.clone(), permits.clone());
            async move {
                let _slot = permits.acquire().await.expect("semaphore is never closed");
                let r = sync::start(&ctx, &it.cmd, &mut it.log).await;
                (it, r)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;

    let mut ready = Vec::new();
    let mut waiting = Vec::new();
    for (mut it, r) in started {
        match r {
            Ok(Start::Go(claim)) => ready.push((it, claim)),
            Ok(Start::Busy) => waiting.push(it),
            Ok(Start::Done(outcome)) => consumer.settle(&it.delivery, &it.cmd, &mut it.log, Ok(outcome)).await,
            Err(f) => consumer.settle(&it.delivery, &it.cmd, &mut it.log, Err(f)).await,
        }
    }

    // Duplicates of a sync that is running elsewhere wait for it, then are satisfied or sync.
    let waiters = stream::iter(waiting)
        .map(|mut it| {
            let (ctx, permits, consumer) = (ctx.clone(), permits.clone(), consumer.clone());
            async move {
                let r = match sync::wait_turn(&ctx, &it.cmd, &mut it.log).await {
                    Ok(Start::Go(claim)) => {
                        let _slot = permits.acquire().await.expect("semaphore is never closed");
                        sync::run(&ctx, &it.cmd, &mut it.log, claim, None).await
                    }
                    Ok(Start::Done(o)) => Ok(o),
                    Ok(Start::Busy) => unreachable!("wait_turn never answers Busy"),
                    Err(f) => Err(f),
                };
                consumer.settle(&it.delivery, &it.cmd, &mut it.log, r).await;
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<()>>();

    let syncs = async {
        // A failed batched read does not fail the batch: each command then reads for itself and
        // succeeds or fails on its own (a 429 has already paused every worker for its Retry-After).
        let pre = match prefetch_for(&consumer, &ready).await {
            Ok(p) => p.map(Arc::new),
            Err(f) => {
                tracing::warn!(
                    commands = ready.len(),
                    "batched read failed ({}); reading one by one",
                    f.reason()
                );
                None
            }
        };
        stream::iter(ready)
            .map(|(mut it, claim)| {
                let (ctx, permits, consumer, pre) = (ctx.clone(), permits.clone(), consumer.clone(), pre.clone());
                async move {
                    let _slot = permits.acquire().await.expect("semaphore is never closed");
                    let r = sync::run(&ctx, &it.cmd, &mut it.log, claim, pre.as_deref()).await;
                    consumer.settle(&it.delivery, &it.cmd, &mut it.log, r).await;
                }
            })
            .buffer_unordered(parallel)
            .collect::<Vec<()>>()
            .await;
    };
    tokio::join!(waiters, syncs);
}

/// Reads the batch's contacts together when that saves calls; `None` means one by one.
async fn prefetch_for(
    consumer: &Consumer,
    ready: &[(Item, sync::coalesce::Claim)],
) -> Result<Option<prefetch::Prefetched>, Failure> {
    let ctx = &consumer.ctx;
    let by_email: Vec<&SyncV1> = ready
        .iter()
        .map(|(it, _)| &it.cmd)
        .filter(|c| c.contact.cio_id.is_none())
        .collect();
    if by_email.len() < 2 {
        return Ok(None);
    }
    let needing_segments = by_email.iter().filter(|c| c.tags.is_none()).count();
    let newest = by_email.iter().map(|c| c.received_at).max().expect("not empty");
    let fresh = ctx.snapshots.known_fresh(newest).await;
    let known: i64 = sqlx::query_scalar("select count(*) from segments")
        .fetch_one(&ctx.pool)
        .await?;
    let (batch_attributes, snapshot) = prefetch::worth_it(by_email.len(), needing_segments, known as usize, fresh);
    if !batch_attributes {
        return Ok(None);
    }
    // Every command of the batch syncs with it, so the snapshot's memberships are read for each.
    let all: Vec<&SyncV1> = ready.iter().map(|(it, _)| &it.cmd).collect();
    let pre = prefetch::fetch(ctx, &all, snapshot).await?;
    metrics::counter!("cio_worker_batched_commands_total").increment(by_email.len() as u64);
    Ok(Some(pre))
}
