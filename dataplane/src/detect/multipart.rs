//! `multipart/form-data` request bodies (RFC 7578) as text to inspect: a form with fields and
//! files carries arguments (and can carry a file out) as surely as a JSON body. Every part that
//! is text — a field (no `filename`), or a file whose `Content-Type` is text, JSON, XML or a
//! form — becomes one member `{"field name": "content"}` of the value the hooks see, in order
//! (`[{"title": "…"}, {"notes": "…"}]`, paths `/1/notes`), so a field's content is scanned with
//! its name as context. Binary parts are left out (not inspected) and kept byte for byte. After
//! masking, only the changed contents (and a field name with something masked in it) are
//! replaced; every other byte of the body stays.

use simd_json::prelude::*;
use simd_json::value::borrowed::Object;
use simd_json::BorrowedValue;
use std::borrow::Cow;
use std::ops::Range;

/// Most parts an upload may have (and parameters a form): each becomes a value of its own for
/// the inspection, so a body of tiny parts would cost far more memory than its size.
pub const MAX_PARTS: usize = 10_000;

/// A parsed body: the text parts' field names and contents, as ranges of the body.
pub struct Multipart<'b> {
    body: &'b [u8],
    parts: Vec<(Range<usize>, Range<usize>)>,
}

/// The `boundary` parameter of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"')).filter(|b| !b.is_empty() && b.len() <= 70)
    })
}

impl<'b> Multipart<'b> {
    /// Split `body` at `boundary`. `Err`: why it is not a well-formed form (the gateway cannot
    /// inspect it then).
    pub fn parse(body: &'b [u8], boundary: &str) -> Result<Self, String> {
        let delim = format!("\r\n--{boundary}");
        let finder = memchr::memmem::Finder::new(delim.as_bytes());
        // The first delimiter may open the body (without the CRLF before it).
        let mut at = if body.starts_with(&delim.as_bytes()[2..]) {
            delim.len() - 2
        } else {
            finder.find(body).ok_or("no part starts with the boundary")? + delim.len()
        };
        let mut parts = Vec::new();
        let mut count = 0;
        loop {
            count += 1;
            if count > MAX_PARTS {
                return Err(format!("it has more than {MAX_PARTS} parts"));
            }
            let rest = &body[at..];
            if rest.starts_with(b"--") {
                return Ok(Multipart { body, parts });
            }
            // Transport padding after the delimiter, then CRLF.
            let eol = memchr::memmem::find(rest, b"\r\n").ok_or("a boundary line does not end")?;
            if !rest[..eol].iter().all(|b| *b == b' ' || *b == b'\t') {
                return Err("a boundary line has text after the boundary".into());
            }
            let start = at + eol + 2;
            let head_len = memchr::memmem::find(&body[start..], b"\r\n\r\n").map(|n| n + 4);
            // A part with no headers starts its content right away.
            let (head, content_start) = if body[start..].starts_with(b"\r\n") {
                (start..start, start + 2)
            } else {
                let n = head_len.ok_or("a part's headers do not end")?;
                (start..start + n - 4, start + n)
            };
            let end = content_start + finder.find(&body[content_start..]).ok_or("the last part is not closed by the boundary")?;
            let headers = std::str::from_utf8(&body[head]).map_err(|_| "a part's headers are not UTF-8")?;
            if let Some(name) = text_part(headers, start) {
                std::str::from_utf8(&body[content_start..end]).map_err(|_| "a text part is not UTF-8")?;
                parts.push((name, content_start..end));
            }
            at = end + delim.len();
        }
    }

    /// Whether no part is text.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    fn text(&self, r: &Range<usize>) -> &'b str {
        std::str::from_utf8(&self.body[r.clone()]).unwrap_or("")
    }

    /// The text parts as the walk reads them.
    pub fn value(&self) -> BorrowedValue<'b> {
        let parts = self
            .parts
            .iter()
            .map(|(n, c)| {
                let mut o = Object::with_capacity(1);
                o.insert(Cow::Borrowed(self.text(n)), BorrowedValue::String(Cow::Borrowed(self.text(c))));
                BorrowedValue::Object(Box::new(o))
            })
            .collect();
        BorrowedValue::Array(Box::new(parts))
    }

    /// The body again, with what the walk changed in `v` (what [`Multipart::value`] gave).
    pub fn rebuild(&self, v: &BorrowedValue<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len());
        let mut at = 0;
        let now = v.as_array();
        for (i, (name, content)) in self.parts.iter().enumerate() {
            let Some((k, val)) = now.and_then(|a| a.get(i)).and_then(|o| o.as_object()).and_then(|o| o.iter().next()) else {
                continue;
            };
            if k.as_ref() != self.text(name) {
                out.extend_from_slice(&self.body[at..name.start]);
                // A quoted-string: the masked forms hold no quote or line break, but be sure.
                out.extend_from_slice(k.replace('"', "%22").replace(['\r', '\n'], " ").as_bytes());
                at = name.end;
            }
            if let Some(new) = val.as_str().filter(|s| *s != self.text(content)) {
                out.extend_from_slice(&self.body[at..content.start]);
                out.extend_from_slice(new.as_bytes());
                at = content.end;
            }
        }
        out.extend_from_slice(&self.body[at..]);
        out
    }
}

/// The range of the field name of a text part (`headers` start at `base` in the body); `None`
/// for a binary file part.
fn text_part(headers: &str, base: usize) -> Option<Range<usize>> {
    let mut name = None;
    let mut file = false;
    let mut ctype: Option<&str> = None;
    let mut offset = 0;
    for line in headers.split("\r\n") {
        let line_at = base + offset;
        offset += line.len() + 2;
        let Some((h, v)) = line.split_once(':') else { continue };
        if h.trim().eq_ignore_ascii_case("content-type") {
            ctype = Some(v.trim());
        } else if h.trim().eq_ignore_ascii_case("content-disposition") {
            let v_at = line_at + h.len() + 1;
            let mut p_at = 0;
            for p in v.split(';') {
                let here = p_at;
                p_at += p.len() + 1;
                let Some((k, val)) = p.split_once('=') else { continue };
                let key = k.trim();
                if key.eq_ignore_ascii_case("filename") || key.eq_ignore_ascii_case("filename*") {
                    file = true;
                } else if key.eq_ignore_ascii_case("name") {
                    let val_at = v_at + here + k.len() + 1;
                    let lead = val.len() - val.trim_start().len();
                    let t = val.trim();
                    let (s, e) = if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') { (1, t.len() - 1) } else { (0, t.len()) };
                    name = Some(val_at + lead + s..val_at + lead + e);
                }
            }
        }
    }
    let text = !file
        || ctype.is_some_and(|c| {
            let e = c.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            e.starts_with("text/") || e == "application/json" || e.ends_with("+json") || e == "application/xml" || e.ends_with("+xml") || e == "application/x-www-form-urlencoded"
        });
    // A field without a name is still text: it is inspected under an empty name.
    text.then(|| name.unwrap_or(base..base))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes: no panic. A generated form: unchanged it rebuilds byte for byte; with every
        /// text content changed, it parses again to exactly the new contents.
        #[test]
        fn forms_split_and_rebuild_exactly(junk in proptest::collection::vec(any::<u8>(), 0..200),
                                           fields in proptest::collection::vec(("[a-z]{0,6}", "[a-zA-Z0-9 @.\\r\\n-]{0,30}", any::<bool>()), 0..6)) {
            let _ = Multipart::parse(&junk, "b");
            let mut body = Vec::new();
            for (name, content, file) in &fields {
                body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"");
                body.extend_from_slice(name.as_bytes());
                if *file {
                    body.extend_from_slice(b"\"; filename=\"f.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n");
                } else {
                    body.extend_from_slice(b"\"\r\n\r\n");
                }
                body.extend_from_slice(content.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"--XyZ--\r\n");
            let m = Multipart::parse(&body, "XyZ").unwrap();
            let mut v = m.value();
            prop_assert_eq!(m.rebuild(&v), body.clone());
            let texts: Vec<&(String, String, bool)> = fields.iter().filter(|f| !f.2).collect();
            prop_assert_eq!(v.as_array().map(Vec::len), Some(texts.len()));
            for o in v.as_array_mut().unwrap() {
                for (_, x) in o.as_object_mut().unwrap().iter_mut() {
                    *x = BorrowedValue::String(Cow::Owned(format!("<{}>", x.as_str().unwrap_or(""))));
                }
            }
            let out = m.rebuild(&v);
            let again = Multipart::parse(&out, "XyZ").unwrap();
            prop_assert_eq!(simd_json::to_string(&again.value()).unwrap(), simd_json::to_string(&v).unwrap());
        }
    }

    const BODY: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello bob@example.com\r\n--XyZ\r\nContent-Disposition: form-data; name=\"pic\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\x00\xff bob@example.com\r\n--XyZ\r\ncontent-disposition: form-data; name=notes; filename=\"n.txt\"\r\ncontent-type: text/plain; charset=utf-8\r\n\r\nline one\r\nline two\r\n--XyZ--\r\n";

    #[test]
    fn text_parts_are_read_and_binary_ones_left_alone() {
        assert_eq!(boundary("multipart/form-data; boundary=XyZ"), Some("XyZ"));
        assert_eq!(boundary("multipart/form-data; charset=utf-8; Boundary=\"a b\""), Some("a b"));
        assert_eq!(boundary("multipart/form-data"), None);
        let m = Multipart::parse(BODY, "XyZ").unwrap();
        let v = m.value();
        assert_eq!(simd_json::to_string(&v).unwrap(), r#"[{"title":"hello bob@example.com"},{"notes":"line one\r\nline two"}]"#);
        assert_eq!(m.rebuild(&v), BODY, "unchanged: byte for byte");
    }

    #[test]
    fn changed_contents_and_names_are_replaced_in_place() {
        let m = Multipart::parse(BODY, "XyZ").unwrap();
        let mut v = m.value();
        let a = v.as_array_mut().unwrap();
        a[0] = BorrowedValue::Object(Box::new([(Cow::Borrowed("title"), BorrowedValue::String("hello [email:1f]".into()))].into_iter().collect()));
        a[1] = BorrowedValue::Object(Box::new([(Cow::Borrowed("[x]"), BorrowedValue::String("line one\r\nline two".into()))].into_iter().collect()));
        let out = m.rebuild(&v);
        let want = String::from_utf8_lossy(BODY).replace("hello bob@example.com\r\n--XyZ\r\nContent-Disposition: form-data; name=\"pic\"", "hello [email:1f]\r\n--XyZ\r\nContent-Disposition: form-data; name=\"pic\"").replace("name=notes;", "name=[x];");
        assert_eq!(String::from_utf8_lossy(&out), want);
        // The binary part's bytes are untouched.
        assert!(out.windows(6).any(|w| w == b"\x89PNG\x00\xff"));
    }

    #[test]
    fn malformed_forms_are_errors() {
        for (body, why) in [
            (&b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nnever closed"[..], "not closed"),
            (b"no boundary here", "no part"),
            (b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\xff\xfe\r\n--XyZ--", "not UTF-8"),
            (b"--XyZ junk\r\n\r\nx\r\n--XyZ--", "text after the boundary"),
            (&b"--XyZ\r\n\r\nx\r\n".repeat(MAX_PARTS + 1), "more than 10000 parts"),
        ] {
            let e = Multipart::parse(body, "XyZ").err().unwrap_or_default();
            assert!(e.contains(why), "{e}");
        }
        // Preamble before the first boundary is allowed; a part without headers too.
        let m = Multipart::parse(b"preamble\r\n--XyZ\r\n\r\nbare\r\n--XyZ--", "XyZ").unwrap();
        assert_eq!(simd_json::to_string(&m.value()).unwrap(), r#"[{"":"bare"}]"#);
    }
}
