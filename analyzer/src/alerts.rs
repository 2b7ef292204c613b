//! Alerts to Kafka: one message per alert (JSON, key = session), delivered with `acks=all`
//! and idempotence before the command reports success; a failed delivery is an error.

use crate::chains::Alert;
use anyhow::{bail, Context as _, Result};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Default)]
struct Failures(AtomicUsize);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            eprintln!("sluice-analyzer: an alert was not delivered: {e}");
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A producer for the alerts topic, kept for the life of a continuous run.
pub struct Sink {
    p: ThreadedProducer<Failures>,
    brokers: String,
    topic: String,
}

impl Sink {
    pub fn new(brokers: &str, topic: &str) -> Result<Sink> {
        let p: ThreadedProducer<Failures> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "zstd")
            .set("message.timeout.ms", "30000")
            .create_with_context(Failures::default())
            .context("creating the Kafka producer for alerts")?;
        Ok(Sink { p, brokers: brokers.to_owned(), topic: topic.to_owned() })
    }

    /// Deliver `alerts`; an error unless every one was acknowledged.
    pub fn send(&self, alerts: &[Alert]) -> Result<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        let (topic, brokers) = (&self.topic, &self.brokers);
        let before = self.p.context().0.load(Ordering::Relaxed);
        for a in alerts {
            let body = serde_json::to_vec(a)?;
            let key = a.session.clone().unwrap_or_default();
            self.p.send(BaseRecord::to(topic).key(&key).payload(&body)).map_err(|(e, _)| e).with_context(|| format!("queueing alert {} for {topic}", a.id))?;
        }
        self.p.flush(Duration::from_secs(35)).with_context(|| format!("delivering {} alert(s) to {topic} at {brokers}", alerts.len()))?;
        let failed = self.p.context().0.load(Ordering::Relaxed) - before;
        if failed > 0 || self.p.in_flight_count() > 0 {
            bail!("{} of {} alert(s) were not delivered to {topic} at {brokers}", failed.max(self.p.in_flight_count() as usize), alerts.len());
        }
        Ok(())
    }
}

/// Deliver `alerts` with a producer of its own.
pub fn send(brokers: &str, topic: &str, alerts: &[Alert]) -> Result<()> {
    if alerts.is_empty() {
        return Ok(());
    }
    Sink::new(brokers, topic)?.send(alerts)
}
