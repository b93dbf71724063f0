//! `jobctl context`: list, choose and show the contexts of the configuration file.
//!
//! A context is a `[contexts.NAME]` table of `client.toml` (see [`crate::settings`] for
//! the format and the precedence); `default` stands for the file's top-level keys. None
//! of these commands talks to the server.
//!
//! `use` is the only command that writes: it sets or removes `current_context` with
//! `toml_edit`, which keeps the rest of the file as it was, comments and layout
//! included, and replaces the file in one step (a new file in the same directory,
//! flushed to disk, renamed over the old one), so a reader never sees half a file. A
//! symbolic link stays one: the file it points to is replaced. The file keeps its mode
//! and owner.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use toml_edit::{DocumentMut, Item, Value};

use crate::cli::{ContextArgs, ContextCommand, Output};
use crate::commands::{note, print};
use crate::error::{CliError, exit, one_line, os_message};
use crate::settings::{
    self, Config, DEFAULT_CONTEXT, ENV_CONTEXT, Flags, Selection, Setting, Source,
};

type Env<'a> = &'a dyn Fn(&str) -> Option<std::ffi::OsString>;

/// Runs `jobctl context ...`; returns the exit code.
pub fn run(args: &ContextArgs, flags: &Flags) -> Result<u8, CliError> {
    let env = |name: &str| std::env::var_os(name);
    let text = match &args.command {
        ContextCommand::List { output } => list(flags, &env, *output)?,
        ContextCommand::Use { name } => use_context(name, flags, &env)?,
        ContextCommand::Show { output, name } => show(flags, &env, name.as_deref(), *output)?,
    };
    print(&text)?;
    Ok(exit::OK)
}

/// `context list`: `default` and the file's contexts, the one in use marked.
pub fn list(flags: &Flags, env: Env<'_>, output: Output) -> Result<String, CliError> {
    let config = Config::read(env)?;
    let current = settings::select(flags, env, &config)?;
    let mut rows = Vec::new();
    for name in config.names() {
        let context = (name != DEFAULT_CONTEXT).then_some(name);
        let values = settings::context_values(&config, context, env)?;
        rows.push(ContextJson {
            name: name.to_string(),
            current: name == current.name(),
            server: values.server.value.to_string(),
            ca: values.ca.as_ref().map(path_text),
            cert: values.cert.as_ref().map(path_text),
            key: values.key.as_ref().map(path_text),
        });
    }
    Ok(match output {
        Output::Json => json(&ListJson {
            current: current.name().to_string(),
            contexts: rows,
        }),
        Output::Human => {
            let cells = rows
                .iter()
                .map(|r| {
                    vec![
                        if r.current { "*" } else { "" }.to_string(),
                        one_line(&r.name),
                        r.server.clone(),
                    ]
                })
                .collect();
            table(&["CURRENT", "NAME", "SERVER"], cells)
        }
    })
}

/// `context show [NAME]`: the settings a command would use (as with `--context NAME`),
/// each with its source.
pub fn show(
    flags: &Flags,
    env: Env<'_>,
    name: Option<&str>,
    output: Output,
) -> Result<String, CliError> {
    let config = Config::read(env)?;
    let flags = match name {
        Some(name) if !config.has_context(name) => {
            return Err(config.unknown_context(name, None));
        }
        Some(name) => Flags {
            context: Some(name.to_string()),
            ..flags.clone()
        },
        None => flags.clone(),
    };
    let selection = settings::select(&flags, env, &config)?;
    let s = settings::resolve_with(&flags, env, &config, &selection)?;
    let shown = ShowJson {
        file: config
            .path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        context: SettingJson {
            value: selection.name().to_string(),
            source: selection.source.kind(),
            from: selection.source.detail().map(str::to_string),
        },
        server: SettingJson::of(&s.server, |v| v.to_string()),
        ca: SettingJson::of(&s.ca, |p| path_of(p)),
        cert: SettingJson::of(&s.cert, |p| path_of(p)),
        key: SettingJson::of(&s.key, |p| path_of(p)),
    };
    Ok(match output {
        Output::Json => json(&shown),
        Output::Human => {
            let row = |name: &str, value: &str, source: String| {
                vec![name.to_string(), one_line(value), source]
            };
            let mut rows = vec![
                row("context", selection.name(), label(&selection)),
                row("server", &shown.server.value, s.server.source.label()),
                row("ca", &shown.ca.value, s.ca.source.label()),
                row("cert", &shown.cert.value, s.cert.source.label()),
                row("key", &shown.key.value, s.key.source.label()),
            ];
            rows.push(match &config.path {
                Some(path) if config.exists => row("file", &path_of(path), String::new()),
                Some(path) => row("file", &path_of(path), "(does not exist)".into()),
                None => row(
                    "file",
                    "none",
                    "(neither XDG_CONFIG_HOME nor HOME is set)".into(),
                ),
            });
            table(&["SETTING", "VALUE", "SOURCE"], rows)
        }
    })
}

/// The context's source in `show`: `file` is its `current_context`.
fn label(selection: &Selection) -> String {
    match &selection.source {
        Source::File { key, .. } => format!("file ({key})"),
        source => source.label(),
    }
}

/// `context use NAME`: sets `current_context` and says so.
pub fn use_context(name: &str, flags: &Flags, env: Env<'_>) -> Result<String, CliError> {
    let path = settings::config_file(env).ok_or_else(|| {
        CliError::usage(
            "no configuration directory for client.toml: neither XDG_CONFIG_HOME nor HOME \
             is set",
        )
    })?;
    let text = settings::read_file(&path)?;
    let config = match &text {
        Some(text) => Config::parse(&path, text)?,
        None => Config::absent(Some(path.clone())),
    };
    if !config.has_context(name) {
        return Err(config.unknown_context(name, None));
    }
    // Without a file, or without `current_context`, `default` is already the one: nothing
    // to write. Otherwise `default` is written as such (removing the key would take the
    // comments above it along).
    let unchanged = name == DEFAULT_CONTEXT && config.current_context.is_none();
    if let Some(text) = text.as_ref().filter(|_| !unchanged) {
        let new = set_current_context(text, name).map_err(|e| {
            CliError::usage(format!(
                "configuration file {}: {}",
                path.display(),
                one_line(&e.to_string())
            ))
        })?;
        if new != *text {
            // What is written must read back as the same file with the new choice.
            let check = Config::parse(&path, &new)?;
            debug_assert_eq!(check.current_context.as_deref(), Some(name));
            write_atomically(&path, &new)?;
        }
    }
    let overriding = match (&flags.context, env(ENV_CONTEXT).filter(|v| !v.is_empty())) {
        (Some(flag), _) => Some((flag.clone(), format!("--context {flag}"))),
        (None, Some(var)) => {
            let var = var.to_string_lossy().into_owned();
            Some((var.clone(), format!("${ENV_CONTEXT}={var}")))
        }
        (None, None) => None,
    };
    if let Some((other, by)) = overriding.filter(|(other, _)| other != name) {
        note(&format!(
            "{by} still chooses context {other:?} over current_context in {}",
            path.display()
        ));
    }
    Ok(format!("Switched to context {name:?}.\n"))
}

/// The file's text with `current_context` set to `name`; everything else as it was. An
/// existing key keeps its place, its comments and its layout; a new one goes after the
/// other top-level keys.
pub fn set_current_context(text: &str, name: &str) -> Result<String, toml_edit::TomlError> {
    let mut doc: DocumentMut = text.parse()?;
    match doc.get_mut("current_context").and_then(Item::as_value_mut) {
        Some(value) => {
            let decor = value.decor().clone();
            *value = Value::from(name);
            *value.decor_mut() = decor;
        }
        None => {
            doc.insert("current_context", toml_edit::value(name));
        }
    }
    Ok(doc.to_string())
}

/// Replaces the file at `path` (or the one its symbolic link points to) with `text` in
/// one step, keeping its mode and owner.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), CliError> {
    let fail = |what: &str, p: &Path, e: io::Error| {
        CliError::other(format!("cannot {what} {}: {}", p.display(), os_message(&e)))
    };
    let target = fs::canonicalize(path).map_err(|e| fail("resolve", path, e))?;
    let meta = fs::metadata(&target).map_err(|e| fail("read", &target, e))?;
    let dir = target.parent().unwrap_or(Path::new("/"));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The process id makes the name ours: one left by an earlier process with the same
    // id is stale.
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let ours = file.metadata()?;
        if (ours.uid(), ours.gid()) != (meta.uid(), meta.gid()) {
            std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
        }
        file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &target)?;
        // The rename itself on disk; a directory that cannot be synced is no failure.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        fail("rewrite the configuration file", &target, e)
    })
}

/// The output of `context list --output json`.
#[derive(Debug, Serialize)]
struct ListJson {
    current: String,
    contexts: Vec<ContextJson>,
}

#[derive(Debug, Serialize)]
struct ContextJson {
    name: String,
    current: bool,
    server: String,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// The output of `context show --output json`.
#[derive(Debug, Serialize)]
struct ShowJson {
    file: Option<String>,
    context: SettingJson,
    server: SettingJson,
    ca: SettingJson,
    cert: SettingJson,
    key: SettingJson,
}

#[derive(Debug, Serialize)]
struct SettingJson {
    value: String,
    /// `flag`, `environment`, `context`, `file` or `default`.
    source: &'static str,
    /// The flag, the variable, the context or the file's key; null for a default.
    from: Option<String>,
}

impl SettingJson {
    fn of<T>(setting: &Setting<T>, show: impl Fn(&T) -> String) -> Self {
        SettingJson {
            value: show(&setting.value),
            source: setting.source.kind(),
            from: setting.source.detail().map(str::to_string),
        }
    }
}

fn path_of(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn path_text(setting: &Setting<PathBuf>) -> String {
    path_of(&setting.value)
}

fn json(value: &impl Serialize) -> String {
    let mut text =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// Rows under a header, in columns two spaces apart; the last column is not padded.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_sets_the_key_and_keeps_comments_and_layout() {
        let text = "# my settings\nserver = \"https://a:1\"  # the old one\n\n# production\n\
                    [contexts.prod]\nserver = \"https://prod:1\" # ours\n";
        let set = set_current_context(text, "prod").unwrap();
        assert_eq!(
            set,
            "# my settings\nserver = \"https://a:1\"  # the old one\ncurrent_context = \"prod\"\n\n\
             # production\n[contexts.prod]\nserver = \"https://prod:1\" # ours\n"
        );
        // Changed in place, with its comments.
        let commented = set.replace(
            "current_context = \"prod\"",
            "# chosen below\ncurrent_context   =   \"prod\" # chosen",
        );
        let changed = set_current_context(&commented, "default").unwrap();
        assert_eq!(
            changed,
            commented.replace("\"prod\" # chosen", "\"default\" # chosen")
        );
        // A name that needs quoting reads back as it was.
        let odd = set_current_context("", "a \"b\" 'c'").unwrap();
        let config = Config::parse(Path::new("/c.toml"), &odd).unwrap();
        assert_eq!(
            config.current_context.as_deref(),
            Some("a \"b\" 'c'"),
            "{odd}"
        );
    }

    #[test]
    fn tables_pad_all_but_the_last_column() {
        let t = table(
            &["A", "NAME", "X"],
            vec![
                vec!["*".into(), "prod".into(), "1".into()],
                vec!["".into(), "default".into(), "".into()],
            ],
        );
        assert_eq!(t, "A  NAME     X\n*  prod     1\n   default\n");
    }
}
