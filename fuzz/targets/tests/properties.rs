//! The fuzz targets as stable property tests: each runs on every seed of
//! `../shared/corpus`, then on a bounded number of structure-aware
//! mutations of them (byte changes, truncation, splicing between seeds,
//! inserted encoded words, charsets, boundaries and escapes, huge
//! repeats). A case fails when its target finds a broken property (a
//! panic, a 5xx for a bad request, an output over the crate's limit) or
//! runs for [`HANG`]: far beyond any real parse, so a loaded machine never
//! trips it.
//!
//! `LEADGATE_PROP_CASES=N` runs N mutated cases per target instead of the
//! CI default (long local runs: see docs/reliability.md).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leadgate_fuzz_targets::corpus::{self, Seed};
use leadgate_fuzz_targets::mutate::{self, Mutation};
use leadgate_fuzz_targets::{Verdict, flipped_signature_is_refused};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// One case using this much CPU is a hang, not a slow parse.
// A debug build once took over 10 s on a 1 MiB mail (a quadratic pass, since
// fixed); release keeps the tight bound.
const HANG: Duration = Duration::from_secs(if cfg!(debug_assertions) { 60 } else { 10 });

/// A case that has not finished after this much wall-clock time is stuck
/// without using CPU (the parsers never wait on anything).
const STUCK: Duration = Duration::from_secs(600);

/// How often a long run reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

fn cases(ci_default: u32) -> u32 {
    match std::env::var("LEADGATE_PROP_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("LEADGATE_PROP_CASES={v:?} is not a number")),
        Err(_) => ci_default,
    }
}

/// The CPU clock of one thread, readable from any thread of the process.
#[derive(Clone, Copy)]
struct CpuClock(libc::clockid_t);

impl CpuClock {
    fn of_current_thread() -> CpuClock {
        let mut id: libc::clockid_t = 0;
        // SAFETY: pthread_self is the calling thread; the call only writes `id`.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
        assert_eq!(rc, 0, "pthread_getcpuclockid");
        CpuClock(id)
    }

    fn now(self) -> Duration {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: the call only writes `t`; the clock belongs to a thread
        // that outlives the watchdog's use of it (see `Watchdog::start`).
        unsafe { libc::clock_gettime(self.0, &mut t) };
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }
}

/// The case under test: when it started (wall clock and its thread's CPU
/// clock) and its input.
struct Case {
    wall: Instant,
    cpu: Duration,
    input: Arc<[u8]>,
}

/// Aborts the process, naming the input, when one case has used [`HANG`]
/// of CPU (or run [`STUCK`]): a hung parser cannot be interrupted, and a
/// test that never ends fails nothing. CPU time, not wall-clock time, so a
/// long run on a loaded machine, at low priority or paused (SIGSTOP), is
/// not mistaken for a hang.
///
/// A stack overflow aborts the process before anything can be saved; when
/// `keep_running_input` is set, each input is written to a file before it
/// runs, so the one that overflowed is there afterwards (for slow targets,
/// where the write costs nothing that matters).
struct Watchdog {
    target: &'static str,
    running: Arc<Mutex<Option<Case>>>,
    clock: CpuClock,
    keep_running_input: bool,
}

impl Watchdog {
    /// Watches cases run on the calling thread, until it is dropped.
    fn start(target: &'static str) -> Watchdog {
        let running: Arc<Mutex<Option<Case>>> = Arc::default();
        let clock = CpuClock::of_current_thread();
        let watched = Arc::downgrade(&running);
        std::thread::spawn(move || {
            // The watched thread holds `running`; once it is gone, so is
            // the upgrade, before its clock could be read.
            while let Some(running) = watched.upgrade() {
                let hung = running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .filter(|c| {
                        clock.now().saturating_sub(c.cpu) > HANG || c.wall.elapsed() > STUCK
                    })
                    .map(|c| c.input.clone());
                if let Some(input) = hung {
                    let path = save_failure(target, "hang", &input);
                    eprintln!(
                        "{target}: one case used more than {HANG:?} of CPU or ran {STUCK:?}; input saved to {}",
                        path.display()
                    );
                    std::process::abort();
                }
                drop(running);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Watchdog {
            target,
            running,
            clock,
            keep_running_input: false,
        }
    }

    fn keeping_running_input(mut self, keep: bool) -> Watchdog {
        self.keep_running_input = keep;
        self
    }

    fn running_input_path(&self) -> PathBuf {
        failures_dir().join(format!(
            "{}-running-{}.bin",
            self.target,
            std::process::id()
        ))
    }

    fn guard<T>(&self, input: Arc<[u8]>, run: impl FnOnce(&[u8]) -> T) -> T {
        if self.keep_running_input {
            let _ = std::fs::write(self.running_input_path(), &input);
        }
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(Case {
            wall: Instant::now(),
            cpu: self.clock.now(),
            input: input.clone(),
        });
        let out = run(&input);
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        out
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.keep_running_input {
            let _ = std::fs::remove_file(self.running_input_path());
        }
    }
}

fn failures_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prop-failures");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Keeps a failing input where a regression test can be made from it.
fn save_failure(target: &str, what: &str, input: &[u8]) -> PathBuf {
    let path = failures_dir().join(format!("{target}-{what}-{}.bin", std::process::id()));
    let _ = std::fs::write(&path, input);
    path
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(at, len)| Mutation::Delete { at, len }),
        4 => (any::<usize>(), any::<usize>())
            .prop_map(|(at, token)| Mutation::InsertToken { at, token }),
        2 => (any::<usize>(), any::<usize>(), any::<usize>(), any::<usize>()).prop_map(
            |(at, seed, from, len)| Mutation::Splice { at, seed, from, len }
        ),
        // Mostly a few repeats; sometimes up to a megabyte, which is slow
        // to parse, so rarely.
        1 => (any::<usize>(), any::<usize>(), prop_oneof![9 => 0..64usize, 1 => any::<usize>()])
            .prop_map(|(at, len, times)| Mutation::Repeat { at, len, times }),
    ]
}

struct Stats {
    executions: AtomicU64,
    accepted: AtomicU64,
}

/// Every seed as it is, then `cases` mutated ones; fails with the
/// smallest failing mutation proptest finds, its input saved to a file,
/// or when fewer than one in `accepted_one_in` cases got past the first
/// refusal (mutations that never do would test little).
fn check_target(
    target: &'static str,
    run: fn(&[u8]) -> Verdict,
    ci_cases: u32,
    accepted_one_in: u64,
) {
    // Slow targets keep each input on disk while it runs (see Watchdog).
    let keep_running_input = target == "config";
    let seeds: Vec<Seed> = corpus::seeds(target);
    let watchdog = Watchdog::start(target).keeping_running_input(keep_running_input);
    for seed in &seeds {
        let input: Arc<[u8]> = seed.data.as_slice().into();
        watchdog.guard(input, run);
    }

    let seed_data: Vec<&[u8]> = seeds.iter().map(|s| s.data.as_slice()).collect();
    let cases = cases(ci_cases);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let stats = Stats {
        executions: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
    };
    let strategy = (0..seeds.len(), prop::collection::vec(mutation(), 1..6));
    let started = Instant::now();
    let last_report = std::cell::Cell::new(started);
    let result = runner.run(&strategy, |(seed, mutations)| {
        let input: Arc<[u8]> = mutate::apply(seed_data[seed], &mutations, &seed_data).into();
        let verdict = watchdog.guard(input, run);
        let executions = stats.executions.fetch_add(1, Ordering::Relaxed) + 1;
        if verdict == Verdict::Accepted {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
        }
        // Long runs say how far they got, so a run stopped at its time
        // budget still reports its count.
        if executions.is_multiple_of(1024) && last_report.get().elapsed() >= PROGRESS_EVERY {
            last_report.set(Instant::now());
            eprintln!(
                "{target}: {executions} executions so far, {:.0}s",
                started.elapsed().as_secs_f64()
            );
        }
        Ok::<(), TestCaseError>(())
    });
    let elapsed = started.elapsed();
    let executions = stats.executions.load(Ordering::Relaxed);
    let accepted = stats.accepted.load(Ordering::Relaxed);
    eprintln!(
        "{target}: {executions} executions ({accepted} accepted) in {:.1}s, {:.0}/s",
        elapsed.as_secs_f64(),
        executions as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    if let Err(e) = result {
        let detail = match &e {
            TestError::Fail(why, (seed, mutations)) => {
                let input = mutate::apply(seed_data[*seed], mutations, &seed_data);
                let path = save_failure(target, "panic", &input);
                format!(
                    "{why}\nseed {} with {mutations:?}\ninput saved to {}",
                    seeds[*seed].name,
                    path.display()
                )
            }
            TestError::Abort(why) => why.to_string(),
        };
        panic!("{target}: {detail}");
    }
    assert!(
        accepted * accepted_one_in >= executions,
        "{target}: only {accepted} of {executions} mutated inputs were accepted"
    );
}

#[test]
fn form_bodies_never_panic_and_stay_bounded() {
    check_target("form_body", leadgate_fuzz_targets::form_body, 3000, 20);
}

#[test]
fn mail_never_panics_and_stays_bounded() {
    check_target("email", leadgate_fuzz_targets::email, 2000, 20);
}

#[test]
fn pbx_requests_never_panic_and_are_refused_as_client_errors() {
    check_target("telephony", leadgate_fuzz_targets::telephony, 10_000, 20);
}

#[test]
fn config_folders_never_panic_and_locate_their_problems() {
    check_target("config", leadgate_fuzz_targets::config, 1000, 20);
}

// Byte mutations of a small JSON document mostly break its syntax, so
// fewer reach the parser here; the connectors' own tests swap value types
// in well-formed updates.
#[test]
fn telegram_updates_never_panic_and_stay_bounded() {
    check_target("telegram", leadgate_fuzz_targets::telegram, 3000, 50);
}

#[test]
fn vk_events_never_panic_and_stay_bounded() {
    check_target("vk", leadgate_fuzz_targets::vk, 3000, 50);
}

/// Every byte of every valid corpus signature, changed to each of a few
/// kinds of byte, is refused.
#[test]
fn a_changed_signature_byte_is_refused() {
    let replacements = [b'0', b'f', b'Z', b'=', b'+', b'%', b'&', b' ', b'/'];
    let mut signed_samples = 0;
    for seed in corpus::seeds("telephony") {
        let mut checked = 0;
        for pick in 0..128 {
            for r in replacements {
                if flipped_signature_is_refused(&seed.data, pick, r) {
                    checked += 1;
                }
            }
        }
        if checked > 0 {
            signed_samples += 1;
        }
    }
    // Mango's signed call events and summaries, Zadarma's signed events.
    assert!(
        signed_samples >= 10,
        "only {signed_samples} validly signed samples were checked"
    );
}

/// Regression: a channel's secret file naming an endless device
/// (`api_key_file = "/dev/zero"`) made the loader read until memory ran
/// out; it is refused now (connectors/core/src/secret.rs).
#[test]
fn a_secret_file_on_an_endless_device_is_refused() {
    let seed = &corpus::seeds("config")[0];
    let mut files = leadgate_fuzz_targets::input::split_config_folder(&seed.data);
    files[1] = Some(b"kind = \"form\"\n[form]\napi_key_file = \"/dev/zero\"\n");
    let input: Arc<[u8]> = leadgate_fuzz_targets::input::config_folder(&files).into();
    let watchdog = Watchdog::start("config");
    assert_eq!(
        watchdog.guard(input, leadgate_fuzz_targets::config),
        Verdict::Refused
    );
}

/// Regression: a role listing tens of thousands of unknown members made the
/// loader locate one problem per member, each by scanning the file up to
/// the role: minutes for `leadgate check` when the role comes late in a
/// long file (src/config/files.rs lists 100 problems now, and counts the
/// rest).
#[test]
fn a_team_file_with_a_hundred_thousand_mistakes_loads_promptly() {
    let seed = &corpus::seeds("config")[0];
    let mut files = leadgate_fuzz_targets::input::split_config_folder(&seed.data);
    let preamble = "# a long comment before the role\n".repeat(20_000);
    let members = vec!["\"nobody\""; 100_000].join(", ");
    let team = format!("{preamble}[roles.sales]\nmembers = [{members}]\n");
    files[2] = Some(team.as_bytes());
    let input: Arc<[u8]> = leadgate_fuzz_targets::input::config_folder(&files).into();
    let watchdog = Watchdog::start("config");
    assert_eq!(
        watchdog.guard(input, leadgate_fuzz_targets::config),
        Verdict::Refused
    );
}

/// Deeply nested TOML (arrays, inline tables, dotted keys) is refused on a
/// 2 MiB stack, a quarter of the main thread's, where `check`, `run` and a
/// SIGHUP reload load it.
/// The last two shapes are the stack overflow the long run of the config
/// target found (docs/reliability.md): it aborted `check` even on the main
/// thread's 8 MiB.
#[test]
fn deeply_nested_toml_is_refused_without_overflowing_the_stack() {
    let seed = &corpus::seeds("config")[0];
    let shapes: [fn(usize) -> String; 6] = [
        |depth| format!("x = {}\n", "[".repeat(depth)),
        |depth| format!("x = {}1{}\n", "[".repeat(depth), "]".repeat(depth)),
        |depth| format!("x = {}1{}\n", "{a = ".repeat(depth), "}".repeat(depth)),
        |depth| format!("{}a = 1\n", "a.".repeat(depth)),
        // The long run's stack overflow (session 5): a regex condition
        // spliced into itself. The parser's error recovery closed a table
        // it never counted as open for each `{3}`, so its recursion limit
        // never tripped (src/config/files.rs, MAX_NESTING).
        |depth| {
            let unit = "^X[0-9]{3}ct = { regex = \"";
            format!("when.product = {{ regex = \"{}$\" }}\n", unit.repeat(depth))
        },
        // The same, reduced: a key without `=` before each `{`, and an
        // empty `{}` where a key should be.
        |depth| format!("x = {{a{}\n", "{}a{".repeat(depth)),
    ];
    // Each file of the folder: the main file goes through the `config`
    // crate, the others through `toml` directly.
    for (file, shape, depth) in (0..4).flat_map(|file| {
        shapes
            .iter()
            .flat_map(move |s| [1_000, 10_000, 100_000].map(|d| (file, s, d)))
    }) {
        let mut files = leadgate_fuzz_targets::input::split_config_folder(&seed.data);
        let prefix = if file == 1 { "kind = \"form\"\n" } else { "" };
        let nested = format!("{prefix}{}", shape(depth));
        files[file] = Some(nested.as_bytes());
        let input: Arc<[u8]> = leadgate_fuzz_targets::input::config_folder(&files).into();
        let verdict = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || leadgate_fuzz_targets::config(&input))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(verdict, Verdict::Refused, "file {file}, depth {depth}");
    }
}

/// Regression: a mail of tens of thousands of tiny text parts (the long run
/// of the e-mail target grew one from a bounce) took 0.35 s in release and
/// over 10 s in debug builds: the pass over the body parts checked each
/// part against every part seen before (connectors/imap/src/message.rs,
/// `Bodies::of`). At a hundred thousand parts that was minutes; it is one
/// linear pass now.
#[test]
fn a_mail_of_a_hundred_thousand_parts_parses_promptly() {
    let mut mail = String::from(
        "From: Ivan <ivan@example.net>\r\nSubject: parts\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"B\"\r\n\r\n",
    );
    for i in 0..100_000 {
        let subtype = if i % 2 == 0 { "plain" } else { "html" };
        mail.push_str(&format!(
            "--B\r\nContent-Type: text/{subtype}\r\n\r\n{i}\r\n"
        ));
    }
    mail.push_str("--B--\r\n");
    let input: Arc<[u8]> = mail.into_bytes().into();
    let watchdog = Watchdog::start("email");
    assert_eq!(
        watchdog.guard(input, leadgate_fuzz_targets::email),
        Verdict::Accepted
    );
}
