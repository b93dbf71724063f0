//! Connection settings: which server, which CA, which certificate and key.
//!
//! Each setting comes from the first of: its flag (`--server`), its environment
//! variable (`JOBWORKER_SERVER`), the configuration file, the default. The file is
//! `$XDG_CONFIG_HOME/jobworker/client.toml`, or `~/.config/jobworker/client.toml` when
//! `XDG_CONFIG_HOME` is unset; a missing file is fine, a bad one is an error:
//!
//! ```toml
//! server = "https://jobs.example.com:50051"
//! ca = "ca.pem"          # relative paths are relative to the file's directory
//! cert = "alice.pem"
//! key = "alice.key"
//! ```
//!
//! The defaults are `https://localhost:50051` and `ca.pem`, `client.pem`, `client.key`
//! in the configuration directory. Every resolved setting remembers where it came
//! from, so an error can say which flag, variable or file to fix.
//!
//! [`resolve`] takes the environment as a function and the file as text, so the
//! precedence is tested without touching the process's environment.

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

pub const ENV_SERVER: &str = "JOBWORKER_SERVER";
pub const ENV_CA: &str = "JOBWORKER_CA";
pub const ENV_CERT: &str = "JOBWORKER_CERT";
pub const ENV_KEY: &str = "JOBWORKER_KEY";

/// The settings given on the command line (each `None` when its flag is absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub server: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    File { key: &'static str, path: PathBuf },
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "{flag}"),
            Source::Env(var) => write!(f, "${var}"),
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
            Source::File { .. } => format!("{} ({})", self.value.display(), self.source),
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

/// The configuration file's shape; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    server: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
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

/// Resolves the settings from flags, the environment and the file's text (`file` is
/// the file's path and contents, when it exists).
pub fn resolve(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<OsString>,
    file: Option<(&Path, &str)>,
) -> Result<Settings, CliError> {
    let parsed: FileSettings = match file {
        Some((path, text)) => toml::from_str(text).map_err(|e| {
            CliError::usage(format!(
                "configuration file {}: {}",
                path.display(),
                e.message()
            ))
        })?,
        None => FileSettings::default(),
    };
    // An empty variable counts as unset.
    let env_value = |name: &str| env(name).filter(|v| !v.is_empty());
    let file_dir = file
        .and_then(|(path, _)| path.parent())
        .unwrap_or(Path::new(""));
    let config_dir = config_dir(env);

    let server = if let Some(text) = &flags.server {
        setting_from_text(text, Source::Flag("--server"))?
    } else if let Some(text) = env_value(ENV_SERVER) {
        let text = text.to_string_lossy().into_owned();
        setting_from_text(&text, Source::Env(ENV_SERVER))?
    } else if let (Some(text), Some((path, _))) = (&parsed.server, file) {
        setting_from_text(
            text,
            Source::File {
                key: "server",
                path: path.to_path_buf(),
            },
        )?
    } else {
        Setting {
            value: DEFAULT_SERVER.parse().map_err(CliError::usage)?,
            source: Source::Default,
        }
    };

    let path_setting = |flag_value: &Option<PathBuf>,
                        flag: &'static str,
                        var: &'static str,
                        file_value: &Option<PathBuf>,
                        key: &'static str,
                        default_name: &str|
     -> Result<Setting<PathBuf>, CliError> {
        if let Some(p) = flag_value {
            return Ok(Setting {
                value: p.clone(),
                source: Source::Flag(flag),
            });
        }
        if let Some(p) = env_value(var) {
            return Ok(Setting {
                value: PathBuf::from(p),
                source: Source::Env(var),
            });
        }
        if let (Some(p), Some((path, _))) = (file_value, file) {
            return Ok(Setting {
                value: file_dir.join(p),
                source: Source::File {
                    key,
                    path: path.to_path_buf(),
                },
            });
        }
        match &config_dir {
            Some(dir) => Ok(Setting {
                value: dir.join(default_name),
                source: Source::Default,
            }),
            None => Err(CliError::usage(format!(
                "no {key} configured and no home directory for the default: use {flag} or \
                 ${var}"
            ))),
        }
    };

    Ok(Settings {
        server,
        ca: path_setting(&flags.ca, "--ca", ENV_CA, &parsed.ca, "ca", "ca.pem")?,
        cert: path_setting(
            &flags.cert,
            "--cert",
            ENV_CERT,
            &parsed.cert,
            "cert",
            "client.pem",
        )?,
        key: path_setting(
            &flags.key,
            "--key",
            ENV_KEY,
            &parsed.key,
            "key",
            "client.key",
        )?,
    })
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
    let path = config_file(&env);
    let text = match &path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(CliError::usage(format!(
                    "cannot read the configuration file {}: {}",
                    p.display(),
                    crate::error::os_message(&e)
                )));
            }
        },
        None => None,
    };
    let file = match (&path, &text) {
        (Some(p), Some(t)) => Some((p.as_path(), t.as_str())),
        _ => None,
    };
    resolve(flags, &env, file)
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
