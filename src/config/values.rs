//! Value types and lenient deserializers for settings.
//!
//! Settings arrive from four places that disagree about types: TOML has real
//! integers and booleans, figment parses environment variables into whatever
//! they look like (`MAITRED_IDENT=123` becomes an integer), and command-line
//! flags are always strings. Every field therefore deserializes through one of
//! these helpers, which accept any reasonable spelling and reject the rest
//! with a message saying what was expected. figment attaches the key and the
//! source to the error.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A byte count typed as `512KiB`, `16MiB`, `1GB` or a bare number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A span of time typed as `30s`, `2m`, `1500ms`, `1h`, or a bare number of
/// seconds (Waitress's spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

const SIZE_UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("k", 1000),
    ("kb", 1000),
    ("kib", 1 << 10),
    ("m", 1000 * 1000),
    ("mb", 1000 * 1000),
    ("mib", 1 << 20),
    ("g", 1000 * 1000 * 1000),
    ("gb", 1000 * 1000 * 1000),
    ("gib", 1 << 30),
    ("t", 1000 * 1000 * 1000 * 1000),
    ("tb", 1000 * 1000 * 1000 * 1000),
    ("tib", 1 << 40),
];

/// Units of whole seconds (milliseconds are read apart, so a long span in
/// seconds never overflows on its way through milliseconds).
const DURATION_UNITS: &[(&str, u64)] = &[("s", 1), ("sec", 1), ("m", 60), ("min", 60), ("h", 3600)];

/// Splits `"16 MiB"` into `(16, "mib")`; `None` when there is no leading number.
fn number_and_unit(text: &str) -> Option<(u64, String)> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim().to_ascii_lowercase()))
}

impl ByteSize {
    pub fn parse(text: &str) -> Option<Self> {
        let (n, unit) = number_and_unit(text)?;
        if unit.is_empty() {
            return Some(ByteSize(n));
        }
        let (_, factor) = SIZE_UNITS.iter().find(|(u, _)| *u == unit)?;
        n.checked_mul(*factor).map(ByteSize)
    }

    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for ByteSize {
    /// The shortest exact spelling, so `config show` round-trips.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, factor) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= factor && self.0 % factor == 0 {
                return write!(f, "{}{unit}", self.0 / factor);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Seconds {
    pub fn parse(text: &str) -> Option<Self> {
        let (n, unit) = number_and_unit(text)?;
        match unit.as_str() {
            "" => Some(Seconds(Duration::from_secs(n))),
            "ms" => Some(Seconds(Duration::from_millis(n))),
            _ => {
                let (_, secs) = DURATION_UNITS.iter().find(|(u, _)| *u == unit)?;
                n.checked_mul(*secs)
                    .map(|s| Seconds(Duration::from_secs(s)))
            }
        }
    }

    pub fn from_secs(secs: u64) -> Self {
        Seconds(Duration::from_secs(secs))
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Sizes and durations serialize the way people type them ("16MiB",
/// "120s"), which is what `config show` and `config defaults` print; the
/// deserializers read that form back.
impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Visitor shared by the scalar types: integers go to `from_u64`, strings to
/// `from_str`; `expecting` is what the error message promises.
struct Scalar<T> {
    expecting: &'static str,
    from_u64: fn(u64) -> Option<T>,
    from_str: fn(&str) -> Option<T>,
}

impl<T> Visitor<'_> for Scalar<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.from_u64)(v).ok_or_else(|| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v)
            .ok()
            .and_then(self.from_u64)
            .ok_or_else(|| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Err(E::invalid_value(Unexpected::Float(v), &self))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        // A bool can only reach a numeric field by mistake, but the text
        // spellings ("on", "1") are handled by `from_str` for bool fields.
        (self.from_str)(if v { "true" } else { "false" })
            .ok_or_else(|| E::invalid_type(Unexpected::Bool(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.from_str)(v).ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Scalar {
            expecting: "a size in bytes, such as 1048576, 512KiB or 16MiB",
            from_u64: |n| Some(ByteSize(n)),
            from_str: ByteSize::parse,
        })
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Scalar {
            expecting: "a duration, such as 30s, 2m, 1500ms or a number of seconds",
            from_u64: |n| Some(Seconds::from_secs(n)),
            from_str: Seconds::parse,
        })
    }
}

/// Parses the boolean spellings Waitress's `asbool` accepts, plus their
/// negative counterparts.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    d.deserialize_any(Scalar {
        expecting: "a boolean (true/false, yes/no, on/off, 1/0)",
        from_u64: |n| match n {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        },
        from_str: parse_bool,
    })
}

fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(Scalar {
        expecting: "a whole number",
        from_u64: Some,
        from_str: |s| s.trim().parse().ok(),
    })
}

/// An optional duration: unset, empty text or `0` all mean "none".
pub fn opt_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Seconds>, D::Error> {
    struct Opt(Option<Seconds>);
    impl<'de> Deserialize<'de> for Opt {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Scalar {
                expecting: "a duration, such as 30s, 2m, 1500ms or a number of seconds (0 or empty: none)",
                from_u64: |n| Some(Opt((n > 0).then(|| Seconds::from_secs(n)))),
                from_str: |s| match s.trim() {
                    "" | "0" | "none" | "off" => Some(Opt(None)),
                    text => Seconds::parse(text).map(|t| Opt((!t.0.is_zero()).then_some(t))),
                },
            })
        }
    }
    Ok(Option::<Opt>::deserialize(d)?.and_then(|o| o.0))
}

pub fn usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = whole_number(d)?;
    usize::try_from(n)
        .map_err(|_| de::Error::invalid_value(Unexpected::Unsigned(n), &"a smaller number"))
}

pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let n: Option<u64> = Option::<WholeNumber>::deserialize(d)?.map(|w| w.0);
    n.map(|n| {
        u32::try_from(n)
            .map_err(|_| de::Error::invalid_value(Unexpected::Unsigned(n), &"a number below 2^32"))
    })
    .transpose()
}

struct WholeNumber(u64);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        whole_number(d).map(WholeNumber)
    }
}

/// Strings accept numbers and booleans too, because figment types
/// environment values by their look (`MAITRED_IDENT=2` is an integer).
struct Text;

impl Visitor<'_> for Text {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_char<E: de::Error>(self, v: char) -> Result<String, E> {
        Ok(v.to_string())
    }
}

pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(Text)
}

/// An empty string means "unset", as Waitress's `str_iftruthy` has it.
pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = Option::<ListItem>::deserialize(d)?.map(|item| item.0);
    Ok(s.filter(|s| !s.is_empty()))
}

/// Lists come as real arrays (TOML) or as one string separated by commas or
/// whitespace (environment variables, Waitress's space-separated flags).
pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list, or a string of items separated by commas or spaces")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(split_list(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<String>, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<ListItem>()? {
                out.extend(split_list(&item.0));
            }
            Ok(out)
        }
    }

    d.deserialize_any(ListVisitor)
}

struct ListItem(String);

impl<'de> Deserialize<'de> for ListItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Text).map(ListItem)
    }
}

/// Splits on commas and whitespace, dropping empty pieces.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_units_and_bare_bytes() {
        assert_eq!(ByteSize::parse("512KiB"), Some(ByteSize(512 * 1024)));
        assert_eq!(ByteSize::parse("16MiB"), Some(ByteSize(16 << 20)));
        assert_eq!(ByteSize::parse("16 mib"), Some(ByteSize(16 << 20)));
        assert_eq!(ByteSize::parse("1GB"), Some(ByteSize(1_000_000_000)));
        assert_eq!(ByteSize::parse("1024"), Some(ByteSize(1024)));
        assert_eq!(ByteSize::parse("12parsecs"), None);
        assert_eq!(ByteSize::parse("-1"), None);
        assert_eq!(ByteSize::parse(""), None);
        assert_eq!(
            ByteSize::parse("99999999999999TiB"),
            None,
            "overflow is rejected"
        );
    }

    #[test]
    fn sizes_display_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(16 << 20).to_string(), "16MiB");
        assert_eq!(ByteSize(262_144).to_string(), "256KiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(Seconds::parse("30s"), Some(Seconds::from_secs(30)));
        assert_eq!(Seconds::parse("2m"), Some(Seconds::from_secs(120)));
        assert_eq!(
            Seconds::parse("1500ms"),
            Some(Seconds(Duration::from_millis(1500)))
        );
        assert_eq!(Seconds::parse("120"), Some(Seconds::from_secs(120)));
        assert_eq!(Seconds::parse("1h"), Some(Seconds::from_secs(3600)));
        assert_eq!(Seconds::parse("soon"), None);
        assert_eq!(Seconds(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(Seconds::from_secs(30).to_string(), "30s");
        // Found by fuzzing: a span too long for milliseconds in a u64 still
        // reads back from its own spelling.
        let long = Seconds::parse("18446744073709552").expect("seconds");
        assert_eq!(Seconds::parse(&long.to_string()), Some(long));
    }

    #[test]
    fn booleans_accept_waitress_spellings() {
        for t in ["1", "true", "TRUE", "yes", "on", "y", "t"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "false", "no", "off", "N", "f"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("maybe"), None);
    }

    #[test]
    fn lists_split_on_commas_and_whitespace() {
        assert_eq!(
            split_list("10.0.0.0/8, 192.168.1.7\n::1"),
            vec!["10.0.0.0/8", "192.168.1.7", "::1"]
        );
        assert!(split_list(" , ").is_empty());
    }
}
