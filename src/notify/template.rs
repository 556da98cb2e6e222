//! Message templates: text with `{field}` placeholders, checked when the
//! configuration is loaded so a typo is a `leadgate check` error rather than
//! a message with a hole in it. `{{` and `}}` are literal braces.

use std::collections::BTreeMap;

/// Placeholders a template may use, with what they hold.
pub const FIELDS: &[(&str, &str)] = &[
    ("lead_id", "the lead's id"),
    ("event", "assigned, escalated or supervisor"),
    ("assignee", "who holds the lead now"),
    ("name", "the contact's name"),
    ("phone", "the contact's phone (E.164)"),
    ("email", "the contact's e-mail"),
    ("messenger", "telegram:<id> or vk:<id>"),
    ("contact", "name, phone, e-mail and messenger, as known"),
    ("channel", "the channel id"),
    ("kind", "the channel kind"),
    ("subject", "the subject line"),
    ("message", "the message text"),
    ("summary", "the subject, else the start of the message"),
    ("product", "the product"),
    ("region", "the region"),
    ("note", "why (for an escalation: the deadline missed)"),
    ("link", "the CRM card, from templates.link"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    pub fn literal(text: &str) -> Template {
        Template(vec![Part::Text(text.to_owned())])
    }

    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(format!(
                            "unclosed {{ at character {}; write {{{{ for a literal brace",
                            text[..i].chars().count() + 1
                        ));
                    };
                    let name = rest[..end].trim();
                    let Some((field, _)) = FIELDS.iter().find(|(f, _)| *f == name) else {
                        let known: Vec<&str> = FIELDS.iter().map(|f| f.0).collect();
                        return Err(format!(
                            "unknown placeholder {{{name}}}; use {}",
                            known.join(", ")
                        ));
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(field));
                    // Skip the name and its closing brace.
                    let stop = i + 1 + end;
                    while chars.peek().is_some_and(|(j, _)| *j <= stop) {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(format!(
                        "a lone }} at character {}; write }}}} for a literal brace",
                        text[..i].chars().count() + 1
                    ));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template(parts))
    }

    /// The text with each placeholder replaced by its value (empty when
    /// the lead has none).
    pub fn render(&self, values: &BTreeMap<&'static str, String>) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => out.push_str(values.get(f).map_or("", String::as_str)),
            }
        }
        out
    }
}

/// Blank lines left by empty placeholders go; the rest is kept as written.
pub fn tidy(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_render_and_typos_are_refused() {
        let t = Template::parse("Lead #{lead_id}: {{ {name} }}").unwrap();
        let mut v = BTreeMap::new();
        v.insert("lead_id", "7".to_owned());
        v.insert("name", "Иван".to_owned());
        assert_eq!(t.render(&v), "Lead #7: { Иван }");
        assert!(
            Template::parse("{lead}")
                .unwrap_err()
                .contains("unknown placeholder {lead}")
        );
        assert!(Template::parse("x {name").unwrap_err().contains("unclosed"));
        assert!(Template::parse("x }").unwrap_err().contains("lone"));
        assert_eq!(tidy("a\n\n  \nb  \n"), "a\nb");
    }
}
