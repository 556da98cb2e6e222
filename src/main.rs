use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leadgate::config::{self, Config};
use leadgate::store::LAST_ERROR_KEY;
use leadgate::{daemon, logging};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Omnichannel lead ingestion: channels in, normalized routed leads out.
#[derive(Parser)]
#[command(name = "leadgate", version)]
struct Cli {
    /// Configuration directory (leadgate.toml, channels.d/, team.toml,
    /// routing.toml).
    #[arg(
        long,
        short,
        global = true,
        env = "LEADGATE_CONFIG",
        default_value = "/etc/leadgate"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run,
    /// Validate the configuration and exit (non-zero on any problem).
    Check {
        /// Also ask each Telegram bot's API whether its token works.
        #[arg(long)]
        online: bool,
    },
    /// Create or upgrade the database schema and exit.
    Migrate,
    /// Per-channel health: is the daemon answering, what each channel
    /// stored in the last 24 hours, cursors, open and missed-call leads.
    Status,
    /// Show the most recent leads.
    Leads {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Tell why an inbound message did or did not become a lead, and who got
    /// it by which rule.
    Explain {
        /// The inbound id (the `id` a webhook answer carries).
        inbound_id: i64,
    },
    /// Check the database's invariants (each message stored once, every
    /// lead with its inbound message, no orphan activities or calls,
    /// cursors not ahead of stored mail); non-zero exit with the list of
    /// broken ones.
    Audit,
}

fn load(dir: &std::path::Path) -> Result<Config, ExitCode> {
    config::load(dir).map_err(|e| {
        eprintln!(
            "leadgate: configuration in {} has {} problem(s):",
            dir.display(),
            e.problems.len()
        );
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run) {
        // A report piped into `head` ends when the reader has had enough:
        // exit quietly, as other Unix tools do, instead of panicking on the
        // closed pipe. The daemon keeps SIGPIPE ignored: a client's closed
        // socket is an error to handle there, not a reason to die.
        // SAFETY: no other thread runs yet; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let config = match load(&cli.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Command::Check { online } = cli.command {
        let forms = config
            .channels
            .iter()
            .filter(|c| c.kind == config::ChannelKind::Form)
            .count();
        println!(
            "configuration OK: {} channel(s) ({forms} form), {} user(s), {} role(s), {} routing rule(s)",
            config.channels.len(),
            config.team.users.len(),
            config.team.roles.len(),
            config.routing.rules.len()
        );
        if online {
            return check_online(&config);
        }
        return ExitCode::SUCCESS;
    }
    logging::init(&config.main.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leadgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run => daemon::run(&cli.config, config).await,
            Command::Migrate => daemon::open_store(&config)
                .await
                .map(|_| println!("schema up to date")),
            Command::Status => status(&config).await,
            Command::Leads { limit } => leads(&config, limit).await,
            Command::Explain { inbound_id } => explain(&config, inbound_id).await,
            Command::Audit => audit(&config).await,
            Command::Check { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leadgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `check --online`: each enabled Telegram bot's token against its API,
/// the notifier bot's and the SMTP server.
fn check_online(config: &Config) -> ExitCode {
    let bots = leadgate::daemon::telegram_channels(config);
    if bots.is_empty() && config.notify.telegram.is_none() && config.notify.email.is_none() {
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leadgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for bot in &bots {
        let file = config
            .channel(bot.id.as_str())
            .map(|c| c.file.display().to_string())
            .unwrap_or_default();
        match runtime.block_on(leadgate_telegram::check_online(bot)) {
            Ok(name) => println!("{file}: telegram: token OK ({name})"),
            Err(e) => {
                failed = true;
                eprintln!("{file}: telegram: {e}");
            }
        }
    }
    let main_file = config.dir.join("leadgate.toml").display().to_string();
    for (field, result) in runtime.block_on(leadgate::notify::check_online(&config.notify)) {
        match result {
            Ok(what) => println!("{main_file}: {field}: {what}"),
            Err(e) => {
                failed = true;
                eprintln!("{main_file}: {field}: {e}");
            }
        }
    }
    if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// Ask the running daemon's `/readyz` (HTTP/1.0 over plain TCP: no client
/// library needed for one request).
async fn probe_daemon(listen: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(listen).await?;
        s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), attempt).await {
        Ok(Ok(reply)) if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") => {
            format!("running on {listen}, ready")
        }
        Ok(Ok(reply)) => {
            // The body says why: the store is unreachable, or commits fail.
            let why = reply
                .split_once("\r\n\r\n")
                .map_or("", |(_, body)| body.trim());
            let why = if why.is_empty() {
                "store unavailable"
            } else {
                why
            };
            format!("running on {listen}, NOT ready ({why})")
        }
        _ => format!("not answering on {listen}"),
    }
}

async fn status(config: &Config) -> anyhow::Result<()> {
    println!("daemon:   {}", probe_daemon(config.main.http.listen).await);
    let store = daemon::open_store(config).await?;
    println!("store:    {} reachable", store.backend());
    let (open, missed) = store.open_leads().await?;
    println!("leads:    {open} open, {missed} of them missed calls awaiting a callback");
    let (pending, failed) = store.notification_backlog().await?;
    println!("notify:   {pending} notification(s) waiting to be sent, {failed} given up");
    let since = chrono::Utc::now() - chrono::Duration::hours(24);
    let activity = store.activity(since).await?;
    println!();
    println!(
        "{:<16} {:<10} {:<7} {:>9} {:>6} {:>8}  {:<19}  cursor",
        "channel", "kind", "enabled", "inbound", "leads", "invalid", "last inbound (UTC)"
    );
    for c in &config.channels {
        let a = activity.iter().find(|a| a.channel == c.id.as_str());
        // A channel with nothing stored lately may be the one that fails.
        let cursors = match a {
            Some(a) => a.cursors.clone(),
            None => store.cursors(c.id.as_str()).await?,
        };
        // A poller's last error is kept beside its cursors; it gets a line
        // of its own.
        let last_error = cursors.iter().find(|k| k.key == LAST_ERROR_KEY);
        let cursor = cursors
            .iter()
            .filter(|k| k.key != LAST_ERROR_KEY)
            .map(|k| format!("{}={}", k.key, k.value))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "{:<16} {:<10} {:<7} {:>9} {:>6} {:>8}  {:<19}  {}",
            clip(c.id.as_str(), 16),
            c.kind.as_str(),
            if c.enabled { "yes" } else { "no" },
            a.map_or(0, |a| a.inbound),
            a.map_or(0, |a| a.leads),
            a.map_or(0, |a| a.invalid),
            a.and_then(|a| a.last_inbound)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "-".into()),
            if cursor.is_empty() {
                "-".into()
            } else {
                cursor
            }
        );
        if let Some(e) = last_error {
            println!("{:<16} last error: {}", "", clip(&e.value, 200));
        }
    }
    println!("(counts over the last 24 hours)");
    Ok(())
}

async fn leads(config: &Config, limit: i64) -> anyhow::Result<()> {
    let store = daemon::open_store(config).await?;
    let rows = store.recent_leads(limit).await?;
    println!(
        "{:>6}  {:<19}  {:<12}  {:<24}  {:<14}  {:<28}  {:<16}  {:<11}  by",
        "id", "created (UTC)", "channel", "name", "phone", "email", "assignee", "status"
    );
    for r in rows {
        let assignee = r
            .assignee_user
            .clone()
            .or_else(|| r.assignee_role.as_ref().map(|x| format!("role:{x}")))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>6}  {:<19}  {:<12}  {:<24}  {:<14}  {:<28}  {:<16}  {:<11}  {}",
            r.id,
            r.created_at.format("%Y-%m-%d %H:%M:%S"),
            clip(&r.channel, 12),
            clip(r.name.as_deref().unwrap_or("-"), 24),
            clip(r.phone.as_deref().unwrap_or("-"), 14),
            clip(r.email.as_deref().unwrap_or("-"), 28),
            clip(&assignee, 16),
            r.status,
            r.assigned_by
        );
    }
    Ok(())
}

/// Reads only: connects without migrating, so an audit never changes the
/// database it judges.
async fn audit(config: &Config) -> anyhow::Result<()> {
    let url =
        config::database_url(&config.main.database, &config.dir).map_err(anyhow::Error::msg)?;
    let store = leadgate::store::Store::connect(&url, &config.main.database).await?;
    let violations = leadgate::audit::audit(&store).await?;
    if violations.is_empty() {
        println!(
            "audit OK: {} invariant(s) hold on {}",
            leadgate::audit::CHECKS.len(),
            leadgate::store::describe_url(&url)
        );
        return Ok(());
    }
    for v in &violations {
        print!("{v}");
    }
    anyhow::bail!(
        "{} of {} invariant(s) broken on {}",
        violations.len(),
        leadgate::audit::CHECKS.len(),
        leadgate::store::describe_url(&url)
    )
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n - 1).collect();
        out.push('…');
        out
    }
}

async fn explain(config: &Config, inbound_id: i64) -> anyhow::Result<()> {
    let store = daemon::open_store(config).await?;
    let Some(e) = store.explain(inbound_id).await? else {
        anyhow::bail!("no inbound message with id {inbound_id}");
    };
    println!(
        "inbound #{} on channel {} ({})",
        e.inbound_id, e.channel, e.kind
    );
    println!("  source ref:  {}", e.source_ref);
    println!(
        "  received:    {}",
        e.received_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!(
        "  sender:      {}",
        if e.sender.is_empty() {
            "-".into()
        } else {
            e.sender.join(", ")
        }
    );
    println!("  disposition: {}", e.disposition);
    if let Some(reason) = &e.reason {
        println!("  why:         {reason}");
    }
    match &e.lead {
        None => println!("  lead:        none"),
        Some(lead) => {
            println!("  lead:        #{} ({})", lead.id, lead.status);
            let who = match (&lead.assignee_user, &lead.assignee_role) {
                (Some(u), Some(r)) => format!("{u} (role {r})"),
                (Some(u), None) => u.clone(),
                (None, Some(r)) => format!("role {r}, no member picked"),
                (None, None) => "nobody".into(),
            };
            println!("  assigned to: {who}");
            println!("  assigned by: {}", lead.assigned_by);
            // The whole decision, one step a line: rule and pool, who was
            // skipped and why, substitutes, after hours, escalations.
            for (i, step) in lead
                .routing_note
                .iter()
                .flat_map(|n| n.split("; "))
                .enumerate()
            {
                let label = if i == 0 { "routing:" } else { "" };
                println!("  {label:<12} {step}");
            }
            let t = store.lead_timeline(lead.id).await?;
            if let Some(at) = t.queued_until {
                println!(
                    "  queued:      until {}",
                    at.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            if let Some(at) = t.respond_by {
                println!("  respond by:  {}", at.format("%Y-%m-%d %H:%M:%S UTC"));
            }
            if t.overdue || t.escalation.is_some() {
                let level = t.escalation.as_deref().unwrap_or("-");
                println!("  overdue:     {} (escalation: {level})", t.overdue);
            }
            for timer in &t.timers {
                let (kind, due) = (&timer.kind, timer.due);
                let state = match (&timer.fired, &timer.outcome) {
                    (Some(at), Some(o)) => format!("fired {}: {o}", at.format("%H:%M:%S")),
                    (Some(at), None) => format!("fired {}", at.format("%H:%M:%S")),
                    (None, _) => "pending".into(),
                };
                println!(
                    "  timer:       {kind} due {} ({state})",
                    due.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            for n in store.lead_notifications(lead.id).await? {
                let state = match (n.sent_at, n.failed_at) {
                    (Some(at), _) => format!("sent {}", at.format("%H:%M:%S")),
                    (None, Some(at)) => format!("gave up {}", at.format("%H:%M:%S")),
                    (None, None) => "pending".into(),
                };
                let error = n
                    .last_error
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default();
                println!(
                    "  notified:    {} by {} ({}): {state}, {} attempt(s){error}",
                    n.recipient, n.transport, n.event, n.attempts
                );
            }
        }
    }
    Ok(())
}
