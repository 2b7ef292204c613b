//! The analyzer's JSON reader (`analyzer/src/json.rs`, which reads every archived event)
//! against `serde_json`, on any UTF-8 input: the same verdict on every document (a skipped
//! value is its exact text), strings unescaped alike, integers read alike, object members
//! named and nested alike.
//!
//! The reader depends on `std` alone by design, so it is compiled in here by path: linking the
//! analyzer crate would build DataFusion and librdkafka under the sanitizer for one parser.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

#[path = "../../../analyzer/src/json.rs"]
#[allow(dead_code)]
mod json;

/// A JSON value as written: members in order, duplicates kept (`serde_json::Value` keeps the
/// last of a name only).
#[derive(Debug, PartialEq)]
enum Shape {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Shape>),
    Object(Vec<(String, Shape)>),
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Shape, E> {
                Ok(Shape::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Shape, E> {
                Ok(Shape::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Shape, E> {
                Ok(Shape::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Shape, E> {
                Ok(Shape::Number(v.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Shape, E> {
                Number::from_f64(v).map(Shape::Number).ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_str<E>(self, v: &str) -> Result<Shape, E> {
                Ok(Shape::String(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Shape, A::Error> {
                let mut items = Vec::new();
                while let Some(x) = a.next_element()? {
                    items.push(x);
                }
                Ok(Shape::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Shape, A::Error> {
                let mut members = Vec::new();
                while let Some(m) = a.next_entry()? {
                    members.push(m);
                }
                Ok(Shape::Object(members))
            }
        }
        d.deserialize_any(V)
    }
}

/// The document read through the reader's typed calls, each chosen by what `serde_json` read
/// at that place.
fn read(r: &mut json::Reader<'_>, shape: &Shape) -> json::Result<Shape> {
    Ok(match shape {
        Shape::Object(members) => {
            let mut out = Vec::new();
            let mut shapes = members.iter();
            r.object(|r, name| {
                let (_, s) = shapes.next().expect("no more members than serde_json read");
                out.push((name.to_owned(), read(r, s)?));
                Ok(())
            })?;
            Shape::Object(out)
        }
        Shape::Array(items) => {
            let mut out = Vec::new();
            let mut shapes = items.iter();
            r.array(|r| {
                out.push(read(r, shapes.next().expect("no more items than serde_json read"))?);
                Ok(())
            })?;
            Shape::Array(out)
        }
        Shape::String(_) => Shape::String(r.string()?.into_owned()),
        Shape::Bool(_) => Shape::Bool(r.bool()?),
        Shape::Null => {
            assert!(r.null()?, "null read as not null");
            Shape::Null
        }
        Shape::Number(_) => Shape::Number(serde_json::from_str(r.skip()?).expect("a skipped number is a number")),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let ws: &[char] = &[' ', '\n', '\r', '\t'];

    let mut r = json::Reader::new(s);
    let ours = r.skip().and_then(|v| r.end().map(|()| v));
    let theirs = serde_json::from_str::<Box<serde_json::value::RawValue>>(s);
    assert_eq!(ours.is_ok(), theirs.is_ok(), "{s:?}: ours {ours:?}, serde {theirs:?}");
    if let Ok(v) = ours {
        assert_eq!(v, s.trim_matches(ws));
    }

    let mut r = json::Reader::new(s);
    let ours = r.string().map(|c| c.into_owned()).and_then(|v| r.end().map(|()| v));
    assert_eq!(ours.ok(), serde_json::from_str::<String>(s).ok(), "{s:?}: strings differ");

    let mut r = json::Reader::new(s);
    let ours = r.int::<i64>().and_then(|v| r.end().map(|()| v));
    assert_eq!(ours.ok(), serde_json::from_str::<i64>(s).ok(), "{s:?}: integers differ");

    // A valid document read member by member and item by item gives what serde_json read.
    if let Ok(shape) = serde_json::from_str::<Shape>(s) {
        let mut r = json::Reader::new(s);
        let ours = read(&mut r, &shape).and_then(|v| r.end().map(|()| v));
        assert_eq!(ours.as_ref().ok(), Some(&shape), "{s:?}: read as {ours:?}");
    }
});
