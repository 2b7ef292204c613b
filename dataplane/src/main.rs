//! `sluice`: the gateway binary.

use anyhow::anyhow;
use clap::{Parser, Subcommand};
use sluice::config::{self, schema};
use sluice::runtime::{self, Source};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sluice", version, about = "MCP gateway: sees, decides on and records every tool call")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway, from a config file or in quick mode (one MCP route).
    Run {
        /// Configuration file (TOML). Without it, --listen and --upstream give quick mode.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Quick mode: address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Quick mode: the MCP server's URL; its path is also the gateway's path.
        #[arg(long)]
        upstream: Option<String>,
        /// Quick mode: admin listener address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Quick mode: worker count (0 = one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Quick mode: spool directory for session events (default: $STATE_DIRECTORY/spool or
        /// /var/lib/sluice/spool).
        #[arg(long)]
        spool: Option<String>,
        /// Quick mode: also send events to these Kafka brokers (`host:port,...`).
        #[arg(long)]
        kafka: Option<String>,
    },
    /// Run a local MCP server (stdio transport) behind the gateway: an MCP client launches
    /// `sluice stdio -- COMMAND…` in the server's place; every message both ways is inspected,
    /// decided and recorded, and the caller is the operating-system user.
    Stdio {
        /// Configuration file: its [detect], [policy], [recording], [limits], [sessions] and
        /// [gateway] sections apply (no listener or route is needed).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The name of this server in policy (`route`) and in the record.
        #[arg(long, default_value = sluice::stdio::DEFAULT_NAME)]
        name: String,
        /// Without --config: spool directory (default: $STATE_DIRECTORY/spool under systemd,
        /// else $XDG_STATE_HOME/sluice/spool or ~/.local/state/sluice/spool; a held one is
        /// followed by DIR-1, DIR-2, …).
        #[arg(long)]
        spool: Option<PathBuf>,
        /// Without --config: also send events to these Kafka brokers (`host:port,...`).
        #[arg(long)]
        kafka: Option<String>,
        /// The MCP server's command and arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Print the JSON Schema of session events (what the spool and Kafka carry).
    Schema,
    /// Read a spool directory: `cat` prints every event as a JSON line, `stat` a summary.
    Spool {
        #[arg(value_parser = ["cat", "stat"])]
        action: String,
        dir: PathBuf,
    },
    /// Validate a configuration file and report every problem in it.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Scan files (or stdin) for PII, secrets and prompt injection. Exit 0: nothing found,
    /// 1: something found, 2: error.
    Scan {
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "detect")]
        input: sluice::detect::cli::Input,
        #[arg(long, value_enum, default_value = "table")]
        format: sluice::detect::cli::Format,
        /// Print the input with findings masked instead of the findings.
        #[arg(long)]
        mask: bool,
        /// Mask every finding with this strategy instead of each rule's default.
        #[arg(long, value_enum)]
        strategy: Option<sluice::detect::mask::Strategy>,
        /// Key material for the fingerprint strategy (a file; the same file gives the same
        /// fingerprints as a gateway configured with it). Default: a random key per run.
        #[arg(long)]
        fingerprint_key_file: Option<PathBuf>,
        /// Rule pack directory (default: the packs shipped with sluice).
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// Policy tools: `check FILE` lists a policy's rules, `explain` shows which rule decides a
    /// call and why, `test FILE…` runs policy case files.
    Policy {
        #[command(subcommand)]
        cmd: sluice::policy::cli::PolicyCmd,
    },
    /// Review calls held for approval through the admin API: `list`, `approve ID`, `deny ID
    /// --reason …` (authenticated with a reviewer's token).
    Approvals {
        #[command(flatten)]
        common: sluice::approvals::cli::Common,
        #[command(subcommand)]
        cmd: sluice::approvals::cli::ApprovalsCmd,
    },
    /// Tool pins through the admin API: `list [--changed]`, `accept UPSTREAM TOOL` (a changed
    /// definition becomes the pin; authenticated with the token of a `pins.approvers` member).
    Pins {
        #[command(flatten)]
        common: sluice::approvals::cli::Common,
        /// Work on a pins file directly instead of a running gateway's admin API (the files
        /// `sluice stdio` keeps; a gateway's only while it is stopped).
        #[arg(long, global = true)]
        file: Option<PathBuf>,
        #[command(subcommand)]
        cmd: sluice::pins::cli::PinsCmd,
    },
    /// Print the gateway's public keys as a JWK set: for upstreams to verify its identity
    /// assertions (`forward_identity = "token"`), for authorization servers to verify its
    /// client assertions (`client_auth = "private_key_jwt"`).
    Jwks {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List every detection rule (id, kind, category, severity, default mask, what it matches).
    Rules {
        #[arg(long, value_enum, default_value = "table")]
        format: sluice::detect::cli::Format,
        #[arg(long)]
        rules: Option<PathBuf>,
    },
}

fn quick(listen: String, upstream: String, admin: String, workers: usize, spool: Option<String>, kafka: Option<String>) -> anyhow::Result<schema::File> {
    let path = match upstream.split_once("://").map(|(_, r)| r.find('/').map_or("/", |i| &r[i..])) {
        Some(p) => p.split('?').next().unwrap_or("/").to_string(),
        None => return Err(anyhow!("--upstream {upstream:?} must be an http:// or https:// URL")),
    };
    let text = format!(
        "[gateway]\nworkers = {workers}\n[[listener]]\naddress = {listen:?}\n[admin]\naddress = {admin:?}\n\
         [[upstream]]\nname = \"upstream\"\nurl = {upstream:?}\n[[route]]\nname = \"mcp\"\npath = {path:?}\nupstream = \"upstream\"\n"
    );
    let mut text = text;
    if let Some(d) = spool {
        text.push_str(&format!("[recording.spool]\ndir = {d:?}\n"));
    }
    if let Some(k) = kafka {
        text.push_str(&format!("[recording.kafka]\nbrokers = {k:?}\n"));
    }
    Ok(toml::from_str(&text)?)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The data path never waits for whoever reads its log (see `logging`).
    let log = sluice::logging::init(&cli.log_format, matches!(cli.cmd, Cmd::Run { .. } | Cmd::Stdio { .. }));
    if let Cmd::Scan { files, input, format, mask, strategy, fingerprint_key_file, rules } = cli.cmd {
        let opts = sluice::detect::cli::Options { files, input, format, mask, strategy, fingerprint_key_file, rules };
        return match sluice::detect::cli::run(opts) {
            Ok(code) => std::process::ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("sluice scan: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    if let Cmd::Rules { format, rules } = cli.cmd {
        return match sluice::detect::cli::list(rules, format) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice rules: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    if let Cmd::Policy { cmd } = cli.cmd {
        return match sluice::policy::cli::run(cmd) {
            Ok(code) => std::process::ExitCode::from(code),
            Err(e) => {
                eprintln!("sluice policy: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    if let Cmd::Approvals { common, cmd } = cli.cmd {
        return match sluice::approvals::cli::run(&common, cmd) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice approvals: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    if let Cmd::Pins { common, file, cmd } = cli.cmd {
        return match sluice::pins::cli::run(&common, file.as_deref(), cmd) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice pins: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    if let Cmd::Stdio { config, name, spool, kafka, command } = cli.cmd {
        let result = sluice::stdio::run(sluice::stdio::Options { config, name, spool, kafka, command });
        drop(log);
        return match result {
            Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("sluice stdio: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let result = match cli.cmd {
        Cmd::Check { config: path } => match config::load(&path) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listener(s), {} upstream(s), {} route(s), {} worker(s))",
                    path.display(),
                    c.listeners.len(),
                    c.upstreams.len(),
                    c.routes.len(),
                    c.workers
                );
                if !c.background_cpus.is_empty() {
                    println!(
                        "CPUs: workers on {}{}, every other thread (recording, Kafka client, logging, admin, refreshes) on {}",
                        sluice::cpus::ranges(&c.worker_cpus),
                        if c.pin_workers { " (one each)" } else { "" },
                        sluice::cpus::ranges(&c.background_cpus)
                    );
                }
                match &c.policy {
                    Some(p) => println!(
                        "policy {}: {} rule(s) ({} deciding requests servers send agents), default {}",
                        p.source.display(),
                        p.rules.len(),
                        p.rules.iter().filter(|r| r.from_server).count(),
                        if p.default == sluice::policy::DefaultAction::Allow { "allow" } else { "deny" }
                    ),
                    None => println!("no [policy]: every authenticated call that passes detection is allowed"),
                }
                // Who hears of held calls (never the webhook URL: a secret).
                for t in &c.approvals.notify {
                    let on: Vec<&str> = sluice::approvals::notify::STEPS.into_iter().filter(|s| t.on[*s as usize]).map(|s| s.name()).collect();
                    println!("approvals: webhook {} ({}) told of {}", t.name, t.format.name(), on.join(", "));
                }
                if !c.approvals.peers.is_empty() {
                    println!("approvals: also listed and decided here for the peers {}", c.approvals.peers.join(", "));
                }
                if let Some(i) = c.identity.as_ref().and_then(|a| a.introspection.as_ref()) {
                    println!("identity: opaque bearer tokens introspected at {} as client {} (answers held up to {:?})", i.grant.token_url, i.grant.client_id, i.reading.cache);
                }
                if c.outbound != Default::default() {
                    println!("outbound HTTPS (OIDC, token endpoints, webhooks): roots from gateway.outbound_ca");
                }
                // What the gateway does towards each upstream on the agents' behalf.
                let how = |g: &sluice::oauth::Grant| match &g.auth {
                    sluice::oauth::ClientAuth::Basic => "client_secret_basic",
                    sluice::oauth::ClientAuth::Post => "client_secret_post",
                    sluice::oauth::ClientAuth::PrivateKeyJwt { .. } => "private_key_jwt",
                };
                for u in &c.upstreams {
                    if let Some(t) = u.credential.as_ref().and_then(|cr| cr.token()) {
                        println!("upstream {}: OAuth token from {} as client {} ({})", u.name, t.grant.token_url, t.grant.client_id, how(&t.grant));
                    }
                    if let Some(x) = u.credential.as_ref().and_then(|cr| cr.exchanger()) {
                        println!("upstream {}: each caller's token exchanged (RFC 8693) at {} as client {} ({})", u.name, x.grant.token_url, x.grant.client_id, how(&x.grant));
                    }
                    match &u.forward_identity {
                        Some(sluice::identity::forward::Forwarding::Headers) => println!("upstream {}: told the caller in X-Sluice-* headers", u.name),
                        Some(sluice::identity::forward::Forwarding::Token { signer, audience }) => {
                            println!("upstream {}: told the caller in a signed X-Sluice-Identity (key {}, aud {audience})", u.name, signer.kid)
                        }
                        None => {}
                    }
                    if let Some(p) = &u.proxy {
                        let auth = if p.authenticated { ", with credentials" } else { "" };
                        println!("upstream {}: through egress proxy {} (CONNECT{auth})", u.name, p.authority);
                    }
                }
                // What a broker would refuse: payloads past its default message size.
                if let Some(r) = c.recording.as_ref().filter(|r| r.kafka.is_some() && r.max_payload_bytes > 1 << 20) {
                    println!(
                        "recording: max_payload_bytes = {} is above the 1 MiB a Kafka broker takes per message by default: events that large stay in the spool and are not sent (sluice_events_unsendable_total) unless the broker's message.max.bytes allows them",
                        r.max_payload_bytes
                    );
                }
                if c.access_log {
                    println!("access log: on (one sluice::access line per exchange)");
                }
                // The pins file is read at start, and a damaged one stops it: say so now.
                match c.pins.as_ref().map(|p| p.file.as_deref()) {
                    Some(Some(f)) => sluice::pins::Store::load(f).map(|store| {
                        let (tools, instructions) = store.counts();
                        println!("pins {}: {tools} tool(s) and {instructions} server's instructions pinned{}", f.display(), if f.exists() { "" } else { " (the file does not exist yet: tools are pinned on first sight)" });
                    }),
                    Some(None) => {
                        println!("pins: in memory only (no pins.file): every server is trusted afresh after a restart");
                        Ok(())
                    }
                    None => {
                        println!("pins: off");
                        Ok(())
                    }
                }
                .inspect(|_| {
                    if let Some((path, b)) = c.pins.as_ref().and_then(|p| p.baseline.as_ref()) {
                        let (tools, instructions) = b.counts();
                        println!("pins baseline {}: {tools} reviewed tool(s) and {instructions} server's instructions", path.display());
                    }
                    if c.pins.as_ref().is_some_and(|p| p.hold_new) {
                        println!("pins: first_sight = \"hold\": a tool no pin knows is hidden and refused until accepted");
                    }
                })
            }
            Err(e) => Err(anyhow!("{e}")),
        },
        Cmd::Run { config: Some(path), .. } => runtime::run(Source::File(path)),
        Cmd::Run { config: None, listen, upstream: Some(up), admin, workers, spool, kafka } => {
            quick(listen, up, admin, workers, spool, kafka).and_then(|f| runtime::run(Source::Quick(Box::new(f))))
        }
        Cmd::Schema => serde_json::to_string_pretty(&sluice_schema::event::json_schema()).map(|s| println!("{s}")).map_err(Into::into),
        Cmd::Spool { action, dir } => match action.as_str() {
            "cat" => sluice::events::cli::cat(&dir),
            _ => sluice::events::cli::stat(&dir).and_then(|s| {
                println!("{}", serde_json::to_string_pretty(&s)?);
                Ok(())
            }),
        },
        Cmd::Jwks { config: path } => match config::load(&path) {
            Ok(c) => match c.jwks() {
                Some(set) => serde_json::to_string_pretty(&set).map(|j| println!("{j}")).map_err(Into::into),
                None => Err(anyhow!("{}: the gateway signs nothing (no forward_identity = \"token\", no client_auth = \"private_key_jwt\")", path.display())),
            },
            Err(e) => Err(anyhow!("{e}")),
        },
        Cmd::Run { config: None, upstream: None, .. } => Err(anyhow!("give --config FILE, or --upstream URL for quick mode")),
        Cmd::Scan { .. } | Cmd::Rules { .. } | Cmd::Policy { .. } | Cmd::Approvals { .. } | Cmd::Pins { .. } | Cmd::Stdio { .. } => Ok(()),
    };
    drop(log);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
