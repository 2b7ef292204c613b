//! Lowering `[detect]`: load and compile the rule packs (every pack problem reported under
//! `detect.rules`), read the fingerprint key, and resolve the action and mask strategy of
//! every (direction, category) pair.

use super::compile::resolve;
use super::schema;
use crate::detect::engine::Engine;
use crate::detect::mask::{Masker, Strategy};
use crate::detect::rules::{self, Category};
use crate::hooks::Direction;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the gateway does with a finding until the policy stage decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Not scanned.
    Off,
    /// Reported (context, log, metrics); the message passes unchanged.
    Log,
    /// Reported and masked in place.
    Mask,
    /// Reported; the message is answered with a JSON-RPC error naming the kinds.
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Off => "off",
            Action::Log => "log",
            Action::Mask => "mask",
            Action::Block => "block",
        }
    }
}

pub struct DetectCfg {
    pub engine: Arc<Engine>,
    pub rules_dir: PathBuf,
    pub masker: Masker,
    /// Mask strategy by rule index.
    pub strategies: Vec<Strategy>,
    /// Action by [direction][category].
    pub actions: [[Action; 4]; 2],
    /// Request headers not inspected (lower case), besides credentials and framing.
    pub skip_headers: Vec<String>,
}

impl std::fmt::Debug for DetectCfg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectCfg").field("rules_dir", &self.rules_dir).field("rules", &self.engine.meta().len()).field("actions", &self.actions).finish()
    }
}

pub fn category_index(c: Category) -> usize {
    match c {
        Category::Pii => 0,
        Category::Secret => 1,
        Category::Injection => 2,
        Category::Poisoning => 3,
    }
}

impl DetectCfg {
    pub fn action(&self, dir: Direction, rule: u32) -> Action {
        let d = match dir {
            Direction::Request => 0,
            Direction::Response => 1,
        };
        self.actions[d][category_index(self.engine.meta()[rule as usize].category)]
    }

    /// Is anything scanned in this direction?
    pub fn active(&self, dir: Direction) -> bool {
        let d = usize::from(dir == Direction::Response);
        self.actions[d].iter().any(|a| *a != Action::Off)
    }
}

const CATEGORIES: [(&str, Category); 4] =
    [("pii", Category::Pii), ("secret", Category::Secret), ("injection", Category::Injection), ("poisoning", Category::Poisoning)];

pub(super) fn compile(d: &schema::Detect, file: Option<&Path>, add: &mut dyn FnMut(String, String)) -> Option<Arc<DetectCfg>> {
    let mut actions = [[Action::Log, Action::Mask, Action::Log, Action::Log], [Action::Mask; 4]];
    for (di, (name, set)) in [("request", &d.request), ("response", &d.response)].into_iter().enumerate() {
        for (ci, (cat, value)) in CATEGORIES.iter().map(|(n, _)| *n).zip([&set.pii, &set.secret, &set.injection, &set.poisoning]).enumerate() {
            let Some(v) = value else { continue };
            actions[di][ci] = match v.as_str() {
                "off" => Action::Off,
                "log" => Action::Log,
                "mask" => Action::Mask,
                "block" => Action::Block,
                other => {
                    add(format!("detect.{name}.{cat}"), format!("\"{other}\" is not an action; use \"mask\", \"block\", \"log\" or \"off\""));
                    continue;
                }
            };
        }
    }
    let mut overrides: [Option<Strategy>; 4] = [None; 4];
    let s = &d.strategy;
    for (ci, (cat, value)) in CATEGORIES.iter().map(|(n, _)| *n).zip([&s.pii, &s.secret, &s.injection, &s.poisoning]).enumerate() {
        if let Some(v) = value {
            match Strategy::parse(v) {
                Some(st) => overrides[ci] = Some(st),
                None => add(
                    format!("detect.strategy.{cat}"),
                    format!("\"{v}\" is not a mask strategy; use \"redact\", \"partial\", \"fingerprint\", \"placeholder\" or \"remove\""),
                ),
            }
        }
    }
    // A mask lands in headers, URLs and upload framing too: one line of text.
    if d.placeholder.chars().any(char::is_control) {
        add("detect.placeholder".into(), "must be one line of text without control characters (it replaces values in headers, URLs and uploads too)".into());
    }
    let skip_headers: Vec<String> = match &d.skip_headers {
        Some(names) => names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        None => schema::DEFAULT_SKIP_HEADERS.iter().map(|n| (*n).to_owned()).collect(),
    };
    for (i, n) in skip_headers.iter().enumerate() {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
            add(format!("detect.skip_headers[{i}]"), format!("\"{n}\" is not a header name; use the name alone, e.g. \"x-real-ip\""));
        }
    }
    let key = match &d.fingerprint_key_file {
        Some(p) => {
            let path = resolve(file, p);
            match std::fs::read(&path) {
                Ok(k) if k.len() >= 16 => Some(Masker::key_from_material(&k)),
                Ok(_) => {
                    add("detect.fingerprint_key_file".into(), format!("{} holds fewer than 16 bytes; write at least 32 random bytes (e.g. `head -c 32 /dev/urandom > {}`)", path.display(), path.display()));
                    None
                }
                Err(e) => {
                    add("detect.fingerprint_key_file".into(), format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        }
        None => None,
    };
    if !d.enabled {
        return None;
    }
    let rules_dir = d.rules.as_deref().map(|r| resolve(file, r)).unwrap_or_else(rules::default_dir);
    let engine = match compiled(&rules_dir) {
        Ok(e) => e,
        Err(e) => {
            for m in e.0 {
                add("detect.rules".into(), m);
            }
            return None;
        }
    };
    let masker = match key {
        Some(k) => Masker::new(k, d.placeholder.clone()),
        None => {
            if d.fingerprint_key_file.is_none() {
                tracing::warn!("detect.fingerprint_key_file is not set: fingerprints are stable only until restart");
            }
            Masker::new(Masker::default().key_copy(), d.placeholder.clone())
        }
    };
    let strategies = engine
        .meta()
        .iter()
        .map(|m| if m.id.starts_with("builtin.") { m.mask } else { overrides[category_index(m.category)].unwrap_or(m.mask) })
        .collect();
    Some(Arc::new(DetectCfg { engine, rules_dir, masker, strategies, actions, skip_headers }))
}

/// The compiled packs of a directory, reused while its files are unchanged: a reload that does
/// not touch the rules does not recompile them (about two seconds for the shipped packs).
fn compiled(dir: &Path) -> Result<Arc<Engine>, rules::PackError> {
    static CACHE: std::sync::Mutex<Option<(blake3::Hash, Arc<Engine>)>> = std::sync::Mutex::new(None);
    let mut h = blake3::Hasher::new();
    h.update(dir.as_os_str().as_encoded_bytes());
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    files.sort();
    for f in &files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(&std::fs::read(f).unwrap_or_default());
    }
    let key = h.finalize();
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((k, e)) = cache.as_ref() {
        if *k == key {
            return Ok(e.clone());
        }
    }
    let e = Arc::new(rules::load_dir(dir).and_then(Engine::compile)?);
    *cache = Some((key, e.clone()));
    Ok(e)
}
