//! Phone numbers in free text (mail bodies and signatures, chat messages,
//! form values), for every connector that reads text.
//!
//! Numbers are returned as written (`8 (999) 123-45-67`, with an extension
//! as `… доб. 123`); the pipeline normalizes them to E.164. The finder reads
//! runs of digits and separators on one line and accepts only shapes a
//! phone has:
//! - `+7`/`7`/`8` and ten more digits whose first is 3, 4, 7, 8 or 9
//!   (Russian and Kazakh area codes), grouped any way;
//! - `+` and another country code, 10 to 15 digits in all;
//! - ten digits without a prefix: a mobile (9xx) written in groups, or
//!   any 3/4/8/9xx number in parentheses or after a phone word (`тел.`,
//!   `phone` …).
//!
//! Everything else is rejected: dates, times, prices (a currency word after
//! the number), postcodes, INN/OGRN/account numbers (too short, too long or
//! not ending on a group boundary), numbers after `№`, `#`, `ИНН`, `заказ`,
//! `order` …, digits glued to letters, URLs or e-mail local parts, and IPv4
//! addresses.

use std::sync::LazyLock;

use regex::Regex;

/// At most this many numbers are taken from one message.
pub const MAX_PHONES: usize = 8;

/// Words right before a number that say it is not a phone.
static NEGATIVE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?:\bинн\b|\bогрн(?:ип)?\b|\bкпп\b|\bбик\b|\bокпо\b|\bоквэд\b|\bснилс\b|р/с|к/с|л/с|\bсч[её]т\w*|\bсчета\b|№|#|\bзаказ\w*|\border\b|\binvoice\b|\bартикул\w*|\bарт\.|\bsku\b|\bпаспорт\w*|\bлицев\w*|\bid\b|\bтрек\w*|\btracking\b|\bдоговор\w*|\bcontract\b|\bref\b)",
    )
    .expect("static regex")
});

/// Words right before a number that say it is a phone.
static POSITIVE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?:тел|phone|моб|\bmob|\btel\b|\bcell|whats\s?app|ват?[сc]ап|вацап|viber|вайбер|звон|\bcall|факс|\bfax|контакт|contact|связ|номер|сотов)",
    )
    .expect("static regex")
});

/// An extension right after a number.
static EXTENSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^[ \t\u{a0},]*(?:доб(?:авочный)?\.?|вн\.?|ext\.?|extension)[ \t\u{a0}.:]*(\d{1,6})\b",
    )
    .expect("static regex")
});

/// Currency and amount words that make a number a price.
static PRICE_AFTER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^[ \t\u{a0}]*(?:руб|р\.|р\b|₽|rub|usd|eur|\$|€|тыс|млн|коп|тенге|₸|грн|шт\b|кг\b|%)",
    )
    .expect("static regex")
});

/// One run of digit groups and the separators between them.
#[derive(Debug)]
struct Group {
    digits: String,
    /// Byte range of the digits in the line.
    start: usize,
    end: usize,
    /// `+` right before (possibly with one space and an opening parenthesis).
    plus_at: Option<usize>,
    /// Wrapped in parentheses: `(999)`.
    parenthesized: bool,
    /// The separator between the previous group and this one.
    sep: String,
}

fn is_sep(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\u{a0}' | '-' | '.' | '(' | ')' | '\u{2010}'..='\u{2013}'
    )
}

/// Phone numbers in `text`, as written, in order of appearance, without
/// repeats (compared by digits, `8…` equal to `7…`).
pub fn find_phones(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for line in text.lines() {
        for phone in find_in_line(line) {
            let key = phone_key(&phone);
            if !keys.contains(&key) {
                keys.push(key);
                out.push(phone);
                if out.len() >= MAX_PHONES {
                    return out;
                }
            }
        }
    }
    out
}

/// Digits of a number without its extension, the Russian trunk prefix
/// folded (`8999…` and `7999…` are one number).
pub fn phone_key(phone: &str) -> String {
    let number = phone.split("доб").next().unwrap_or(phone);
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    if digits.len() == 11 && digits.starts_with('8') {
        format!("7{}", &digits[1..])
    } else {
        digits
    }
}

fn find_in_line(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let groups = groups_of(line);
    let mut i = 0;
    while i < groups.len() {
        match phone_at(line, &groups, i) {
            Reading::Phone(last, phone) => {
                found.push(phone);
                i = last + 1;
            }
            // A number with a phone's shape that its context says is
            // something else: its groups are not read again from the middle.
            Reading::NotPhone(last) => i = last + 1,
            Reading::Nothing => i += 1,
        }
    }
    found
}

/// What the groups from one start position read as.
enum Reading {
    /// A phone ending at this group, as written.
    Phone(usize, String),
    /// Phone-shaped up to this group, but not a phone.
    NotPhone(usize),
    /// No phone shape starts here.
    Nothing,
}

/// Splits a line into digit groups; groups further apart than a short
/// separator (or with anything else between them) start a new run, marked
/// by a separator that [`phone_at`] refuses to cross.
fn groups_of(line: &str) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut sep = String::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        if c.is_ascii_digit() {
            let start = pos;
            let mut end = pos;
            while let Some(&(p, d)) = chars.peek() {
                if d.is_ascii_digit() {
                    end = p + 1;
                    chars.next();
                } else {
                    break;
                }
            }
            let before = sep.trim_end_matches([' ', '\u{a0}', '\t']);
            let parenthesized = before.ends_with('(') && line[end..].trim_start().starts_with(')');
            let plus_at = plus_before(line, start);
            groups.push(Group {
                digits: line[start..end].to_owned(),
                start,
                end,
                plus_at,
                parenthesized,
                sep: std::mem::take(&mut sep),
            });
            if groups.len() > 4096 {
                break;
            }
        } else {
            if is_sep(c) {
                sep.push(c);
            } else {
                // Anything else breaks the run.
                sep.push('\u{1}');
            }
            chars.next();
        }
    }
    groups
}

/// Position of a `+` that belongs to the number starting at `start`
/// (`+7…`, `+ 7…`, `+(7)…`).
fn plus_before(line: &str, start: usize) -> Option<usize> {
    let head = &line[..start];
    let trimmed = head.trim_end_matches([' ', '(']);
    if head.len() - trimmed.len() > 2 {
        return None;
    }
    trimmed.ends_with('+').then(|| trimmed.len() - 1)
}

/// A separator that may sit inside one phone number.
fn joins(sep: &str) -> bool {
    if sep.contains('\u{1}') || sep.chars().count() > 3 {
        return false;
    }
    let spaces = sep.chars().filter(|c| c.is_whitespace()).count();
    let dashes = sep
        .chars()
        .filter(|c| matches!(c, '-' | '\u{2010}'..='\u{2013}'))
        .count();
    let dots = sep.chars().filter(|&c| c == '.').count();
    spaces <= 2 && dashes <= 1 && dots <= 1 && !(dots == 1 && spaces > 0)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `+7`, `7`, `8` and ten digits.
    Russian,
    /// `+` and another country code.
    International,
    /// Ten national digits without a prefix.
    Bare,
}

/// The shapes a number starting with this group may have, in order.
fn shapes(first: &Group) -> &'static [Shape] {
    match (first.plus_at.is_some(), first.digits.as_bytes()[0]) {
        (true, b'7') => &[Shape::Russian],
        (true, _) => &[Shape::International],
        // `812 123-45-67` after `тел.` is St Petersburg without the prefix.
        (false, b'7' | b'8') => &[Shape::Russian, Shape::Bare],
        (false, b'9' | b'3' | b'4') => &[Shape::Bare],
        _ => &[],
    }
}

/// The last group of the longest reading of `shape` from group `i` that
/// ends on a group boundary.
fn extent(groups: &[Group], i: usize, shape: Shape) -> Option<usize> {
    let (min, max) = match shape {
        Shape::Russian => (11, 11),
        Shape::International => (10, 15),
        Shape::Bare => (10, 10),
    };
    let mut total = 0usize;
    let mut last = None;
    for (j, g) in groups.iter().enumerate().skip(i) {
        if j > i && (!joins(&g.sep) || g.plus_at.is_some()) {
            break;
        }
        total += g.digits.len();
        if total > max {
            break;
        }
        if total >= min {
            last = Some(j);
        }
    }
    last
}

/// Tries to read one number starting at group `i`.
fn phone_at(line: &str, groups: &[Group], i: usize) -> Reading {
    let first = &groups[i];
    let Some((shape, j)) = shapes(first)
        .iter()
        .find_map(|&s| extent(groups, i, s).map(|j| (s, j)))
    else {
        return Reading::Nothing;
    };
    let start = first.plus_at.unwrap_or(first.start);
    if !left_boundary_ok(line, start) {
        return Reading::NotPhone(j);
    }
    let digits: String = groups[i..=j].iter().map(|g| g.digits.as_str()).collect();
    let plausible = match shape {
        Shape::Russian => matches!(digits.as_bytes()[1], b'3' | b'4' | b'7' | b'8' | b'9'),
        // Ten digits without a prefix: a mobile (9xx) written in groups, or
        // any number a phone word or parentheses announce.
        Shape::Bare => {
            phone_word_before(line, start)
                || first.parenthesized
                || (digits.starts_with('9') && j > i)
        }
        Shape::International => true,
    };
    if !plausible || ipv4_like(&groups[i..=j]) {
        return Reading::NotPhone(j);
    }

    let mut end = groups[j].end;
    if groups[j].parenthesized
        && let Some(close) = line[end..].find(')')
    {
        end += close + 1;
    }
    if !right_boundary_ok(line, end) || negative_word_before(line, start) {
        return Reading::NotPhone(j);
    }
    let mut phone = line[start..end].replace(['\u{a0}', '\t'], " ");
    if let Some(ext) = EXTENSION.captures(&line[end..]).and_then(|c| c.get(1)) {
        phone.push_str(" доб. ");
        phone.push_str(ext.as_str());
    }
    Reading::Phone(j, phone)
}

/// What precedes a number must not glue it to something else: letters
/// (`A4`, `X200`), a path or query (`/id/8999…`, `=…`), an e-mail, a
/// decimal (`1.8999…`), `№`/`#`.
fn left_boundary_ok(line: &str, start: usize) -> bool {
    let mut before = line[..start].chars().rev();
    match before.next() {
        None => true,
        Some(c) if c.is_alphanumeric() => false,
        Some('/' | '=' | '_' | '@' | '№' | '#' | '&' | '?' | '%' | '\\' | '+' | '$' | '€') => {
            false
        }
        Some('.' | ',') => !before.next().is_some_and(|c| c.is_ascii_digit()),
        Some(_) => true,
    }
}

/// What follows must not continue it: another digit, a decimal part, an
/// `@` (an e-mail local part), a letter glued on, or a currency.
fn right_boundary_ok(line: &str, end: usize) -> bool {
    let rest = &line[end..];
    let mut after = rest.chars();
    match after.next() {
        None => {}
        Some(c) if c.is_ascii_digit() || c == '@' || c == '_' || c == '/' => return false,
        Some(c) if c.is_alphabetic() => return false,
        Some('.' | ',') if after.next().is_some_and(|c| c.is_ascii_digit()) => return false,
        Some(_) => {}
    }
    !PRICE_AFTER.is_match(rest)
}

/// The line's text just before the number (same line, up to 32 chars).
fn window_before(line: &str, start: usize) -> &str {
    let head = &line[..start];
    let from = head
        .char_indices()
        .rev()
        .nth(31)
        .map(|(i, _)| i)
        .unwrap_or(0);
    &head[from..]
}

fn phone_word_before(line: &str, start: usize) -> bool {
    POSITIVE.is_match(window_before(line, start))
}

/// A negative word right before the number: nothing but spaces, `№`, `#`,
/// `:`, `-`, `.` between them (`ИНН 7707…`, `заказ № 8999…`, `номер
/// заказа: 8999…`). Farther away (`Хочу заказать 3 шт. 8999…`,
/// `нужен счёт, 8999…`) it says nothing about the number.
fn negative_word_before(line: &str, start: usize) -> bool {
    let w = window_before(line, start);
    let Some(m) = NEGATIVE.find_iter(w).last() else {
        return false;
    };
    w[m.end()..]
        .chars()
        .all(|c| c.is_whitespace() || matches!(c, '№' | '#' | ':' | '-' | '.' | '='))
}

/// `85.140.200.191`: four dotted groups of up to three digits.
fn ipv4_like(groups: &[Group]) -> bool {
    groups.len() == 4
        && groups.iter().all(|g| g.digits.len() <= 3)
        && groups.iter().skip(1).all(|g| g.sep == ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<String> {
        find_phones(text).iter().map(|p| phone_key(p)).collect()
    }

    #[test]
    fn russian_formats() {
        for (text, want) in [
            ("тел. 8 (999) 123-45-67", "79991234567"),
            ("Телефон для связи: +7 999 234 56 78.", "79992345678"),
            ("Звоните: 89993456789", "79993456789"),
            ("Мой номер 7-999-4567890.", "79994567890"),
            ("Телефон +7 (999) 567-89-01", "79995678901"),
            ("Тел. +79996789012", "79996789012"),
            ("Дмитрий, +7 999 789-01-23", "79997890123"),
            ("тел: 8-999-890-12-34", "79998901234"),
            ("+7(999)123-45-67", "79991234567"),
            ("8(999)1234567", "79991234567"),
            ("+ 7 999 123 45 67", "79991234567"),
            ("8 999 444-55-66", "79994445566"),
            ("8 800 555-35-35", "78005553535"),
            ("+7 (4012) 12-34-56", "74012123456"),
            ("8 (34342) 1-23-45", "73434212345"),
            ("+7 701 123 45 67", "77011234567"),
            ("+7\u{a0}999\u{a0}123\u{a0}45\u{a0}67", "79991234567"),
            ("(999) 123-45-67", "9991234567"),
            ("999 123 45 67", "9991234567"),
            ("тел 9991234567", "9991234567"),
            ("тел. 495 123-45-67", "4951234567"),
            ("Тел.: 812 123 45 67", "8121234567"),
            ("(495) 123-45-67", "4951234567"),
            ("Phone: +44 20 7946 0958", "442079460958"),
            ("call +1 (415) 555-2671 now", "14155552671"),
            ("Телефон: 8 (999) 222-33-44, спасибо", "79992223344"),
            ("Хочу заказать 3 шт. 89996667788", "79996667788"),
            ("Нужен счёт, 89990001122", "79990001122"),
            (
                "нужен счёт на 10 коробок. Василий 89997778899",
                "79997778899",
            ),
            ("ИНН 7707083893, тел. 8 999 123-45-67", "79991234567"),
        ] {
            assert_eq!(keys(text), vec![want.to_owned()], "{text}");
        }
    }

    #[test]
    fn extensions_and_several_numbers() {
        let text = "моб.: +7 999 333 44 55\nраб.: 8 (495) 123-45-67 доб. 123\n";
        assert_eq!(
            find_phones(text),
            vec!["+7 999 333 44 55", "8 (495) 123-45-67 доб. 123"]
        );
        assert_eq!(
            find_phones("тел. 8 495 123-45-67, вн. 45"),
            vec!["8 495 123-45-67 доб. 45"]
        );
        // The same number twice is one number.
        assert_eq!(
            keys("89991234567 или +7 999 123-45-67"),
            vec!["79991234567"]
        );
        // A date right before a phone does not hide it.
        assert_eq!(keys("12.03.2024 8 999 123 45 67"), vec!["79991234567"]);
        assert_eq!(keys("до 15:00 89991234567"), vec!["79991234567"]);
    }

    #[test]
    fn not_phones() {
        for text in [
            "12.03.2024",
            "Встреча 12.03.2024 в 15:00",
            "2024-03-12T10:15:00",
            "Цена 12 500 руб",
            "Цена 8 999 000 руб.",
            "стоимость 89 990 000 ₽",
            "итого 7 999 123 45 67 руб",
            "ИНН 7707083893",
            "ИНН 770708389312",
            "ИНН/КПП 7707083893/770701001",
            "ОГРН 1027700132195",
            "р/с 40702810938000012345",
            "БИК 044525225",
            "заказ №123456",
            "Заказ № 89991234567",
            "номер заказа: 89991234567",
            "ИНН 89991234567",
            "Договор 8-999-123-45-67",
            "/lead/8-999-123-45-67",
            "order #89991234567",
            "Индекс 101000, Москва",
            "123456, г. Москва",
            "арт. 8999123456789",
            "модель X200 89991234567X",
            "https://example.ru/lead/89991234567",
            "89991234567@mail.ru",
            "IP 89.145.200.101",
            "версия 8.9.123.45",
            "1.89991234567",
            "карта 8600 1234 5678 9012",
            "8 123 456 78 90",
            "9991234567",
            "88005553535123",
            "100 пачек, 20 тонн, 3 шт.",
            "+7 999 123",
            "495 123-45-67",
            "812 123 45 67",
        ] {
            assert!(
                find_phones(text).is_empty(),
                "{text}: {:?}",
                find_phones(text)
            );
        }
    }

    #[test]
    fn bounded_on_hostile_input() {
        let digits = "1 ".repeat(50_000);
        assert!(find_phones(&digits).is_empty());
        let phones = "89991234567 ".repeat(100);
        assert_eq!(find_phones(&phones).len(), 1);
        let many: String = (0..100).map(|i| format!("+7 999 {i:03} 45 67\n")).collect();
        assert_eq!(find_phones(&many).len(), MAX_PHONES);
    }
}
