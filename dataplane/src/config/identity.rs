//! `[identity]` lowered into an [`Authenticator`]; the issuer's key fetching starts here.

use super::{duration, schema};
use crate::identity::{jwks::Jwks, ApiKeyEntry, Authenticator, Identity, JwtCheck};
use jsonwebtoken::Algorithm;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// One issuer whose JWTs are accepted, its claim paths resolved.
struct Trusted {
    issuer: String,
    audience: Vec<String>,
    subject_claim: String,
    groups_claim: String,
    agent_type_claim: Option<String>,
}

pub(super) fn compile(i: Option<&schema::Identity>, file: Option<&std::path::Path>, outbound: &crate::tls::Outbound, add: &mut dyn FnMut(String, String)) -> Option<Arc<Authenticator>> {
    let i = i?;
    let required = match i.mode.as_str() {
        "required" => true,
        "off" => return None,
        other => {
            add("identity.mode".into(), format!("\"{other}\" is not a mode; write \"required\" or \"off\""));
            true
        }
    };
    let mut dur = |path: &str, v: &str| {
        duration::parse(v).unwrap_or_else(|m| {
            add(path.into(), m);
            Duration::ZERO
        })
    };
    let skew = dur("identity.clock_skew", &i.clock_skew);
    let refresh = dur("identity.jwks_refresh", &i.jwks_refresh);
    let min_interval = dur("identity.jwks_min_interval", &i.jwks_min_interval);
    let mut algorithms = Vec::new();
    for (n, a) in i.algorithms.iter().enumerate() {
        match Algorithm::from_str(a) {
            Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => add(
                format!("identity.algorithms[{n}]"),
                format!("{a} is symmetric: a gateway that accepts it can be fooled with the issuer's public key as the secret; use the issuer's asymmetric algorithm"),
            ),
            Ok(alg) => algorithms.push(alg),
            Err(_) => add(format!("identity.algorithms[{n}]"), format!("\"{a}\" is not a JWS algorithm (RS256, PS256, ES256, EdDSA, ...)")),
        }
    }
    // The issuers whose JWTs are accepted: `issuer`, then `[[identity.also_trust]]`.
    let mut issuers: Vec<Trusted> = Vec::new();
    if let Some(iss) = &i.issuer {
        if !(iss.starts_with("https://") || iss.starts_with("http://")) {
            add("identity.issuer".into(), format!("\"{iss}\" is not an http(s) URL"));
        }
        if i.audience.is_empty() {
            add("identity.audience".into(), "is empty: list the audience your issuer puts in tokens for this gateway (e.g. its URL)".into());
        }
        issuers.push(Trusted { issuer: iss.clone(), audience: i.audience.clone(), subject_claim: i.subject_claim.clone(), groups_claim: i.groups_claim.clone(), agent_type_claim: i.agent_type_claim.clone() });
    }
    for (n, t) in i.also_trust.iter().enumerate() {
        let p = format!("identity.also_trust[{n}]");
        if i.issuer.is_none() {
            add(p.clone(), "needs identity.issuer first (the main issuer; this one is trusted as well)".into());
        }
        if !(t.issuer.starts_with("https://") || t.issuer.starts_with("http://")) {
            add(format!("{p}.issuer"), format!("\"{}\" is not an http(s) URL", t.issuer));
        } else if issuers.iter().any(|o| o.issuer == t.issuer) {
            add(format!("{p}.issuer"), format!("\"{}\" is trusted already; each issuer once", t.issuer));
        }
        if t.audience.is_empty() {
            add(format!("{p}.audience"), "is empty: list the audience this issuer puts in tokens for this gateway".into());
        }
        issuers.push(Trusted {
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
            subject_claim: t.subject_claim.clone().unwrap_or_else(|| i.subject_claim.clone()),
            groups_claim: t.groups_claim.clone().unwrap_or_else(|| i.groups_claim.clone()),
            agent_type_claim: t.agent_type_claim.clone().or_else(|| i.agent_type_claim.clone()),
        });
    }
    let mut api_keys = Vec::new();
    for (n, k) in i.api_keys.iter().enumerate() {
        let hex = k.sha256.trim();
        let bytes: Option<Vec<u8>> = (hex.len() == 64).then(|| (0..32).filter_map(|j| u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).ok()).collect());
        match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            Some(sha256) => api_keys.push(ApiKeyEntry {
                sha256,
                identity: Identity { subject: k.subject.clone(), groups: k.groups.clone(), agent_type: k.agent_type.clone(), via: "api_key", claims: None },
            }),
            None => add(format!("identity.api_key[{n}].sha256"), "must be 64 hex digits: printf %s \"$KEY\" | sha256sum".into()),
        }
    }
    if required && issuers.is_empty() && api_keys.is_empty() && i.mtls.is_none() {
        add(
            "identity".into(),
            "mode is \"required\" but there is neither an issuer nor an API key: nobody could call; set identity.issuer or add [[identity.api_key]]".into(),
        );
    }
    // Key fetching starts only for a valid section (a rejected reload starts nothing).
    let issuers = issuers
        .into_iter()
        .map(|t| JwtCheck {
            jwks: Jwks::start(t.issuer, refresh.max(Duration::from_secs(1)), min_interval, outbound.clone()),
            audience: t.audience,
            algorithms: algorithms.clone(),
            skew_secs: skew.as_secs(),
            subject_claim: t.subject_claim,
            groups_claim: t.groups_claim,
            agent_type_claim: t.agent_type_claim,
            verified: Default::default(),
        })
        .collect();
    let mtls = i.mtls.as_ref().map(|m| {
        let by_san = match m.subject.as_str() {
            "cn" => false,
            "san" => true,
            other => {
                add("identity.mtls.subject".into(), format!("\"{other}\" is not a certificate name; use \"cn\" or \"san\""));
                false
            }
        };
        crate::identity::MtlsCheck { by_san, clients: m.clients.iter().map(|c| (c.subject.clone(), c.groups.clone(), c.agent_type.clone())).collect() }
    });
    let introspection = i.introspection.as_ref().and_then(|x| introspection(x, i, file, outbound, skew, add));
    Some(Arc::new(Authenticator { required, issuers, api_keys, resource: i.resource.clone(), mtls, introspection }))
}

/// `[identity.introspection]`, read with the issuer, audience and claim names of `[identity]`.
fn introspection(x: &schema::Introspection, i: &schema::Identity, file: Option<&std::path::Path>, outbound: &crate::tls::Outbound, skew: Duration, add: &mut dyn FnMut(String, String)) -> Option<Arc<crate::identity::introspect::Introspector>> {
    let p = "identity.introspection";
    let mut ok = true;
    if let Err(e) = super::credential::secret_may_go_to(&x.url) {
        add(format!("{p}.url"), e);
        ok = false;
    }
    if i.issuer.is_none() {
        add(p.to_owned(), "needs identity.issuer (the answers' iss is checked against it) and identity.audience".into());
        ok = false;
    }
    let auth = match x.client_auth.as_deref() {
        None | Some("basic") => crate::oauth::ClientAuth::Basic,
        Some("post") => crate::oauth::ClientAuth::Post,
        Some(other) => {
            add(format!("{p}.client_auth"), format!("\"{other}\" is not a client authentication; write \"basic\" (the default) or \"post\""));
            ok = false;
            crate::oauth::ClientAuth::Basic
        }
    };
    let cache = duration::parse(&x.cache).unwrap_or_else(|m| {
        add(format!("{p}.cache"), m);
        ok = false;
        Duration::ZERO
    });
    let secret = super::credential::read_secret(x.env.as_deref(), x.file.as_deref(), file, p, add)?;
    if !ok {
        return None;
    }
    let grant = crate::oauth::Grant { token_url: x.url.clone(), client_id: x.client_id.clone(), secret, auth, scope: None, resource: None, audience: None, outbound: outbound.clone() };
    let reading = crate::identity::introspect::Reading {
        issuer: i.issuer.clone().unwrap_or_default(),
        audience: i.audience.clone(),
        skew,
        subject_claim: i.subject_claim.clone(),
        groups_claim: i.groups_claim.clone(),
        agent_type_claim: i.agent_type_claim.clone(),
        cache,
    };
    Some(crate::identity::introspect::Introspector::new(grant, reading))
}

#[cfg(test)]
mod tests {
    use crate::config::schema::File;
    use crate::identity::AuthError;

    fn compile(text: &str) -> (Option<std::sync::Arc<crate::identity::Authenticator>>, Vec<String>) {
        let f: File = toml::from_str(text).unwrap();
        let mut issues = Vec::new();
        let a = super::compile(f.identity.as_ref(), None, &Default::default(), &mut |p, m| issues.push(format!("{p}: {m}")));
        (a, issues)
    }

    #[test]
    fn unsafe_or_useless_identity_settings_are_refused_with_their_paths() {
        let (_, issues) = compile(
            "[identity]\nissuer = \"idp.example\"\nalgorithms = [\"RS256\", \"HS256\", \"XX1\"]\nclock_skew = \"soon\"\n\
             [[identity.api_key]]\nsubject = \"bot\"\nsha256 = \"abc\"\n",
        );
        let all = issues.join("\n");
        for want in [
            "identity.issuer",
            "identity.audience",
            "identity.algorithms[1]: HS256 is symmetric",
            "identity.algorithms[2]",
            "identity.clock_skew",
            "identity.api_key[0].sha256",
        ] {
            assert!(all.contains(want), "{want} missing from:\n{all}");
        }
        let (_, issues) = compile("[identity]\nmode = \"required\"\n");
        assert!(issues.iter().any(|i| i.contains("nobody could call")), "{issues:?}");
        let (a, issues) = compile("[identity]\nmode = \"off\"\n");
        assert!(a.is_none() && issues.is_empty());
    }

    #[test]
    fn introspection_needs_a_safe_endpoint_an_issuer_and_a_secret_from_outside_the_file() {
        std::env::set_var("SLUICE_TEST_INTROSPECTION_SECRET", "introspection-secret");
        let base = "[identity]\nissuer = \"https://idp.example\"\naudience = [\"https://gw.example\"]\n[identity.introspection]\nclient_id = \"gw\"\n";
        let (a, issues) = compile(&format!("{base}url = \"https://idp.example/introspect\"\nenv = \"SLUICE_TEST_INTROSPECTION_SECRET\"\ncache = \"2m\"\n"));
        assert!(issues.is_empty(), "{issues:?}");
        let i = a.unwrap().introspection.clone().unwrap();
        assert_eq!((i.grant.token_url.as_str(), i.grant.secret.as_str(), i.reading.cache), ("https://idp.example/introspect", "introspection-secret", std::time::Duration::from_secs(120)));
        assert!(!format!("{i:?}").contains("introspection-secret"), "the secret is not in debug output");
        let (_, issues) = compile(&format!("{base}url = \"http://idp.example/introspect\"\nenv = \"SLUICE_TEST_INTROSPECTION_SECRET\"\nclient_auth = \"jwt\"\ncache = \"often\"\n"));
        let all = issues.join("\n");
        for want in ["identity.introspection.url: ", "clear text", "identity.introspection.client_auth: ", "identity.introspection.cache: "] {
            assert!(all.contains(want), "{want} missing from:\n{all}");
        }
        let (_, issues) = compile("[identity]\n[[identity.api_key]]\nsubject = \"bot\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n[identity.introspection]\nclient_id = \"gw\"\nurl = \"https://idp.example/i\"\nfile = \"/nonexistent/secret\"\n");
        let all = issues.join("\n");
        assert!(all.contains("identity.introspection: needs identity.issuer") && all.contains("identity.introspection.file: cannot read /nonexistent/secret"), "{all}");
    }

    #[test]
    fn more_trusted_issuers_each_need_their_audience_and_come_after_the_main_one() {
        let main = "[identity]\nissuer = \"https://a.example\"\naudience = [\"gw\"]\ngroups_claim = \"roles\"\n";
        let (a, issues) = compile(&format!("{main}[[identity.also_trust]]\nissuer = \"https://b.example\"\naudience = [\"gw-b\"]\nsubject_claim = \"email\"\n"));
        assert!(issues.is_empty(), "{issues:?}");
        let a = a.unwrap();
        let got: Vec<(&str, &[String], &str, &str)> = a.issuers.iter().map(|j| (j.jwks.issuer.as_str(), j.audience.as_slice(), j.subject_claim.as_str(), j.groups_claim.as_str())).collect();
        assert_eq!(got, vec![("https://a.example", &["gw".to_string()][..], "sub", "roles"), ("https://b.example", &["gw-b".to_string()][..], "email", "roles")]);
        let (_, issues) = compile(&format!("{main}[[identity.also_trust]]\nissuer = \"https://a.example\"\naudience = [\"gw\"]\n[[identity.also_trust]]\nissuer = \"b.example\"\n"));
        let all = issues.join("\n");
        for want in ["identity.also_trust[0].issuer: \"https://a.example\" is trusted already", "identity.also_trust[1].issuer: \"b.example\" is not an http(s) URL", "identity.also_trust[1].audience: is empty"] {
            assert!(all.contains(want), "{want} missing from:\n{all}");
        }
        let (_, issues) = compile("[identity]\n[[identity.also_trust]]\nissuer = \"https://b.example\"\naudience = [\"gw\"]\n");
        assert!(issues.iter().any(|i| i.starts_with("identity.also_trust[0]: needs identity.issuer first")), "{issues:?}");
    }

    #[test]
    fn api_keys_match_by_hash_and_everything_else_is_refused() {
        // sha256("sk-test-key")
        let (a, issues) = compile(
            "[identity]\n[[identity.api_key]]\nsubject = \"bot\"\ngroups = [\"ci\"]\nsha256 = \"8df0b8b1c6a5a23ca9ba7dc08d62a2cbc8fd2d2b2d1c50a1abf0b0a5ca1e2d39\"\n",
        );
        assert!(issues.is_empty(), "{issues:?}");
        let a = a.unwrap();
        let key = "sk-test-key";
        let digest = <sha2::Sha256 as sha2::Digest>::digest(key.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let (a2, _) = compile(&format!("[identity]\n[[identity.api_key]]\nsubject = \"bot\"\ngroups = [\"ci\"]\nsha256 = \"{hex}\"\n"));
        let a2 = a2.unwrap();
        let id = a2.check(Some(&format!("Bearer {key}")), None).unwrap().unwrap();
        assert_eq!((id.subject.as_str(), id.via), ("bot", "api_key"));
        assert_eq!(a2.check(None, Some(key)).unwrap().unwrap().groups, vec!["ci".to_string()]);
        assert_eq!(a2.check(None, Some("sk-test-kez")), Err(AuthError::UnknownApiKey));
        assert_eq!(a2.check(None, None), Err(AuthError::Missing));
        assert_eq!(a2.check(Some("Basic Ym90OnB3"), None), Err(AuthError::Missing), "only bearer credentials count");
        // A JWT where only API keys are configured is refused, not treated as a key.
        assert!(matches!(a.check(Some("Bearer a.b.c"), None), Err(AuthError::Algorithm(..))));
    }
}
