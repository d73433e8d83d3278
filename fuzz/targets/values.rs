//! Target `values`: the size and duration parsers, the other lenient
//! value readers, and settings read from TOML through them.

use std::time::Duration;

use maitred::config::values::{ByteSize, Seconds, parse_bool, split_list};
use maitred::config::{Plan, Settings};

/// `values`: the input as text (lossily decoded) through every value
/// parser, and as a settings file. Properties: no panic; a parsed size or
/// duration prints in a form that parses back to the same value (what
/// `config show` relies on), as does any size or whole-millisecond
/// duration built from the input's first bytes; units are
/// case-insensitive and surrounding whitespace is ignored; settings that
/// deserialize either build a plan or are refused, never panic, and
/// serialize back to the same settings.
pub fn values(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    let size = ByteSize::parse(text);
    if let Some(size) = size {
        round_trip_size(size);
    }
    let duration = Seconds::parse(text);
    if let Some(duration) = duration {
        round_trip_duration(duration);
    }
    for variant in [text.to_ascii_uppercase(), format!(" \t{text} ")] {
        assert_eq!(ByteSize::parse(&variant), size, "{text:?} vs {variant:?}");
        assert_eq!(
            Seconds::parse(&variant),
            duration,
            "{text:?} vs {variant:?}"
        );
        assert_eq!(
            parse_bool(&variant),
            parse_bool(text),
            "{text:?} vs {variant:?}"
        );
    }
    for item in split_list(text) {
        assert!(!item.is_empty() && !item.contains(|c: char| c == ',' || c.is_whitespace()));
    }

    // Any size, and any duration in whole milliseconds, from the first
    // eight bytes.
    let mut raw = [0u8; 8];
    let n = data.len().min(8);
    raw[..n].copy_from_slice(&data[..n]);
    let number = u64::from_le_bytes(raw);
    round_trip_size(ByteSize(number));
    round_trip_duration(Seconds(Duration::from_millis(number)));
    round_trip_duration(Seconds::from_secs(number % (u64::MAX / 1000)));

    settings(text);
}

fn round_trip_size(size: ByteSize) {
    let shown = size.to_string();
    assert_eq!(
        ByteSize::parse(&shown),
        Some(size),
        "{size:?} shown as {shown:?}"
    );
}

fn round_trip_duration(duration: Seconds) {
    let shown = duration.to_string();
    assert_eq!(
        Seconds::parse(&shown),
        Some(duration),
        "{duration:?} shown as {shown:?}"
    );
}

/// The text as a settings file: deserialized with maitred's lenient
/// readers, then built into a plan.
fn settings(text: &str) {
    let Ok(settings) = toml::from_str::<Settings>(text) else {
        return;
    };
    let _ = Plan::build(&settings);
    // Sizes and durations serialize the way people type them; what is
    // written must read back as the same settings.
    if let Ok(written) = toml::to_string(&settings) {
        let read = toml::from_str::<Settings>(&written);
        assert_eq!(
            read.as_ref().ok(),
            Some(&settings),
            "settings written as {written:?} read back as {read:?}"
        );
    }
}
