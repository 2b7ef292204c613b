//! How many events per second the recording pipeline takes: `threads` emitters (standing in
//! for workers) push realistic `tools/call` request/response events as fast as they can; the
//! clock stops when the spool writer has written them all (and, with `--kafka`, when Kafka has
//! acknowledged them all).
//!
//!   cargo run --release -p sluice-benches --example recorder_throughput -- [--events N]
//!       [--threads T] [--kafka HOST:PORT --topic NAME [--compression lz4|zstd] [--linger-ms MS]]
//!       [--dir DIR]
//!   (Kafka defaults: lz4 and 250 ms, as the gateway's)
//!
//! `loadtest/recording_bench.sh` runs it against a real broker and prints the README table.

use serde_json::value::RawValue;
use sluice::config::recording::{KafkaCfg, OnFull, RecordingCfg, SpoolCfg};
use sluice::events::Recorder;
use sluice_schema::event::{Direction, Event, Kind, Payload};
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let events: u64 = arg("--events").map_or(Ok(1_000_000), |s| s.parse())?;
    let threads: usize = arg("--threads").map_or(Ok(2), |s| s.parse())?;
    let dir = arg("--dir").map_or_else(|| std::env::temp_dir().join(format!("sluice-recbench-{}", std::process::id())), Into::into);
    let _ = std::fs::remove_dir_all(&dir);
    let kafka = arg("--kafka").map(|b| KafkaCfg {
        events_topic: arg("--topic").unwrap_or_else(|| "sluice.events".into()),
        approvals_topic: arg("--topic").map_or_else(|| "sluice.approvals".into(), |t| format!("{t}.ap")),
        properties: vec![
            ("bootstrap.servers".into(), b),
            ("enable.idempotence".into(), "true".into()),
            ("acks".into(), "all".into()),
            ("max.in.flight.requests.per.connection".into(), "5".into()),
            ("message.timeout.ms".into(), "0".into()),
            ("linger.ms".into(), arg("--linger-ms").unwrap_or_else(|| "250".into())),
            ("compression.type".into(), arg("--compression").unwrap_or_else(|| "lz4".into())),
            ("partitioner".into(), "murmur2_random".into()),
        ],
    });
    let with_kafka = kafka.is_some();
    let cfg = RecordingCfg {
        max_payload_bytes: 65536,
        queue_events: 16384,
        overflow_bytes: 256 << 20,
        on_full: OnFull::Refuse,
        spool: SpoolCfg {
            dir: dir.clone(),
            fsync_interval: Duration::from_millis(10),
            fsync_records: 4096,
            segment_bytes: 64 << 20,
            segment_age: Duration::from_secs(600),
            max_bytes: 64 << 30,
            max_age: Duration::from_secs(86400),
        },
        kafka,
    };
    let rec = Recorder::start(cfg, "bench", threads)?;
    let per = events / threads as u64;
    let start = Instant::now();
    let mut hs = Vec::new();
    for t in 0..threads {
        let em = rec.emitter(t).ok_or_else(|| anyhow::anyhow!("no emitter {t}"))?;
        hs.push(std::thread::spawn(move || {
            let args = RawValue::from_string(
                r#"{"name":"get_weather","arguments":{"city":"Lisbon","units":"metric","note":"[REDACTED:email]"}}"#.into(),
            )
            .unwrap_or_else(|_| unreachable!("valid JSON"));
            for i in 0..per {
                let session = format!("01JSESSION{:016}", (t as u64 * 1000) + i % 64);
                let mut e = Event::new(sluice::ids::new_id(), sluice::events::now_us(), if i % 2 == 0 { Kind::Request } else { Kind::Response }, "gw-bench-1");
                e.worker = Some(t as u32);
                e.session = Some(Cow::Owned(session));
                e.mcp_session = Some(Cow::Borrowed("f3b2c1d0-aaaa-bbbb-cccc-0123456789ab"));
                e.route = Some(Cow::Borrowed("mcp"));
                e.upstream = Some(Cow::Borrowed("weather"));
                e.direction = Some(if i % 2 == 0 { Direction::Request } else { Direction::Response });
                e.method = Some(Cow::Borrowed("tools/call"));
                e.rpc_id = Some(Cow::Owned(i.to_string()));
                e.tool = Some(Cow::Borrowed("get_weather"));
                e.payload = Some(Payload::borrowed(&args));
                e.bytes = Some(120);
                em.emit(&e);
                if em.overflow_len() > 0 && i % 1024 == 0 {
                    em.flush_overflow();
                }
            }
            em
        }));
    }
    let emitters: Vec<_> = hs.into_iter().map(|h| h.join().unwrap_or_else(|_| panic!("emitter thread"))).collect();
    let emit_secs = start.elapsed().as_secs_f64();
    let total = per * threads as u64;
    let c = &rec.counters;
    while c.spooled.load(Ordering::Relaxed) < total {
        for em in &emitters {
            em.flush_overflow();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let spool_secs = start.elapsed().as_secs_f64();
    let mut kafka_secs = None;
    if with_kafka {
        while c.sent.load(Ordering::Relaxed) < total {
            std::thread::sleep(Duration::from_millis(2));
            if start.elapsed() > Duration::from_secs(600) {
                anyhow::bail!("Kafka did not acknowledge {total} events in 10 minutes ({} so far)", c.sent.load(Ordering::Relaxed));
            }
        }
        kafka_secs = Some(start.elapsed().as_secs_f64());
    }
    let bytes = c.spool_bytes.load(Ordering::Relaxed);
    drop(emitters);
    rec.stop(Duration::from_secs(5));
    let lost = c.lost_overflow.load(Ordering::Relaxed) + c.lost_dropped.load(Ordering::Relaxed) + c.lost_stopped.load(Ordering::Relaxed);
    println!(
        "{{\"events\":{total},\"threads\":{threads},\"emit_per_s\":{:.0},\"spooled_per_s\":{:.0},\"kafka_per_s\":{},\"spool_mib\":{:.1},\"overflowed\":{},\"lost\":{lost},\"fsyncs\":{}}}",
        total as f64 / emit_secs,
        total as f64 / spool_secs,
        kafka_secs.map_or("null".into(), |s| format!("{:.0}", total as f64 / s)),
        bytes as f64 / (1 << 20) as f64,
        c.overflowed.load(Ordering::Relaxed),
        c.fsyncs.load(Ordering::Relaxed),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
