use std::path::PathBuf;

use crate::Verdict;
use crate::input::{CONFIG_FILES, split_config_folder};

thread_local! {
    // One folder per thread, rewritten for every input: the loader reads a
    // directory, and creating one per execution would cost more than the
    // parse.
    static FOLDER: PathBuf = {
        let dir = std::env::temp_dir().join(format!(
            "leadgate-fuzz-config-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(dir.join("channels.d")).expect("a scratch config folder");
        dir
    };
}

/// A configuration folder (see [`crate::input::config_folder`]) through
/// `leadgate::config::load`, the loader `leadgate check`, `run` and a
/// SIGHUP reload use: TOML, the channel tables of every connector, the
/// team and routing rules (regexes included), secrets and duration parsing.
pub fn config(data: &[u8]) -> Verdict {
    let parts = split_config_folder(data);
    FOLDER.with(|dir| {
        for (name, content) in CONFIG_FILES.iter().zip(&parts) {
            let path = dir.join(name);
            match content {
                Some(bytes) => std::fs::write(&path, bytes).expect("writing the scratch config"),
                None => match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("clearing the scratch config: {e}"),
                },
            }
        }
        match leadgate::config::load(dir) {
            Ok(config) => {
                assert!(
                    config.channels.len() <= 1,
                    "{} channels from one channel file",
                    config.channels.len()
                );
                Verdict::Accepted
            }
            Err(e) => {
                assert!(!e.problems.is_empty(), "an error without a problem");
                let line_counts: Vec<Option<usize>> = parts
                    .iter()
                    .map(|p| p.map(|text| text.split(|b| *b == b'\n').count()))
                    .collect();
                for p in &e.problems {
                    let lines = p
                        .file
                        .strip_prefix(dir)
                        .ok()
                        .and_then(|rel| CONFIG_FILES.iter().position(|n| rel == *n))
                        .and_then(|i| line_counts[i]);
                    if let (Some(line), Some(lines)) = (p.line, lines) {
                        assert!(
                            (1..=lines).contains(&line),
                            "problem at line {line} of a {lines}-line file: {p}"
                        );
                    }
                }
                // Rendering every problem is what `leadgate check` prints.
                let _ = e.to_string();
                Verdict::Refused
            }
        }
    })
}
