//! Upstream credentials: read from the environment or a file at load (never inline in the
//! config), held as the header to inject and the secret values to keep out of responses.
//! `Debug` never shows them.

use super::{compile::resolve, schema};
use std::path::Path;

pub struct Injected {
    /// Header name (lower case) and value sent upstream.
    pub header: String,
    pub value: Vec<u8>,
    /// The secret as read, and the header value: scrubbed from anything the upstream sends
    /// back to the agent.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Injected {{ header: {:?}, value: *** }}", self.header)
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The secret named by `env = "VAR"` or `file = "/path"` (exactly one) at config path `p`.
pub(super) fn read_secret(env: Option<&str>, secret_file: Option<&str>, file: Option<&Path>, p: &str, add: &mut dyn FnMut(String, String)) -> Option<String> {
    match (env, secret_file) {
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                add(format!("{p}.env"), format!("environment variable {var} is not set (or empty); export it for the sluice process"));
                None
            }
        },
        (None, Some(f)) => {
            let path = resolve(file, f);
            match std::fs::read_to_string(&path) {
                Ok(v) if !v.trim().is_empty() => Some(v.trim_end_matches(['\r', '\n']).to_owned()),
                Ok(_) => {
                    add(format!("{p}.file"), format!("{} is empty", path.display()));
                    None
                }
                Err(e) => {
                    add(format!("{p}.file"), format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        }
        _ => {
            add(p.to_owned(), "set exactly one of env = \"VAR\" or file = \"/path\" (secrets are never written in this file)".into());
            None
        }
    }
}

pub(super) fn compile(c: &schema::Credential, file: Option<&Path>, at: &str, add: &mut dyn FnMut(String, String)) -> Option<std::sync::Arc<Injected>> {
    let p = format!("{at}.credential");
    let secret = read_secret(c.env.as_deref(), c.file.as_deref(), file, &p, add)?;
    let (header, value) = match (c.kind.as_str(), &c.header) {
        ("bearer", None) => ("authorization".to_string(), format!("Bearer {secret}")),
        ("basic", None) => {
            if !secret.contains(':') {
                add(format!("{p}.kind"), "basic needs the secret as user:password".into());
                return None;
            }
            ("authorization".to_string(), format!("Basic {}", base64(secret.as_bytes())))
        }
        ("header", Some(h)) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => (h.to_ascii_lowercase(), secret.clone()),
        ("header", _) => {
            add(format!("{p}.header"), "kind = \"header\" needs header = \"X-Name\" (letters, digits, '-', '_')".into());
            return None;
        }
        (k, Some(_)) if k == "bearer" || k == "basic" => {
            add(format!("{p}.header"), format!("header is only for kind = \"header\", not \"{k}\""));
            return None;
        }
        (other, _) => {
            add(format!("{p}.kind"), format!("\"{other}\" is not a credential kind; write \"bearer\", \"basic\" or \"header\""));
            return None;
        }
    };
    if secret.bytes().any(|b| b < 0x20 || b == 0x7f) {
        add(p, "the secret contains control characters and cannot be sent in a header".into());
        return None;
    }
    let mut secrets = vec![secret.clone(), value.clone()];
    if let Some((_, pw)) = secret.split_once(':').filter(|_| c.kind == "basic") {
        secrets.push(pw.to_owned());
    }
    secrets.retain(|s| s.len() >= 8);
    Some(std::sync::Arc::new(Injected { header, value: value.into_bytes(), secrets }))
}

/// What `sluice stdio --name NAME` gives the server it runs: environment variables holding
/// secrets, and those secrets as a credential to scrub from the server's answers.
#[derive(Clone)]
pub struct StdioServer {
    pub name: String,
    pub env: Vec<(String, String)>,
    pub scrub: Option<std::sync::Arc<Injected>>,
}

impl std::fmt::Debug for StdioServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "StdioServer {{ name: {:?}, env: {names:?} = *** }}", self.name)
    }
}

pub(super) fn compile_stdio(servers: &[schema::StdioServer], file: Option<&Path>, add: &mut dyn FnMut(String, String)) -> Vec<StdioServer> {
    let mut out: Vec<StdioServer> = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let p = format!("stdio_server[{i}]");
        if servers[..i].iter().any(|o| o.name == s.name) {
            add(format!("{p}.name"), format!("\"{}\" names another stdio_server too; names must be unique", s.name));
        }
        let mut env = Vec::new();
        for (j, e) in s.env.iter().enumerate() {
            let pe = format!("{p}.env[{j}]");
            let valid = e.name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_') && e.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                add(format!("{pe}.name"), format!("\"{}\" is not an environment variable name (letters, digits, '_'; not starting with a digit)", e.name));
            }
            if let Some(v) = read_secret(e.env.as_deref(), e.file.as_deref(), file, &pe, add) {
                if v.contains('\0') {
                    add(pe, "the secret contains a NUL byte and cannot be passed in the environment".into());
                } else if valid {
                    env.push((e.name.clone(), v));
                }
            }
        }
        let secrets: Vec<String> = env.iter().map(|(_, v)| v.clone()).filter(|v| v.len() >= 8).collect();
        let scrub = (!secrets.is_empty()).then(|| std::sync::Arc::new(Injected { header: String::new(), value: Vec::new(), secrets }));
        out.push(StdioServer { name: s.name.clone(), env, scrub });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::schema::Credential;

    fn compile(kind: &str, header: Option<&str>, env: Option<&str>, file: Option<&str>) -> (Option<std::sync::Arc<super::Injected>>, Vec<String>) {
        let c = Credential { kind: kind.into(), header: header.map(Into::into), env: env.map(Into::into), file: file.map(Into::into) };
        let mut issues = Vec::new();
        let r = super::compile(&c, None, "upstream[0]", &mut |p, m| issues.push(format!("{p}: {m}")));
        (r, issues)
    }

    #[test]
    fn credentials_come_from_env_or_file_and_never_show_in_debug() {
        std::env::set_var("SLUICE_TEST_UP_BASIC", "svc:s3cret-password");
        let (c, issues) = compile("basic", None, Some("SLUICE_TEST_UP_BASIC"), None);
        assert!(issues.is_empty(), "{issues:?}");
        let c = c.unwrap();
        assert_eq!(c.header, "authorization");
        assert_eq!(c.value, b"Basic c3ZjOnMzY3JldC1wYXNzd29yZA==");
        assert!(c.secrets.contains(&"s3cret-password".to_string()), "the password alone is scrubbed too");
        assert!(!format!("{c:?}").contains("s3cret"));
        let (_, issues) = compile("bearer", None, Some("SLUICE_TEST_SURELY_UNSET_VAR"), None);
        assert!(issues[0].starts_with("upstream[0].credential.env: environment variable SLUICE_TEST_SURELY_UNSET_VAR"), "{issues:?}");
        let (_, issues) = compile("bearer", None, Some("A"), Some("/x"));
        assert!(issues[0].contains("exactly one of env"), "{issues:?}");
        let (_, issues) = compile("header", None, Some("SLUICE_TEST_UP_BASIC"), None);
        assert!(issues[0].starts_with("upstream[0].credential.header"), "{issues:?}");
        let (_, issues) = compile("digest", None, Some("SLUICE_TEST_UP_BASIC"), None);
        assert!(issues[0].contains("not a credential kind"), "{issues:?}");
        let (_, issues) = compile("bearer", None, None, Some("/nonexistent/token"));
        assert!(issues[0].starts_with("upstream[0].credential.file: cannot read /nonexistent/token"), "{issues:?}");
    }

    #[test]
    fn stdio_secrets_become_environment_variables_and_problems_name_their_path() {
        use crate::config::schema::{StdioEnv, StdioServer};
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gh.token"), "ghp_secretvalue123\n").unwrap();
        let env = |name: &str, file: Option<&str>, var: Option<&str>| StdioEnv { name: name.into(), file: file.map(Into::into), env: var.map(Into::into) };
        let servers = vec![
            StdioServer { name: "github".into(), env: vec![env("GITHUB_TOKEN", Some("gh.token"), None)] },
            StdioServer { name: "bad".into(), env: vec![env("1X", Some("gh.token"), None), env("Y", None, None), env("Z", Some("missing"), None)] },
            StdioServer { name: "github".into(), env: vec![] },
        ];
        let mut issues = Vec::new();
        let base = dir.path().join("sluice.toml");
        let out = super::compile_stdio(&servers, Some(&base), &mut |p, m| issues.push(format!("{p}: {m}")));
        assert_eq!(out[0].env, vec![("GITHUB_TOKEN".to_string(), "ghp_secretvalue123".to_string())], "read relative to the config file, newline trimmed");
        assert_eq!(out[0].scrub.as_ref().unwrap().secrets, ["ghp_secretvalue123"]);
        assert!(!format!("{:?}", out[0]).contains("secretvalue"), "Debug hides values");
        let paths: Vec<&str> = issues.iter().map(|i| i.split(':').next().unwrap()).collect();
        assert_eq!(paths, ["stdio_server[1].env[0].name", "stdio_server[1].env[1]", "stdio_server[1].env[2].file", "stdio_server[2].name"], "{issues:?}");
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
