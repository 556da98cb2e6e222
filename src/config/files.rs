use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use leadgate_connector::ChannelId;
use leadgate_forms::{FormChannel, FormSettings};
use leadgate_imap::{ImapChannel, ImapSettings};
use leadgate_telegram::{TelegramChannel, TelegramSettings};
use leadgate_telephony::{TelephonyChannel, TelephonySettings};
use leadgate_vk::{VkChannel, VkSettings};
use regex::Regex;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;

use super::{
    ChannelConfig, ChannelKind, ChannelProtocol, Config, ConfigError, HumanDuration, MainConfig,
    Problem,
};
use crate::assign::config::{CalendarFile, SlaFile, UserFile};
use crate::assign::{AfterHours, Policy};
use crate::routing::{Assignee, Condition, Role, RoutingConfig, Rule, Strategy, TeamConfig};

pub const MAIN_FILE: &str = "leadgate.toml";
pub const CHANNELS_DIR: &str = "channels.d";
pub const TEAM_FILE: &str = "team.toml";
pub const ROUTING_FILE: &str = "routing.toml";

/// Problems listed by one run; more are counted, not listed. Locating a
/// problem scans its file, so a file with a hundred thousand mistakes (a
/// pasted list gone wrong) would otherwise keep `check` busy for minutes.
const MAX_LISTED_PROBLEMS: usize = 100;

/// Brackets (`[`, `{`) open at once beyond which a file is refused before
/// the TOML parser sees it. A configuration nests a few levels. The parser
/// (toml_parser 1.1.5, the newest) recurses once per level, and its own
/// limit of 80 is defeated by malformed input whose error recovery closes
/// tables it never counted as opened (`x = {a{{}a{{}…`): tens of thousands
/// of levels overflowed even the main thread's 8 MiB stack, so `check`
/// aborted and a SIGHUP reload would have killed the daemon.
const MAX_NESTING: usize = 64;

/// Where the bracket that opens level [`MAX_NESTING`] + 1 starts, if any.
/// Counted on the TOML lexer's tokens (brackets in strings and comments do
/// not count). A closing bracket closes only an open one of its own kind on
/// top, so on malformed input this counts at least as deep as the parser
/// recurses, and on valid input exactly as deep as the document nests.
fn too_deeply_nested(text: &str) -> Option<usize> {
    use toml_parser::lexer::TokenKind;
    let mut open: Vec<TokenKind> = Vec::new();
    for token in toml_parser::Source::new(text).lex() {
        let opener = match token.kind() {
            k @ (TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket) => {
                open.push(k);
                if open.len() > MAX_NESTING {
                    return Some(token.span().start());
                }
                continue;
            }
            TokenKind::RightSquareBracket => TokenKind::LeftSquareBracket,
            TokenKind::RightCurlyBracket => TokenKind::LeftCurlyBracket,
            _ => continue,
        };
        if open.last() == Some(&opener) {
            open.pop();
        }
    }
    None
}

/// Collects problems while the files are read, so one run reports them all.
struct Loader {
    problems: Vec<Problem>,
    /// Problems past [`MAX_LISTED_PROBLEMS`].
    unlisted: usize,
}

/// The text of one file, kept to turn byte spans into line numbers.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }
}

impl Loader {
    /// Whether another problem may still be listed; counts it if not.
    fn room(&mut self) -> bool {
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            return true;
        }
        self.unlisted += 1;
        false
    }

    /// Every listed problem, then how many more there were.
    fn into_problems(mut self, dir: &Path) -> Vec<Problem> {
        if self.unlisted > 0 {
            self.problems.push(Problem {
                file: dir.to_owned(),
                line: None,
                column: None,
                field: None,
                message: format!("… and {} more problem(s) not listed", self.unlisted),
            });
        }
        self.problems
    }

    fn problem(&mut self, file: &Path, field: Option<&str>, message: impl Into<String>) {
        if !self.room() {
            return;
        }
        self.problems.push(Problem {
            file: file.to_owned(),
            line: None,
            column: None,
            field: field.map(str::to_owned),
            message: message.into(),
        });
    }

    fn problem_at(
        &mut self,
        src: &Source,
        span: Range<usize>,
        field: Option<&str>,
        message: impl Into<String>,
    ) {
        if !self.room() {
            return;
        }
        let (line, column) = src.line_col(span.start);
        self.problems.push(Problem {
            file: src.path.clone(),
            line: Some(line),
            column: Some(column),
            field: field.map(str::to_owned),
            message: message.into(),
        });
    }

    fn read(&mut self, path: &Path, required: bool) -> Option<Source> {
        match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Some(Source {
                    path: path.to_owned(),
                    text,
                }),
                Err(_) => {
                    self.problem(path, None, "the file is not UTF-8 text");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => None,
            Err(e) => {
                self.problem(path, None, format!("cannot read: {e}"));
                None
            }
        }
    }

    fn parse<T: DeserializeOwned>(&mut self, src: &Source) -> Option<T> {
        if let Some(at) = too_deeply_nested(&src.text) {
            self.problem_at(
                src,
                at..at,
                None,
                format!(
                    "brackets nested more than {MAX_NESTING} deep (or left open): \
                     a configuration needs a few levels; check the `[` and `{{` before this one"
                ),
            );
            return None;
        }
        match toml::from_str::<T>(&src.text) {
            Ok(v) => Some(v),
            Err(e) => {
                let message = e.message().trim().to_owned();
                match e.span() {
                    Some(span) => self.problem_at(src, span, None, message),
                    None => self.problem(&src.path, None, message),
                }
                None
            }
        }
    }
}

/// Load and validate the configuration directory.
pub fn load(dir: &Path) -> Result<Config, ConfigError> {
    let mut l = Loader {
        problems: Vec::new(),
        unlisted: 0,
    };
    if !dir.is_dir() {
        l.problem(
            dir,
            None,
            "not a directory (pass the folder holding leadgate.toml)",
        );
        return Err(ConfigError {
            problems: l.problems,
        });
    }
    // Secret files (`*_file`) are named relative to the configuration folder.
    leadgate_connector::set_secret_base_dir(dir);
    let main = load_main(&mut l, &dir.join(MAIN_FILE));
    let mut team = load_team(&mut l, &dir.join(TEAM_FILE));
    let notify = main
        .as_ref()
        .map(|m| load_notify(&mut l, dir, m, &mut team))
        .unwrap_or_default();
    let routing = load_routing(&mut l, &dir.join(ROUTING_FILE), &team);
    let channels = load_channels(&mut l, &dir.join(CHANNELS_DIR), &team, main.as_ref());
    if let Some(main) = &main
        && let Err(e) = super::database_url(&main.database, dir)
    {
        l.problem(&dir.join(MAIN_FILE), Some("database"), e);
    }
    match (main, l.problems.is_empty()) {
        (Some(main), true) => Ok(Config {
            dir: dir.to_owned(),
            main,
            channels,
            team,
            routing,
            notify: std::sync::Arc::new(notify),
        }),
        _ => Err(ConfigError {
            problems: l.into_problems(dir),
        }),
    }
}

fn load_main(l: &mut Loader, path: &Path) -> Option<MainConfig> {
    let src = l.read(path, true)?;
    let from_file: MainConfig = l.parse(&src)?;
    let overrides: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("LEADGATE__"))
        .collect();
    let main = if overrides.is_empty() {
        from_file
    } else {
        let merged = config::Config::builder()
            .add_source(config::File::from_str(&src.text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("LEADGATE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .and_then(|c| c.try_deserialize::<MainConfig>());
        match merged {
            Ok(m) => m,
            Err(e) => {
                let names: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
                l.problem(
                    path,
                    None,
                    format!("with environment overrides {}: {e}", names.join(", ")),
                );
                return None;
            }
        }
    };
    let p = &main.pipeline;
    if phone_region(&p.default_region).is_none() {
        l.problem(
            path,
            Some("pipeline.default_region"),
            format!(
                "{:?} is not a known ISO 3166 region code (e.g. RU, KZ, BY)",
                p.default_region
            ),
        );
    }
    if let Err(e) = crate::logging::check_level(&main.log.level) {
        l.problem(
            path,
            Some("log.level"),
            format!(
                "{:?} is not a log filter (e.g. info, or leadgate=debug,info): {e}",
                main.log.level
            ),
        );
    }
    if main.instance.lease_ttl.0 < std::time::Duration::from_secs(1) {
        l.problem(
            path,
            Some("instance.lease_ttl"),
            "must be at least 1s (renewed every third of it)",
        );
    }
    if p.max_batch == 0 {
        l.problem(path, Some("pipeline.max_batch"), "must be at least 1");
    }
    if main.database.max_connections < 2 {
        l.problem(
            path,
            Some("database.max_connections"),
            "must be at least 2 (one writer, one reader)",
        );
    }
    Some(main)
}

/// `[notify]` of the main file, and where each user of `team.toml` is told
/// (their `telegram_chat_id`, `email` and `notify` against the transports
/// `[notify]` enables).
fn load_notify(
    l: &mut Loader,
    dir: &Path,
    main: &MainConfig,
    team: &mut TeamConfig,
) -> crate::notify::NotifySettings {
    use crate::notify::Transport;
    let main_path = dir.join(MAIN_FILE);
    let team_path = dir.join(TEAM_FILE);
    let settings = match main.notify.resolve() {
        Ok(s) => s,
        Err(problems) => {
            for (field, message) in problems {
                l.problem(&main_path, Some(&field), message);
            }
            crate::notify::NotifySettings::default()
        }
    };
    for (i, name) in main.notify.supervisors.iter().enumerate() {
        if !team.users.contains_key(name) {
            l.problem(
                &main_path,
                Some(&format!("notify.supervisors[{i}]")),
                format!("unknown user {name:?} (define it under [users.{name}] in {TEAM_FILE})"),
            );
        }
    }
    team.supervisors = main.notify.supervisors.clone();
    // By the tables present, so a mistake inside [notify.telegram] is not
    // also reported as every user's "telegram is not enabled".
    let enabled = |t: Transport| match t {
        Transport::Telegram => main.notify.telegram.is_some(),
        Transport::Email => main.notify.email.is_some(),
    };
    for (name, user) in team.users.iter_mut() {
        let address = |t: Transport| match t {
            Transport::Telegram => user.telegram_chat_id.map(|id| id.to_string()),
            Transport::Email => user.email.clone(),
        };
        if let Some(email) = &user.email
            && email.parse::<lettre::Address>().is_err()
        {
            l.problem(
                &team_path,
                Some(&format!("users.{name}.email")),
                format!("{email:?} is not an e-mail address"),
            );
        }
        let mut via = Vec::new();
        match &user.notify_via {
            None => via.extend(
                Transport::ALL
                    .into_iter()
                    .filter(|t| enabled(*t) && address(*t).is_some()),
            ),
            Some(list) => {
                for item in list {
                    let field = format!("users.{name}.notify");
                    let Some(t) = Transport::parse(item) else {
                        l.problem(
                            &team_path,
                            Some(&field),
                            format!("unknown transport {item:?}; use \"telegram\" or \"email\""),
                        );
                        continue;
                    };
                    if !enabled(t) {
                        l.problem(
                            &team_path,
                            Some(&field),
                            format!("{item:?} is not enabled: add [notify.{item}] to {MAIN_FILE}"),
                        );
                    } else if address(t).is_none() {
                        let missing = match t {
                            Transport::Telegram => "telegram_chat_id",
                            Transport::Email => "email",
                        };
                        l.problem(
                            &team_path,
                            Some(&field),
                            format!("{item:?} needs users.{name}.{missing}"),
                        );
                    } else if !via.contains(&t) {
                        via.push(t);
                    }
                }
            }
        }
        let resolved: Vec<(Transport, String)> = via
            .into_iter()
            .filter_map(|t| Some((t, address(t)?)))
            .collect();
        user.notify = resolved;
    }
    settings
}

pub fn phone_region(code: &str) -> Option<phonenumber::country::Id> {
    code.trim().to_ascii_uppercase().parse().ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamFile {
    #[serde(default)]
    users: BTreeMap<String, Spanned<UserFile>>,
    #[serde(default)]
    roles: BTreeMap<String, Spanned<RoleFile>>,
    /// Team time zone, default hours and holidays.
    calendar: Option<CalendarFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    members: Vec<String>,
    #[serde(default)]
    strategy: Strategy,
    #[serde(default)]
    weights: BTreeMap<String, u32>,
}

fn load_team(l: &mut Loader, path: &Path) -> TeamConfig {
    let Some(src) = l.read(path, false) else {
        return TeamConfig::default();
    };
    let Some(file) = l.parse::<TeamFile>(&src) else {
        return TeamConfig::default();
    };
    let mut roles = BTreeMap::new();
    for (name, role) in file.roles {
        let span = role.span();
        let role = role.into_inner();
        for member in &role.members {
            if !file.users.contains_key(member) {
                l.problem_at(
                    &src,
                    span.clone(),
                    Some(&format!("roles.{name}.members")),
                    format!("unknown user {member:?} (define it under [users.{member}])"),
                );
            }
        }
        if role.members.is_empty() {
            l.problem_at(
                &src,
                span.clone(),
                Some(&format!("roles.{name}.members")),
                "a role needs at least one member",
            );
        }
        for (member, weight) in &role.weights {
            let field = format!("roles.{name}.weights.{member}");
            if !role.members.contains(member) {
                l.problem_at(&src, span.clone(), Some(&field), "not a member of the role");
            } else if *weight == 0 {
                l.problem_at(&src, span.clone(), Some(&field), "must be at least 1");
            }
        }
        roles.insert(
            name,
            Role {
                members: role.members,
                strategy: role.strategy,
                weights: role.weights,
            },
        );
    }
    let (users, calendars, issues) =
        crate::assign::config::build(file.calendar.as_ref(), &file.users);
    for issue in issues {
        match issue.span {
            Some(span) => l.problem_at(&src, span, Some(&issue.field), issue.message),
            None => l.problem(&src.path, Some(&issue.field), issue.message),
        }
    }
    TeamConfig {
        users,
        roles,
        calendars,
        supervisors: Vec::new(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingFile {
    default: Option<Spanned<String>>,
    #[serde(default)]
    rules: Vec<RuleFile>,
    // Defaults of every rule's policy, and the policy of leads no rule
    // matched.
    /// Keep returning contacts with their previous owner (default true).
    sticky: Option<bool>,
    /// How far back the previous owner counts (default 180d).
    sticky_window: Option<HumanDuration>,
    /// `queue` (default), `user:<id>` or `role:<id>`.
    after_hours: Option<Spanned<String>>,
    /// Response deadlines and escalation.
    sla: Option<SlaFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Spanned<String>,
    assign: Spanned<String>,
    strategy: Option<Strategy>,
    sticky: Option<bool>,
    sticky_window: Option<HumanDuration>,
    after_hours: Option<Spanned<String>>,
    respond_within: Option<HumanDuration>,
    escalate_to: Option<Spanned<String>>,
    #[serde(default)]
    when: BTreeMap<String, Spanned<ConditionFile>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ConditionFile {
    Equals(String),
    Op(OpFile),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpFile {
    equals: Option<String>,
    one_of: Option<Vec<String>>,
    prefix: Option<String>,
    regex: Option<String>,
}

/// Check an assignee string against the team; the problem points at `span`.
fn check_assignee(
    l: &mut Loader,
    src: &Source,
    span: Range<usize>,
    field: &str,
    text: &str,
    team: &TeamConfig,
) -> Option<Assignee> {
    let assignee: Assignee = match text.parse() {
        Ok(a) => a,
        Err(e) => {
            l.problem_at(src, span, Some(field), e);
            return None;
        }
    };
    let known = match &assignee {
        Assignee::User(u) => team.users.contains_key(u),
        Assignee::Role(r) => team.roles.contains_key(r),
    };
    if !known {
        l.problem_at(
            src,
            span,
            Some(field),
            format!("{assignee} is not defined in {TEAM_FILE}"),
        );
        return None;
    }
    Some(assignee)
}

fn load_routing(l: &mut Loader, path: &Path, team: &TeamConfig) -> RoutingConfig {
    let Some(src) = l.read(path, false) else {
        return RoutingConfig::default();
    };
    let Some(file) = l.parse::<RoutingFile>(&src) else {
        return RoutingConfig::default();
    };
    let default = file
        .default
        .and_then(|d| check_assignee(l, &src, d.span(), "default", d.get_ref(), team));
    let mut base = policy(
        l,
        &src,
        team,
        &Policy::default(),
        (file.sticky, file.sticky_window, file.after_hours.as_ref()),
        "",
    );
    let sla_file = file.sla.unwrap_or_default();
    let (mut sla, issues) = crate::assign::config::build_sla(&sla_file);
    for issue in issues {
        let span = issue.span.unwrap_or(0..0);
        l.problem_at(&src, span, Some(&issue.field), issue.message);
    }
    sla.escalate_to = sla_file
        .escalate_to
        .and_then(|t| check_assignee(l, &src, t.span(), "sla.escalate_to", t.get_ref(), team));
    base.sla.defaults = std::sync::Arc::new(sla);
    let mut rules = Vec::new();
    let mut names = BTreeMap::new();
    for (i, rule) in file.rules.into_iter().enumerate() {
        let name = rule.name.get_ref().clone();
        let field = format!("rules[{i}] ({name})");
        if let Some(first) = names.insert(name.clone(), i) {
            l.problem_at(
                &src,
                rule.name.span(),
                Some(&field),
                format!("the name is also used by rules[{first}]"),
            );
        }
        let assign = check_assignee(
            l,
            &src,
            rule.assign.span(),
            &format!("{field}.assign"),
            rule.assign.get_ref(),
            team,
        );
        let mut when = Vec::new();
        for (key, cond) in rule.when {
            let span = cond.span();
            let cond_field = format!("{field}.when.{key}");
            match compile_condition(cond.into_inner()) {
                Ok(c) => when.push((key, c)),
                Err(e) => l.problem_at(&src, span, Some(&cond_field), e),
            }
        }
        let mut policy = policy(
            l,
            &src,
            team,
            &base,
            (rule.sticky, rule.sticky_window, rule.after_hours.as_ref()),
            &format!("{field}."),
        );
        policy.sla.respond_within = rule
            .respond_within
            .and_then(|w| chrono::Duration::from_std(w.0).ok());
        policy.sla.escalate_to = rule.escalate_to.and_then(|t| {
            let f = format!("{field}.escalate_to");
            check_assignee(l, &src, t.span(), &f, t.get_ref(), team)
        });
        if let Some(assign) = assign {
            rules.push(Rule {
                name,
                when,
                assign,
                strategy: rule.strategy,
                policy,
            });
        }
    }
    RoutingConfig {
        default,
        rules,
        policy: base,
    }
}

/// A rule's policy: its own settings over `base`.
fn policy(
    l: &mut Loader,
    src: &Source,
    team: &TeamConfig,
    base: &Policy,
    (sticky, window, after_hours): (
        Option<bool>,
        Option<HumanDuration>,
        Option<&Spanned<String>>,
    ),
    field: &str,
) -> Policy {
    let mut p = base.clone();
    if let Some(window) = window {
        p.sticky_window = chrono::Duration::from_std(window.0).ok();
    }
    if sticky == Some(false) {
        p.sticky_window = None;
    } else if sticky == Some(true) && p.sticky_window.is_none() {
        p.sticky_window = Policy::default().sticky_window;
    }
    if let Some(target) = after_hours {
        let field = format!("{field}after_hours");
        match target.get_ref().parse::<AfterHours>() {
            Err(e) => l.problem_at(src, target.span(), Some(&field), e),
            Ok(AfterHours::Queue) => p.after_hours = AfterHours::Queue,
            Ok(_) => {
                if let Some(a) =
                    check_assignee(l, src, target.span(), &field, target.get_ref(), team)
                {
                    p.after_hours = match a {
                        Assignee::User(u) => AfterHours::User(u),
                        Assignee::Role(r) => AfterHours::Role(r),
                    };
                }
            }
        }
    }
    p
}

fn compile_condition(c: ConditionFile) -> Result<Condition, String> {
    let op = match c {
        ConditionFile::Equals(v) => return Ok(Condition::Equals(v)),
        ConditionFile::Op(op) => op,
    };
    let set = [
        op.equals.is_some(),
        op.one_of.is_some(),
        op.prefix.is_some(),
        op.regex.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        return Err("give exactly one of equals, one_of, prefix, regex".into());
    }
    if let Some(v) = op.equals {
        return Ok(Condition::Equals(v));
    }
    if let Some(v) = op.one_of {
        return Ok(Condition::OneOf(v));
    }
    if let Some(v) = op.prefix {
        return Ok(Condition::Prefix(v));
    }
    let pattern = op.regex.unwrap_or_default();
    Regex::new(&pattern)
        .map(Condition::Regex)
        .map_err(|e| format!("bad regex: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelFile {
    kind: ChannelKind,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "yes")]
    lead_source: bool,
    responsible: Option<Spanned<String>>,
    dedupe_window: Option<HumanDuration>,
    activity_window: Option<HumanDuration>,
    form: Option<FormSettings>,
    imap: Option<ImapSettings>,
    telephony: Option<TelephonySettings>,
    vk: Option<VkSettings>,
    telegram: Option<TelegramSettings>,
}

fn yes() -> bool {
    true
}

fn load_channels(
    l: &mut Loader,
    dir: &Path,
    team: &TeamConfig,
    main: Option<&MainConfig>,
) -> Vec<ChannelConfig> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            l.problem(dir, None, format!("cannot read: {e}"));
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let pipeline = main.map(|m| m.pipeline.clone()).unwrap_or_default();
    let mut channels = Vec::new();
    for path in paths {
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_owned();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            l.problem(
                &path,
                None,
                "a channel file name (its id) may use only a-z, 0-9, - and _",
            );
            continue;
        }
        let Some(src) = l.read(&path, true) else {
            continue;
        };
        let Some(file) = l.parse::<ChannelFile>(&src) else {
            continue;
        };
        let responsible = file
            .responsible
            .and_then(|r| check_assignee(l, &src, r.span(), "responsible", r.get_ref(), team));
        let protocol = match file.kind {
            ChannelKind::Form => {
                let settings = file.form.clone().unwrap_or_default();
                if let Err(e) = FormChannel::new(ChannelId(id.clone()), settings.clone()) {
                    l.problem(&path, Some("form"), e);
                }
                ChannelProtocol::Form(Box::new(settings))
            }
            ChannelKind::Imap => {
                let Some(settings) = file.imap.clone() else {
                    l.problem(
                        &path,
                        Some("imap"),
                        "an imap channel needs an [imap] table (host, username, password…)",
                    );
                    continue;
                };
                if let Err(e) = ImapChannel::new(ChannelId(id.clone()), settings.clone()) {
                    l.problem(&path, Some("imap"), e);
                }
                ChannelProtocol::Imap(Box::new(settings))
            }
            ChannelKind::Telephony => {
                let Some(settings) = file.telephony.clone() else {
                    l.problem(
                        &path,
                        Some("telephony"),
                        "a telephony channel needs a [telephony] table with `provider`",
                    );
                    continue;
                };
                if let Err(e) = TelephonyChannel::new(ChannelId(id.clone()), settings.clone()) {
                    l.problem(&path, Some("telephony"), e);
                }
                ChannelProtocol::Telephony(Box::new(settings))
            }
            ChannelKind::Vk => {
                let Some(settings) = file.vk.clone() else {
                    l.problem(
                        &path,
                        Some("vk"),
                        "a vk channel needs a [vk] table with `group_id`",
                    );
                    continue;
                };
                if let Err(e) = VkChannel::new(ChannelId(id.clone()), settings.clone()) {
                    l.problem(&path, Some("vk"), e);
                }
                ChannelProtocol::Vk(Box::new(settings))
            }
            ChannelKind::Telegram => {
                let Some(settings) = file.telegram.clone() else {
                    l.problem(
                        &path,
                        Some("telegram"),
                        "a telegram channel needs a [telegram] table with the bot's `token_file` (or `token`, `token_env`)",
                    );
                    continue;
                };
                if let Err(e) = TelegramChannel::new(ChannelId(id.clone()), settings.clone()) {
                    l.problem(&path, Some("telegram"), e);
                }
                ChannelProtocol::Telegram(Box::new(settings))
            }
        };
        let tables = [
            ("form", file.form.is_some(), ChannelKind::Form),
            ("imap", file.imap.is_some(), ChannelKind::Imap),
            (
                "telephony",
                file.telephony.is_some(),
                ChannelKind::Telephony,
            ),
            ("vk", file.vk.is_some(), ChannelKind::Vk),
            ("telegram", file.telegram.is_some(), ChannelKind::Telegram),
        ];
        for (table, present, owner) in tables {
            if present && owner != file.kind {
                l.problem(
                    &path,
                    Some(table),
                    format!(
                        "a [{table}] table belongs to kind = {:?}, not {:?}",
                        owner.as_str(),
                        file.kind.as_str()
                    ),
                );
            }
        }
        channels.push(ChannelConfig {
            id: ChannelId(id),
            kind: file.kind,
            file: path.clone(),
            enabled: file.enabled,
            lead_source: file.lead_source,
            responsible,
            dedupe_window: file.dedupe_window.unwrap_or(pipeline.dedupe_window),
            activity_window: file.activity_window.unwrap_or(pipeline.activity_window),
            protocol,
        });
    }
    channels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_brackets_of_the_document_only() {
        let deep = |n: usize| format!("x = {}1{}\n", "[".repeat(n), "]".repeat(n));
        assert_eq!(too_deeply_nested(&deep(MAX_NESTING)), None);
        assert_eq!(
            too_deeply_nested(&deep(MAX_NESTING + 1)),
            Some(4 + MAX_NESTING)
        );
        // Strings and comments are not brackets; table headers close.
        let quoted = format!(
            "a = \"{0}\"\nb = '{0}'\n# {0}\n[[rules]]\n[t]\nc = {{ d = [1] }}\n",
            "[{".repeat(1000)
        );
        assert_eq!(too_deeply_nested(&quoted), None);
        // A close of the other kind closes nothing.
        let crossed = format!("x = {}\n", "[}".repeat(MAX_NESTING + 1));
        assert!(too_deeply_nested(&crossed).is_some());
    }

    #[test]
    fn line_and_column_count_from_one() {
        let src = Source {
            path: "x".into(),
            text: "a = 1\nbé = 2\n".into(),
        };
        assert_eq!(src.line_col(0), (1, 1));
        assert_eq!(src.line_col(6), (2, 1));
        assert_eq!(src.line_col(9), (2, 3));
    }
}
