//! `[approvals]`: the webhooks told of approval steps, and the page they link to.

use super::schema;
use crate::approvals::notify::{Step, Target};
use std::net::SocketAddr;
use std::path::Path;

/// What notifications need, compiled: read at load and swapped whole on reload.
#[derive(Debug, Default)]
pub struct ApprovalsCfg {
    /// The reviewers' page linked from notifications (none without an admin listener or
    /// `page_url`).
    pub page_url: Option<String>,
    pub notify: Vec<Target>,
    /// Roots the webhooks' certificates are checked against.
    pub outbound: crate::tls::Outbound,
    /// The other gateways' admin listeners (`approvals.peers`), and how they are asked.
    pub peers: Vec<String>,
    pub peer_agent: Option<ureq::Agent>,
    /// `approvals.state_file`: where requests and decisions are kept across restarts.
    pub state_file: Option<std::path::PathBuf>,
}

pub(super) fn compile(a: &schema::Approvals, admin: Option<(SocketAddr, bool)>, file: Option<&Path>, outbound: &crate::tls::Outbound, add: &mut dyn FnMut(String, String)) -> ApprovalsCfg {
    let page_url = match &a.page_url {
        Some(u) if is_http_url(u) => Some(u.clone()),
        Some(_) => {
            add("approvals.page_url".into(), "must be an http:// or https:// URL of the admin listener's /approvals/ui as reviewers reach it".into());
            None
        }
        // An address reviewers can use: not a wildcard one (0.0.0.0 is no place to go).
        None => admin.filter(|(a, _)| !a.ip().is_unspecified()).map(|(a, tls)| format!("{}://{a}/approvals/ui", if tls { "https" } else { "http" })),
    };
    let mut notify = Vec::with_capacity(a.notify.len());
    let mut names = std::collections::HashSet::new();
    for (i, n) in a.notify.iter().enumerate() {
        let p = format!("approvals.notify[{i}]");
        let name = n.name.clone().unwrap_or_else(|| format!("notify[{i}]"));
        if !names.insert(name.clone()) {
            // Logs and metrics tell webhooks apart by name.
            add(format!("{p}.name"), format!("\"{name}\" names another webhook too: give each its own name"));
        }
        let mut on = [false; 4];
        let mut bad = false;
        match &n.on {
            None => on = [true; 4],
            Some(steps) => {
                for (j, s) in steps.iter().enumerate() {
                    match Step::parse(s) {
                        Some(step) => on[step as usize] = true,
                        None => {
                            bad = true;
                            add(format!("{p}.on[{j}]"), format!("unknown step \"{s}\": use \"requested\", \"decided\", \"expired\" or \"pin_changed\""));
                        }
                    }
                }
                if steps.is_empty() {
                    add(format!("{p}.on"), "names no step: leave it out for all four, or list some of \"requested\", \"decided\", \"expired\", \"pin_changed\"".into());
                }
            }
        }
        let url = super::credential::read_secret_as(["url_env", "url_file"], n.url_env.as_deref(), n.url_file.as_deref(), file, &p, add);
        let Some(url) = url.filter(|_| !bad) else { continue };
        let url = url.trim().to_owned();
        if !is_http_url(&url) {
            // Never echo the value: it is a secret.
            add(p.clone(), "the webhook URL read from url_env/url_file is not an http:// or https:// URL".into());
            continue;
        }
        notify.push(Target { name, url, format: n.format, on });
    }
    if !notify.is_empty() && page_url.is_none() {
        tracing::warn!("approval notifications cannot link to the reviewers' page: set approvals.page_url (or [admin])");
    }
    let mut peers = Vec::new();
    for (i, u) in a.peers.iter().enumerate() {
        let u = u.trim_end_matches('/');
        // Reviewers' tokens travel to them.
        match super::credential::secret_may_go_to(u) {
            Ok(()) if is_http_url(u) => peers.push(u.to_owned()),
            Ok(()) => add(format!("approvals.peers[{i}]"), format!("\"{u}\" is not the https:// address of a gateway's admin listener")),
            Err(e) => add(format!("approvals.peers[{i}]"), e.replace("client secret", "reviewers' tokens").replace("token endpoint's", "admin listener's")),
        }
    }
    let client = match (&a.peer_cert, &a.peer_key) {
        (Some(c), Some(k)) => match crate::tls::client_cert(&super::compile::resolve(file, c), &super::compile::resolve(file, k)) {
            Ok(cert) => Some(cert),
            Err(e) => {
                add("approvals.peer_cert".into(), e);
                None
            }
        },
        (None, None) => None,
        _ => {
            add("approvals".into(), "peer_cert and peer_key go together; set both or neither".into());
            None
        }
    };
    let peer_agent = (!peers.is_empty()).then(|| ureq::Agent::config_builder().timeout_global(Some(std::time::Duration::from_secs(5))).http_status_as_error(false).max_redirects(0).tls_config(outbound.tls_with(client)).build().into());
    let state_file = a.state_file.as_deref().map(|f| super::compile::resolve(file, f));
    ApprovalsCfg { page_url, notify, outbound: outbound.clone(), peers, peer_agent, state_file }
}

fn is_http_url(u: &str) -> bool {
    let rest = u.strip_prefix("https://").or_else(|| u.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !u.chars().any(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::notify::Format;

    fn compiled(toml_text: &str, admin: Option<(SocketAddr, bool)>) -> (ApprovalsCfg, Vec<(String, String)>) {
        let a: schema::Approvals = toml::from_str(toml_text).unwrap();
        let mut issues = Vec::new();
        let cfg = compile(&a, admin, None, &Default::default(), &mut |p, m| issues.push((p, m)));
        (cfg, issues)
    }

    #[test]
    fn webhooks_come_from_the_environment_or_a_file_and_every_problem_is_named() {
        std::env::set_var("SLUICE_TEST_HOOK_A", "https://hooks.example.com/services/T0/B0/XYZ");
        std::env::set_var("SLUICE_TEST_HOOK_BAD", "hooks.example.com/no-scheme");
        let dir = std::env::temp_dir().join(format!("sluice-notify-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hook"), "http://10.0.0.5:8080/approvals\n").unwrap();
        let (cfg, issues) = compiled(
            &format!(
                r#"
[[notify]]
url_env = "SLUICE_TEST_HOOK_A"
format = "slack"
on = ["requested"]
[[notify]]
name = "audit"
url_file = "{}"
[[notify]]
url_env = "SLUICE_TEST_HOOK_BAD"
[[notify]]
url_env = "SLUICE_TEST_HOOK_UNSET"
[[notify]]
url_env = "SLUICE_TEST_HOOK_A"
url_file = "/x"
[[notify]]
url_env = "SLUICE_TEST_HOOK_A"
on = ["approved", "expired"]
"#,
                dir.join("hook").display()
            ),
            Some(("127.0.0.1:9090".parse().unwrap(), false)),
        );
        assert_eq!(cfg.page_url.as_deref(), Some("http://127.0.0.1:9090/approvals/ui"));
        let got: Vec<_> = cfg.notify.iter().map(|t| (t.name.as_str(), t.url.as_str(), t.format, t.on)).collect();
        assert_eq!(
            got,
            [
                ("notify[0]", "https://hooks.example.com/services/T0/B0/XYZ", Format::Slack, [true, false, false, false]),
                ("audit", "http://10.0.0.5:8080/approvals", Format::Json, [true, true, true, true]),
            ]
        );
        let paths: Vec<&str> = issues.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["approvals.notify[2]", "approvals.notify[3].url_env", "approvals.notify[4]", "approvals.notify[5].on[0]"], "{issues:?}");
        assert!(issues[0].1.contains("not an http") && !issues[0].1.contains("hooks.example.com"), "the bad URL is not echoed: {issues:?}");
        assert!(issues[2].1.contains("url_env = \"VAR\" or url_file"), "{issues:?}");
        assert!(issues[3].1.contains("\"approved\""), "{issues:?}");
        let (_, issues) = compiled("page_url = \"/approvals/ui\"\n", None);
        assert_eq!(issues.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["approvals.page_url"]);
        let (cfg, issues) = compiled("", None);
        assert!(issues.is_empty() && cfg.page_url.is_none() && cfg.notify.is_empty());
        let (cfg, _) = compiled("", Some(("0.0.0.0:9090".parse().unwrap(), false)));
        assert_eq!(cfg.page_url, None, "a wildcard address is no link");
        let (cfg, _) = compiled("", Some(("10.1.2.3:9090".parse().unwrap(), true)));
        assert_eq!(cfg.page_url.as_deref(), Some("https://10.1.2.3:9090/approvals/ui"), "an admin listener with TLS is linked as https");
        // Peers: reviewers' tokens travel there, so https (http to loopback only).
        let (cfg, issues) = compiled("peers = [\"https://gw-2.internal:9901/\", \"http://127.0.0.1:9902\"]\n", None);
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(cfg.peers, ["https://gw-2.internal:9901", "http://127.0.0.1:9902"]);
        assert!(cfg.peer_agent.is_some());
        let (cfg, issues) = compiled("peers = [\"http://gw-2.internal:9901\", \"gw-3:9901\"]\npeer_cert = \"/x.pem\"\n", None);
        let paths: Vec<&str> = issues.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["approvals.peers[0]", "approvals.peers[1]", "approvals"], "{issues:?}");
        assert!(issues[0].1.contains("clear text") && issues[2].1.contains("peer_key"), "{issues:?}");
        assert!(cfg.peers.is_empty());
        let (_, issues) = compiled("[[notify]]\nname = \"chat\"\nurl_env = \"SLUICE_TEST_HOOK_A\"\n[[notify]]\nname = \"chat\"\nurl_env = \"SLUICE_TEST_HOOK_A\"\n", None);
        assert_eq!(issues.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["approvals.notify[1].name"], "{issues:?}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
