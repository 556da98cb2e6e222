//! Bytes to text: transfer encodings, charsets (with a guess for the legacy
//! Cyrillic ones that real mail still mislabels), RFC 2047 encoded words,
//! a small HTML-to-text pass, and size limits. Every function here is total:
//! any input gives some text, never a panic.

use mail_parser::decoders::charsets::DecoderFnc;
use mail_parser::decoders::charsets::map::charset_decoder;

/// How far one raw header value is read; nothing legitimate is longer.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The charset families that decide how much a label is trusted.
#[derive(Clone, Copy)]
enum Family {
    /// `utf-8`: trusted unless the bytes are not UTF-8.
    Utf8,
    /// No label, `us-ascii` or a label nobody knows: the bytes decide
    /// (UTF-8 first, then the Cyrillic legacy encodings).
    Unlabelled,
    /// `koi8-r`, `windows-1251`, `iso-8859-5`, `ibm866` …: often swapped for
    /// each other (or for UTF-8) by old mailers, so all are scored.
    Cyrillic(DecoderFnc),
    /// `iso-8859-1`, `windows-1252` …: Russian mail from misconfigured
    /// clients often carries these labels over windows-1251 bytes.
    Latin(DecoderFnc),
    /// Any other known charset (CJK, UTF-16, Greek …): trusted as labelled.
    Other(DecoderFnc),
}

fn family(label: Option<&str>) -> Family {
    let Some(label) = label else {
        return Family::Unlabelled;
    };
    let l = canonical_label(label);
    match l.as_str() {
        "" | "us-ascii" | "ascii" | "us_ascii" | "ansi_x3.4-1968" | "iso646-us" | "x-unknown"
        | "unknown" | "unknown-8bit" | "default" | "8bit" | "none" => Family::Unlabelled,
        "utf-8" | "utf8" | "unicode-1-1-utf-8" | "x-unicode20utf8" => Family::Utf8,
        _ => {
            let Some(dec) = charset_decoder(l.as_bytes()) else {
                return Family::Unlabelled;
            };
            if l.contains("koi8")
                || l.contains("1251")
                || l.contains("8859-5")
                || l.contains("88595")
                || l.contains("866")
                || l.contains("cyrillic")
            {
                Family::Cyrillic(dec)
            } else if l.contains("8859-1")
                || l.contains("88591")
                || l.contains("8859-15")
                || l.contains("1252")
                || l.contains("latin1")
                || l == "l1"
                || l == "cp819"
            {
                Family::Latin(dec)
            } else {
                Family::Other(dec)
            }
        }
    }
}

/// Lower-cased label without quotes, RFC 2231 language suffix and the
/// spellings mail-parser does not know (`win-1251`, `cp-1251`, `x-cp1251`).
fn canonical_label(label: &str) -> String {
    let l = label
        .trim()
        .trim_matches(['"', '\''])
        .split('*')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match l.as_str() {
        "win-1251" | "win1251" | "windows1251" | "cp-1251" | "x-cp1251" | "cp_1251"
        | "windows-1251" | "cp1251" | "x-cp-1251" | "ms-cyrl" => "windows-1251".into(),
        "koi8r" | "koi-8-r" | "koi8" | "koi-8" | "x-koi8-r" => "koi8-r".into(),
        _ => l,
    }
}

fn cp1251() -> Option<DecoderFnc> {
    charset_decoder(b"windows-1251")
}

fn koi8r() -> Option<DecoderFnc> {
    charset_decoder(b"koi8-r")
}

fn cp1252() -> Option<DecoderFnc> {
    charset_decoder(b"windows-1252")
}

/// Whether mail-parser's text for a part with this label may be wrong and
/// the bytes should be decoded again with [`decode_bytes`].
pub(super) fn needs_redecode(label: Option<&str>, decoded: &str) -> bool {
    match family(label) {
        Family::Utf8 => decoded.contains('\u{FFFD}'),
        Family::Unlabelled | Family::Cyrillic(_) | Family::Latin(_) => !decoded.is_ascii(),
        Family::Other(_) => false,
    }
}

/// Text from bytes in the given charset, correcting the usual mistakes:
/// UTF-8 under a legacy label, windows-1251 under `koi8-r` (and back),
/// windows-1251 under a Latin label, and unlabelled 8-bit Cyrillic.
pub(super) fn decode_bytes(bytes: &[u8], label: Option<&str>) -> String {
    let bytes = &*drop_nul_stand_ins(bytes);
    let family = family(label);
    if let Family::Other(labelled) = family {
        // Trusted as labelled, ASCII too: UTF-7 and ISO-2022-JP hide their
        // text in ASCII bytes.
        return labelled(bytes);
    }
    if bytes.is_ascii() {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let utf8 = std::str::from_utf8(bytes).ok();
    match family {
        Family::Utf8 | Family::Unlabelled => {
            if let Some(s) = utf8 {
                return s.to_owned();
            }
            if mostly_utf8(bytes) {
                return String::from_utf8_lossy(bytes).into_owned();
            }
            let candidates = [cp1251(), koi8r(), cp1252()];
            best_of(bytes, &candidates).unwrap_or_else(|| lossy(bytes))
        }
        Family::Cyrillic(labelled) => {
            if let Some(s) = utf8 {
                return s.to_owned();
            }
            let candidates = [Some(labelled), cp1251(), koi8r()];
            best_of(bytes, &candidates).unwrap_or_else(|| labelled(bytes))
        }
        Family::Latin(labelled) => {
            if let Some(s) = utf8 {
                return s.to_owned();
            }
            let candidates = [Some(labelled), cp1251()];
            best_of(bytes, &candidates).unwrap_or_else(|| labelled(bytes))
        }
        Family::Other(labelled) => labelled(bytes),
    }
}

/// IMAP cannot carry NUL bytes, so servers store them as 0x80 (Dovecot
/// does). Outside a valid UTF-8 sequence that byte is such a stand-in —
/// windows-1251's `Ђ` does not occur in Russian text — and is dropped, so
/// it neither glues itself to a phone number nor tips the charset guess.
fn drop_nul_stand_ins(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !bytes.contains(&0x80) || std::str::from_utf8(bytes).is_ok() {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.extend_from_slice(chunk.valid().as_bytes());
        out.extend(chunk.invalid().iter().filter(|b| **b != 0x80));
    }
    std::borrow::Cow::Owned(out)
}

/// Invalid sequences are rare next to many valid multi-byte characters: a
/// stray byte in UTF-8 text, not a legacy 8-bit encoding.
fn mostly_utf8(bytes: &[u8]) -> bool {
    let (mut good, mut bad) = (0usize, 0usize);
    for chunk in bytes.utf8_chunks() {
        good += chunk.valid().chars().filter(|c| !c.is_ascii()).count();
        bad += chunk.invalid().len();
    }
    bad == 0 || good > bad * 4
}

/// Decodes with each candidate and keeps the first one (the label's, when
/// given) unless another reads clearly more like Russian text.
fn best_of(bytes: &[u8], candidates: &[Option<DecoderFnc>]) -> Option<String> {
    let mut best: Option<(String, f32)> = None;
    for dec in candidates.iter().flatten() {
        let text = dec(bytes);
        let score = russian_score(&text);
        best = match best {
            None => Some((text, score)),
            Some((t, s)) => {
                let margin = (s.abs() * 0.2).max(1.0);
                if score > s + margin {
                    Some((text, score))
                } else {
                    Some((t, s))
                }
            }
        };
    }
    best.map(|(t, _)| t)
}

/// Relative frequency (per mille / 10) of a lower-case Russian letter.
fn ru_freq(c: char) -> f32 {
    match c {
        'о' => 11.0,
        'е' | 'ё' => 8.5,
        'а' => 8.0,
        'и' => 7.4,
        'н' => 6.7,
        'т' => 6.3,
        'с' => 5.5,
        'р' => 4.7,
        'в' => 4.5,
        'л' => 4.4,
        'к' => 3.5,
        'м' => 3.2,
        'д' => 3.0,
        'п' => 2.8,
        'у' => 2.6,
        'я' => 2.0,
        'ы' => 1.9,
        'ь' | 'г' => 1.7,
        'з' | 'б' => 1.6,
        'ч' => 1.5,
        'й' => 1.2,
        'х' => 1.0,
        'ж' => 0.9,
        'ш' => 0.7,
        'ю' => 0.6,
        'ц' => 0.5,
        'щ' => 0.4,
        'э' | 'ф' => 0.3,
        'ъ' => 0.05,
        _ => 0.0,
    }
}

fn is_russian_letter(c: char) -> bool {
    matches!(c, 'а'..='я' | 'А'..='Я' | 'ё' | 'Ё')
}

/// How much a text reads like Russian (or plain ASCII) rather than a wrong
/// decoding: letter frequencies, capitals only where words start (or whole
/// words in capitals), and penalties for the symbols, non-Russian letters
/// and case flips that a wrong Cyrillic table produces. Comparable only
/// between decodings of the same bytes.
pub(super) fn russian_score(text: &str) -> f32 {
    let mut score = 0.0f32;
    for word in text.split(|c: char| !c.is_alphabetic()) {
        if word.is_empty() {
            continue;
        }
        let letters = word.chars().count();
        let all_upper = letters > 1 && word.chars().all(char::is_uppercase);
        let has_latin = word.chars().any(|c| c.is_ascii_alphabetic());
        let mut prev_lower = false;
        for (i, c) in word.chars().enumerate() {
            if is_russian_letter(c) {
                let lower = c.to_lowercase().next().unwrap_or(c);
                let factor = if c.is_lowercase() {
                    1.0
                } else if i == 0 || all_upper {
                    0.9
                } else {
                    0.3
                };
                score += ru_freq(lower) * factor;
                if c.is_uppercase() && prev_lower {
                    score -= 3.0;
                }
                if has_latin {
                    score -= 5.0;
                }
            } else if !c.is_ascii() {
                // Letters of other alphabets: a Latin-1 accent is cheap
                // (real French or German), anything else unusual here.
                score -= if ('\u{C0}'..='\u{FF}').contains(&c) {
                    0.5
                } else {
                    3.0
                };
            }
            prev_lower = c.is_lowercase();
        }
    }
    for c in text.chars() {
        if c.is_ascii() || c.is_alphabetic() || c.is_whitespace() {
            continue;
        }
        let common = matches!(
            c,
            '«' | '»'
                | '—'
                | '–'
                | '“'
                | '”'
                | '„'
                | '…'
                | '№'
                | '₽'
                | '’'
                | '‘'
                | '€'
                | '•'
                | '°'
        );
        if c == '\u{FFFD}' {
            score -= 5.0;
        } else if !common {
            score -= 3.0;
        }
    }
    score
}

/// `String::from_utf8_lossy` as an owned string.
pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Text safe to store: no NUL (PostgreSQL rejects it) or other C0 controls
/// except tab and line breaks, and `\n` line ends.
pub(super) fn clean_text(s: &str) -> String {
    // Byte-wise: every byte to drop or rewrite is ASCII, hence a char
    // boundary, and most text has none (this runs over every body).
    let keep = |b: u8| (b >= 0x20 && b != 0x7F) || b == b'\n' || b == b'\t';
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if keep(b) {
            continue;
        }
        out.push_str(&s[start..i]);
        if b == b'\r' && bytes.get(i + 1) != Some(&b'\n') {
            out.push('\n');
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out
}

/// A one-line value (a name, a subject): controls dropped, whitespace runs
/// made single spaces, trimmed, at most `max` bytes.
pub(super) fn one_line(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for word in s.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.len() >= max {
            break;
        }
    }
    truncate(&mut out, max);
    out
}

/// Cuts a string to at most `max` bytes on a character boundary.
pub(super) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while end > 0 && !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Base64 as MIME writes it, leniently: line breaks and other bytes outside
/// the alphabet are skipped, decoding stops at padding, a partial last
/// quantum gives what it can.
pub(super) fn base64_lenient(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &b in input {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xFF) as u8);
        }
    }
    out
}

/// Quoted-printable (RFC 2045 §6.7), leniently: soft line breaks removed,
/// `=XX` decoded, a malformed `=` kept as it is.
pub(super) fn quoted_printable_lenient(input: &[u8], underscore_is_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'=' {
            match (input.get(i + 1), input.get(i + 2)) {
                (Some(b'\r'), Some(b'\n')) => {
                    i += 3;
                    continue;
                }
                (Some(b'\n'), _) => {
                    i += 2;
                    continue;
                }
                (Some(&h), Some(&l)) => {
                    if let (Some(h), Some(l)) = (hex(h), hex(l)) {
                        out.push(h << 4 | l);
                        i += 3;
                        continue;
                    }
                }
                _ => {}
            }
            out.push(b);
        } else if b == b'_' && underscore_is_space {
            out.push(b' ');
        } else {
            out.push(b);
        }
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One RFC 2047 encoded word at the start of `s`: its charset, decoded
/// bytes and length in `s`.
fn encoded_word(s: &[u8]) -> Option<(&str, Vec<u8>, usize)> {
    let rest = s.strip_prefix(b"=?")?;
    let q1 = rest.iter().take(80).position(|&b| b == b'?')?;
    let charset = std::str::from_utf8(&rest[..q1]).ok()?;
    if charset.is_empty() || charset.bytes().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let enc = *rest.get(q1 + 1)?;
    if rest.get(q1 + 2) != Some(&b'?') {
        return None;
    }
    let text_start = q1 + 3;
    let body = rest.get(text_start..)?;
    let end = body.windows(2).position(|w| w == b"?=")?;
    let text = &body[..end];
    if text.iter().any(|&b| b == b'\r' || b == b'\n') {
        return None;
    }
    let bytes = match enc {
        b'B' | b'b' => base64_lenient(text),
        b'Q' | b'q' => quoted_printable_lenient(text, true),
        _ => return None,
    };
    Some((charset, bytes, 2 + text_start + end + 2))
}

/// A header value as text: unfolded, RFC 2047 encoded words decoded (the
/// whitespace between two adjacent words dropped, and adjacent words of one
/// charset joined before decoding so a character split between them
/// survives), raw 8-bit bytes decoded as UTF-8 or legacy Cyrillic, controls
/// removed, whitespace collapsed.
pub(super) fn decode_header(raw: &[u8]) -> String {
    let raw = &raw[..raw.len().min(MAX_HEADER_BYTES)];
    let mut out = String::new();
    let mut between: Vec<u8> = Vec::new();
    let mut pending: Option<(String, Vec<u8>)> = None;
    let mut after_word = false;
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'='
            && raw.get(i + 1) == Some(&b'?')
            && let Some((charset, bytes, len)) = encoded_word(&raw[i..])
        {
            let adjacent = after_word && between.iter().all(u8::is_ascii_whitespace);
            if !adjacent {
                flush_word(&mut out, &mut pending);
                out.push_str(&decode_bytes(&between, None));
            }
            between.clear();
            let charset = canonical_label(charset);
            match &mut pending {
                Some((cs, acc)) if *cs == charset => acc.extend_from_slice(&bytes),
                _ => {
                    flush_word(&mut out, &mut pending);
                    pending = Some((charset, bytes));
                }
            }
            after_word = true;
            i += len;
            continue;
        }
        between.push(raw[i]);
        i += 1;
    }
    flush_word(&mut out, &mut pending);
    out.push_str(&decode_bytes(&between, None));
    one_line(&out, MAX_HEADER_BYTES)
}

fn flush_word(out: &mut String, pending: &mut Option<(String, Vec<u8>)>) {
    if let Some((charset, bytes)) = pending.take() {
        out.push_str(&decode_bytes(&bytes, Some(&charset)));
    }
}

/// Readable text from HTML for reading contacts and labels: tags dropped,
/// block ends as line breaks, table cells separated by tabs (so
/// `<td>Имя</td><td>Анна</td>` reads as a labelled line), entities decoded,
/// scripts, styles, heads and comments removed.
pub(super) fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    // Inside `<blockquote>` (a quoted reply), lines start with `> ` as in
    // plain-text mail, so quoted text is told apart the same way.
    let mut quote_depth = 0usize;
    while let Some(lt) = rest.find('<') {
        if quote_depth > 0
            && (out.is_empty() || out.ends_with('\n'))
            && !rest[..lt].trim().is_empty()
        {
            out.push_str("> ");
        }
        push_html_text(&mut out, &rest[..lt]);
        rest = &rest[lt..];
        if rest.starts_with("<!--") {
            rest = match rest.find("-->") {
                Some(end) => &rest[end + 3..],
                None => "",
            };
            continue;
        }
        let Some(gt) = rest.find('>') else {
            rest = "";
            break;
        };
        let inner = &rest[1..gt];
        let closing = inner.starts_with('/');
        let name = inner
            .trim_start_matches('/')
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        rest = &rest[gt + 1..];
        match name.as_str() {
            "script" | "style" | "head" | "title" | "xml" if !closing => {
                let close = format!("</{name}");
                rest = match find_ascii_ci(rest, &close) {
                    Some(end) => &rest[end..],
                    None => "",
                };
            }
            "br" | "p" | "div" | "tr" | "li" | "ul" | "ol" | "table" | "tbody" | "thead" | "h1"
            | "h2" | "h3" | "h4" | "h5" | "h6" | "hr" | "section" | "article" | "header"
            | "footer" | "dt" | "dd" | "pre" | "center" | "body"
                if !out.ends_with('\n') =>
            {
                out.push('\n')
            }
            "td" | "th" if closing => out.push('\t'),
            _ => {}
        }
        if name == "blockquote" {
            quote_depth = if closing {
                quote_depth.saturating_sub(1)
            } else {
                quote_depth + 1
            };
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    push_html_text(&mut out, rest);
    tidy_lines(&out)
}

fn find_ascii_ci(hay: &str, needle: &str) -> Option<usize> {
    let h = hay.as_bytes();
    let n = needle.as_bytes();
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// Text between tags: source line breaks are plain spaces in HTML.
fn push_html_text(out: &mut String, s: &str) {
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        push_spaced(out, &rest[..amp]);
        rest = &rest[amp..];
        let semi = rest
            .char_indices()
            .take(12)
            .find(|&(_, c)| c == ';')
            .map(|(i, _)| i);
        let decoded = semi.and_then(|semi| entity(&rest[1..semi]).map(|c| (c, semi)));
        match decoded {
            Some((c, semi)) => {
                out.push(if c == '\u{A0}' { ' ' } else { c });
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    push_spaced(out, rest);
}

fn push_spaced(out: &mut String, s: &str) {
    for c in s.chars() {
        out.push(if c == '\r' || c == '\n' || c == '\t' || c == '\u{A0}' {
            ' '
        } else {
            c
        });
    }
}

fn entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse::<u32>().ok()?,
        };
        return char::from_u32(code).filter(|c| *c != '\0');
    }
    Some(match name {
        "nbsp" => '\u{A0}',
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "laquo" => '«',
        "raquo" => '»',
        "mdash" => '—',
        "ndash" => '–',
        "hellip" => '…',
        "copy" => '©',
        "reg" => '®',
        "numero" => '№',
        "rsquo" => '’',
        "lsquo" => '‘',
        "rdquo" => '”',
        "ldquo" => '“',
        "bdquo" => '„',
        "euro" => '€',
        "bull" => '•',
        "middot" => '·',
        "times" => '×',
        _ => return None,
    })
}

/// Per line: cells (tab-separated) trimmed and empty ones dropped, spaces
/// collapsed; blank lines squeezed to one.
fn tidy_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.split('\n') {
        let cells: Vec<String> = line
            .split('\t')
            .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|c| !c.is_empty())
            .collect();
        if cells.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(&cells.join("\t"));
        out.push('\n');
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn nul_stand_ins_from_the_imap_server_are_dropped() {
        let text = super::decode_bytes(b"call me: +7 999 999 00 11\x80\x80 thanks", Some("utf-8"));
        assert_eq!(text, "call me: +7 999 999 00 11 thanks");
        // A real windows-1251 letter byte next to it is still windows-1251.
        let text = super::decode_bytes(b"\xcf\xf0\xe8\xe2\xe5\xf2\x80", None);
        assert_eq!(text, "Привет");
    }

    use super::*;

    fn cp1251_bytes(s: &str) -> Vec<u8> {
        s.chars()
            .map(|c| match c {
                'А'..='я' => (c as u32 - 'А' as u32 + 0xC0) as u8,
                'ё' => 0xB8,
                'Ё' => 0xA8,
                c => c as u8,
            })
            .collect()
    }

    fn koi8_bytes(s: &str) -> Vec<u8> {
        // KOI8-R: lower case at 0xC0.., upper case at 0xE0.., in the order
        // ю а б ц д е ф г х и й к л м н о п я р с т у ж в ь ы з ш э щ ч ъ.
        const ORDER: &str = "юабцдефгхийклмнопярстужвьызшэщчъ";
        s.chars()
            .map(|c| {
                if let Some(i) = ORDER.chars().position(|o| o == c) {
                    0xC0 + i as u8
                } else if let Some(i) = ORDER
                    .chars()
                    .position(|o| o.to_uppercase().next() == Some(c))
                {
                    0xE0 + i as u8
                } else if c == 'ё' {
                    0xA3
                } else {
                    c as u8
                }
            })
            .collect()
    }

    #[test]
    fn labelled_charsets_decode() {
        let s = "Добрый день, нужен счёт";
        assert_eq!(decode_bytes(&cp1251_bytes(s), Some("windows-1251")), s);
        assert_eq!(decode_bytes(&koi8_bytes(s), Some("koi8-r")), s);
        assert_eq!(decode_bytes(s.as_bytes(), Some("utf-8")), s);
        assert_eq!(decode_bytes(&cp1251_bytes(s), Some("\"CP1251\"")), s);
        assert_eq!(decode_bytes(&cp1251_bytes(s), Some("win-1251")), s);
    }

    #[test]
    fn unlabelled_8bit_is_utf8_then_windows_1251() {
        let s = "Добрый день, нужен счёт на 10 коробок. Василий";
        assert_eq!(decode_bytes(s.as_bytes(), None), s);
        assert_eq!(decode_bytes(&cp1251_bytes(s), None), s);
        assert_eq!(decode_bytes(&cp1251_bytes(s), Some("us-ascii")), s);
        assert_eq!(decode_bytes(&koi8_bytes(s), None), s);
    }

    #[test]
    fn wrong_labels_are_corrected() {
        let s = "Нужен счёт, Борис";
        // windows-1251 bytes labelled koi8-r (corpus 028) and the reverse.
        assert_eq!(decode_bytes(&cp1251_bytes(s), Some("koi8-r")), s);
        assert_eq!(decode_bytes(&koi8_bytes(s), Some("windows-1251")), s);
        // UTF-8 labelled as a legacy charset.
        assert_eq!(decode_bytes(s.as_bytes(), Some("koi8-r")), s);
        assert_eq!(decode_bytes(s.as_bytes(), Some("iso-8859-1")), s);
        // windows-1251 labelled Latin-1.
        assert_eq!(decode_bytes(&cp1251_bytes(s), Some("iso-8859-1")), s);
        // windows-1251 labelled UTF-8.
        assert_eq!(decode_bytes(&cp1251_bytes(s), Some("utf-8")), s);
        // Short words too: a name alone.
        assert_eq!(
            decode_bytes(&cp1251_bytes("Борис"), Some("koi8-r")),
            "Борис"
        );
        assert_eq!(decode_bytes(&koi8_bytes("Пётр"), Some("koi8-r")), "Пётр");
    }

    #[test]
    fn real_latin1_stays_latin1() {
        let fr = b"Caf\xe9 cr\xe8me, gr\xfc\xdfe aus M\xfcnchen";
        assert_eq!(
            decode_bytes(fr, Some("iso-8859-1")),
            "Café crème, grüße aus München"
        );
        assert_eq!(
            decode_bytes(fr, None),
            "Café crème, grüße aus München",
            "unlabelled Western text is read as windows-1252"
        );
    }

    #[test]
    fn a_stray_byte_in_utf8_stays_utf8() {
        let mut b = "Здравствуйте, прошу счёт на оплату".as_bytes().to_vec();
        b.push(0xFF);
        let s = decode_bytes(&b, Some("utf-8"));
        assert!(s.starts_with("Здравствуйте, прошу счёт"), "{s}");
    }

    #[test]
    fn encoded_words() {
        assert_eq!(
            decode_header(
                b" =?UTF-8?B?0JfQsNGP0LLQutCwINC90LAg?=\r\n =?UTF-8?B?0LrRgNC10LTQuNGC?=\r\n"
            ),
            "Заявка на кредит"
        );
        assert_eq!(
            decode_header(
                b"=?UTF-8?B?0JDQvdC90LA=?= =?UTF-8?Q?_=D0=9C=D0=BE=D1=80=D0=BE=D0=B7=D0=BE=D0=B2=D0=B0?= <a@b.ru>"
            ),
            "Анна Морозова <a@b.ru>"
        );
        // A UTF-8 character split across two words.
        assert_eq!(decode_header(b"=?utf-8?Q?=D0?= =?utf-8?Q?=90?="), "А");
        // Words separated by text keep the text; unencoded text survives.
        assert_eq!(
            decode_header(b"Re: =?utf-8?B?0JfQsNC60LDQtw==?= 42"),
            "Re: Заказ 42"
        );
        // ASCII-borne charsets.
        assert_eq!(decode_header(b"=?utf-7?Q?Fr+APY-sche?="), "Frösche");
        // Wrong label on the word (corpus 028).
        assert_eq!(decode_header(b"=?koi8-r?B?we7w6PE=?="), "Борис");
        // Raw 8-bit windows-1251 in a header.
        assert_eq!(decode_header(&cp1251_bytes("Заказ")), "Заказ");
        // Broken words are left as text, never a panic.
        assert_eq!(decode_header(b"=?utf-8?B?"), "=?utf-8?B?");
        assert_eq!(decode_header(b"=?utf-8?X?abc?="), "=?utf-8?X?abc?=");
        assert_eq!(decode_header(b"=??B?abc?="), "=??B?abc?=");
    }

    #[test]
    fn transfer_decoders_are_lenient() {
        assert_eq!(base64_lenient(b"0J/RgNC4\r\n0LLQtdGC"), "Привет".as_bytes());
        assert_eq!(base64_lenient(b"YWJj!!ZA"), b"abcd");
        assert_eq!(base64_lenient(b"YQ"), b"a");
        assert_eq!(
            quoted_printable_lenient(b"a=3Db=\r\nc=ZZ=", false),
            b"a=bc=ZZ="
        );
    }

    #[test]
    fn html_text() {
        let t = html_to_text(
            "<html><head><style>p{x}</style></head><body><p>Добрый&nbsp;день!</p>\
             <table><tr><td>Имя:</td><td>Анна</td></tr><tr><th>Телефон</th><td>+7&nbsp;999&nbsp;1</td></tr></table>\
             <!-- c --><script>var a='<p>';</script>A &amp; B &#8381; &#x41;&unknown; <b>x</b></body></html>",
        );
        assert_eq!(
            t,
            "Добрый день!\nИмя:\tАнна\nТелефон\t+7 999 1\nA & B ₽ A&unknown; x"
        );
        assert_eq!(html_to_text("<p>unterminated <b"), "unterminated");
        assert_eq!(
            html_to_text(
                "<div>Да, 89991234567</div><blockquote type=cite><div>КП</div>тел. 8 495 000-00-00<br>x</blockquote>ok"
            ),
            "Да, 89991234567\n> КП\n> тел. 8 495 000-00-00\n> x\nok"
        );
        assert_eq!(html_to_text("a <!-- never closed"), "a");
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean_text("a\0b\r\nc\rd\u{7}e\tf"), "ab\nc\nde\tf");
        assert_eq!(clean_text("дом\r"), "дом\n");
        assert_eq!(clean_text("x\u{7f}ё\u{85}\r\r\n"), "xё\u{85}\n\n");
        assert_eq!(clean_text("plain text"), "plain text");
        assert_eq!(one_line("  a \r\n\t b\0c ", 100), "a b c");
        let mut s = "абв".to_owned();
        truncate(&mut s, 3);
        assert_eq!(s, "а");
    }
}
