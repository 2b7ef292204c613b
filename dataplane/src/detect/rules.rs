//! Rule packs: detection rules as data (TOML files in `dataplane/rules/`), loaded at start,
//! never compiled into code. A pack is checked whole: every problem is reported with its file,
//! rule index and id.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Pii,
    Secret,
    Injection,
    Poisoning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Pii => "pii",
            Category::Secret => "secret",
            Category::Injection => "injection",
            Category::Poisoning => "poisoning",
        }
    }
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Validator {
    #[default]
    None,
    Luhn,
    Iban,
    AbaRouting,
    UsSsn,
    /// A phone number: 8 to 15 digits in the match.
    Phone,
    /// A globally routable IPv4/IPv6 address (not private, loopback, documentation, …).
    PublicIp,
    /// Shannon entropy of the match at least `min_entropy` bits per character.
    Entropy,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Examples {
    #[serde(default)]
    pub positive: Vec<String>,
    #[serde(default)]
    pub negative: Vec<String>,
}

/// One rule as written in a pack file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    /// lower_snake_case name of what is found (`email`, `aws_access_key_id`, …).
    pub kind: String,
    pub category: Category,
    pub severity: Severity,
    /// Hyperscan expressions (PCRE subset); any one matching is a candidate.
    pub patterns: Vec<String>,
    #[serde(default)]
    pub caseless: bool,
    #[serde(default)]
    pub validator: Validator,
    #[serde(default)]
    pub min_entropy: Option<f64>,
    /// Words that must (or, when not required, may) appear near the match.
    #[serde(default)]
    pub context: Vec<String>,
    #[serde(default)]
    pub context_required: bool,
    /// How many bytes before and after the match the context words are looked for in.
    #[serde(default = "default_window")]
    pub context_window: usize,
    /// Longest match in bytes; also the hold-back window for streamed scanning.
    #[serde(default = "default_width")]
    pub max_width: usize,
    /// The finding is the value of an assignment (`name = value`, `"name": "value"`): the match
    /// is trimmed to what follows the last `=` or `:` (and quotes or spaces after it), so that
    /// masking keeps the name a reader needs and hides only the value.
    #[serde(default)]
    pub value_only: bool,
    /// Default mask strategy: `redact`, `partial`, `fingerprint`, `placeholder`.
    #[serde(default = "default_mask")]
    pub mask: String,
    /// What the rule matches, validates and its known false positives (documentation).
    #[serde(default)]
    pub doc: String,
    #[serde(default)]
    pub examples: Examples,
}

fn default_window() -> usize {
    48
}
fn default_width() -> usize {
    256
}
fn default_mask() -> String {
    "redact".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackFile {
    #[serde(rename = "rule")]
    rules: Vec<Rule>,
}

/// A rule with where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub rule: Rule,
    pub file: PathBuf,
    pub index: usize,
}

/// Every problem in a set of packs.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct PackError(pub Vec<String>);

/// The rule packs shipped in the repository.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

/// Load every `*.toml` pack in `dir` (sorted by name), checking each rule.
pub fn load_dir(dir: &Path) -> Result<Vec<Loaded>, PackError> {
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect(),
        Err(e) => return Err(PackError(vec![format!("{}: cannot read the rule directory: {e}", dir.display())])),
    };
    files.sort();
    let mut out: Vec<Loaded> = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        let pack: PackFile = match toml::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("{}: {}", file.display(), e.to_string().trim()));
                continue;
            }
        };
        for (index, rule) in pack.rules.into_iter().enumerate() {
            let at = format!("{}: rule[{index}] ({})", file.display(), rule.id);
            if out.iter().any(|l| l.rule.id == rule.id) {
                errors.push(format!("{at}: id is used by another rule"));
            }
            if rule.kind.is_empty() || !rule.kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                errors.push(format!("{at}: kind \"{}\" must be lower_snake_case", rule.kind));
            }
            if rule.patterns.is_empty() {
                errors.push(format!("{at}: needs at least one pattern"));
            }
            if rule.validator == Validator::Entropy && rule.min_entropy.is_none() {
                errors.push(format!("{at}: validator = \"entropy\" needs min_entropy"));
            }
            if rule.context_required && rule.context.is_empty() {
                errors.push(format!("{at}: context_required needs context words"));
            }
            if !matches!(rule.mask.as_str(), "redact" | "partial" | "fingerprint" | "placeholder" | "remove") {
                errors.push(format!("{at}: mask \"{}\" is not one of redact, partial, fingerprint, placeholder, remove", rule.mask));
            }
            out.push(Loaded { rule, file: file.clone(), index });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(PackError(errors))
    }
}

/// The shipped packs' patterns of rules without required context words (as the engine runs
/// them outside context regions) that `keep(expression, caseless)` takes, numbered in order:
/// (id, expression, caseless). For tests of the engines that stand in for Hyperscan.
#[cfg(test)]
pub(crate) fn shipped_patterns(keep: impl Fn(&str, bool) -> bool) -> Vec<(u32, String, bool)> {
    let mut pats: Vec<(u32, String, bool)> = Vec::new();
    for l in load_dir(&default_dir()).unwrap_or_else(|e| panic!("{e}")) {
        for p in &l.rule.patterns {
            if !l.rule.context_required && keep(p, l.rule.caseless) {
                pats.push((pats.len() as u32, p.clone(), l.rule.caseless));
            }
        }
    }
    pats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_packs_load_and_every_rule_has_examples() {
        let rules = load_dir(&default_dir()).unwrap_or_else(|e| panic!("{e}"));
        let count = |c: Category| rules.iter().filter(|l| l.rule.category == c).count();
        assert!(count(Category::Pii) >= 12, "PII rules: {}", count(Category::Pii));
        let secret_kinds: std::collections::BTreeSet<_> = rules.iter().filter(|l| l.rule.category == Category::Secret).map(|l| &l.rule.kind).collect();
        assert!(secret_kinds.len() >= 40, "secret kinds: {}", secret_kinds.len());
        // Plus the built-in invisible-Unicode checks (three kinds) in the engine.
        assert!(count(Category::Injection) + count(Category::Poisoning) >= 30);
        for l in &rules {
            assert!(!l.rule.examples.positive.is_empty(), "{} has no positive example", l.rule.id);
            assert!(!l.rule.doc.is_empty(), "{} is undocumented", l.rule.id);
        }
    }

    #[test]
    fn every_problem_in_a_pack_is_reported_with_file_and_rule() {
        let tmp = tempfile::Builder::new().prefix("sluice-rules-").tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(
            dir.join("bad.toml"),
            "[[rule]]\nid = \"a\"\nkind = \"Bad-Kind\"\ncategory = \"pii\"\nseverity = \"low\"\npatterns = []\nvalidator = \"entropy\"\n\
             [[rule]]\nid = \"a\"\nkind = \"ok\"\ncategory = \"secret\"\nseverity = \"high\"\npatterns = [\"x\"]\nmask = \"shred\"\n",
        )
        .unwrap();
        let err = load_dir(&dir).unwrap_err().to_string();
        for want in ["rule[0] (a): kind \"Bad-Kind\"", "rule[0] (a): needs at least one pattern", "rule[0] (a): validator = \"entropy\" needs min_entropy", "rule[1] (a): id is used", "rule[1] (a): mask \"shred\""] {
            assert!(err.contains(want), "{want} missing from:\n{err}");
        }
        assert!(err.contains("bad.toml"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
