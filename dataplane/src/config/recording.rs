//! `[recording]` lowered: the spool directory resolved, durations parsed, Kafka properties
//! assembled (environment variables read here, so a missing secret is a config error at start).

use super::{compile::resolve, duration, schema};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Refuse new requests until the spool can take events again (fail closed).
    Refuse,
    /// Delete the oldest undelivered segment (its events are counted and logged as lost).
    DropOldest,
}

/// The largest `max_payload_bytes` (16 MiB).
const MAX_PAYLOAD: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct RecordingCfg {
    pub max_payload_bytes: usize,
    pub queue_events: usize,
    pub overflow_bytes: usize,
    pub on_full: OnFull,
    pub spool: SpoolCfg,
    pub kafka: Option<KafkaCfg>,
}

#[derive(Debug, Clone)]
pub struct SpoolCfg {
    pub dir: PathBuf,
    pub fsync_interval: Duration,
    pub fsync_records: usize,
    pub segment_bytes: u64,
    pub segment_age: Duration,
    pub max_bytes: u64,
    pub max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct KafkaCfg {
    pub events_topic: String,
    pub approvals_topic: String,
    /// Every librdkafka property, ours and the passed-through ones (secrets included: never log
    /// this map, only [`KafkaCfg::describe`]).
    pub properties: Vec<(String, String)>,
}

impl KafkaCfg {
    /// The properties with secret values hidden, for logs.
    pub fn describe(&self) -> String {
        self.properties
            .iter()
            .map(|(k, v)| if k.contains("password") || k.contains("secret") || k.contains("key") { format!("{k}=***") } else { format!("{k}={v}") })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The default spool directory: systemd's `StateDirectory=` when set, else /var/lib/sluice.
fn default_dir() -> PathBuf {
    match std::env::var_os("STATE_DIRECTORY") {
        Some(d) => PathBuf::from(d).join("spool"),
        None => PathBuf::from("/var/lib/sluice/spool"),
    }
}

/// Properties the producer needs for its guarantees; `options` may not override them.
const FIXED: [&str; 4] = ["enable.idempotence", "acks", "max.in.flight.requests.per.connection", "message.timeout.ms"];

pub(super) fn compile(r: &schema::Recording, file: Option<&Path>, add: &mut dyn FnMut(String, String)) -> Option<RecordingCfg> {
    if !r.enabled {
        return None;
    }
    let mut dur = |path: &str, v: &str| {
        duration::parse(v).unwrap_or_else(|m| {
            add(path.into(), m);
            Duration::ZERO
        })
    };
    let s = &r.spool;
    let spool = SpoolCfg {
        dir: s.dir.as_deref().map_or_else(default_dir, |d| resolve(file, d)),
        fsync_interval: dur("recording.spool.fsync_interval", &s.fsync_interval),
        fsync_records: s.fsync_records.max(1),
        segment_bytes: s.segment_mib.max(1) << 20,
        segment_age: dur("recording.spool.segment_age", &s.segment_age),
        max_bytes: s.max_mib << 20,
        max_age: dur("recording.spool.max_age", &s.max_age),
    };
    let linger = r.kafka.as_ref().map(|k| dur("recording.kafka.linger", &k.linger));
    let on_full = match r.on_full.as_str() {
        "refuse" => OnFull::Refuse,
        "drop_oldest" => OnFull::DropOldest,
        other => {
            add("recording.on_full".into(), format!("\"{other}\" is not a choice; write \"refuse\" (fail closed) or \"drop_oldest\""));
            OnFull::Refuse
        }
    };
    if s.max_mib < 2 * s.segment_mib.max(1) {
        add("recording.spool.max_mib".into(), format!("{} MiB cannot hold two segments of {} MiB; raise max_mib or lower segment_mib", s.max_mib, s.segment_mib));
    }
    if r.queue_events == 0 {
        add("recording.queue_events".into(), "must be at least 1".into());
    }
    // A spool record holds at most 64 MiB (`spool::MAX_BODY`): a reader takes anything longer
    // for a corrupt length. The payload stays well inside it, beside the other fields.
    if r.max_payload_bytes > MAX_PAYLOAD {
        add("recording.max_payload_bytes".into(), format!("{} is more than an event can carry; at most {MAX_PAYLOAD} (16 MiB) — larger payloads are recorded as truncated", r.max_payload_bytes));
    }
    let kafka = r.kafka.as_ref().map(|k| {
        let mut props = vec![
            ("bootstrap.servers".to_string(), k.brokers.clone()),
            ("enable.idempotence".into(), "true".into()),
            ("acks".into(), "all".into()),
            ("max.in.flight.requests.per.connection".into(), "5".into()),
            // Never give up on an event: while the broker is away they wait in the spool.
            ("message.timeout.ms".into(), "0".into()),
            ("linger.ms".into(), linger.unwrap_or_default().as_millis().to_string()),
            // Java clients' default, so other producers keyed by session land alike.
            ("partitioner".into(), "murmur2_random".into()),
            ("message.max.bytes".into(), (16 << 20).to_string()),
        ];
        match k.compression.as_str() {
            "zstd" | "lz4" => props.push(("compression.type".into(), k.compression.clone())),
            other => add("recording.kafka.compression".into(), format!("\"{other}\" is not supported; write \"zstd\" or \"lz4\"")),
        }
        if k.brokers.trim().is_empty() {
            add("recording.kafka.brokers".into(), "is empty; write e.g. \"kafka-1:9092,kafka-2:9092\"".into());
        }
        for (key, v) in &k.options {
            if FIXED.contains(&key.as_str()) || key == "bootstrap.servers" {
                add(format!("recording.kafka.options.\"{key}\""), "is set by sluice for its delivery guarantees and cannot be overridden".into());
            } else {
                props.push((key.clone(), v.clone()));
            }
        }
        for (key, var) in &k.options_from_env {
            match std::env::var(var) {
                Ok(v) => props.push((key.clone(), v)),
                Err(_) => add(format!("recording.kafka.options_from_env.\"{key}\""), format!("environment variable {var} is not set; export it or remove this entry")),
            }
        }
        for (topic, path) in [(&k.events_topic, "events_topic"), (&k.approvals_topic, "approvals_topic")] {
            if topic.is_empty() || !topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
                add(format!("recording.kafka.{path}"), format!("\"{topic}\" is not a valid Kafka topic name (letters, digits, '.', '_', '-')"));
            }
        }
        KafkaCfg { events_topic: k.events_topic.clone(), approvals_topic: k.approvals_topic.clone(), properties: props }
    });
    Some(RecordingCfg {
        max_payload_bytes: r.max_payload_bytes,
        queue_events: r.queue_events,
        overflow_bytes: r.overflow_mib << 20,
        on_full,
        spool,
        kafka,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::from_schema;

    fn issues(extra: &str) -> Vec<(String, String)> {
        let text = format!("[[listener]]\naddress = \"127.0.0.1:1\"\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:2\"\n[[route]]\npath = \"/mcp\"\nupstream = \"u\"\n{extra}");
        let f: crate::config::schema::File = toml::from_str(&text).unwrap();
        match from_schema(&f) {
            Ok(_) => Vec::new(),
            Err(e) => e.issues.into_iter().map(|i| (i.path, i.message)).collect(),
        }
    }

    #[test]
    fn every_recording_problem_is_reported_with_its_path() {
        let got = issues(
            "[recording]\non_full = \"panic\"\n[recording.spool]\nfsync_interval = \"often\"\nmax_mib = 10\nsegment_mib = 64\n\
             [recording.kafka]\nbrokers = \"\"\ncompression = \"snappy\"\nevents_topic = \"bad topic\"\n\
             options = { \"acks\" = \"1\", \"security.protocol\" = \"SASL_SSL\" }\noptions_from_env = { \"sasl.password\" = \"SLUICE_TEST_SURELY_UNSET\" }\n",
        );
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "recording.on_full",
            "recording.spool.fsync_interval",
            "recording.spool.max_mib",
            "recording.kafka.brokers",
            "recording.kafka.compression",
            "recording.kafka.events_topic",
            "recording.kafka.options.\"acks\"",
            "recording.kafka.options_from_env.\"sasl.password\"",
        ] {
            assert!(paths.contains(&want), "{want} missing from {got:#?}");
        }
        assert!(!paths.iter().any(|p| p.contains("security.protocol")), "pass-through options are fine");
    }

    #[test]
    fn secrets_from_the_environment_are_used_but_never_described() {
        std::env::set_var("SLUICE_TEST_KAFKA_PW", "hunter2");
        let text = "[recording.kafka]\nbrokers = \"k:9092\"\noptions_from_env = { \"sasl.password\" = \"SLUICE_TEST_KAFKA_PW\" }\n";
        let f: crate::config::schema::File = toml::from_str(text).unwrap();
        let k = super::compile(&f.recording, None, &mut |p, m| panic!("{p}: {m}")).unwrap().kafka.unwrap();
        assert!(k.properties.contains(&("sasl.password".into(), "hunter2".into())));
        assert!(k.properties.contains(&("enable.idempotence".into(), "true".into())));
        assert!(k.properties.contains(&("acks".into(), "all".into())));
        assert!(!k.describe().contains("hunter2"));
    }

    #[test]
    fn producer_batches_and_compression_default_and_can_be_chosen() {
        let props = |text: &str| {
            let f: crate::config::schema::File = toml::from_str(text).unwrap();
            super::compile(&f.recording, None, &mut |p, m| panic!("{p}: {m}")).unwrap().kafka.unwrap().properties
        };
        let d = props("[recording.kafka]\nbrokers = \"k:9092\"\n");
        assert!(d.contains(&("compression.type".into(), "lz4".into())), "{d:?}");
        assert!(d.contains(&("linger.ms".into(), "250".into())), "{d:?}");
        let z = props("[recording.kafka]\nbrokers = \"k:9092\"\ncompression = \"zstd\"\nlinger = \"1s\"\n");
        assert!(z.contains(&("compression.type".into(), "zstd".into())), "{z:?}");
        assert!(z.contains(&("linger.ms".into(), "1000".into())), "{z:?}");
    }
}
