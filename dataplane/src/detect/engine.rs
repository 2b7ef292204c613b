//! The scanner: every rule's patterns, plus the two decode-candidate patterns, compiled into
//! one Hyperscan database in block mode and one in streaming mode (SOM_LEFTMOST) off the hot
//! path (block scans find the patterns that are one character class repeated without
//! Hyperscan, see [`super::runs`], the class-led ones with a lazy DFA, [`super::lazy`], and
//! give most matches their starts with a reverse one, [`super::reverse`]).
//! Scanning normalises the text, runs the database, keeps the longest match per rule and start, applies validators, context words and value
//! trimming, decodes and rescans encoded candidates, runs the built-in invisible-character
//! checks and maps every finding back to byte offsets in the original text.
//!
//! The [`Engine`] is immutable and shared (`Arc`, swapped whole on reload); each worker core
//! owns a [`Scanner`] (Hyperscan scratch and reused buffers), so a scan takes no lock and, for
//! text without findings, allocates nothing.

use super::decode::{self, Encoding};
use super::invisible::{self, Builtin, BUILTINS};
use super::mask::Strategy;
use super::normalize::{normalize_into, original};
use super::lazy::{self, Lazy};
use super::reverse::{self, NonAscii, Reverse};
use super::rules::{Category, Loaded, PackError, Severity, Validator};
use super::runs::{self, Runs, Shape, Trail};
use super::validate;
use hyperscan::prelude::*;
use hyperscan::{Block, Streaming};

/// One thing found: which rule (index into [`Engine::meta`]), where in the original text
/// (half-open byte range), and whether it was found inside an encoded span (then the range
/// is the whole encoded span).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub rule: u32,
    pub start: usize,
    pub end: usize,
    pub encoding: Option<Encoding>,
}

/// What a rule (pack or built-in) is, for reports and masking.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Meta {
    pub id: String,
    pub kind: String,
    pub category: Category,
    pub severity: Severity,
    pub mask: Strategy,
    pub doc: String,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Rule(u32),
    Candidate(Encoding),
}

/// How a block-mode match of one pattern gets its start offset (phase 1 reports ends only).
enum Start {
    /// Every match has this width: start = end − width.
    Fixed(usize),
    /// Re-scan up to `window` bytes before each end with the pattern alone, start-tracked
    /// (or, if [`Engine::reverse`] holds the pattern, walk back from each end with it; the
    /// database then serves text that is not ASCII).
    Confirm { db: BlockDatabase, window: usize },
    /// A decode candidate: its extent comes from `candidate_span`.
    Candidate,
    /// Not in phase 1: found with its start by [`Runs`].
    Run,
}

pub struct Engine {
    rules: Vec<Loaded>,
    meta: Vec<Meta>,
    targets: Vec<Target>,
    /// Phase 1: every pattern, no start-of-match tracking (what makes Hyperscan slow).
    block: BlockDatabase,
    /// Phase 2, per pattern id.
    starts: Vec<Start>,
    /// Patterns that match runs of one character class (blobs, the base64 decode candidate),
    /// found without Hyperscan in block scans.
    runs: Option<Runs>,
    /// Class-led patterns, found (ends only) by one lazy DFA in block scans.
    lazy: Option<Lazy>,
    /// Phase 2 for most confirmed patterns: their starts found backwards from each end.
    reverse: Option<Reverse>,
    /// Per pattern id: [`Reverse`] holds it, it ends in an open class run
    /// ([`reverse::ends_in_open_class_run`]) and its rule takes any match as found (no
    /// validator, context or value trimming), so a run of consecutive ends needs one walk.
    one_walk_per_run: Vec<bool>,
    /// Phase-1 ids from `patterns` on are context-word triggers: the rule each one stands for.
    /// A rule that needs context words is not run in phase 1 at all; its patterns run,
    /// start-tracked, only around its words.
    triggers: Vec<u32>,
    patterns: usize,
    /// Pattern ids of each rule.
    rule_patterns: Vec<Vec<u32>>,
    stream: StreamingDatabase,
    hold_back: usize,
    max_context: usize,
}

/// Per-core scan state: Hyperscan scratch (valid for both databases) and reused buffers.
pub struct Scanner {
    scratch: Scratch,
    raw: Vec<(u32, u32, u32)>,
    /// Phase 2's output, swapped into `raw`.
    resolved: Vec<(u32, u32, u32)>,
    norm: String,
    origin: Vec<(u32, u32)>,
    lazy: Option<lazy::Caches>,
    reverse: Option<regex_automata::hybrid::dfa::Cache>,
    /// Ends phase 2 hands back to Hyperscan (non-ASCII text), reused.
    fallback: Vec<(u32, u32, u32)>,
}

impl Engine {
    /// Compile the rules. Every pattern that does not compile is reported with its file, rule
    /// and pattern index.
    pub fn compile(rules: Vec<Loaded>) -> Result<Engine, PackError> {
        let mut pats = Vec::new();
        let mut targets = Vec::new();
        let mut errors = Vec::new();
        let mut where_ = Vec::new();
        let flags_for = |caseless: bool| {
            // UTF8 without UCP: `\b` and `\w` are ASCII-based (Hyperscan has no `\b` in UCP
            // mode); normalisation has already turned look-alike characters into ASCII.
            let mut f = CompileFlags::SOM_LEFTMOST | CompileFlags::UTF8;
            if caseless {
                f |= CompileFlags::CASELESS;
            }
            f
        };
        for (ri, l) in rules.iter().enumerate() {
            for (pi, p) in l.rule.patterns.iter().enumerate() {
                let at = || format!("{}: rule[{}] ({}) pattern[{pi}]", l.file.display(), l.index, l.rule.id);
                match Pattern::with_flags(p, flags_for(l.rule.caseless)) {
                    Ok(mut pat) => {
                        pat.id = Some(targets.len());
                        pats.push(pat);
                        targets.push(Target::Rule(ri as u32));
                        where_.push(at());
                    }
                    Err(e) => errors.push(format!("{}: {e}", at())),
                }
            }
        }
        if !errors.is_empty() {
            return Err(PackError(errors));
        }
        for (expr, enc) in [(decode::BASE64_CANDIDATE, Encoding::Base64), (decode::PERCENT_CANDIDATE, Encoding::Percent)] {
            // No SOM: the candidate's extent is recovered from its end by `candidate_span`,
            // which keeps these two patterns off Hyperscan's costly start-tracking path.
            let mut pat = Pattern::with_flags(expr, CompileFlags::UTF8).map_err(|e| PackError(vec![format!("internal pattern {expr}: {e}")]))?;
            pat.id = Some(targets.len());
            pats.push(pat);
            targets.push(Target::Candidate(enc));
            where_.push(format!("internal decode-candidate pattern {expr}"));
        }
        let patterns = Patterns::from(pats);
        let mut som = patterns.clone();
        for p in som.iter_mut() {
            p.som = Some(hyperscan::SomHorizon::Large);
        }
        // Phase 1 of block scans runs every pattern without start tracking; phase 2 finds the
        // start of each match by re-scanning a window before its end with that pattern alone
        // (or knows it, for fixed-width patterns). Streaming keeps one start-tracked database.
        let by_context = |t: &Target| matches!(t, Target::Rule(r) if { let r = &rules[*r as usize].rule; r.context_required && !r.context.is_empty() });
        // Run-shaped patterns (at most 32, one bit each) leave phase 1 for [`Runs`].
        let mut run_specs: Vec<(u32, Shape, usize)> = Vec::new();
        let mut native = vec![false; targets.len()];
        for (i, t) in targets.iter().enumerate() {
            let spec = match t {
                Target::Rule(r) if !by_context(t) => {
                    let r = &rules[*r as usize].rule;
                    runs::shape(&patterns[i].expression, r.caseless).map(|sh| (sh, r.max_width))
                }
                Target::Candidate(Encoding::Base64) => Some((base64_candidate_shape(), usize::MAX / 2)),
                _ => None,
            };
            if let Some((sh, width)) = spec.filter(|_| run_specs.len() < 32) {
                run_specs.push((i as u32, sh, width));
                native[i] = true;
            }
        }
        let runs = Runs::new(run_specs);
        let class_led: Vec<(u32, &str, bool)> = targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t {
                Target::Rule(r) if !by_context(t) && !native[i] => {
                    let caseless = rules[*r as usize].rule.caseless;
                    let e = patterns[i].expression.as_str();
                    lazy::eligible(e, caseless).then_some((i as u32, e, caseless))
                }
                _ => None,
            })
            .collect();
        // Phase 2 confirms no match wider than its rule's width: the DFA's lanes overlap by that.
        let width = |p: &(u32, &str, bool)| match targets[p.0 as usize] {
            Target::Rule(r) => rules[r as usize].rule.max_width,
            Target::Candidate(_) => 0,
        };
        let widest = class_led.iter().map(width).max().unwrap_or(0);
        // A DFA that cannot be built (a rule with a huge bounded repeat, say) leaves its
        // patterns in Hyperscan: slower, never blind.
        let lazy = Lazy::new(&class_led, widest).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "class-led patterns stay in Hyperscan");
            None
        });
        let mut in_lazy = vec![false; targets.len()];
        if lazy.is_some() {
            for p in &class_led {
                in_lazy[p.0 as usize] = true;
            }
        }
        let mut prefilter: Vec<Pattern> = patterns
            .iter()
            .zip(&targets)
            .zip(&native)
            .zip(&in_lazy)
            .filter(|(((_, t), native), in_lazy)| !by_context(t) && !**native && !**in_lazy)
            .map(|(((p, _), _), _)| {
                let mut p = p.clone();
                p.flags.remove(CompileFlags::SOM_LEFTMOST);
                p
            })
            .collect();
        let mut triggers = Vec::new();
        for (ri, l) in rules.iter().enumerate() {
            if l.rule.context_required {
                for w in &l.rule.context {
                    let mut p = Pattern::with_flags(literal(w), CompileFlags::CASELESS | CompileFlags::UTF8)
                        .map_err(|e| PackError(vec![format!("{}: rule[{}] ({}) context word {w:?}: {e}", l.file.display(), l.index, l.rule.id)]))?;
                    p.id = Some(targets.len() + triggers.len());
                    prefilter.push(p);
                    triggers.push(ri as u32);
                }
            }
        }
        let prefilter = Patterns::from(prefilter);
        let mut rule_patterns = vec![Vec::new(); rules.len()];
        for (i, t) in targets.iter().enumerate() {
            if let Target::Rule(r) = t {
                rule_patterns[*r as usize].push(i as u32);
            }
        }
        let windows: Vec<usize> = targets.iter().map(|t| match t {
            Target::Rule(r) => rules[*r as usize].rule.max_width,
            Target::Candidate(_) => 0,
        }).collect();
        let confirm_always: Vec<bool> = targets.iter().map(by_context).collect();
        // The databases compile in parallel (the two big ones take about a second each), or
        // load from the cache of earlier compiles.
        let cache = super::dbcache::dir();
        let cache = cache.as_deref();
        let (block, (stream, starts)) = std::thread::scope(|s| {
            let st = s.spawn(|| {
                let stream = super::dbcache::build::<_, Streaming>(cache, "streaming", &som).map_err(|e| format!("compiling the rule database (streaming mode): {e}"));
                (stream, start_resolvers(&patterns, &targets, &windows, &confirm_always, &native, cache))
            });
            let bl = super::dbcache::build::<_, Block>(cache, "block", &prefilter).map_err(|e| format!("compiling the rule database (block mode): {e}"));
            (bl, st.join().unwrap_or_else(|_| (Err("the streaming-mode compile panicked".into()), Err("the confirm compile panicked".into()))))
        });
        let (block, stream) = match (block, stream) {
            (Ok(b), Ok(s)) => (b, s),
            (b, s) => {
                // Name the exact patterns: compile each alone (only on this error path).
                let mut errors: Vec<String> = Vec::new();
                for (p, at) in patterns.iter().zip(&where_) {
                    let mut p = p.clone();
                    if let Err(e) = p.build::<Block>() {
                        errors.push(format!("{at}: {e}"));
                        continue;
                    }
                    p.som = Some(hyperscan::SomHorizon::Large);
                    if let Err(e) = p.build::<Streaming>() {
                        errors.push(format!("{at} (streaming mode): {e}"));
                    }
                }
                if errors.is_empty() {
                    errors.extend(b.err().into_iter().chain(s.err()));
                }
                return Err(PackError(errors));
            }
        };
        // Every pattern compiled above, so this only fails on an internal error.
        let starts = starts.map_err(|e| PackError(vec![e]))?;
        let backwards: Vec<(u32, &str, bool)> = starts
            .iter()
            .enumerate()
            .filter_map(|(i, st)| match (st, targets[i]) {
                (Start::Confirm { .. }, Target::Rule(r)) if !confirm_always[i] => {
                    let caseless = rules[r as usize].rule.caseless;
                    let e = patterns[i].expression.as_str();
                    reverse::eligible(e, caseless).then_some((i as u32, e, caseless))
                }
                _ => None,
            })
            .collect();
        // As with the lazy DFA: if it cannot be built, Hyperscan confirms every start.
        let reverse = Reverse::new(&backwards).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "starts are confirmed by Hyperscan alone");
            None
        });
        let mut one_walk_per_run = vec![false; starts.len()];
        for &(i, e, caseless) in backwards.iter().filter(|_| reverse.is_some()) {
            let Target::Rule(r) = targets[i as usize] else { continue };
            let rule = &rules[r as usize].rule;
            let plain = matches!(rule.validator, Validator::None) && !rule.context_required && !rule.value_only;
            one_walk_per_run[i as usize] = plain && reverse::ends_in_open_class_run(e, caseless);
        }
        let mut meta: Vec<Meta> = rules
            .iter()
            .map(|l| Meta {
                id: l.rule.id.clone(),
                kind: l.rule.kind.clone(),
                category: l.rule.category,
                severity: l.rule.severity,
                mask: Strategy::parse(&l.rule.mask).unwrap_or(Strategy::Redact),
                doc: l.rule.doc.clone(),
            })
            .collect();
        meta.extend(BUILTINS.iter().map(|b| Meta {
            id: b.id().into(),
            kind: b.kind().into(),
            category: Category::Injection,
            severity: if *b == Builtin::ZeroWidth { Severity::Medium } else { Severity::High },
            mask: Strategy::Remove,
            doc: b.doc().into(),
        }));
        let max_context = rules.iter().map(|l| if l.rule.context.is_empty() { 0 } else { l.rule.context_window }).max().unwrap_or(0);
        let hold_back = rules.iter().map(|l| l.rule.max_width).max().unwrap_or(0).max(4096) + max_context;
        let n_patterns = targets.len();
        Ok(Engine { rules, meta, targets, block, starts, runs, lazy, reverse, one_walk_per_run, triggers, patterns: n_patterns, rule_patterns, stream, hold_back, max_context })
    }

    pub fn rules(&self) -> &[Loaded] {
        &self.rules
    }

    /// Every rule, pack rules first, then the built-in checks; [`Finding::rule`] indexes this.
    pub fn meta(&self) -> &[Meta] {
        &self.meta
    }

    /// Each rule's default mask strategy, by rule index.
    pub fn default_strategies(&self) -> Vec<Strategy> {
        self.meta.iter().map(|m| m.mask).collect()
    }

    /// How many bytes a streamed scan holds back: the widest rule plus its context window.
    pub fn hold_back(&self) -> usize {
        self.hold_back
    }

    pub(crate) fn max_context(&self) -> usize {
        self.max_context
    }

    /// Is this Hyperscan pattern id a decode candidate (reported without a start offset)?
    pub(crate) fn is_candidate(&self, id: u32) -> bool {
        matches!(self.targets[id as usize], Target::Candidate(_))
    }

    pub(crate) fn stream_db(&self) -> &StreamingDatabase {
        &self.stream
    }

    pub fn scanner(&self) -> Result<Scanner, String> {
        let mut scratch = self.block.alloc_scratch().map_err(|e| e.to_string())?;
        self.stream.realloc_scratch(&mut scratch).map_err(|e| e.to_string())?;
        for s in &self.starts {
            if let Start::Confirm { db, .. } = s {
                db.realloc_scratch(&mut scratch).map_err(|e| e.to_string())?;
            }
        }
        let lazy = self.lazy.as_ref().map(Lazy::caches);
        let reverse = self.reverse.as_ref().map(Reverse::cache);
        Ok(Scanner { scratch, raw: Vec::new(), resolved: Vec::new(), norm: String::new(), origin: Vec::new(), lazy, reverse, fallback: Vec::new() })
    }

    /// The matches of context-needing rules near their context words: each rule's patterns,
    /// start-tracked, over merged regions reaching `context_window` + `max_width` (+ the
    /// longest word) around each word. A region starts `max_width` earlier still and matches
    /// starting in that margin are dropped, so a cut at the region's edge cannot invent a
    /// match; a match outside the regions could not have its context word near it anyway.
    fn around_context_words(&self, hay: &str, sc: &Scanner, hits: &[(u32, u32, u32)], out: &mut Vec<(u32, u32, u32)>) {
        let mut by_rule: Vec<(u32, u32)> = hits.iter().map(|r| (self.triggers[r.0 as usize - self.patterns], r.2)).collect();
        by_rule.sort_unstable();
        let mut i = 0;
        while i < by_rule.len() {
            let rule = by_rule[i].0;
            let r = &self.rules[rule as usize].rule;
            let word = r.context.iter().map(String::len).max().unwrap_or(0);
            let reach = r.context_window + r.max_width;
            let mut j = i;
            while j < by_rule.len() && by_rule[j].0 == rule {
                let keep_from = (by_rule[j].1 as usize).saturating_sub(word + reach);
                let mut to = ((by_rule[j].1 as usize) + reach).min(hay.len());
                j += 1;
                while j < by_rule.len() && by_rule[j].0 == rule && (by_rule[j].1 as usize).saturating_sub(word + reach) <= to {
                    to = ((by_rule[j].1 as usize) + reach).min(hay.len());
                    j += 1;
                }
                let from = char_floor(hay, keep_from.saturating_sub(r.max_width));
                let to = char_ceil(hay, to);
                let keep_from = if from == 0 { 0 } else { keep_from };
                for &p in &self.rule_patterns[rule as usize] {
                    if let Start::Confirm { db, .. } = &self.starts[p as usize] {
                        let _ = db.scan(&hay[from..to], &sc.scratch, |_, s, e, _| {
                            let (s, e) = (from + s as usize, from + e as usize);
                            if s >= keep_from {
                                out.push((p, s as u32, e as u32));
                            }
                            Matching::Continue
                        });
                    }
                }
            }
            i = j;
        }
    }

    /// Phase 2: give every phase-1 match (pattern, end) its leftmost start. `raw` holds
    /// (pattern, 0, end); afterwards (pattern, start, end), matches without a confirmed start
    /// (longer than the rule's width) dropped.
    fn resolve_starts(&self, hay: &str, sc: &mut Scanner, raw: &mut Vec<(u32, u32, u32)>) {
        raw.sort_unstable_by_key(|r| (r.0, r.2));
        raw.dedup();
        let mut out = std::mem::take(&mut sc.resolved);
        out.clear();
        // Context-word hits (ids past the patterns, sorted last): their rules' patterns run
        // around them.
        let first_trigger = raw.partition_point(|r| (r.0 as usize) < self.patterns);
        if first_trigger < raw.len() {
            self.around_context_words(hay, sc, &raw[first_trigger..], &mut out);
            raw.truncate(first_trigger);
        }
        let mut i = 0;
        while i < raw.len() {
            let id = raw[i].0;
            let mut j = i;
            while j < raw.len() && raw[j].0 == id {
                j += 1;
            }
            let ends = &raw[i..j];
            match &self.starts[id as usize] {
                Start::Candidate | Start::Run => out.extend_from_slice(ends),
                Start::Fixed(w) => out.extend(ends.iter().filter(|r| r.2 as usize >= *w).map(|r| (id, r.2 - *w as u32, r.2))),
                Start::Confirm { db, window } => match (&self.reverse, sc.reverse.as_mut()) {
                    (Some(rev), Some(cache)) if rev.holds(id) => {
                        let mut fallback = std::mem::take(&mut sc.fallback);
                        fallback.clear();
                        let runs = self.one_walk_per_run[id as usize];
                        let mut k = 0;
                        while k < ends.len() {
                            // Consecutive ends (sorted, deduplicated): one walk from the last,
                            // looking back as far as the first end's window reaches. Every
                            // match ending in the run extends to the last end, so that start
                            // is the leftmost of all and `finish` would drop the others as
                            // nested in it. Only if it is too wide for the window, or the text
                            // is not ASCII, is each end walked (or confirmed) on its own.
                            let mut last = k;
                            while runs && last + 1 < ends.len() && ends[last + 1].2 == ends[last].2 + 1 {
                                last += 1;
                            }
                            if last > k {
                                let (first, end) = (ends[k].2 as usize, ends[last].2);
                                let from = char_floor(hay, first.saturating_sub(*window));
                                if let Ok(Some(s)) = rev.start(cache, id, hay.as_bytes(), from, end as usize) {
                                    if end as usize - s <= *window {
                                        out.push((id, s as u32, end));
                                        k = last + 1;
                                        continue;
                                    }
                                }
                            }
                            for &(_, _, end) in &ends[k..=last] {
                                let e = end as usize;
                                let from = char_floor(hay, e.saturating_sub(*window));
                                match rev.start(cache, id, hay.as_bytes(), from, e) {
                                    Ok(Some(s)) => out.push((id, s as u32, end)),
                                    Ok(None) => {}
                                    Err(NonAscii) => fallback.push((id, 0, end)),
                                }
                            }
                            k = last + 1;
                        }
                        confirm(db, *window, id, hay, &fallback, &sc.scratch, &mut out);
                        sc.fallback = fallback;
                    }
                    _ => confirm(db, *window, id, hay, ends, &sc.scratch, &mut out),
                },
            }
            i = j;
        }
        std::mem::swap(raw, &mut out);
        sc.resolved = out;
    }

    /// Scan `text`, appending findings (sorted by start) to `out`.
    pub fn scan(&self, sc: &mut Scanner, text: &str, out: &mut Vec<Finding>) {
        let first = out.len();
        self.scan_at(sc, text, 0, out);
        out[first..].sort_by_key(|f| (f.start, f.end));
        if out.len() - first > 1 {
            self.drop_explained(out, first);
        }
    }

    /// A PII finding entirely inside a secret finding is part of it (the `user:pw@host` of a
    /// database URL is not an e-mail address): drop it, so each span is reported once, as what
    /// it is.
    fn drop_explained(&self, out: &mut Vec<Finding>, first: usize) {
        let mut i = first;
        while i < out.len() {
            let f = out[i];
            if out[first..].iter().any(|o| self.explains(o, &f)) {
                out.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Is `f` a PII finding entirely inside the secret finding `o`?
    pub(crate) fn explains(&self, o: &Finding, f: &Finding) -> bool {
        let cat = |x: &Finding| self.meta[x.rule as usize].category;
        cat(f) == Category::Pii && cat(o) == Category::Secret && o.start <= f.start && f.end <= o.end
    }

    pub(crate) fn scan_at(&self, sc: &mut Scanner, text: &str, depth: u8, out: &mut Vec<Finding>) {
        let ascii = text.is_ascii();
        // The map must be this text's (or empty): the scanner's last text may have left one.
        let changed = if ascii {
            sc.norm.clear();
            sc.origin.clear();
            false
        } else {
            normalize_into(text, &mut sc.norm, &mut sc.origin)
        };
        let mut raw = std::mem::take(&mut sc.raw);
        let norm = std::mem::take(&mut sc.norm);
        let origin = std::mem::take(&mut sc.origin);
        let hay = if changed { norm.as_str() } else { text };
        raw.clear();
        let _ = self.block.scan(hay, &sc.scratch, |id, _, to, _| {
            raw.push((id, 0, to as u32));
            Matching::Continue
        });
        if let (Some(l), Some(cache)) = (&self.lazy, sc.lazy.as_mut()) {
            l.find(cache, hay.as_bytes(), &mut raw);
        }
        if !raw.is_empty() {
            self.resolve_starts(hay, sc, &mut raw);
        }
        if let Some(runs) = &self.runs {
            runs.find(hay.as_bytes(), &mut raw);
        }
        let mut decoded = Vec::new();
        self.finish(hay, &mut raw, &mut |m| match m {
            Match::Rule(rule, s, e) => {
                let (s, e) = original(&origin, s, e);
                out.push(Finding { rule, start: s, end: e, encoding: None });
            }
            Match::Candidate(enc, s, e) if depth < decode::MAX_DEPTH => decoded.push((enc, s, e)),
            Match::Candidate(..) => {}
        });
        for (enc, s, e) in decoded {
            let text_in = &hay[s..e];
            let plain = match enc {
                Encoding::Base64 => decode::base64(text_in),
                Encoding::Percent => decode::percent(text_in),
            };
            if let Some(plain) = plain {
                let (os, oe) = original(&origin, s, e);
                let mut inner = Vec::new();
                self.scan_at(sc, &plain, depth + 1, &mut inner);
                out.extend(inner.into_iter().map(|f| Finding { rule: f.rule, start: os, end: oe, encoding: f.encoding.or(Some(enc)) }));
            }
        }
        if !ascii {
            let base = self.rules.len() as u32;
            invisible::find(text, |b, s, e| {
                let i = BUILTINS.iter().position(|x| *x == b).unwrap_or(0) as u32;
                out.push(Finding { rule: base + i, start: s, end: e, encoding: None });
            });
        }
        sc.raw = raw;
        sc.norm = norm;
        sc.origin = origin;
    }

    /// Turn raw Hyperscan matches over `hay` (offsets relative to `hay`) into
    /// confirmed matches: the longest per (pattern target, start), nested matches of the same
    /// target dropped, width/validator/context checked, assignment values trimmed.
    pub(crate) fn finish(&self, hay: &str, raw: &mut [(u32, u32, u32)], emit: &mut dyn FnMut(Match)) {
        let key = |t: &Target| match t {
            Target::Rule(r) => *r as u64,
            Target::Candidate(Encoding::Base64) => u64::MAX - 1,
            Target::Candidate(Encoding::Percent) => u64::MAX,
        };
        // By target, then start, longest first (decode candidates carry no start: by end).
        let order = |r: &(u32, u32, u32)| {
            let k = key(&self.targets[r.0 as usize]);
            (k, r.1, if k >= u64::MAX - 1 { r.2 } else { u32::MAX - r.2 })
        };
        raw.sort_unstable_by_key(order);
        let mut last: Option<(u64, u32)> = None;
        for &(id, from, to) in raw.iter() {
            let target = self.targets[id as usize];
            let k = key(&target);
            // Nested in the last match of the same target? (A decode candidate may carry no
            // start: its span is checked below, once known.)
            if let Some((lk, le)) = last {
                if lk == k && from < le && !matches!(target, Target::Candidate(_)) {
                    continue;
                }
            }
            let (s, e) = (from as usize, to as usize);
            match target {
                Target::Candidate(enc) => {
                    if let Some((cs, ce)) = candidate_span(hay, enc, e) {
                        if last.is_some_and(|(lk, le)| lk == k && cs < le as usize) {
                            continue;
                        }
                        last = Some((k, ce as u32));
                        emit(Match::Candidate(enc, cs, ce));
                    }
                }
                Target::Rule(ri) => {
                    let rule = &self.rules[ri as usize].rule;
                    if e - s > rule.max_width || !hay.is_char_boundary(s) || !hay.is_char_boundary(e) {
                        continue;
                    }
                    let m = &hay[s..e];
                    if !self.valid(ri as usize, m) || !self.context_ok(ri as usize, hay, s, e) {
                        continue;
                    }
                    last = Some((k, to));
                    let s = if rule.value_only { s + value_offset(m) } else { s };
                    if s < e {
                        emit(Match::Rule(ri, s, e));
                    }
                }
            }
        }
    }

    fn valid(&self, ri: usize, m: &str) -> bool {
        let r = &self.rules[ri].rule;
        let m = if r.value_only { &m[value_offset(m)..] } else { m };
        match r.validator {
            Validator::None => true,
            Validator::Luhn => validate::luhn(m),
            Validator::Iban => validate::iban(m),
            Validator::AbaRouting => validate::aba_routing(m),
            Validator::UsSsn => validate::us_ssn(m),
            Validator::PublicIp => validate::public_ip(m),
            Validator::Phone => (8..=15).contains(&m.bytes().filter(u8::is_ascii_digit).count()),
            Validator::Entropy => validate::entropy(m) >= r.min_entropy.unwrap_or(0.0),
        }
    }

    fn context_ok(&self, ri: usize, hay: &str, s: usize, e: usize) -> bool {
        let r = &self.rules[ri].rule;
        if !r.context_required {
            return true;
        }
        let a = char_floor(hay, s.saturating_sub(r.context_window));
        let b = char_ceil(hay, (e + r.context_window).min(hay.len()));
        let window = &hay.as_bytes()[a..b];
        r.context.iter().any(|w| window.windows(w.len()).any(|x| x.eq_ignore_ascii_case(w.as_bytes())))
    }
}

/// `at`, or the nearest character boundary of `hay` before it.
fn char_floor(hay: &str, mut at: usize) -> usize {
    while !hay.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// `at`, or the nearest character boundary of `hay` after it.
fn char_ceil(hay: &str, mut at: usize) -> usize {
    while !hay.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// Hyperscan's phase 2 for one pattern: the windows of `window` bytes before each end
/// (sorted) merged into regions, one start-tracked scan per region, the leftmost start kept
/// for each end phase 1 reported.
fn confirm(db: &BlockDatabase, window: usize, id: u32, hay: &str, ends: &[(u32, u32, u32)], scratch: &Scratch, out: &mut Vec<(u32, u32, u32)>) {
    let mut k = 0;
    while k < ends.len() {
        let from = char_floor(hay, (ends[k].2 as usize).saturating_sub(window));
        let mut to = ends[k].2 as usize;
        let first = k;
        k += 1;
        while k < ends.len() && (ends[k].2 as usize).saturating_sub(window) <= to {
            to = ends[k].2 as usize;
            k += 1;
        }
        let region = &ends[first..k];
        let base = out.len();
        let _ = db.scan(&hay[from..to], scratch, |_, s, e, _| {
            let (s, e) = ((from + s as usize) as u32, (from + e as usize) as u32);
            // Only the ends phase 1 saw: a region's edge is not a match boundary.
            if region.binary_search_by_key(&e, |r| r.2).is_ok() {
                out.push((id, s, e));
            }
            Matching::Continue
        });
        // Leftmost start per end.
        out[base..].sort_unstable_by_key(|r| (r.2, r.1));
        let mut w = base;
        for r in base..out.len() {
            if w == base || out[w - 1].2 != out[r].2 {
                out[w] = out[r];
                w += 1;
            }
        }
        out.truncate(w);
    }
}

impl Scanner {
    pub(crate) fn scratch(&self) -> &hyperscan::ScratchRef {
        &self.scratch
    }
}

/// A context word as a Hyperscan literal (regex metacharacters escaped).
pub fn literal(w: &str) -> String {
    let mut out = String::with_capacity(w.len() * 2);
    for c in w.chars() {
        if c.is_ascii_punctuation() || c == ' ' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// How each pattern's block-mode matches get their starts: fixed-width patterns by
/// arithmetic, the others by a start-tracked database of the pattern alone (compiled here,
/// in parallel) scanned over `windows[id]` bytes before each end.
fn start_resolvers(patterns: &Patterns, targets: &[Target], windows: &[usize], confirm_always: &[bool], native: &[bool], cache: Option<&std::path::Path>) -> Result<Vec<Start>, String> {
    let one = |i: usize| -> Result<Start, String> {
        if native[i] {
            return Ok(Start::Run);
        }
        if matches!(targets[i], Target::Candidate(_)) {
            return Ok(Start::Candidate);
        }
        let p = &patterns[i];
        let info = p.info().map_err(|e| format!("pattern {}: {e}", p.expression))?;
        if !confirm_always[i] && info.min_width() == info.max_width() && info.max_width() < u32::MAX as usize {
            return Ok(Start::Fixed(info.min_width()));
        }
        let mut q = p.clone();
        q.id = Some(0);
        let db = super::dbcache::build::<_, Block>(cache, "block", &q).map_err(|e| format!("compiling the start-confirm database of {}: {e}", p.expression))?;
        Ok(Start::Confirm { db, window: windows[i].min(info.max_width()) })
    };
    let n = patterns.len();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let mut out: Vec<Option<Result<Start, String>>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let chunks: Vec<_> = out.chunks_mut(n.div_ceil(threads).max(1)).enumerate().collect();
        let size = n.div_ceil(threads).max(1);
        for (c, slots) in chunks {
            let one = &one;
            s.spawn(move || {
                for (k, slot) in slots.iter_mut().enumerate() {
                    *slot = Some(one(c * size + k));
                }
            });
        }
    });
    out.into_iter().map(|r| r.unwrap_or_else(|| Err("a start-confirm compile did not run".into()))).collect()
}

/// [`decode::BASE64_CANDIDATE`] as a run: 24 or more of its class, at most two `=`, then the
/// end of the text or a character outside the class (the pattern stays for streamed scans;
/// a test checks both agree). Only runs worth decoding are reported
/// ([`decode::mixes_cases_and_digits`], which [`candidate_span`] applies to every candidate).
fn base64_candidate_shape() -> Shape {
    let mut class = [false; 256];
    for b in 0..=255u8 {
        class[b as usize] = b.is_ascii_alphanumeric() || b"+/_-".contains(&b);
    }
    Shape { class, min: 24, lead_boundary: false, trail: Trail::Terminated { pad: b'=', max: 2 }, worth_decoding: true }
}

/// A confirmed match in the scanned (normalised) text.
pub(crate) enum Match {
    Rule(u32, usize, usize),
    Candidate(Encoding, usize, usize),
}

/// The extent of a decode candidate from where its (start-less) match ended: the maximal run
/// of the encoding's characters around that point.
fn candidate_span(hay: &str, enc: Encoding, end: usize) -> Option<(usize, usize)> {
    let b = hay.as_bytes();
    let inside = |c: u8| match enc {
        Encoding::Base64 => c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'_' | b'-'),
        Encoding::Percent => c.is_ascii_alphanumeric() || b"%._~+!*'(),;:@&=$-".contains(&c),
    };
    let mut e = end.min(b.len());
    while e > 0 && !inside(b[e - 1]) {
        e -= 1;
    }
    while e < b.len() && inside(b[e]) {
        e += 1;
    }
    let mut s = e;
    while s > 0 && inside(b[s - 1]) {
        s -= 1;
    }
    if enc == Encoding::Base64 {
        // Padding belongs to the run; and only text worth decoding is decoded.
        if !decode::mixes_cases_and_digits(&b[s..e]) {
            return None;
        }
        while e < b.len() && b[e] == b'=' {
            e += 1;
        }
    }
    (e > s).then_some((s, e))
}

/// Where the value starts in an assignment match: after the first `=` or `:`, then spaces
/// and quotes.
fn value_offset(m: &str) -> usize {
    let b = m.as_bytes();
    let Some(mut i) = b.iter().position(|&c| c == b'=' || c == b':') else { return 0 };
    i += 1;
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'"' | b'\'') {
        i += 1;
    }
    if i >= b.len() {
        0
    } else {
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rules::{default_dir, load_dir};

    pub(crate) fn engine() -> Engine {
        Engine::compile(load_dir(&default_dir()).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"))
    }

    fn scan(e: &Engine, sc: &mut Scanner, t: &str) -> Vec<(String, usize, usize)> {
        let mut v = Vec::new();
        e.scan(sc, t, &mut v);
        v.into_iter().map(|f| (e.meta()[f.rule as usize].id.clone(), f.start, f.end)).collect()
    }

    /// A scanner serves one text after another (one per core): the byte map of a text that
    /// normalisation changed must not place the next text's findings. Each text's findings are
    /// the ones a fresh scanner reports, whatever came before (ASCII after changed text, changed
    /// after changed, decoded candidates inside either).
    #[test]
    fn a_reused_scanner_places_findings_as_a_fresh_one() {
        let e = engine();
        let texts = [
            "mail \u{ff42}\u{ff4f}\u{ff42}@example.com and \u{ff14}\u{ff11}\u{ff11}\u{ff11} 1111 1111 1111 now",
            "plain ascii: bob@example.com paid 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE",
            "caf\u{e9} (no change by normalisation) ada@example.org",
            "encoded a2V5IEFLSUFJT1NGT0ROTjdFWEFNUExF and bob%40example%2Ecom",
            "b\u{200b}ob@example.com zero\u{ad}width",
            "ascii again: carol@example.net",
        ];
        let mut reused = e.scanner().unwrap();
        for order in [[0, 1, 2, 3, 4, 5], [4, 5, 0, 3, 2, 1], [2, 0, 3, 4, 1, 5]] {
            for i in order {
                let t = texts[i];
                let want = scan(&e, &mut e.scanner().unwrap(), t);
                assert!(!want.is_empty(), "{t:?}");
                assert_eq!(scan(&e, &mut reused, t), want, "{t:?} after {order:?}");
            }
        }
    }

    /// Request headers are scanned as one text of `name: value` lines, and when nothing is
    /// found every line is remembered clean (detect/hook.rs `on_headers`): sound only if a
    /// line's findings show in any text that holds it. Each rule's positive examples, as a
    /// header line next to lines that find nothing alone (digit runs that could extend a card
    /// or phone number, base64 and percent alphabets that could extend a decode candidate,
    /// every rule's negative examples — also as header names, which may be digits), still yield
    /// their rule.
    #[test]
    fn a_line_is_found_in_any_text_that_holds_it() {
        let e = engine();
        let mut sc = e.scanner().unwrap();
        let mut neighbours: Vec<String> = ["0", "1234", "4111", "5555 5555", "+1", "-", "QUJD", "QUJDRA==", "a2V5", "%41%42", "=", "abc", "Zm9v\\", "", " "]
            .iter()
            .map(|s| s.to_string())
            .collect();
        neighbours.extend(e.rules().iter().flat_map(|l| l.rule.examples.negative.iter().cloned()));
        let named: Vec<String> = neighbours.iter().map(|n| format!("{n}: 1")).collect();
        neighbours.extend(named);
        neighbours.retain(|n| scan(&e, &mut sc, n).is_empty());
        let mut failures = Vec::new();
        for l in e.rules() {
            for p in &l.rule.examples.positive {
                let line = format!("x-h: {p}");
                if !scan(&e, &mut sc, &line).iter().any(|f| f.0 == l.rule.id) {
                    continue; // a rule that needs the line to start with its text: not a header's case
                }
                for n in &neighbours {
                    for text in [format!("{n}\n{line}"), format!("{line}\n{n}"), format!("{n}\n{line}\n{n}")] {
                        if !scan(&e, &mut sc, &text).iter().any(|f| f.0 == l.rule.id) {
                            failures.push(format!("{}: {text:?}", l.rule.id));
                        }
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{} misses, first ones:\n{}", failures.len(), failures[..failures.len().min(20)].join("\n"));
    }

    /// Every rule's own examples: each positive yields a finding of that rule covering a
    /// non-empty span; no negative yields one.
    #[test]
    fn rule_pack_examples() {
        let e = engine();
        let mut sc = e.scanner().unwrap();
        let mut failures = Vec::new();
        for l in e.rules() {
            let r = &l.rule;
            if r.examples.positive.is_empty() {
                failures.push(format!("{}: no positive examples", r.id));
            }
            for p in &r.examples.positive {
                if !scan(&e, &mut sc, p).iter().any(|f| f.0 == r.id && f.2 > f.1) {
                    failures.push(format!("{}: missed positive {p:?}", r.id));
                }
            }
            for n in &r.examples.negative {
                if scan(&e, &mut sc, n).iter().any(|f| f.0 == r.id) {
                    failures.push(format!("{}: matched negative {n:?}", r.id));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn value_only_rules_report_the_value() {
        let e = engine();
        let mut sc = e.scanner().unwrap();
        let t = "db password = \"Zr8#kP2!qL9vX4m\" ok";
        let f = scan(&e, &mut sc, t);
        let g = f.iter().find(|f| f.0 == "secret.generic_assignment").expect("generic secret");
        assert_eq!(&t[g.1..g.2], "Zr8#kP2!qL9vX4m");
    }

    #[test]
    fn encoded_secrets_are_decoded_and_found_over_the_encoded_span() {
        let e = engine();
        let mut sc = e.scanner().unwrap();
        // base64 of "key AKIAIOSFODNN7EXAMPLE" inside a URL-ish string, then percent-encoded e-mail.
        let t = "cfg=a2V5IEFLSUFJT1NGT0ROTjdFWEFNUExF&x=1 to=bob%40example%2Ecom%20ok";
        let mut v = Vec::new();
        e.scan(&mut sc, t, &mut v);
        let kinds: Vec<_> = v.iter().map(|f| (e.meta()[f.rule as usize].kind.as_str(), &t[f.start..f.end], f.encoding)).collect();
        assert!(kinds.contains(&("aws_access_key_id", "a2V5IEFLSUFJT1NGT0ROTjdFWEFNUExF", Some(Encoding::Base64))), "{kinds:?}");
        assert!(kinds.iter().any(|k| k.0 == "email" && k.2 == Some(Encoding::Percent) && k.1.contains("bob%40example")), "{kinds:?}");
    }

    /// Regression: every encoded span is decoded, not only the first of its encoding (found
    /// by `block_scan_agrees_with_the_stream_on_generated_text`: a decode candidate without a
    /// start offset counted as nested in the one before it).
    #[test]
    fn every_encoded_span_is_decoded() {
        let e = engine();
        let mut sc = e.scanner().unwrap();
        let b64 = "a2V5IEFLSUFJT1NGT0ROTjdFWEFNUExF";
        let t = format!("x SK0123456789abcdef0123456789abcdef {b64} y {b64} to=bob%40example%2Ecom and cc=eve%40example%2Eorg");
        let mut v = Vec::new();
        e.scan(&mut sc, &t, &mut v);
        let decoded: Vec<_> = v.iter().filter(|f| f.encoding.is_some()).map(|f| (e.meta()[f.rule as usize].kind.as_str(), &t[f.start..f.end])).collect();
        assert_eq!(decoded.iter().filter(|d| *d == &("aws_access_key_id", b64)).count(), 2, "{decoded:?}");
        assert!(decoded.iter().any(|d| d.0 == "email" && d.1.contains("bob%40")), "{decoded:?}");
        assert!(decoded.iter().any(|d| d.0 == "email" && d.1.contains("eve%40")), "{decoded:?}");
        let (_, streamed) = crate::detect::stream::mask_chunks(&e, None, &[t.as_bytes()]).unwrap();
        assert_eq!(streamed.iter().filter(|f| f.encoding.is_some()).count(), decoded.len(), "{streamed:?}");
    }

    #[test]
    fn finding_maps_back_through_evasion() {
        let e = engine();
        let mut sc = e.scanner().unwrap();
        let text = "contact: ｂｏｂ@example.com or 4111\u{200B}1111 1111 1111";
        let f = scan(&e, &mut sc, text);
        let spans: Vec<_> = f.iter().map(|f| (f.0.as_str(), &text[f.1..f.2])).collect();
        assert!(spans.contains(&("pii.email", "ｂｏｂ@example.com")), "{spans:?}");
        assert!(spans.contains(&("pii.payment_card", "4111\u{200B}1111 1111 1111")), "{spans:?}");
        assert!(spans.contains(&("builtin.zero_width_evasion", "\u{200B}")), "{spans:?}");
    }

    /// Phase 2 walks back from each end with the reverse DFA on ASCII and hands text with a
    /// multi-byte character on the way back to Hyperscan: both give the whole match, and the
    /// same as a streamed scan (one start-tracked database, no phase 2).
    #[test]
    fn starts_are_the_same_through_ascii_and_non_ascii_text() {
        let e = engine();
        let mut sc = e.scanner().unwrap();
        for (text, rule, want) in [
            ("db: postgres://app:hunter2pw@db.internal:5432/x", "secret.postgres_url_password", "postgres://app:hunter2pw@db.internal:5432"),
            ("db: postgres://app:h\u{e4}nter2pw@db.internal:5432/x", "secret.postgres_url_password", "postgres://app:h\u{e4}nter2pw@db.internal:5432"),
            ("caf\u{e9} r\u{e9}sum\u{e9} 8.8.8.8 na\u{ef}ve", "pii.ipv4", "8.8.8.8"),
            ("\u{e9}8.8.4.4", "pii.ipv4", "8.8.4.4"),
        ] {
            let found = scan(&e, &mut sc, text);
            let spans: Vec<_> = found.iter().map(|f| (f.0.as_str(), &text[f.1..f.2])).collect();
            assert!(spans.contains(&(rule, want)), "{text:?}: {spans:?}");
            let (block, streamed) = crate::detect::stream::tests::block_and_stream(&e, &mut sc, text, text.len());
            assert_eq!(block, streamed, "{text:?}");
        }
    }

    proptest::proptest! {
        /// The base64 decode candidate found as a run names the same spans as its pattern
        /// (which streamed scans still use), over text of runs at the class's edges.
        #[test]
        fn native_base64_candidate_agrees_with_its_pattern(parts in proptest::collection::vec((proptest::sample::select(vec!["A", "z", "9", "+", "_", "-", "=", " ", ".", "\u{e9}"]), 1usize..30), 0..12)) {
            let hay: String = parts.iter().map(|(c, n)| c.repeat(*n)).collect();
            let spans = |ends: Vec<usize>| {
                let mut v: Vec<_> = ends.into_iter().filter_map(|e| candidate_span(&hay, Encoding::Base64, e)).collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            let db: BlockDatabase = Pattern::with_flags(decode::BASE64_CANDIDATE, CompileFlags::UTF8).unwrap().build().unwrap();
            let sc = db.alloc_scratch().unwrap();
            let mut want = Vec::new();
            let _ = db.scan(&hay, &sc, |_, _, e, _| {
                want.push(e as usize);
                Matching::Continue
            });
            let runs = Runs::new(vec![(0, base64_candidate_shape(), usize::MAX / 2)]).unwrap();
            let mut got = Vec::new();
            runs.find(hay.as_bytes(), &mut got);
            proptest::prop_assert_eq!(spans(got.into_iter().map(|r| r.2 as usize).collect()), spans(want), "{:?}", hay);
        }
    }

    /// The same small pack compiled twice: as the engine runs it, and walking back from every
    /// end of every pattern (the reference for [`Engine::one_walk_per_run`]).
    fn open_run_engines() -> &'static (Engine, Engine) {
        static BOTH: std::sync::OnceLock<(Engine, Engine)> = std::sync::OnceLock::new();
        BOTH.get_or_init(|| {
            let tmp = tempfile::Builder::new().prefix("sluice-rules-runs-").tempdir().unwrap();
            let rule = |id: &str, pattern: &str, width: usize, caseless: bool| {
                format!("[[rule]]\nid = \"{id}\"\nkind = \"{id}\"\ncategory = \"secret\"\nseverity = \"low\"\npatterns = ['{pattern}']\nmax_width = {width}\ncaseless = {caseless}\n\n")
            };
            let pack = [
                rule("dotted", r"\bk[a-z]{2,}\.[a-z0-9-]{3,}", 24, false),
                rule("token", r"\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{3,}", 30, false),
                rule("assigned", r"\btok=[a-f0-9]{4,}", 20, true),
            ]
            .concat();
            std::fs::write(tmp.path().join("runs.toml"), pack).unwrap();
            let on = Engine::compile(load_dir(tmp.path()).unwrap()).unwrap();
            let mut off = Engine::compile(load_dir(tmp.path()).unwrap()).unwrap();
            assert_eq!(on.one_walk_per_run.iter().filter(|x| **x).count(), 3, "every pattern of the pack ends in an open class run");
            off.one_walk_per_run.fill(false);
            (on, off)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        /// One walk back per run of consecutive ends finds what a walk per end finds: tokens
        /// touching (a second token starting inside the first one's run), nested, with two
        /// starts (`eyJab-eyJcd.…`), wider than the rule allows, cut by non-ASCII text.
        #[test]
        fn one_walk_per_run_of_ends_finds_what_a_walk_per_end_finds(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "kab.xyz", "kabc.x-y-z-w", "k.aaa", "kab.", "kzz.zzzzzzzzzzzzzzzzzzzzzzzz9", "eyJab.cdef", "eyJab.cd-eyJcd.efgh",
                "eyJabcdefghij.klmnopqrstuvwxyz0123", "eyJab-eyJcd.efghijklmnopqrstuvwxyz", "TOK=abcdef12", "tok=ABCDEF0123456789abcdef", "tok=abc", "-", "x", "\u{e9}", "9",
            ]), 0..40),
            seps in proptest::collection::vec(proptest::sample::select(vec!["", "", " ", ".", "-", "="]), 40),
        ) {
            let (on, off) = open_run_engines();
            let text: String = pieces.iter().zip(&seps).flat_map(|(p, s)| [*p, *s]).collect();
            let (mut a, mut b) = (on.scanner().unwrap(), off.scanner().unwrap());
            proptest::prop_assert_eq!(scan(on, &mut a, &text), scan(off, &mut b, &text), "{:?}", text);
        }
    }

    #[test]
    fn the_jwt_rule_walks_back_once_per_token() {
        let e = engine();
        let jwt = e.meta().iter().position(|m| m.id == "secret.jwt").unwrap();
        let ids = &e.rule_patterns[jwt];
        assert!(!ids.is_empty() && ids.iter().all(|&i| e.one_walk_per_run[i as usize]));
        let mut sc = e.scanner().unwrap();
        let t = "a eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U b";
        assert_eq!(scan(&e, &mut sc, t), vec![("secret.jwt".to_string(), 2, t.len() - 2)]);
    }

    #[test]
    fn broken_pattern_is_reported_with_rule_and_file() {
        let tmp = tempfile::Builder::new().prefix("sluice-rules-engine-").tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("bad.toml"), "[[rule]]\nid = \"broken\"\nkind = \"x\"\ncategory = \"pii\"\nseverity = \"low\"\npatterns = [\"a(b\"]\n").unwrap();
        let err = match Engine::compile(load_dir(&dir).unwrap()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("compiled"),
        };
        assert!(err.contains("bad.toml: rule[0] (broken) pattern[0]"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
