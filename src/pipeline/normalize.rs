//! Normalization: one spelling per fact, so contacts match across channels
//! and routing rules compare like with like.

use std::collections::BTreeMap;

use leadgate_connector::fields;
use phonenumber::Mode;
use phonenumber::country::Id;

/// Longest phone input worth parsing; anything longer is not one number.
const MAX_PHONE_INPUT: usize = 64;

/// A phone in E.164 (`+79991234567`) when it parses as a valid number for
/// `region`; otherwise a best-effort `+digits` or bare digits, so a lead is
/// never dropped over an odd number. `None` when there are no digits.
pub fn phone(raw: &str, region: Id) -> Option<String> {
    // Extensions ("доб. 123", "ext 5", "#7") are not part of the number.
    let lower = raw.to_lowercase();
    let cut = ["доб", "ext", "#", ","]
        .iter()
        .filter_map(|m| lower.find(m))
        .min()
        .unwrap_or(lower.len());
    let number = lower[..cut].trim();
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    if number.len() <= MAX_PHONE_INPUT {
        let parsed = std::panic::catch_unwind(|| phonenumber::parse(Some(region), number).ok());
        if let Ok(Some(n)) = parsed
            && phonenumber::is_valid(&n)
        {
            return Some(n.format().mode(Mode::E164).to_string());
        }
    }
    Some(fallback_phone(number, &digits, region))
}

/// Numbers the metadata calls invalid (new ranges, test numbers) still get
/// the shape CRMs expect where the national rules are unambiguous.
fn fallback_phone(number: &str, digits: &str, region: Id) -> String {
    let plus = number.trim_start().starts_with('+');
    if !plus && matches!(region, Id::RU | Id::KZ) {
        match digits.len() {
            11 if digits.starts_with('8') || digits.starts_with('7') => {
                return format!("+7{}", &digits[1..]);
            }
            10 if digits.starts_with('9') => return format!("+7{digits}"),
            _ => {}
        }
    }
    if plus {
        format!("+{digits}")
    } else {
        digits.to_owned()
    }
}

/// Lower-cased address without `mailto:` or angle brackets; `None` when it
/// is not an address at all.
pub fn email(raw: &str) -> Option<String> {
    let s = raw
        .trim()
        .trim_start_matches("mailto:")
        .trim_matches(['<', '>', ' ', '"']);
    let (local, domain) = s.rsplit_once('@')?;
    if local.is_empty()
        || domain.is_empty()
        || !domain.contains('.')
        || s.chars().any(char::is_whitespace)
    {
        return None;
    }
    Some(s.to_lowercase())
}

/// `@User_Name` and `User_Name` are the same Telegram account.
pub fn telegram(raw: &str) -> Option<String> {
    let s = raw
        .trim()
        .trim_start_matches("https://t.me/")
        .trim_start_matches('@');
    (!s.is_empty()).then(|| s.to_lowercase())
}

/// A name with surrounding and repeated whitespace removed.
pub fn name(raw: &str) -> Option<String> {
    let s = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    (!s.is_empty()).then_some(s)
}

/// Readable text from HTML: tags dropped, block ends as line breaks, the
/// common entities decoded, scripts and styles removed.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        out.push_str(&decode_entities(&rest[..lt]));
        rest = &rest[lt..];
        let Some(gt) = rest.find('>') else {
            break;
        };
        let closing = rest[1..gt].starts_with('/');
        let tag = rest[1..gt].trim_start_matches('/').to_ascii_lowercase();
        let tag_name = tag
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("");
        rest = &rest[gt + 1..];
        match tag_name {
            "script" | "style" if !closing => {
                let close = format!("</{tag_name}");
                let end = rest.to_ascii_lowercase().find(&close).unwrap_or(rest.len());
                rest = &rest[end..];
            }
            "br" | "p" | "div" | "tr" | "li" | "h1" | "h2" | "h3" | "h4" | "table" => {
                out.push('\n')
            }
            _ => {}
        }
    }
    out.push_str(&decode_entities(rest));
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let mut text = lines.join("\n");
    while text.contains("\n\n\n") {
        text = text.replace("\n\n\n", "\n\n");
    }
    text.trim().to_owned()
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    s.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Copy `utm_*` parameters from the page URL or Referer into fields, without
/// overriding ones the form sent itself.
pub fn lift_utm(fields_map: &mut BTreeMap<String, String>) {
    let urls: Vec<String> = [fields::PAGE_URL, fields::REFERER]
        .iter()
        .filter_map(|k| fields_map.get(*k).cloned())
        .collect();
    for url in urls {
        let Some((_, query)) = url.split_once('?') else {
            continue;
        };
        let query = query.split('#').next().unwrap_or("");
        for pair in query.split('&') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let k = k.to_ascii_lowercase();
            if fields::UTM_KEYS.contains(&k.as_str()) && !v.is_empty() {
                let v = url_decode(v);
                fields_map.entry(k).or_insert(v);
            }
        }
    }
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn russian_phone_spellings_become_e164() {
        for raw in [
            "8 (999) 765-43-21",
            "+7 (999) 765-43-21",
            "89997654321",
            "79997654321",
            "9997654321",
            "+7 999 765 43 21 доб. 12",
            "8-999-765-43-21",
        ] {
            assert_eq!(phone(raw, Id::RU).as_deref(), Some("+79997654321"), "{raw}");
        }
        assert_eq!(phone("+1 555 0100", Id::RU).as_deref(), Some("+15550100"));
        assert_eq!(phone("call me", Id::RU), None);
        assert_eq!(phone("12", Id::RU).as_deref(), Some("12"));
    }

    #[test]
    fn emails_are_lower_cased_and_checked() {
        assert_eq!(
            email(" <E.Tikhonova@Example.RU> ").as_deref(),
            Some("e.tikhonova@example.ru")
        );
        assert_eq!(email("mailto:a@b.co").as_deref(), Some("a@b.co"));
        assert_eq!(email("not an email"), None);
        assert_eq!(email("a@localhost"), None);
    }

    #[test]
    fn html_becomes_readable_text() {
        let html = "<html><style>p{}</style><p>Hello&nbsp;<b>world</b></p><br>Line&amp;2<script>x()</script>";
        assert_eq!(html_to_text(html), "Hello world\n\nLine&2");
        assert_eq!(html_to_text("a < b"), "a < b");
    }

    #[test]
    fn utm_parameters_are_lifted_from_urls() {
        let mut f = BTreeMap::from([
            (
                "page_url".to_owned(),
                "https://x.example/p?utm_source=google&utm_campaign=brand%20a#top".to_owned(),
            ),
            ("utm_source".to_owned(), "explicit".to_owned()),
        ]);
        lift_utm(&mut f);
        assert_eq!(f["utm_source"], "explicit");
        assert_eq!(f["utm_campaign"], "brand a");
    }
}
