//! `sluice pins list|accept|export`: the pins admin API from a terminal (same `--admin` and `--token`
//! as `sluice approvals`; the token of a member of a `pins.approvers` group).

use crate::approvals::cli::{call, Common};

#[derive(clap::Subcommand)]
pub enum PinsCmd {
    /// Every pinned tool; `--changed`: only those whose definition changed and waits to be accepted.
    List {
        #[arg(long)]
        changed: bool,
        #[arg(long)]
        json: bool,
    },
    /// Accept the changed definition of TOOL on UPSTREAM as its pin (calls to it go through again).
    Accept { upstream: String, tool: String },
    /// Print the pins as a pins file: reviewed on this gateway, it is the `pins.baseline` of
    /// every other (`sluice pins export > pins.reviewed.json`).
    Export,
}

/// `file`: work on that pins file instead of the admin API (accepting as the OS user).
pub fn run(common: &Common, file: Option<&std::path::Path>, cmd: PinsCmd) -> anyhow::Result<()> {
    let local = file.map(super::Store::load).transpose()?;
    match cmd {
        PinsCmd::List { changed, json } => {
            let v = match &local {
                Some(store) => store.list(),
                None => call(common, "GET", "/pins", None)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let mut shown = 0;
            for (upstream, tools) in v["upstreams"].as_object().into_iter().flatten() {
                for (tool, p) in tools.as_object().into_iter().flatten() {
                    let state = match (p["changed_to"].as_str(), p["absent"].as_bool().unwrap_or(false)) {
                        (Some(_), _) => "CHANGED",
                        (None, true) => "absent",
                        (None, false) => "pinned",
                    };
                    if changed && state != "CHANGED" {
                        continue;
                    }
                    shown += 1;
                    let digest = p["digest"].as_str().unwrap_or("");
                    let to = p["changed_to"].as_str().map(|d| format!(" → {}", &d[..d.len().min(16)])).unwrap_or_default();
                    println!("{upstream:<20} {tool:<32} {state:<8} {}{to}", &digest[..digest.len().min(16)]);
                }
            }
            if shown == 0 {
                println!("{}", if changed { "no changed definition waits to be accepted" } else { "no tool is pinned yet" });
            }
            Ok(())
        }
        PinsCmd::Export => {
            let v = match &local {
                Some(store) => store.list(),
                None => call(common, "GET", "/pins", None)?,
            };
            println!("{}", super::Store::file_of_list(&v)?);
            Ok(())
        }
        PinsCmd::Accept { upstream, tool } => {
            let v = match (&local, file) {
                (Some(store), Some(path)) => {
                    let pin = store.accept(&upstream, &tool, &crate::stdio::os_identity().subject)?;
                    store.save_if_dirty(path).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    serde_json::json!({ "pin": pin })
                }
                _ => call(common, "POST", "/pins/accept", Some(serde_json::json!({ "upstream": upstream, "tool": tool })))?,
            };
            println!("accepted {tool} on {upstream}: pinned to {}", v["pin"]["digest"].as_str().unwrap_or(""));
            Ok(())
        }
    }
}
