//! Configuration: the strict user file ([`schema`]), lowered and validated into the compiled
//! form ([`Config`]) the workers share read-only. Validation reports every problem at once,
//! each with the file and the path inside it. Only this module knows the file format.

pub mod approvals;
mod compile;
pub mod credential;
pub mod detect;
pub mod duration;
pub mod identity;
pub mod policy;
pub mod recording;
pub mod schema;

pub use compile::{Config, Limits, ListenerCfg, PinsCfg, Purpose, Route, SessionsCfg, Timeouts, Upstream};

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem with a configuration: where it is, and what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Path inside the file, such as `route[1].upstream`.
    pub path: String,
    pub message: String,
}

/// Every problem found in one configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub issues: Vec<Issue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_ref().map_or("<command line>".to_string(), |p| p.display().to_string());
        writeln!(f, "{} problem(s) in {file}:", self.issues.len())?;
        for i in &self.issues {
            writeln!(f, "  {file}: {}: {}", i.path, i.message)?;
        }
        Ok(())
    }
}

/// Read, parse and compile a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_for(path, Purpose::Gateway)
}

/// Load a configuration file for `purpose` (the stdio transport needs no listener or route).
pub fn load_for(path: &Path, purpose: Purpose) -> Result<Config, ConfigError> {
    let fail = |path_in: &str, message: String| ConfigError { file: Some(path.to_owned()), issues: vec![Issue { path: path_in.into(), message }] };
    let text = std::fs::read_to_string(path).map_err(|e| fail("(file)", format!("cannot read the file: {e}; check the path and permissions")))?;
    let file: schema::File = toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|s| line_col(&text, s.start)).unwrap_or_default();
        fail(&at, format!("{}; see deploy/sluice.toml for every key", e.message()))
    })?;
    compile::compile(&file, Some(path), purpose).map_err(|issues| ConfigError { file: Some(path.to_owned()), issues })
}

/// Compile a configuration built in memory (quick mode, tests).
pub fn from_schema(file: &schema::File) -> Result<Config, ConfigError> {
    from_schema_for(file, Purpose::Gateway)
}

/// Compile a configuration built in memory for `purpose`.
pub fn from_schema_for(file: &schema::File, purpose: Purpose) -> Result<Config, ConfigError> {
    compile::compile(file, None, purpose).map_err(|issues| ConfigError { file: None, issues })
}

/// sluice's own directory of a kind: the one systemd gives the service (`systemd_var`, e.g.
/// `STATE_DIRECTORY`), else `$XDG_…/sluice` (`xdg_var`), else `~/<home_rel>/sluice`; `None`
/// without any of them.
pub fn user_dir(systemd_var: &str, xdg_var: &str, home_rel: &str) -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var(systemd_var).or_else(|| var(xdg_var).map(|d| d.join("sluice"))).or_else(|| var("HOME").map(|h| h.join(home_rel).join("sluice")))
}

pub(crate) fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {col}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::new(text)
    }

    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn new(text: &str) -> Self {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir().join(format!("sluice-cfg-{}-{n}.toml", std::process::id()));
                std::fs::write(&p, text).unwrap();
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let f = write("[gateway]\nworkerz = 2\n");
        let e = load(&f.0).unwrap_err();
        assert_eq!(e.issues[0].path, "line 2, column 1");
        assert!(e.issues[0].message.contains("workerz"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let f = write(
            r#"
[gateway]
shutdown_grace = "soon"
[[listener]]
address = "nowhere"
[[upstream]]
name = "a"
url = "ftp://x"
[[upstream]]
name = "a"
url = "http://127.0.0.1:1"
[[route]]
path = "mcp"
upstream = "b"
[limits]
max_connections = 0
max_buffered_bytes = 4096
[detect]
placeholder = "[MASKED]\r\nx-evil: 1"
skip_headers = ["x-real-ip", "x real ip"]
[detect.request]
pii = "sometimes"
"#,
        );
        let e = load(&f.0).unwrap_err();
        let paths: Vec<_> = e.issues.iter().map(|i| i.path.as_str()).collect();
        for p in ["gateway.shutdown_grace", "listener[0].address", "upstream[0].url", "upstream[1].name", "route[0].path", "route[0].upstream", "detect.placeholder", "detect.skip_headers[1]", "detect.request.pii", "limits.max_connections", "limits.max_buffered_bytes"] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        let text = e.to_string();
        assert!(text.contains(&f.0.display().to_string()));
    }

    #[test]
    fn deploy_examples_compile() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        // The example reads the Kafka SASL password from the environment, as in production.
        std::env::set_var("SLUICE_KAFKA_PASSWORD", "example");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                load(&p).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen > 0, "no example configs in deploy/");
    }
}
