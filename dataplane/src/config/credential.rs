//! Upstream credentials: read from the environment or a file at load (never inline in the
//! config), held as the header to inject and the secret values to keep out of responses.
//! `Debug` never shows them.

use super::{compile::resolve, schema};
use crate::oauth::{ClientAuth, Grant, Live, Source};
use crate::token_exchange::Exchanger;
use std::path::Path;
use std::sync::Arc;

pub struct Injected {
    /// Header name (lower case) sent upstream.
    pub header: String,
    held: Held,
}

enum Held {
    /// Read from the environment or a file at load.
    Fixed(Arc<Live>),
    /// Asked of a token endpoint, renewed in the background.
    Token(Arc<Source>),
    /// Exchanged for each caller's own token (RFC 8693).
    Exchange(Arc<Exchanger>, Arc<Live>),
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.held {
            Held::Fixed(_) => write!(f, "Injected {{ header: {:?}, value: *** }}", self.header),
            Held::Token(s) => write!(f, "Injected {{ header: {:?}, {s:?} }}", self.header),
            Held::Exchange(x, _) => write!(f, "Injected {{ header: {:?}, {x:?} }}", self.header),
        }
    }
}

impl Injected {
    fn fixed(header: String, value: Vec<u8>, secrets: Vec<String>) -> Self {
        Injected { header, held: Held::Fixed(Arc::new(Live { value: Some(value), secrets, error: None })) }
    }

    /// The header value to send now (none while a token endpoint has issued no unexpired
    /// token, and for a token exchanged per caller: see [`Injected::exchanger`]) and the
    /// secrets to scrub from the upstream's answers.
    pub fn live(&self) -> Arc<Live> {
        match &self.held {
            Held::Fixed(l) => l.clone(),
            Held::Token(s) => s.live(),
            Held::Exchange(_, none) => none.clone(),
        }
    }

    /// The token source, for a credential asked of a token endpoint.
    pub fn token(&self) -> Option<&Arc<Source>> {
        match &self.held {
            Held::Token(s) => Some(s),
            _ => None,
        }
    }

    /// The exchanger, for a token exchanged for each caller's own.
    pub fn exchanger(&self) -> Option<&Arc<Exchanger>> {
        match &self.held {
            Held::Exchange(x, _) => Some(x),
            _ => None,
        }
    }
}

pub(crate) fn base64(input: &[u8]) -> String {
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
    read_secret_as(["env", "file"], env, secret_file, file, p, add)
}

/// [`read_secret`] where the two keys have other names (`url_env`, `url_file`).
pub(super) fn read_secret_as(keys: [&str; 2], env: Option<&str>, secret_file: Option<&str>, file: Option<&Path>, p: &str, add: &mut dyn FnMut(String, String)) -> Option<String> {
    let [env_key, file_key] = keys;
    match (env, secret_file) {
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                add(format!("{p}.{env_key}"), format!("environment variable {var} is not set (or empty); export it for the sluice process"));
                None
            }
        },
        (None, Some(f)) => {
            let path = resolve(file, f);
            match std::fs::read_to_string(&path) {
                Ok(v) if !v.trim().is_empty() => Some(v.trim_end_matches(['\r', '\n']).to_owned()),
                Ok(_) => {
                    add(format!("{p}.{file_key}"), format!("{} is empty", path.display()));
                    None
                }
                Err(e) => {
                    add(format!("{p}.{file_key}"), format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        }
        _ => {
            add(p.to_owned(), format!("set exactly one of {env_key} = \"VAR\" or {file_key} = \"/path\" (secrets are never written in this file)"));
            None
        }
    }
}

/// The credential of the upstream `name`, configured at path `at`.
pub(super) fn compile(c: &schema::Credential, name: &str, file: Option<&Path>, at: &str, outbound: &crate::tls::Outbound, add: &mut dyn FnMut(String, String)) -> Option<Arc<Injected>> {
    let p = format!("{at}.credential");
    if c.kind == OAUTH || c.kind == EXCHANGE {
        return oauth(c, name, file, &p, outbound, add);
    }
    for (name, set) in [("token_url", c.token_url.is_some()), ("client_id", c.client_id.is_some()), ("scope", c.scope.is_some()), ("resource", c.resource.is_some()), ("audience", c.audience.is_some()), ("client_auth", c.client_auth.is_some()), ("key_file", c.key_file.is_some()), ("assertion_audience", c.assertion_audience.is_some())] {
        if set {
            add(format!("{p}.{name}"), format!("{name} is only for kind = \"{OAUTH}\" or \"{EXCHANGE}\""));
        }
    }
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
            add(format!("{p}.kind"), format!("\"{other}\" is not a credential kind; write \"bearer\", \"basic\", \"header\", \"{OAUTH}\" or \"{EXCHANGE}\""));
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
    Some(Arc::new(Injected::fixed(header, value.into_bytes(), secrets)))
}

const OAUTH: &str = "oauth_client_credentials";
/// RFC 8693: each caller's own access token exchanged for one to the upstream.
pub const EXCHANGE: &str = "oauth_token_exchange";

/// Is `url` one a client secret may be sent to: https, or http to this host only?
pub(super) fn secret_may_go_to(url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("\"{url}\" is not an absolute URL; write the token endpoint's https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("\"{url}\" names no host (or carries user information); write the token endpoint's https:// URL"));
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" if host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback()) => Ok(()),
        "http" => Err(format!("\"{url}\" would send the client secret in clear text; use https:// (http:// only to a loopback address)")),
        other => Err(format!("\"{url}\" has scheme {other}; use https://")),
    }
}

/// `kind = "oauth_client_credentials"` or `"oauth_token_exchange"`: the token endpoint, the
/// client, its secret (from `env` or `file`), and what to ask for.
fn oauth(c: &schema::Credential, name: &str, file: Option<&Path>, p: &str, outbound: &crate::tls::Outbound, add: &mut dyn FnMut(String, String)) -> Option<Arc<Injected>> {
    let mut ok = true;
    if c.header.is_some() {
        add(format!("{p}.header"), format!("kind = \"{}\" sends the token as Authorization: Bearer; remove header", c.kind));
        ok = false;
    }
    match c.token_url.as_deref() {
        None => {
            add(format!("{p}.token_url"), "the token endpoint is needed, e.g. token_url = \"https://idp.example.com/oauth2/token\"".into());
            ok = false;
        }
        Some(u) => {
            if let Err(e) = secret_may_go_to(u) {
                add(format!("{p}.token_url"), e);
                ok = false;
            }
        }
    }
    if c.client_id.as_deref().is_none_or(str::is_empty) {
        add(format!("{p}.client_id"), "the client id the token endpoint knows the gateway by is needed".into());
        ok = false;
    }
    let auth = match c.client_auth.as_deref() {
        None | Some("basic") => ClientAuth::Basic,
        Some("post") => ClientAuth::Post,
        Some("private_key_jwt") => match c.key_file.as_deref() {
            None => {
                add(format!("{p}.key_file"), "private_key_jwt signs with the gateway's key: key_file = \"…\" (an Ed25519 key: openssl genpkey -algorithm ed25519 -out FILE; give the provider its public key from `sluice jwks`)".into());
                ok = false;
                ClientAuth::Basic
            }
            Some(k) => {
                let path = resolve(file, k);
                let signer = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|pem| crate::identity::forward::Signer::from_pem(&pem, String::new(), std::time::Duration::from_secs(60)).map_err(|e| format!("{}: {e}", path.display())));
                match signer {
                    Ok(signer) => ClientAuth::PrivateKeyJwt { signer: Arc::new(signer), audience: c.assertion_audience.clone().or_else(|| c.token_url.clone()).unwrap_or_default() },
                    Err(e) => {
                        add(format!("{p}.key_file"), e);
                        ok = false;
                        ClientAuth::Basic
                    }
                }
            }
        },
        Some(other) => {
            add(format!("{p}.client_auth"), format!("\"{other}\" is not a client authentication; write \"basic\" (client_secret_basic, the default), \"post\" (client_secret_post) or \"private_key_jwt\""));
            ok = false;
            ClientAuth::Basic
        }
    };
    let keyed = c.client_auth.as_deref() == Some("private_key_jwt");
    for (name, set) in [("key_file", c.key_file.is_some()), ("assertion_audience", c.assertion_audience.is_some())] {
        if set && !keyed {
            add(format!("{p}.{name}"), format!("{name} is only for client_auth = \"private_key_jwt\""));
            ok = false;
        }
    }
    for (name, v) in [("scope", &c.scope), ("resource", &c.resource), ("audience", &c.audience)] {
        if v.as_deref().is_some_and(|v| v.is_empty() || v.chars().any(char::is_control)) {
            add(format!("{p}.{name}"), format!("{name} is empty or holds control characters; remove it or give the value the token endpoint expects"));
            ok = false;
        }
    }
    // With private_key_jwt there is no shared secret.
    let secret = if keyed && c.env.is_none() && c.file.is_none() { String::new() } else { read_secret(c.env.as_deref(), c.file.as_deref(), file, p, add)? };
    if !ok {
        return None;
    }
    let grant = Grant {
        token_url: c.token_url.clone().unwrap_or_default(),
        client_id: c.client_id.clone().unwrap_or_default(),
        secret,
        auth,
        scope: c.scope.clone(),
        resource: c.resource.clone(),
        audience: c.audience.clone(),
        outbound: outbound.clone(),
    };
    if c.kind == EXCHANGE {
        // What requests read before their caller's token is exchanged: nothing to send, the
        // client secret to scrub.
        let secrets = [grant.secret.clone()].into_iter().filter(|s| s.len() >= 8).collect();
        let none = Arc::new(Live { value: None, secrets, error: Some("the caller's token has not been exchanged".into()) });
        return Some(Arc::new(Injected { header: "authorization".into(), held: Held::Exchange(Exchanger::new(name.to_owned(), grant), none) }));
    }
    Some(Arc::new(Injected { header: "authorization".into(), held: Held::Token(Source::new(name.to_owned(), grant)) }))
}

/// What `sluice stdio --name NAME` gives the server it runs: environment variables holding
/// secrets, and those secrets as a credential to scrub from the server's answers.
#[derive(Clone)]
pub struct StdioServer {
    pub name: String,
    pub env: Vec<(String, String)>,
    pub scrub: Option<Arc<Injected>>,
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
        let scrub = (!secrets.is_empty()).then(|| Arc::new(Injected::fixed(String::new(), Vec::new(), secrets)));
        out.push(StdioServer { name: s.name.clone(), env, scrub });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::schema::Credential;

    fn compile(kind: &str, header: Option<&str>, env: Option<&str>, file: Option<&str>) -> (Option<std::sync::Arc<super::Injected>>, Vec<String>) {
        let c = Credential { kind: kind.into(), header: header.map(Into::into), env: env.map(Into::into), file: file.map(Into::into), ..Credential::default() };
        compile_full(&c)
    }

    fn compile_full(c: &Credential) -> (Option<std::sync::Arc<super::Injected>>, Vec<String>) {
        let mut issues = Vec::new();
        let r = super::compile(c, "up", None, "upstream[0]", &Default::default(), &mut |p, m| issues.push(format!("{p}: {m}")));
        (r, issues)
    }

    #[test]
    fn credentials_come_from_env_or_file_and_never_show_in_debug() {
        std::env::set_var("SLUICE_TEST_UP_BASIC", "svc:s3cret-password");
        let (c, issues) = compile("basic", None, Some("SLUICE_TEST_UP_BASIC"), None);
        assert!(issues.is_empty(), "{issues:?}");
        let c = c.unwrap();
        assert_eq!(c.header, "authorization");
        assert_eq!(c.live().value.as_deref(), Some(&b"Basic c3ZjOnMzY3JldC1wYXNzd29yZA=="[..]));
        assert!(c.live().secrets.contains(&"s3cret-password".to_string()), "the password alone is scrubbed too");
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
        assert_eq!(out[0].scrub.as_ref().unwrap().live().secrets, ["ghp_secretvalue123"]);
        assert!(!format!("{:?}", out[0]).contains("secretvalue"), "Debug hides values");
        let paths: Vec<&str> = issues.iter().map(|i| i.split(':').next().unwrap()).collect();
        assert_eq!(paths, ["stdio_server[1].env[0].name", "stdio_server[1].env[1]", "stdio_server[1].env[2].file", "stdio_server[2].name"], "{issues:?}");
    }

    #[test]
    fn an_oauth_credential_needs_a_safe_token_url_a_client_and_a_secret_and_says_what_is_wrong() {
        std::env::set_var("SLUICE_TEST_OAUTH_SECRET", "client-secret-value");
        let base = Credential {
            kind: "oauth_client_credentials".into(),
            env: Some("SLUICE_TEST_OAUTH_SECRET".into()),
            token_url: Some("http://127.0.0.1:9/token".into()),
            client_id: Some("sluice-gateway".into()),
            scope: Some("mcp".into()),
            ..Credential::default()
        };
        let (c, issues) = compile_full(&base);
        assert!(issues.is_empty(), "{issues:?}");
        let c = c.unwrap();
        assert!(c.token().is_some_and(|t| t.grant.client_id == "sluice-gateway" && t.grant.auth == crate::oauth::ClientAuth::Basic));
        assert!(!format!("{c:?}").contains("client-secret-value"), "Debug hides the secret");
        assert!(c.live().secrets.iter().any(|s| s == "client-secret-value"), "the client secret is scrubbed from answers too");
        for (change, path, says) in [
            (Credential { token_url: Some("http://idp.example.com/token".into()), ..base.clone() }, "token_url", "clear text"),
            (Credential { token_url: Some("ftp://idp/token".into()), ..base.clone() }, "token_url", "use https://"),
            (Credential { token_url: Some("https://user@idp/token".into()), ..base.clone() }, "token_url", "user information"),
            (Credential { token_url: Some("idp/token".into()), ..base.clone() }, "token_url", "not an absolute URL"),
            (Credential { token_url: None, ..base.clone() }, "token_url", "token endpoint is needed"),
            (Credential { client_id: None, ..base.clone() }, "client_id", "client id"),
            (Credential { client_auth: Some("jwt".into()), ..base.clone() }, "client_auth", "\"basic\""),
            (Credential { header: Some("X-Token".into()), ..base.clone() }, "header", "remove header"),
            (Credential { scope: Some("a\nb".into()), ..base.clone() }, "scope", "control characters"),
            (Credential { env: None, ..base.clone() }, "", "exactly one of env"),
        ] {
            let (c, issues) = compile_full(&change);
            assert!(c.is_none(), "{path}");
            let want = if path.is_empty() { "upstream[0].credential: ".to_owned() } else { format!("upstream[0].credential.{path}: ") };
            assert!(issues.iter().any(|i| i.starts_with(&want) && i.contains(says)), "{want}{says}: {issues:?}");
        }
        for ok in ["https://idp.example.com/oauth2/token", "http://localhost:8080/token", "http://[::1]:80/t"] {
            assert!(compile_full(&Credential { token_url: Some(ok.into()), ..base.clone() }).1.is_empty(), "{ok}");
        }
        let (_, issues) = compile_full(&Credential { kind: "bearer".into(), token_url: Some("https://x/t".into()), ..base.clone() });
        assert!(issues.iter().any(|i| i.starts_with("upstream[0].credential.token_url: token_url is only for kind = \"oauth_client_credentials\"")), "{issues:?}");
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
