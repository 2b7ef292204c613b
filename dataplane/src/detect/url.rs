//! The request URL as text to inspect: what the upstream reads from the path below the route's
//! prefix and from the query (`GET /users/bob@example.com?token=…` carries arguments as
//! surely as a JSON body does). Each path segment and each query parameter is percent-decoded
//! (`+` is a space in a query) and handed to the detection walk as a JSON value,
//! `{"url": {"path": ["users", "bob@example.com"], "query": [{"token": "…"}, {"flag": null}]}}`,
//! so a parameter's value is scanned with its name as context, its name is scanned too, and
//! findings have JSON Pointers (`/url/path/1`, `/url/query/0/token`). After masking only the
//! parts that changed are written again, percent-encoded; every other byte of the target is
//! kept as it was sent.

use super::decode::hex;
use simd_json::prelude::*;
use simd_json::value::borrowed::Object;
use simd_json::{BorrowedValue, StaticNode};
use std::borrow::Cow;

/// Name–value pairs as the walk reads them, `{"<top>": [{"name": "value"}, …]}` (request
/// headers: findings at `/headers/N/name`).
pub fn pairs_value<'t>(pairs: impl Iterator<Item = (&'t str, &'t str)>, top: &'static str) -> BorrowedValue<'t> {
    let list: Vec<BorrowedValue<'t>> = pairs
        .map(|(n, v)| {
            let mut o = Object::with_capacity(1);
            o.insert(Cow::Borrowed(n), BorrowedValue::String(Cow::Borrowed(v)));
            BorrowedValue::Object(Box::new(o))
        })
        .collect();
    let mut root = Object::with_capacity(1);
    root.insert(Cow::Borrowed(top), BorrowedValue::Array(Box::new(list)));
    BorrowedValue::Object(Box::new(root))
}

/// A request target below the route's prefix, split into its raw parts.
pub struct Target<'t> {
    /// The path's segments between `/` (the first is empty when the path starts with `/`).
    path: Vec<&'t str>,
    /// The query's parameters: raw name, raw value (`None`: no `=`). `None`: no `?`.
    query: Option<Vec<(&'t str, Option<&'t str>)>>,
}

impl<'t> Target<'t> {
    /// Split `target` (a path, maybe empty, then maybe `?query`).
    pub fn parse(target: &'t str) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let path = if path.is_empty() { Vec::new() } else { path.split('/').collect() };
        Target { path, query: query.map(params) }
    }

    /// A form body (`application/x-www-form-urlencoded`): parameters as in a query.
    pub fn form(body: &'t str) -> Self {
        Target { path: Vec::new(), query: Some(params(body)) }
    }

    /// Whether there is any text to inspect (most MCP requests: none).
    pub fn is_empty(&self) -> bool {
        self.path.iter().all(|s| s.is_empty()) && self.query.as_ref().is_none_or(|q| q.is_empty())
    }

    /// The decoded parts as the walk reads them.
    pub fn value(&self) -> BorrowedValue<'t> {
        let path: Vec<BorrowedValue<'t>> = self.path.iter().map(|s| BorrowedValue::String(decode(s, false))).collect();
        let mut url = Object::with_capacity(2);
        url.insert(Cow::Borrowed("path"), BorrowedValue::Array(Box::new(path)));
        url.insert(Cow::Borrowed("query"), self.params_value());
        let mut root = Object::with_capacity(1);
        root.insert(Cow::Borrowed("url"), BorrowedValue::Object(Box::new(url)));
        BorrowedValue::Object(Box::new(root))
    }

    /// The parameters as the walk reads them, `[{"name": "value"}, {"flag": null}, …]` (a
    /// form body's whole value).
    pub fn params_value(&self) -> BorrowedValue<'t> {
        let query: Vec<BorrowedValue<'t>> = self
            .query
            .iter()
            .flatten()
            .map(|(n, v)| {
                let mut o = Object::with_capacity(1);
                o.insert(decode(n, true), v.map_or(BorrowedValue::Static(StaticNode::Null), |v| BorrowedValue::String(decode(v, true))));
                BorrowedValue::Object(Box::new(o))
            })
            .collect();
        BorrowedValue::Array(Box::new(query))
    }

    /// A form body again, from what [`Target::params_value`] gave after the walk.
    pub fn rebuild_form(&self, v: &BorrowedValue<'_>) -> String {
        let mut out = String::new();
        self.rebuild_params(&mut out, v.as_array());
        out
    }

    /// The target again, from `v` (what [`Target::value`] gave, after the walk masked it):
    /// a part the walk changed is percent-encoded, every other part keeps its raw bytes.
    pub fn rebuild(&self, v: &BorrowedValue<'_>) -> String {
        let url = v.get("url");
        let mut out = String::new();
        for (i, raw) in self.path.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            let now = url.and_then(|u| u.get("path")).and_then(|p| p.get_idx(i)).and_then(|s| s.as_str());
            part(&mut out, raw, now, false);
        }
        if self.query.is_some() {
            out.push('?');
            self.rebuild_params(&mut out, url.and_then(|u| u.get("query")).and_then(|q| q.as_array()));
        }
        out
    }

    fn rebuild_params(&self, out: &mut String, params: Option<&Vec<BorrowedValue<'_>>>) {
        for (i, (name, value)) in self.query.iter().flatten().enumerate() {
            if i > 0 {
                out.push('&');
            }
            let member = params.and_then(|p| p.get(i)).and_then(|o| o.as_object()).and_then(|o| o.iter().next());
            part(out, name, member.map(|(k, _)| k.as_ref()), true);
            if let Some(raw) = value {
                out.push('=');
                part(out, raw, member.and_then(|(_, v)| v.as_str()), true);
            }
        }
    }
}

/// `a=1&b&c=` as (name, value) pairs, raw.
fn params(q: &str) -> Vec<(&str, Option<&str>)> {
    if q.is_empty() {
        return Vec::new();
    }
    q.split('&').map(|p| p.split_once('=').map_or((p, None), |(n, v)| (n, Some(v)))).collect()
}

/// One part: its raw bytes when `now` is what they decode to (or unknown), else `now` encoded.
fn part(out: &mut String, raw: &str, now: Option<&str>, query: bool) {
    match now {
        Some(now) if now != decode(raw, query) => encode(out, now),
        _ => out.push_str(raw),
    }
}

/// Percent-decode `raw` (and `+` → space in a query); `raw` itself when nothing is encoded or
/// the bytes are not UTF-8 (the scanner decodes percent-encoded candidates on its own).
fn decode(raw: &str, query: bool) -> Cow<'_, str> {
    if !(raw.contains('%') || query && raw.contains('+')) {
        return Cow::Borrowed(raw);
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if query => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(raw),
    }
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn encode(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(c >> 4)] as char);
            out.push(HEX[usize::from(c & 15)] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every string of a value replaced by `f(old)`, keys included.
    fn replace_all(v: &mut BorrowedValue<'_>, f: &dyn Fn(&str) -> String) {
        match v {
            BorrowedValue::String(s) => *s = Cow::Owned(f(s)),
            BorrowedValue::Array(a) => a.iter_mut().for_each(|x| replace_all(x, f)),
            BorrowedValue::Object(o) => {
                let members: Vec<_> = o.drain().collect();
                for (k, mut x) in members {
                    replace_all(&mut x, f);
                    o.insert(Cow::Owned(f(&k)), x);
                }
            }
            _ => {}
        }
    }

    proptest! {
        /// Any target rebuilds to itself when nothing changed; when every part changed, the new
        /// target splits into as many parts, each decoding to the new text.
        #[test]
        fn targets_rebuild_exactly(t in "[a-z/?&=%+2Fé0-9]{0,40}", new in "[a-z/?&=%+ #é\\[\\]]{0,8}") {
            let target = Target::parse(&t);
            let mut v = target.value();
            prop_assert_eq!(target.rebuild(&v), t.clone());
            let url = v.get_mut("url").unwrap();
            for part in ["path", "query"] {
                replace_all(url.get_mut(part).unwrap(), &|old| format!("{old}{new}"));
            }
            let out = target.rebuild(&v);
            let again = Target::parse(&out);
            prop_assert_eq!(again.path.len(), target.path.len());
            prop_assert_eq!(again.query.as_ref().map(Vec::len), target.query.as_ref().map(Vec::len));
            prop_assert_eq!(simd_json::to_string(&again.value()).unwrap(), simd_json::to_string(&v).unwrap());
        }
    }

    #[test]
    fn parts_decode_and_an_unchanged_target_rebuilds_byte_for_byte() {
        for t in ["", "/", "/a/b%2Fc/", "/users/bob%40example.com?x=1&x=2&flag&e=&q=a+b%20c", "?", "?&&", "/%ff%zz/%", "/a?b=%E2%82%AC"] {
            let target = Target::parse(t);
            let v = target.value();
            assert_eq!(target.rebuild(&v), t, "{v:?}");
        }
        let v = Target::parse("/users/bob%40example.com?q=a+b%20c&flag&%70w=x%3Dy").value();
        assert_eq!(
            simd_json::to_string(&v).unwrap(),
            r#"{"url":{"path":["","users","bob@example.com"],"query":[{"q":"a b c"},{"flag":null},{"pw":"x=y"}]}}"#
        );
        // Bytes that do not decode to UTF-8 are handed over raw.
        assert_eq!(simd_json::to_string(&Target::parse("/%ff%fe").value()).unwrap(), r#"{"url":{"path":["","%ff%fe"],"query":[]}}"#);
        assert!(Target::parse("/").is_empty() && Target::parse("?").is_empty() && !Target::parse("/a").is_empty());
        // A form body is a query without its `?`.
        let form = Target::form("email=bob%40example.com&note=hi+there&x");
        let v = form.params_value();
        assert_eq!(simd_json::to_string(&v).unwrap(), r#"[{"email":"bob@example.com"},{"note":"hi there"},{"x":null}]"#);
        assert_eq!(form.rebuild_form(&v), "email=bob%40example.com&note=hi+there&x");
    }

    #[test]
    fn changed_parts_are_encoded_and_the_rest_kept() {
        let target = Target::parse("/u/bob%40example.com/x%2Fy?tok=abc&keep=a+b&k%65y=v");
        let mut v = target.value();
        let url = v.get_mut("url").unwrap();
        *url.get_mut("path").unwrap().get_idx_mut(2).unwrap() = BorrowedValue::String("[email:1f] ok/".into());
        let q = url.get_mut("query").unwrap().as_array_mut().unwrap();
        q[0] = BorrowedValue::Object(Box::new([(Cow::Borrowed("tok"), BorrowedValue::String("[REDACTED:x]".into()))].into_iter().collect()));
        q[2] = BorrowedValue::Object(Box::new([(Cow::Borrowed("[k]"), BorrowedValue::String("v".into()))].into_iter().collect()));
        assert_eq!(target.rebuild(&v), "/u/%5Bemail%3A1f%5D%20ok%2F/x%2Fy?tok=%5BREDACTED%3Ax%5D&keep=a+b&%5Bk%5D=v");
    }
}
