//! The scanner: every rule's patterns compiled into one Hyperscan block-mode database
//! (SOM_LEFTMOST) off the hot path; scanning normalises the text, runs the database, keeps the
//! longest match per rule and start, applies validators and context words, and maps each
//! finding back to byte offsets in the original text.

use super::normalize::normalize;
use super::rules::{Category, Loaded, PackError, Severity, Validator};
use super::validate;
use hyperscan::prelude::*;

/// One thing found: rule, what it is, and where in the original text (half-open byte range).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub rule: String,
    pub kind: String,
    pub category: Category,
    pub severity: Severity,
    pub start: usize,
    pub end: usize,
}

pub struct Engine {
    rules: Vec<Loaded>,
    /// Hyperscan pattern id → rule index.
    pattern_rule: Vec<usize>,
    db: BlockDatabase,
}

/// Per-thread scan state (Hyperscan scratch); one per worker core.
pub struct ScanState {
    scratch: Scratch,
}

impl Engine {
    /// Compile the rules. A pattern that does not compile is reported with its rule and file.
    pub fn compile(rules: Vec<Loaded>) -> Result<Engine, PackError> {
        let mut pats = Vec::new();
        let mut pattern_rule = Vec::new();
        let mut errors = Vec::new();
        for (ri, l) in rules.iter().enumerate() {
            for (pi, p) in l.rule.patterns.iter().enumerate() {
                // UTF8 without UCP: `\b` and `\w` are ASCII-based (Hyperscan has no `\b` in UCP mode);
                // normalisation has already turned look-alike characters into ASCII.
                let mut flags = CompileFlags::SOM_LEFTMOST | CompileFlags::UTF8;
                if l.rule.caseless {
                    flags |= CompileFlags::CASELESS;
                }
                match Pattern::with_flags(p, flags) {
                    Ok(mut pat) => {
                        pat.id = Some(pattern_rule.len());
                        // Compile alone first, so that an error names the exact pattern.
                        let single: Result<BlockDatabase, _> = pat.build();
                        if let Err(e) = single {
                            errors.push(format!("{}: rule[{}] ({}) pattern[{pi}]: {e}", l.file.display(), l.index, l.rule.id));
                            continue;
                        }
                        pats.push(pat);
                        pattern_rule.push(ri);
                    }
                    Err(e) => errors.push(format!("{}: rule[{}] ({}) pattern[{pi}]: {e}", l.file.display(), l.index, l.rule.id)),
                }
            }
        }
        if !errors.is_empty() {
            return Err(PackError(errors));
        }
        let db: BlockDatabase = Patterns::from(pats).build().map_err(|e| PackError(vec![format!("compiling the rule database: {e}")]))?;
        Ok(Engine { rules, pattern_rule, db })
    }

    pub fn rules(&self) -> &[Loaded] {
        &self.rules
    }

    pub fn new_state(&self) -> Result<ScanState, String> {
        self.db.alloc_scratch().map(|scratch| ScanState { scratch }).map_err(|e| e.to_string())
    }

    /// Scan `text`; findings sorted by start, overlapping findings of one rule merged.
    pub fn scan(&self, state: &mut ScanState, text: &str) -> Vec<Finding> {
        let norm = normalize(text);
        let hay = norm.text.as_str();
        let mut raw: Vec<(usize, usize, usize)> = Vec::new();
        let _ = self.db.scan(hay, &state.scratch, |id, from, to, _| {
            raw.push((self.pattern_rule[id as usize], from as usize, to as usize));
            Matching::Continue
        });
        // Longest match per (rule, start), then drop matches inside an earlier one of the same rule.
        raw.sort_by(|a, b| (a.0, a.1, std::cmp::Reverse(a.2)).cmp(&(b.0, b.1, std::cmp::Reverse(b.2))));
        let mut out: Vec<Finding> = Vec::new();
        let mut last: Option<(usize, usize)> = None; // (rule, end) of the last kept
        for (ri, s, e) in raw {
            if let Some((lr, le)) = last {
                if lr == ri && s < le {
                    continue;
                }
            }
            let rule = &self.rules[ri].rule;
            let m = &hay[s..e];
            if e - s > rule.max_width || !self.valid(ri, m) || !self.context_ok(ri, hay, s, e) {
                continue;
            }
            last = Some((ri, e));
            let (os, oe) = norm.original(s, e);
            out.push(Finding { rule: rule.id.clone(), kind: rule.kind.clone(), category: rule.category, severity: rule.severity, start: os, end: oe });
        }
        invisible_unicode(text, &mut out);
        out.sort_by_key(|f| (f.start, f.end));
        out
    }

    fn valid(&self, ri: usize, m: &str) -> bool {
        let r = &self.rules[ri].rule;
        match r.validator {
            Validator::None => true,
            Validator::Luhn => validate::luhn(m),
            Validator::Iban => validate::iban(m),
            Validator::AbaRouting => validate::aba_routing(m),
            Validator::UsSsn => validate::us_ssn(m),
            Validator::PublicIp => validate::public_ip(m),
            Validator::Entropy => validate::entropy(m) >= r.min_entropy.unwrap_or(0.0),
        }
    }

    fn context_ok(&self, ri: usize, hay: &str, s: usize, e: usize) -> bool {
        let r = &self.rules[ri].rule;
        if !r.context_required {
            return true;
        }
        let mut a = s.saturating_sub(r.context_window);
        while !hay.is_char_boundary(a) {
            a -= 1;
        }
        let mut b = (e + r.context_window).min(hay.len());
        while !hay.is_char_boundary(b) {
            b += 1;
        }
        let window = hay[a..b].to_lowercase();
        r.context.iter().any(|w| window.contains(&w.to_lowercase()))
    }
}

/// Invisible characters that change what a model reads but a human reviewer does not see:
/// Unicode tag characters, bidi overrides and isolates, and runs of zero-width characters.
/// Found on the original text (the normaliser removes or decodes them before pattern scans),
/// so this check is built in rather than a pack rule.
fn invisible_unicode(text: &str, out: &mut Vec<Finding>) {
    let mut run: Option<(usize, usize, usize)> = None; // start, end, count
    let flush = |run: &mut Option<(usize, usize, usize)>, out: &mut Vec<Finding>| {
        if let Some((s, e, n)) = run.take() {
            if n >= 1 {
                out.push(Finding {
                    rule: "builtin.invisible_unicode".into(),
                    kind: "invisible_unicode".into(),
                    category: Category::Injection,
                    severity: Severity::High,
                    start: s,
                    end: e,
                });
            }
        }
    };
    for (i, c) in text.char_indices() {
        let v = c as u32;
        let hidden = (0xE0000..=0xE007F).contains(&v) || (0x202A..=0x202E).contains(&v) || (0x2066..=0x2069).contains(&v);
        if hidden {
            run = Some(match run {
                Some((s, _, n)) => (s, i + c.len_utf8(), n + 1),
                None => (i, i + c.len_utf8(), 1),
            });
        } else {
            flush(&mut run, out);
        }
    }
    flush(&mut run, out);
}

/// Replace each finding's bytes with `[REDACTED:kind]` (overlaps merged, earliest kind wins).
pub fn redact(text: &str, findings: &[Finding]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for f in findings {
        if f.start < pos {
            continue;
        }
        out.push_str(&text[pos..f.start]);
        out.push_str("[REDACTED:");
        out.push_str(&f.kind);
        out.push(']');
        pos = f.end;
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rules::{default_dir, load_dir};

    fn engine() -> Engine {
        Engine::compile(load_dir(&default_dir()).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every rule's own examples: each positive yields a finding of that rule covering a
    /// non-empty span; no negative yields one.
    #[test]
    fn rule_pack_examples() {
        let e = engine();
        let mut st = e.new_state().unwrap();
        let mut failures = Vec::new();
        for l in e.rules() {
            let r = &l.rule;
            if r.examples.positive.is_empty() {
                failures.push(format!("{}: no positive examples", r.id));
            }
            for p in &r.examples.positive {
                if !e.scan(&mut st, p).iter().any(|f| f.rule == r.id && f.end > f.start) {
                    failures.push(format!("{}: missed positive {p:?}", r.id));
                }
            }
            for n in &r.examples.negative {
                if e.scan(&mut st, n).iter().any(|f| f.rule == r.id) {
                    failures.push(format!("{}: matched negative {n:?}", r.id));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn finding_maps_back_through_evasion_and_redacts() {
        let e = engine();
        let mut st = e.new_state().unwrap();
        let text = "contact: ｂｏｂ@example.com or 4111\u{200B}1111 1111 1111";
        let f = e.scan(&mut st, text);
        let kinds: Vec<_> = f.iter().map(|f| f.kind.as_str()).collect();
        assert!(kinds.contains(&"email") && kinds.contains(&"payment_card"), "{f:?}");
        let masked = redact(text, &f);
        assert_eq!(masked, "contact: [REDACTED:email] or [REDACTED:payment_card]");
    }

    #[test]
    fn broken_pattern_is_reported_with_rule_and_file() {
        let dir = std::env::temp_dir().join(format!("sluice-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad.toml"), "[[rule]]\nid = \"broken\"\nkind = \"x\"\ncategory = \"pii\"\nseverity = \"low\"\npatterns = [\"a(b\"]\n").unwrap();
        let err = match Engine::compile(load_dir(&dir).unwrap()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("compiled"),
        };
        assert!(err.contains("bad.toml: rule[0] (broken) pattern[0]"), "{err}");
    }
}
