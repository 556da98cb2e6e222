//! `application/x-www-form-urlencoded` decoding, shared by every connector
//! that reads form bodies or query strings. Strict where leniency would
//! corrupt a lead: bytes that are not UTF-8 are refused, not replaced.

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlencodedError {
    /// Names the place: `a field name` or `field "phone"`.
    InvalidUtf8(String),
    /// More than the caller's limit of fields.
    TooManyFields(usize),
}

/// Decode `a=1&b=2` into pairs in the order sent; empty pairs are skipped,
/// a pair without `=` has an empty value.
pub fn decode_pairs(
    body: &[u8],
    max_fields: usize,
) -> Result<Vec<(String, String)>, UrlencodedError> {
    let mut pairs = Vec::new();
    for pair in body.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        if pairs.len() >= max_fields {
            return Err(UrlencodedError::TooManyFields(max_fields));
        }
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let name = String::from_utf8(percent_decode(name))
            .map_err(|_| UrlencodedError::InvalidUtf8("a field name".into()))?;
        let value = String::from_utf8(percent_decode(value))
            .map_err(|_| UrlencodedError::InvalidUtf8(format!("field {name:?}")))?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// `+` is a space, `%XX` a byte; a `%` not followed by two hex digits stays
/// as it is, as browsers do.
pub fn percent_decode(input: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_a_browser_and_refuses_broken_utf8() {
        assert_eq!(percent_decode(b"a+b%20c"), b"a b c");
        assert_eq!(percent_decode(b"100%"), b"100%");
        assert_eq!(percent_decode(b"%zz%4"), b"%zz%4");
        assert_eq!(percent_decode(b"%D0%AF"), "Я".as_bytes());
        assert_eq!(
            decode_pairs(b"a=1&&b&c=%41", 10).unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "".into()),
                ("c".into(), "A".into())
            ]
        );
        assert_eq!(
            decode_pairs(b"name=%FF", 10),
            Err(UrlencodedError::InvalidUtf8("field \"name\"".into()))
        );
        assert_eq!(
            decode_pairs(b"a&b&c", 2),
            Err(UrlencodedError::TooManyFields(2))
        );
    }
}
