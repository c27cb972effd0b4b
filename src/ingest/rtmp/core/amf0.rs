//! AMF0, the encoding of RTMP commands and `onMetaData`, bounded: nesting depth,
//! the number of values and every length are checked against what the message
//! holds before anything is allocated, so a hostile message costs at most a
//! small multiple of its own size and never deep recursion.

use std::fmt;

/// Deepest nesting of objects/arrays accepted. Real publishers send depth 2
/// (a command object or metadata object inside the message).
pub const MAX_DEPTH: usize = 32;
/// Most values (of any kind, nested ones included) in one message.
pub const MAX_VALUES: usize = 4096;

const NUMBER: u8 = 0x00;
const BOOLEAN: u8 = 0x01;
const STRING: u8 = 0x02;
const OBJECT: u8 = 0x03;
const NULL: u8 = 0x05;
const UNDEFINED: u8 = 0x06;
const REFERENCE: u8 = 0x07;
const ECMA_ARRAY: u8 = 0x08;
const OBJECT_END: u8 = 0x09;
const STRICT_ARRAY: u8 = 0x0a;
const DATE: u8 = 0x0b;
const LONG_STRING: u8 = 0x0c;
const UNSUPPORTED: u8 = 0x0d;
const XML_DOCUMENT: u8 = 0x0f;
const TYPED_OBJECT: u8 = 0x10;

#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    Number(f64),
    Boolean(bool),
    /// Strings, long strings and XML documents (invalid UTF-8 is replaced).
    String(String),
    /// Objects, ECMA arrays and typed objects, properties in wire order.
    Object(Vec<(String, Amf0Value)>),
    StrictArray(Vec<Amf0Value>),
    /// Milliseconds since the epoch.
    Date(f64),
    Null,
    /// Undefined, Unsupported and references (which we do not resolve).
    Undefined,
}

impl Amf0Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The value of property `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Amf0Value> {
        match self {
            Amf0Value::Object(props) => props.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl From<&str> for Amf0Value {
    fn from(s: &str) -> Self {
        Amf0Value::String(s.to_string())
    }
}

impl From<f64> for Amf0Value {
    fn from(n: f64) -> Self {
        Amf0Value::Number(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amf0Error {
    /// The message ends inside a value.
    Truncated,
    /// Objects or arrays nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// More than [`MAX_VALUES`] values.
    TooManyValues,
    /// A type marker this decoder does not know (or AMF3, which we do not speak).
    UnknownMarker(u8),
}

impl fmt::Display for Amf0Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amf0Error::Truncated => f.write_str("AMF0 value runs past the end of the message"),
            Amf0Error::TooDeep => write!(f, "AMF0 values nested deeper than {MAX_DEPTH}"),
            Amf0Error::TooManyValues => write!(f, "more than {MAX_VALUES} AMF0 values"),
            Amf0Error::UnknownMarker(m) => write!(f, "unknown AMF0 type marker 0x{m:02x}"),
        }
    }
}

impl std::error::Error for Amf0Error {}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    values: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Amf0Error> {
        let end = self.pos.checked_add(n).ok_or(Amf0Error::Truncated)?;
        let s = self.data.get(self.pos..end).ok_or(Amf0Error::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, Amf0Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Amf0Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Amf0Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self) -> Result<f64, Amf0Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_be_bytes(a))
    }

    /// `len` bytes as text; the length was checked against the input by `take`.
    fn text(&mut self, len: usize) -> Result<String, Amf0Error> {
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    fn count_value(&mut self) -> Result<(), Amf0Error> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(Amf0Error::TooManyValues);
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Amf0Value, Amf0Error> {
        self.count_value()?;
        let marker = self.u8()?;
        Ok(match marker {
            NUMBER => Amf0Value::Number(self.f64()?),
            BOOLEAN => Amf0Value::Boolean(self.u8()? != 0),
            STRING => {
                let len = usize::from(self.u16()?);
                Amf0Value::String(self.text(len)?)
            }
            LONG_STRING | XML_DOCUMENT => {
                let len = self.u32()? as usize;
                Amf0Value::String(self.text(len)?)
            }
            NULL => Amf0Value::Null,
            UNDEFINED | UNSUPPORTED => Amf0Value::Undefined,
            REFERENCE => {
                self.u16()?;
                Amf0Value::Undefined
            }
            DATE => {
                let ms = self.f64()?;
                self.u16()?; // time zone, unused by spec
                Amf0Value::Date(ms)
            }
            OBJECT => Amf0Value::Object(self.properties(depth)?),
            TYPED_OBJECT => {
                let len = usize::from(self.u16()?);
                self.take(len)?; // class name
                Amf0Value::Object(self.properties(depth)?)
            }
            ECMA_ARRAY => {
                // The count is a hint that encoders get wrong; the end marker rules.
                self.u32()?;
                Amf0Value::Object(self.properties(depth)?)
            }
            STRICT_ARRAY => {
                let depth = depth + 1;
                if depth > MAX_DEPTH {
                    return Err(Amf0Error::TooDeep);
                }
                let count = self.u32()?;
                // No capacity from the untrusted count: each element needs at
                // least one byte, and MAX_VALUES bounds the total anyway.
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(self.value(depth)?);
                }
                Amf0Value::StrictArray(items)
            }
            other => return Err(Amf0Error::UnknownMarker(other)),
        })
    }

    /// Name/value pairs up to the empty name + object-end marker.
    fn properties(&mut self, depth: usize) -> Result<Vec<(String, Amf0Value)>, Amf0Error> {
        let depth = depth + 1;
        if depth > MAX_DEPTH {
            return Err(Amf0Error::TooDeep);
        }
        let mut props = Vec::new();
        loop {
            let len = usize::from(self.u16()?);
            if len == 0 {
                // Some encoders omit the end marker at the very end of a message.
                if self.pos == self.data.len() {
                    return Ok(props);
                }
                if self.data[self.pos] == OBJECT_END {
                    self.pos += 1;
                    return Ok(props);
                }
            }
            let name = self.text(len)?;
            let value = self.value(depth)?;
            props.push((name, value));
        }
    }
}

/// Decodes every value in `data`.
pub fn decode_all(data: &[u8]) -> Result<Vec<Amf0Value>, Amf0Error> {
    let mut r = Reader {
        data,
        pos: 0,
        values: 0,
    };
    let mut out = Vec::new();
    while r.pos < data.len() {
        out.push(r.value(0)?);
    }
    Ok(out)
}

/// Appends the encoding of `v` to `out`. Strings over 64 KiB become long strings.
pub fn encode(v: &Amf0Value, out: &mut Vec<u8>) {
    match v {
        Amf0Value::Number(n) => {
            out.push(NUMBER);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Amf0Value::Boolean(b) => out.extend_from_slice(&[BOOLEAN, u8::from(*b)]),
        Amf0Value::String(s) => match u16::try_from(s.len()) {
            Ok(len) => {
                out.push(STRING);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Err(_) => {
                out.push(LONG_STRING);
                let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&s.as_bytes()[..len as usize]);
            }
        },
        Amf0Value::Object(props) => {
            out.push(OBJECT);
            for (k, v) in props {
                // Property names are short literals here; longer ones are cut.
                let name = &k.as_bytes()[..k.len().min(usize::from(u16::MAX))];
                out.extend_from_slice(&(name.len() as u16).to_be_bytes());
                out.extend_from_slice(name);
                encode(v, out);
            }
            out.extend_from_slice(&[0, 0, OBJECT_END]);
        }
        Amf0Value::StrictArray(items) => {
            out.push(STRICT_ARRAY);
            let len = u32::try_from(items.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            for v in items.iter().take(len as usize) {
                encode(v, out);
            }
        }
        Amf0Value::Date(ms) => {
            out.push(DATE);
            out.extend_from_slice(&ms.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
        }
        Amf0Value::Null => out.push(NULL),
        Amf0Value::Undefined => out.push(UNDEFINED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(props: &[(&str, Amf0Value)]) -> Amf0Value {
        Amf0Value::Object(
            props
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn round_trip() {
        let values = vec![
            "connect".into(),
            1.0.into(),
            obj(&[
                ("app", "live".into()),
                ("flag", Amf0Value::Boolean(true)),
                ("nested", obj(&[("x", Amf0Value::Null)])),
            ]),
            Amf0Value::StrictArray(vec![Amf0Value::Undefined, 2.5.into()]),
            Amf0Value::Date(1000.0),
            Amf0Value::String("é".repeat(40_000)),
        ];
        let mut buf = Vec::new();
        for v in &values {
            encode(v, &mut buf);
        }
        assert_eq!(decode_all(&buf).unwrap(), values);
    }

    #[test]
    fn ecma_array_and_missing_end_marker() {
        // ECMA array with a wrong count, then an object cut right after its
        // last property's empty name (as some encoders write it).
        let mut buf = vec![ECMA_ARRAY, 0, 0, 0, 9];
        buf.extend_from_slice(&[0, 1, b'w', NUMBER]);
        buf.extend_from_slice(&640f64.to_be_bytes());
        buf.extend_from_slice(&[0, 0, OBJECT_END]);
        buf.extend_from_slice(&[OBJECT, 0, 0]);
        let v = decode_all(&buf).unwrap();
        assert_eq!(v[0].get("w"), Some(&Amf0Value::Number(640.0)));
        assert_eq!(v[1], Amf0Value::Object(vec![]));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing() {
        // 200 000 nested single-element strict arrays: the crash from issue 10.
        let mut buf = Vec::new();
        for _ in 0..200_000 {
            buf.extend_from_slice(&[STRICT_ARRAY, 0, 0, 0, 1]);
        }
        buf.push(NULL);
        assert_eq!(decode_all(&buf), Err(Amf0Error::TooDeep));
        // Same with objects.
        let mut buf = Vec::new();
        for _ in 0..200_000 {
            buf.extend_from_slice(&[OBJECT, 0, 1, b'a']);
        }
        assert_eq!(decode_all(&buf), Err(Amf0Error::TooDeep));
        // At the limit it still decodes.
        let mut buf = Vec::new();
        for _ in 0..MAX_DEPTH {
            buf.extend_from_slice(&[STRICT_ARRAY, 0, 0, 0, 1]);
        }
        buf.push(NULL);
        assert!(decode_all(&buf).is_ok());
    }

    #[test]
    fn lengths_beyond_the_message_are_truncation_not_allocation() {
        assert_eq!(
            decode_all(&[STRICT_ARRAY, 0xff, 0xff, 0xff, 0xff]),
            Err(Amf0Error::Truncated)
        );
        assert_eq!(
            decode_all(&[LONG_STRING, 0xff, 0xff, 0xff, 0xff, b'a']),
            Err(Amf0Error::Truncated)
        );
        assert_eq!(decode_all(&[STRING, 0, 5, b'a']), Err(Amf0Error::Truncated));
        assert_eq!(decode_all(&[NUMBER, 0, 0]), Err(Amf0Error::Truncated));
        assert_eq!(decode_all(&[OBJECT, 0, 1]), Err(Amf0Error::Truncated));
        assert_eq!(decode_all(&[0x11]), Err(Amf0Error::UnknownMarker(0x11)));
    }

    #[test]
    fn value_count_is_capped() {
        let mut buf = vec![STRICT_ARRAY, 0, 1, 0, 0];
        buf.extend(std::iter::repeat_n(NULL, 65536));
        assert_eq!(decode_all(&buf), Err(Amf0Error::TooManyValues));
        assert_eq!(
            decode_all(&vec![NULL; MAX_VALUES + 1]),
            Err(Amf0Error::TooManyValues)
        );
        assert_eq!(
            decode_all(&vec![NULL; MAX_VALUES]).unwrap().len(),
            MAX_VALUES
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let v = decode_all(&[STRING, 0, 2, 0xff, b'a']).unwrap();
        assert_eq!(v[0].as_str(), Some("\u{fffd}a"));
    }
}
