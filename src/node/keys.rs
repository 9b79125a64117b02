//! Keys as clients send them: one percent-encoded path segment, decoded and checked here, so
//! the HTTP layer and the node-to-node handler accept exactly the same keys.
//!
//! Must not touch: ids (`ring::key_id` hashes the decoded key) and storage.

use super::error::BadInput;

/// The longest key, in bytes after percent-decoding.
pub const MAX_KEY_BYTES: usize = 256;

/// Checks a key's length (after decoding).
pub fn check_key(key: &[u8]) -> Result<(), BadInput> {
    if key.is_empty() {
        Err(BadInput::EmptyKey)
    } else if key.len() > MAX_KEY_BYTES {
        Err(BadInput::KeyTooLong)
    } else {
        Ok(())
    }
}

fn hex_digit(b: u8) -> Result<u8, BadInput> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(BadInput::BadPercentEncoding),
    }
}

/// Percent-decodes one path segment into a key: `%` must be followed by exactly two hex
/// digits, so every key has one spelling per byte.
pub fn parse_key(segment: &str) -> Result<String, BadInput> {
    if segment.contains('/') {
        return Err(BadInput::KeyHasSlash);
    }
    let raw = segment.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).ok_or(BadInput::BadPercentEncoding)?;
            out.push(hex_digit(hex[0])? << 4 | hex_digit(hex[1])?);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    check_key(&out)?;
    String::from_utf8(out).map_err(|_| BadInput::KeyNotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_decoded_segment() {
        assert_eq!(parse_key("hello").unwrap(), "hello");
        assert_eq!(parse_key("a%2Fb%20c").unwrap(), "a/b c");
        assert_eq!(parse_key("%C3%A9").unwrap(), "é");
        assert_eq!(parse_key(""), Err(BadInput::EmptyKey));
        assert_eq!(parse_key("a/b"), Err(BadInput::KeyHasSlash));
        assert_eq!(parse_key("%zz"), Err(BadInput::BadPercentEncoding));
        assert_eq!(parse_key("%4"), Err(BadInput::BadPercentEncoding));
        assert_eq!(parse_key("%+1"), Err(BadInput::BadPercentEncoding), "a sign is not a hex digit");
        assert_eq!(parse_key("%-1"), Err(BadInput::BadPercentEncoding));
        assert_eq!(parse_key("%FF"), Err(BadInput::KeyNotUtf8));
        assert_eq!(parse_key(&"k".repeat(256)).map(|k| k.len()), Ok(256));
        assert_eq!(parse_key(&"k".repeat(257)), Err(BadInput::KeyTooLong));
        assert_eq!(parse_key(&"%41".repeat(257)), Err(BadInput::KeyTooLong));
    }

    proptest::proptest! {
        #[test]
        fn parse_key_never_panics(s in ".{0,300}") {
            let _ = parse_key(&s);
        }

        #[test]
        fn encoded_keys_decode_to_themselves(key in "[^\u{0}]{1,60}") {
            let encoded: String = key.bytes().map(|b| format!("%{b:02X}")).collect();
            proptest::prop_assume!(key.len() <= MAX_KEY_BYTES);
            proptest::prop_assert_eq!(parse_key(&encoded).unwrap(), key);
        }
    }
}
