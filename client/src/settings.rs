//! Connection settings: which server, which CA, which certificate and key.
//!
//! The configuration file is `$XDG_CONFIG_HOME/jobworker/client.toml`, or
//! `~/.config/jobworker/client.toml` when `XDG_CONFIG_HOME` is unset; a missing file is
//! fine, a bad one is an error. Its top-level keys are the settings used without a
//! context; each `[contexts.NAME]` table is a named set of the same keys, and
//! `current_context` names the one to use:
//!
//! ```toml
//! server = "https://localhost:50051"
//! ca = "ca.pem"          # relative paths are relative to the file's directory
//! cert = "alice.pem"
//! key = "alice.key"
//! current_context = "prod"
//!
//! [contexts.prod]
//! server = "https://jobs.example.com:50051"
//! ca = "prod/ca.pem"
//! ```
//!
//! The context is the first of: `--context`, `$JOBWORKER_CONTEXT`, `current_context`,
//! none. "No context" has a name too, `default` (as with docker contexts), so that it
//! can be chosen over a `current_context`: `--context default`. Each setting then comes
//! from the first of: its flag (`--server`), its environment variable
//! (`JOBWORKER_SERVER`), the chosen context's key, the top-level key, the default. The
//! defaults are `https://localhost:50051` and `ca.pem`, `client.pem`, `client.key` in
//! the configuration directory. Every resolved setting remembers where it came from, so
//! an error can say which flag, variable, context or key to fix, and
//! `jobctl context show` can print it.
//!
//! [`resolve`] takes the environment as a function and the file as text, so the
//! precedence is tested without touching the process's environment.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls::pki_types::ServerName;
use serde::Deserialize;

use crate::error::CliError;

/// The API server's default port (see `jobworker-api`'s default listen address).
pub const DEFAULT_PORT: u16 = 50051;
/// The server used when none is configured.
pub const DEFAULT_SERVER: &str = "https://localhost:50051";
/// The name of "no context": the file's top-level settings.
pub const DEFAULT_CONTEXT: &str = "default";

pub const ENV_SERVER: &str = "JOBWORKER_SERVER";
pub const ENV_CA: &str = "JOBWORKER_CA";
pub const ENV_CERT: &str = "JOBWORKER_CERT";
pub const ENV_KEY: &str = "JOBWORKER_KEY";
pub const ENV_CONTEXT: &str = "JOBWORKER_CONTEXT";

/// The settings given on the command line (each `None` when its flag is absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub server: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub context: Option<String>,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    /// A key of the `[contexts.NAME]` table of the file at `path`.
    Context {
        name: String,
        key: &'static str,
        path: PathBuf,
    },
    /// A top-level key of the file at `path`.
    File {
        key: &'static str,
        path: PathBuf,
    },
    Default,
}

impl Source {
    /// The kind of source, one word: `flag`, `environment`, `context`, `file` or
    /// `default`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Flag(_) => "flag",
            Source::Env(_) => "environment",
            Source::Context { .. } => "context",
            Source::File { .. } => "file",
            Source::Default => "default",
        }
    }

    /// What the source names: the flag, the variable, the context, the file's key; none
    /// for the default.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Source::Flag(flag) => Some(flag),
            Source::Env(var) => Some(var),
            Source::Context { name, .. } => Some(name),
            Source::File { key, .. } => Some(key),
            Source::Default => None,
        }
    }

    /// For a table: `flag --server`, `environment JOBWORKER_SERVER`, `context prod`,
    /// `file`, `default`.
    pub fn label(&self) -> String {
        match self {
            Source::File { .. } | Source::Default => self.kind().to_string(),
            _ => format!("{} {}", self.kind(), self.detail().unwrap_or_default()),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "{flag}"),
            Source::Env(var) => write!(f, "${var}"),
            Source::Context { name, key, path } => {
                write!(f, "`{key}` of context {name:?} in {}", path.display())
            }
            Source::File { key, path } => write!(f, "`{key}` in {}", path.display()),
            Source::Default => write!(f, "default"),
        }
    }
}

/// A resolved value and its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

impl Setting<PathBuf> {
    /// `--ca /etc/ca.pem`, `$JOBWORKER_CA=/etc/ca.pem`, ... for messages.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Flag(flag) => format!("{flag} {}", self.value.display()),
            Source::Env(var) => format!("${var}={}", self.value.display()),
            Source::Context { .. } | Source::File { .. } => {
                format!("{} ({})", self.value.display(), self.source)
            }
            Source::Default => format!("{} (the default)", self.value.display()),
        }
    }
}

/// The address of the API server: `https://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
}

impl Server {
    /// The name the server's certificate must be valid for.
    pub fn server_name(&self) -> Result<ServerName<'static>, CliError> {
        // `FromStr` only accepts hosts that are valid server names.
        ServerName::try_from(self.host.clone())
            .map_err(|e| CliError::usage(format!("server name {:?}: {e}", self.host)))
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.parse::<Ipv6Addr>().is_ok() {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

const SERVER_EXPECTED: &str =
    "expected https://HOST[:PORT], like https://localhost:50051 or https://[::1]:50051";

impl FromStr for Server {
    type Err = String;

    /// Accepts `https://HOST[:PORT][/]` and `HOST[:PORT]`; the port defaults to 50051.
    fn from_str(text: &str) -> Result<Self, String> {
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "the scheme must be https, not {scheme:?}: the API is only served over \
                     TLS; {SERVER_EXPECTED}"
                ));
            }
            None => text,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty()
            || rest.contains(['/', '?', '#', '@'])
            || rest.contains(char::is_whitespace)
        {
            return Err(SERVER_EXPECTED.to_string());
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| SERVER_EXPECTED.to_string())?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(format!(
                    "{host:?} is not an IPv6 address; {SERVER_EXPECTED}"
                ));
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| SERVER_EXPECTED.to_string())?,
                ),
            };
            (host, port)
        } else if rest.parse::<Ipv6Addr>().is_ok() {
            (rest, None)
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(format!("{p:?} is not a port number; {SERVER_EXPECTED}")),
            },
        };
        if host.is_empty() || ServerName::try_from(host.to_string()).is_err() {
            return Err(format!("{host:?} is not a host name; {SERVER_EXPECTED}"));
        }
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => host.to_ascii_lowercase(),
        };
        Ok(Server { host, port })
    }
}

/// The resolved connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub server: Setting<Server>,
    pub ca: Setting<PathBuf>,
    pub cert: Setting<PathBuf>,
    pub key: Setting<PathBuf>,
}

/// The four settings as the file gives them, at its top level or in a context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Values {
    pub server: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The configuration file's shape; unknown keys are errors. (serde's `flatten` does not
/// go with `deny_unknown_fields`, hence the top-level keys of [`Values`] repeated.)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    server: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    current_context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, Values>,
}

/// The configuration file, parsed, or the lack of one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Where the file is, whether or not it exists; `None` without a configuration
    /// directory.
    pub path: Option<PathBuf>,
    /// Whether the file exists.
    pub exists: bool,
    /// The top-level settings: the `default` context.
    pub top: Values,
    /// The file's `current_context`.
    pub current_context: Option<String>,
    /// The `[contexts.NAME]` tables, by name.
    pub contexts: BTreeMap<String, Values>,
}

impl Config {
    /// Parses the file at `path` whose text is `text`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, CliError> {
        let bad = |at: String, why: String| {
            CliError::usage(format!("configuration file {}{at}: {why}", path.display()))
        };
        let parsed: FileSettings = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let before = text.as_bytes().get(..span.start).unwrap_or_default();
                    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                    format!(", line {line}")
                })
                .unwrap_or_default();
            bad(at, e.message().to_string())
        })?;
        for name in parsed.contexts.keys() {
            if name == DEFAULT_CONTEXT {
                return Err(bad(
                    String::new(),
                    format!(
                        "[contexts.{DEFAULT_CONTEXT}]: the name {DEFAULT_CONTEXT:?} is \
                         reserved for the top-level settings; give the context another name"
                    ),
                ));
            }
            check_name(name).map_err(|why| bad(String::new(), format!("[contexts]: {why}")))?;
        }
        if let Some(name) = &parsed.current_context {
            check_name(name)
                .map_err(|why| bad(String::new(), format!("current_context: {why}")))?;
        }
        Ok(Config {
            path: Some(path.to_path_buf()),
            exists: true,
            top: Values {
                server: parsed.server,
                ca: parsed.ca,
                cert: parsed.cert,
                key: parsed.key,
            },
            current_context: parsed.current_context,
            contexts: parsed.contexts,
        })
    }

    /// No file (yet) at `path`.
    pub fn absent(path: Option<PathBuf>) -> Config {
        Config {
            path,
            ..Config::default()
        }
    }

    /// Reads and parses the configuration file the environment points to.
    pub fn read(env: &dyn Fn(&str) -> Option<OsString>) -> Result<Config, CliError> {
        let Some(path) = config_file(env) else {
            return Ok(Config::absent(None));
        };
        match read_file(&path)? {
            Some(text) => Config::parse(&path, &text),
            None => Ok(Config::absent(Some(path))),
        }
    }

    /// The directory relative paths in the file are relative to.
    pub fn dir(&self) -> &Path {
        self.path
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""))
    }

    /// Whether `name` is a context: `default` or one of the file's.
    pub fn has_context(&self, name: &str) -> bool {
        name == DEFAULT_CONTEXT || self.contexts.contains_key(name)
    }

    /// Every context's name: `default`, then the file's in order.
    pub fn names(&self) -> Vec<&str> {
        std::iter::once(DEFAULT_CONTEXT)
            .chain(self.contexts.keys().map(String::as_str))
            .collect()
    }

    /// The error for a context that does not exist, chosen by `from` (`None`: named on
    /// the command line as an argument); it lists the ones that do.
    pub fn unknown_context(&self, name: &str, from: Option<&Source>) -> CliError {
        let from_text = from.map(|s| format!(" (from {s})")).unwrap_or_default();
        let known = match &self.path {
            Some(path) if self.exists && !self.contexts.is_empty() => format!(
                "the contexts in {} are: {}",
                path.display(),
                self.names().join(", ")
            ),
            Some(path) if self.exists => format!(
                "{} has no [contexts.NAME] tables, so the only context is {DEFAULT_CONTEXT} \
                 (its top-level settings)",
                path.display()
            ),
            Some(path) => format!(
                "there is no configuration file {}, so the only context is {DEFAULT_CONTEXT}",
                path.display()
            ),
            None => format!(
                "there is no configuration directory (neither XDG_CONFIG_HOME nor HOME is \
                 set), so the only context is {DEFAULT_CONTEXT}"
            ),
        };
        let hint = match from {
            Some(Source::File { .. }) => "; `jobctl context use NAME` chooses another",
            _ => "",
        };
        CliError::usage(format!(
            "context {name:?}{from_text} does not exist; {known}{hint}"
        ))
    }

    /// The value `get` takes from the chosen context, else from the top level, and its
    /// source.
    fn lookup<'a, T>(
        &'a self,
        context: Option<&str>,
        key: &'static str,
        get: impl Fn(&'a Values) -> Option<&'a T>,
    ) -> Option<(&'a T, Source)> {
        let path = self.path.as_ref()?;
        if let Some((name, values)) = context.and_then(|n| self.contexts.get_key_value(n))
            && let Some(value) = get(values)
        {
            let source = Source::Context {
                name: name.clone(),
                key,
                path: path.clone(),
            };
            return Some((value, source));
        }
        get(&self.top).map(|value| {
            let source = Source::File {
                key,
                path: path.clone(),
            };
            (value, source)
        })
    }
}

/// A context's name must be something a terminal line and a TOML key can show.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a context's name cannot be empty".to_string());
    }
    if name.chars().any(char::is_control) {
        return Err(format!("the context name {name:?} has control characters"));
    }
    Ok(())
}

/// Reads a file that may be missing (`None`); any other failure is an error.
pub fn read_file(path: &Path) -> Result<Option<String>, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::usage(format!(
            "cannot read the configuration file {}: {}",
            path.display(),
            crate::error::os_message(&e)
        ))),
    }
}

/// Which context applies, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The context; `None` for `default`, the top-level settings.
    pub name: Option<String>,
    pub source: Source,
}

impl Selection {
    /// The context's name, `default` for none.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(DEFAULT_CONTEXT)
    }
}

/// Chooses the context: `--context`, else `$JOBWORKER_CONTEXT`, else the file's
/// `current_context`, else none. Naming one that does not exist is an error.
pub fn select(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<OsString>,
    config: &Config,
) -> Result<Selection, CliError> {
    let chosen = if let Some(name) = &flags.context {
        Some((name.clone(), Source::Flag("--context")))
    } else if let Some(name) = env(ENV_CONTEXT).filter(|v| !v.is_empty()) {
        let name = name.to_string_lossy().into_owned();
        Some((name, Source::Env(ENV_CONTEXT)))
    } else if let (Some(name), Some(path)) = (&config.current_context, &config.path) {
        let source = Source::File {
            key: "current_context",
            path: path.clone(),
        };
        Some((name.clone(), source))
    } else {
        None
    };
    let Some((name, source)) = chosen else {
        return Ok(Selection {
            name: None,
            source: Source::Default,
        });
    };
    if !config.has_context(&name) {
        return Err(config.unknown_context(&name, Some(&source)));
    }
    let name = (name != DEFAULT_CONTEXT).then_some(name);
    Ok(Selection { name, source })
}

/// The configuration directory: `$XDG_CONFIG_HOME/jobworker`, else
/// `$HOME/.config/jobworker`. Relative values are ignored, as the XDG specification
/// says.
pub fn config_dir(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let absolute = |name: &str| env(name).map(PathBuf::from).filter(|p| p.is_absolute());
    absolute("XDG_CONFIG_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".config")))
        .map(|dir| dir.join("jobworker"))
}

/// The configuration file's path.
pub fn config_file(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    config_dir(env).map(|dir| dir.join("client.toml"))
}

/// A path setting's names (its key, flag, variable and default file) and its value in
/// the file.
#[derive(Clone, Copy)]
struct PathKey {
    key: &'static str,
    flag: &'static str,
    var: &'static str,
    default_name: &'static str,
    get: fn(&Values) -> Option<&PathBuf>,
}

const CA: PathKey = PathKey {
    key: "ca",
    flag: "--ca",
    var: ENV_CA,
    default_name: "ca.pem",
    get: |v| v.ca.as_ref(),
};
const CERT: PathKey = PathKey {
    key: "cert",
    flag: "--cert",
    var: ENV_CERT,
    default_name: "client.pem",
    get: |v| v.cert.as_ref(),
};
const KEY: PathKey = PathKey {
    key: "key",
    flag: "--key",
    var: ENV_KEY,
    default_name: "client.key",
    get: |v| v.key.as_ref(),
};

/// The server: flag, variable, the context's key, the top-level key, the default.
/// `var` gives the value of a variable, an empty one as unset.
fn server_setting(
    flags: &Flags,
    var: &dyn Fn(&str) -> Option<OsString>,
    config: &Config,
    context: Option<&str>,
) -> Result<Setting<Server>, CliError> {
    if let Some(text) = &flags.server {
        return setting_from_text(text, Source::Flag("--server"));
    }
    if let Some(text) = var(ENV_SERVER) {
        let text = text.to_string_lossy().into_owned();
        return setting_from_text(&text, Source::Env(ENV_SERVER));
    }
    if let Some((text, source)) = config.lookup(context, "server", |v| v.server.as_ref()) {
        return setting_from_text(text, source);
    }
    Ok(Setting {
        value: DEFAULT_SERVER.parse().map_err(CliError::usage)?,
        source: Source::Default,
    })
}

/// A path: flag, variable, the context's key, the top-level key (relative to the file's
/// directory), the default in the configuration directory.
fn path_setting(
    which: PathKey,
    flag_value: Option<&PathBuf>,
    var: &dyn Fn(&str) -> Option<OsString>,
    config: &Config,
    context: Option<&str>,
    config_dir: Option<&Path>,
) -> Result<Setting<PathBuf>, CliError> {
    if let Some(p) = flag_value {
        return Ok(Setting {
            value: p.clone(),
            source: Source::Flag(which.flag),
        });
    }
    if let Some(p) = var(which.var) {
        return Ok(Setting {
            value: PathBuf::from(p),
            source: Source::Env(which.var),
        });
    }
    if let Some((p, source)) = config.lookup(context, which.key, which.get) {
        return Ok(Setting {
            value: config.dir().join(p),
            source,
        });
    }
    match config_dir {
        Some(dir) => Ok(Setting {
            value: dir.join(which.default_name),
            source: Source::Default,
        }),
        None => Err(CliError::usage(format!(
            "no {} configured and no home directory for the default: use {} or ${}",
            which.key, which.flag, which.var
        ))),
    }
}

/// Resolves the settings for the chosen context: each from its flag, its environment
/// variable, the context's key, the file's top-level key, the default.
pub fn resolve_with(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<OsString>,
    config: &Config,
    selection: &Selection,
) -> Result<Settings, CliError> {
    // An empty variable counts as unset.
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let dir = config_dir(env);
    let context = selection.name.as_deref();
    let path = |which: PathKey, flag: &Option<PathBuf>| {
        path_setting(which, flag.as_ref(), &var, config, context, dir.as_deref())
    };
    Ok(Settings {
        server: server_setting(flags, &var, config, context)?,
        ca: path(CA, &flags.ca)?,
        cert: path(CERT, &flags.cert)?,
        key: path(KEY, &flags.key)?,
    })
}

/// What a context gives by itself, without flags or environment variables: its keys,
/// then the top-level keys, then the defaults. A path is `None` when it has no default
/// (no configuration directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextValues {
    pub server: Setting<Server>,
    pub ca: Option<Setting<PathBuf>>,
    pub cert: Option<Setting<PathBuf>>,
    pub key: Option<Setting<PathBuf>>,
}

/// [`ContextValues`] of context `name` (`None`: `default`). `env` only gives the
/// configuration directory.
pub fn context_values(
    config: &Config,
    name: Option<&str>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<ContextValues, CliError> {
    let none = |_: &str| None;
    let dir = config_dir(env);
    let path = |which: PathKey| path_setting(which, None, &none, config, name, dir.as_deref()).ok();
    Ok(ContextValues {
        server: server_setting(&Flags::default(), &none, config, name)?,
        ca: path(CA),
        cert: path(CERT),
        key: path(KEY),
    })
}

/// Resolves the settings from flags, the environment and the file's text (`file` is
/// the file's path and contents, when it exists).
pub fn resolve(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<OsString>,
    file: Option<(&Path, &str)>,
) -> Result<Settings, CliError> {
    let config = match file {
        Some((path, text)) => Config::parse(path, text)?,
        None => Config::absent(config_file(env)),
    };
    let selection = select(flags, env, &config)?;
    resolve_with(flags, env, &config, &selection)
}

fn setting_from_text(text: &str, source: Source) -> Result<Setting<Server>, CliError> {
    let value = text
        .parse::<Server>()
        .map_err(|e| CliError::usage(format!("invalid server {text:?} (from {source}): {e}")))?;
    Ok(Setting { value, source })
}

/// Resolves the settings from the flags, the process's environment and the
/// configuration file.
pub fn load(flags: &Flags) -> Result<Settings, CliError> {
    let env = |name: &str| std::env::var_os(name);
    let config = Config::read(&env)?;
    let selection = select(flags, &env, &config)?;
    resolve_with(flags, &env, &config, &selection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    const FILE: &str = r#"
        server = "https://file.example:1"
        ca = "file-ca.pem"
        cert = "/abs/file.pem"
        key = "file.key"
    "#;

    fn file() -> Option<(&'static Path, &'static str)> {
        Some((Path::new("/home/u/.config/jobworker/client.toml"), FILE))
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let all_env = env_of(&[
            ("HOME", "/home/u"),
            (ENV_SERVER, "env.example:2"),
            (ENV_CA, "/env/ca.pem"),
            (ENV_CERT, "/env/cert.pem"),
            (ENV_KEY, "/env/key.pem"),
        ]);
        let flags = Flags {
            server: Some("https://flag.example:3".into()),
            ca: Some("/flag/ca.pem".into()),
            cert: Some("/flag/cert.pem".into()),
            key: Some("/flag/key.pem".into()),
            ..Flags::default()
        };

        // Flags win over everything.
        let s = resolve(&flags, &all_env, file()).unwrap();
        assert_eq!(s.server.value.to_string(), "https://flag.example:3");
        assert_eq!(s.server.source, Source::Flag("--server"));
        assert_eq!(s.ca.value, PathBuf::from("/flag/ca.pem"));
        assert_eq!(s.key.source, Source::Flag("--key"));

        // Without flags, the environment wins over the file.
        let s = resolve(&Flags::default(), &all_env, file()).unwrap();
        assert_eq!(s.server.value.to_string(), "https://env.example:2");
        assert_eq!(s.server.source, Source::Env(ENV_SERVER));
        assert_eq!(s.cert.value, PathBuf::from("/env/cert.pem"));
        assert_eq!(s.ca.source, Source::Env(ENV_CA));

        // Without either, the file; its relative paths are relative to its directory.
        let home_only = env_of(&[("HOME", "/home/u")]);
        let s = resolve(&Flags::default(), &home_only, file()).unwrap();
        assert_eq!(s.server.value.to_string(), "https://file.example:1");
        assert_eq!(
            s.ca.value,
            PathBuf::from("/home/u/.config/jobworker/file-ca.pem")
        );
        assert_eq!(s.cert.value, PathBuf::from("/abs/file.pem"));
        assert!(matches!(s.key.source, Source::File { key: "key", .. }));

        // Without a file, the defaults.
        let s = resolve(&Flags::default(), &home_only, None).unwrap();
        assert_eq!(s.server.value.to_string(), DEFAULT_SERVER);
        assert_eq!(s.server.source, Source::Default);
        assert_eq!(
            s.ca.value,
            PathBuf::from("/home/u/.config/jobworker/ca.pem")
        );
        assert_eq!(
            s.cert.value,
            PathBuf::from("/home/u/.config/jobworker/client.pem")
        );
        assert_eq!(
            s.key.value,
            PathBuf::from("/home/u/.config/jobworker/client.key")
        );
    }

    #[test]
    fn each_setting_resolves_on_its_own() {
        let env = env_of(&[("HOME", "/h"), (ENV_KEY, "/env.key"), (ENV_SERVER, "")]);
        let flags = Flags {
            ca: Some("/flag-ca.pem".into()),
            ..Flags::default()
        };
        let s = resolve(&flags, &env, file()).unwrap();
        assert_eq!(s.ca.source, Source::Flag("--ca"));
        assert_eq!(s.key.source, Source::Env(ENV_KEY));
        // An empty variable is unset: the file's server applies.
        assert_eq!(s.server.value.host, "file.example");
        assert!(matches!(s.cert.source, Source::File { .. }));
    }

    #[test]
    fn xdg_config_home_comes_before_home() {
        let env = env_of(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/xdg")]);
        assert_eq!(
            config_file(&env),
            Some(PathBuf::from("/xdg/jobworker/client.toml"))
        );
        let env = env_of(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "relative")]);
        assert_eq!(
            config_file(&env),
            Some(PathBuf::from("/h/.config/jobworker/client.toml"))
        );
        assert_eq!(config_file(&env_of(&[])), None);
    }

    #[test]
    fn bad_files_name_the_file_and_key() {
        let env = env_of(&[("HOME", "/h")]);
        let path = Path::new("/h/.config/jobworker/client.toml");
        let e = resolve(&Flags::default(), &env, Some((path, "srever = \"x\""))).unwrap_err();
        assert!(e.to_string().contains("unknown field `srever`"), "{e}");
        assert!(e.to_string().contains("client.toml"), "{e}");
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        let e = resolve(
            &Flags::default(),
            &env,
            Some((path, "server = \"http://x\"")),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`server` in /h/.config"), "{e}");
        assert!(e.to_string().contains("must be https"), "{e}");
    }

    const CONTEXTS: &str = r#"
        server = "https://top.example:1"
        ca = "top-ca.pem"
        cert = "top.pem"
        key = "top.key"
        current_context = "a"

        [contexts.a]
        server = "https://a.example:2"
        ca = "a/ca.pem"

        [contexts.b]
        server = "b.example"
        cert = "/abs/b.pem"
        key = "b.key"
    "#;

    fn with_contexts() -> Option<(&'static Path, &'static str)> {
        Some((Path::new("/h/.config/jobworker/client.toml"), CONTEXTS))
    }

    fn context_flag(name: &str) -> Flags {
        Flags {
            context: Some(name.into()),
            ..Flags::default()
        }
    }

    #[test]
    fn the_context_is_flag_then_env_then_current_context_then_none() {
        let config = Config::parse(with_contexts().unwrap().0, CONTEXTS).unwrap();
        let home = env_of(&[("HOME", "/h")]);
        let env_b = env_of(&[("HOME", "/h"), (ENV_CONTEXT, "b")]);
        let empty = env_of(&[("HOME", "/h"), (ENV_CONTEXT, "")]);

        let s = select(&Flags::default(), &home, &config).unwrap();
        assert_eq!(s.name(), "a");
        assert!(matches!(
            s.source,
            Source::File {
                key: "current_context",
                ..
            }
        ));
        // An empty variable is unset.
        assert_eq!(
            select(&Flags::default(), &empty, &config).unwrap().name(),
            "a"
        );
        let s = select(&Flags::default(), &env_b, &config).unwrap();
        assert_eq!((s.name(), &s.source), ("b", &Source::Env(ENV_CONTEXT)));
        let s = select(&context_flag("a"), &env_b, &config).unwrap();
        assert_eq!((s.name(), &s.source), ("a", &Source::Flag("--context")));
        // `default` is the top level, chosen over current_context.
        let s = select(&context_flag("default"), &env_b, &config).unwrap();
        assert_eq!((s.name.as_deref(), s.name()), (None, "default"));
        // Without current_context: none.
        let plain = Config::parse(Path::new("/h/c.toml"), "server = \"x\"").unwrap();
        let s = select(&Flags::default(), &home, &plain).unwrap();
        assert_eq!((s.name(), &s.source), ("default", &Source::Default));
    }

    #[test]
    fn each_setting_is_flag_then_env_then_context_then_top_level_then_default() {
        let home = env_of(&[("HOME", "/h")]);
        // current_context = "a": its server and CA, the top level's cert and key.
        let s = resolve(&Flags::default(), &home, with_contexts()).unwrap();
        assert_eq!(s.server.value.to_string(), "https://a.example:2");
        let in_a = |key| Source::Context {
            name: "a".into(),
            key,
            path: "/h/.config/jobworker/client.toml".into(),
        };
        assert_eq!(s.server.source, in_a("server"));
        assert_eq!(s.ca.value, PathBuf::from("/h/.config/jobworker/a/ca.pem"));
        assert_eq!(s.ca.source, in_a("ca"));
        assert_eq!(s.cert.value, PathBuf::from("/h/.config/jobworker/top.pem"));
        assert!(matches!(s.cert.source, Source::File { key: "cert", .. }));
        assert!(
            s.ca.describe()
                .ends_with("a/ca.pem (`ca` of context \"a\" in /h/.config/jobworker/client.toml)"),
            "{}",
            s.ca.describe()
        );

        // Context b: its server (default port), cert and key; the top level's CA.
        let s = resolve(&context_flag("b"), &home, with_contexts()).unwrap();
        assert_eq!(s.server.value.to_string(), "https://b.example:50051");
        assert_eq!(s.cert.value, PathBuf::from("/abs/b.pem"));
        assert_eq!(s.key.value, PathBuf::from("/h/.config/jobworker/b.key"));
        assert_eq!(s.ca.value, PathBuf::from("/h/.config/jobworker/top-ca.pem"));

        // Flags and variables still win over the context.
        let env = env_of(&[("HOME", "/h"), (ENV_CA, "/env/ca.pem")]);
        let flags = Flags {
            server: Some("flag.example".into()),
            ..context_flag("a")
        };
        let s = resolve(&flags, &env, with_contexts()).unwrap();
        assert_eq!(s.server.source, Source::Flag("--server"));
        assert_eq!(s.ca.source, Source::Env(ENV_CA));

        // Neither the context nor the top level: the default.
        let file = "current_context = \"a\"\n[contexts.a]\nserver = \"a.example\"\n";
        let s = resolve(
            &Flags::default(),
            &home,
            Some((Path::new("/h/c.toml"), file)),
        )
        .unwrap();
        assert_eq!(s.key.source, Source::Default);
        assert_eq!(
            s.key.value,
            PathBuf::from("/h/.config/jobworker/client.key")
        );
    }

    #[test]
    fn an_unknown_context_is_an_error_listing_the_known_ones() {
        let home = env_of(&[("HOME", "/h")]);
        let e = resolve(&context_flag("c"), &home, with_contexts()).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        assert_eq!(
            e.to_string(),
            "context \"c\" (from --context) does not exist; the contexts in \
             /h/.config/jobworker/client.toml are: default, a, b"
        );
        let env = env_of(&[("HOME", "/h"), (ENV_CONTEXT, "c")]);
        let e = resolve(&Flags::default(), &env, with_contexts()).unwrap_err();
        assert!(e.to_string().contains("(from $JOBWORKER_CONTEXT)"), "{e}");
        let dangling = CONTEXTS.replace("current_context = \"a\"", "current_context = \"c\"");
        let path = Path::new("/h/.config/jobworker/client.toml");
        let e = resolve(&Flags::default(), &home, Some((path, &dangling))).unwrap_err();
        assert!(
            e.to_string().contains(
                "(from `current_context` in /h/.config/jobworker/client.toml) does not exist"
            ) && e
                .to_string()
                .ends_with("`jobctl context use NAME` chooses another"),
            "{e}"
        );
        let e = resolve(&context_flag("c"), &home, None).unwrap_err();
        assert!(
            e.to_string().ends_with(
                "there is no configuration file /h/.config/jobworker/client.toml, so the \
                 only context is default"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_contexts_name_the_file_line_and_key() {
        let path = Path::new("/h/client.toml");
        let e = Config::parse(path, "[contexts.a]\nserver = \"a\"\nsever = \"b\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("configuration file /h/client.toml, line 3: unknown field `sever`"),
            "{e}"
        );
        let e = Config::parse(path, "[contexts.default]\nserver = \"a\"\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("reserved for the top-level settings"),
            "{e}"
        );
        let e = Config::parse(path, "current_context = \"\"\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("current_context: a context's name cannot be empty"),
            "{e}"
        );
        let e = Config::parse(path, "contexts = 1\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        // A bad server in a context is named when it is used.
        let file = "[contexts.a]\nserver = \"http://a\"\n";
        let e = resolve(
            &context_flag("a"),
            &env_of(&[("HOME", "/h")]),
            Some((path, file)),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("(from `server` of context \"a\" in /h/client.toml)"),
            "{e}"
        );
    }

    #[test]
    fn no_home_and_no_setting_is_a_clear_error() {
        let e = resolve(&Flags::default(), &env_of(&[]), None).unwrap_err();
        assert!(e.to_string().starts_with("no ca configured"), "{e}");
    }

    #[test]
    fn server_addresses() {
        let ok = |text: &str, expect: &str| {
            let s: Server = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(s.to_string(), expect, "{text}");
        };
        ok("https://localhost:50051", "https://localhost:50051");
        ok("https://localhost", "https://localhost:50051");
        ok(
            "HTTPS://Jobs.Example.com:443/",
            "https://jobs.example.com:443",
        );
        ok("localhost:1234", "https://localhost:1234");
        ok("127.0.0.1", "https://127.0.0.1:50051");
        ok("https://[::1]:7", "https://[::1]:7");
        ok("[::1]", "https://[::1]:50051");
        ok("::1", "https://[::1]:50051");
        for bad in [
            "http://localhost:50051",
            "",
            "https://",
            "https://localhost:0",
            "https://localhost:99999",
            "https://localhost:x",
            "https://localhost/path",
            "https://user@localhost",
            "https://[localhost]:1",
            "https://[::1",
            "local host",
        ] {
            assert!(bad.parse::<Server>().is_err(), "{bad:?} accepted");
        }
        let s: Server = "https://[::1]:7".parse().unwrap();
        assert!(matches!(s.server_name(), Ok(ServerName::IpAddress(_))));
    }
}
