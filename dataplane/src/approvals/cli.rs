//! `sluice approvals list|approve|deny`: the admin API from a terminal.

use anyhow::{anyhow, Context as _};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Common {
    /// The gateway's admin listener.
    #[arg(long, default_value = "http://127.0.0.1:9901", global = true)]
    admin: String,
    /// The reviewer's bearer token (default: $SLUICE_REVIEWER_TOKEN).
    #[arg(long, global = true)]
    token: Option<String>,
    /// PEM roots to check an https admin address against, instead of Mozilla's (the host's
    /// bundle, /etc/ssl/certs/ca-certificates.crt, for a company CA).
    #[arg(long, global = true, value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
    /// A client certificate (chain) and its key, for an admin listener that asks for one
    /// (`admin.tls.client_ca`).
    #[arg(long, global = true, value_name = "PEM", requires = "key")]
    cert: Option<std::path::PathBuf>,
    #[arg(long, global = true, value_name = "PEM", requires = "cert")]
    key: Option<std::path::PathBuf>,
}

/// `--cert` and `--key` as a client certificate.
fn client_cert(c: &Common) -> anyhow::Result<Option<ureq::tls::ClientCert>> {
    let (Some(cert), Some(key)) = (&c.cert, &c.key) else { return Ok(None) };
    crate::tls::client_cert(cert, key).map(Some).map_err(|e| anyhow!("--cert/--key: {e}"))
}

#[derive(clap::Subcommand)]
pub enum ApprovalsCmd {
    /// Calls waiting for this reviewer (`--all`: decided ones too).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Let a held call through.
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Refuse a held call; the reason is shown to the agent.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

pub(crate) fn call(c: &Common, method: &str, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<serde_json::Value> {
    let from_env = std::env::var("SLUICE_REVIEWER_TOKEN").ok().filter(|t| !t.is_empty());
    let token = c.token.as_deref().or(from_env.as_deref()).ok_or_else(|| anyhow!("give --token or set SLUICE_REVIEWER_TOKEN (a token of a member of the approver group)"))?;
    let roots = c.ca.as_deref().map(crate::tls::Outbound::from_pem).transpose().map_err(|e| anyhow!("--ca: {e}"))?.unwrap_or_default();
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(15))).http_status_as_error(false).tls_config(roots.tls_with(client_cert(c)?)).build().into();
    let url = format!("{}{path}", c.admin.trim_end_matches('/'));
    let auth = format!("Bearer {token}");
    let mut resp = match body {
        Some(b) => agent.post(&url).header("authorization", &auth).header("content-type", "application/json").send(b.to_string()),
        None => agent.get(&url).header("authorization", &auth).call(),
    }
    .with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().with_context(|| format!("{method} {url}"))?;
    let v = serde_json::from_str::<serde_json::Value>(&text);
    if status >= 400 {
        // The admin API answers JSON errors; something else at that address (a proxy) may not.
        let why = v.as_ref().ok().and_then(|v| v.get("error")?.as_str().map(str::to_owned)).unwrap_or_else(|| text.trim().chars().take(200).collect());
        return Err(anyhow!("{method} {url}: {status}: {why}"));
    }
    v.with_context(|| format!("{method} {url}: not JSON: {text}"))
}

pub fn run(common: &Common, cmd: ApprovalsCmd) -> anyhow::Result<()> {
    match cmd {
        ApprovalsCmd::List { all, json } => {
            let v = call(common, "GET", if all { "/approvals?all=1" } else { "/approvals" }, None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let list = v["approvals"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("nothing is waiting for {}", v["reviewer"].as_str().unwrap_or("you"));
            }
            for a in list {
                println!(
                    "{}  {:<9} {:<20} {:<24} rule {}  args {}",
                    a["id"].as_str().unwrap_or(""),
                    a["state"].as_str().unwrap_or(""),
                    a["subject"].as_str().unwrap_or(""),
                    a["tool"].as_str().unwrap_or(""),
                    a["rule"].as_str().unwrap_or(""),
                    a["arguments"]
                );
            }
            Ok(())
        }
        ApprovalsCmd::Approve { id, reason } => {
            let v = call(common, "POST", &format!("/approvals/{id}/approve"), Some(serde_json::json!({ "reason": reason })))?;
            println!("approved {} ({} for {})", id, v["tool"].as_str().unwrap_or(""), v["subject"].as_str().unwrap_or(""));
            Ok(())
        }
        ApprovalsCmd::Deny { id, reason } => {
            let v = call(common, "POST", &format!("/approvals/{id}/deny"), Some(serde_json::json!({ "reason": reason })))?;
            println!("denied {} ({} for {})", id, v["tool"].as_str().unwrap_or(""), v["subject"].as_str().unwrap_or(""));
            Ok(())
        }
    }
}
