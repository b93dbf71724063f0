//! The command line, declared with clap's derive API. Doc comments are the `--help`
//! text; each subcommand's long help (`--help`, not `-h`) ends with examples.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

use crate::parse;
use crate::settings::{self, Flags};

const MAIN_EXAMPLES: &str = "\
Examples:
  jobctl run -- uname -a
  jobctl run --cpu 0.5 --memory 256M -- make -j2
  id=$(jobctl start --pids 100 -- sh -c 'while :; do date; sleep 1; done')
  jobctl logs -f \"$id\"
  jobctl status \"$id\"
  jobctl stop \"$id\"
  jobctl list --output json

Connection: the context (a named server, CA, certificate and key in the configuration
file $XDG_CONFIG_HOME/jobworker/client.toml or ~/.config/jobworker/client.toml) is the
first of --context NAME, JOBWORKER_CONTEXT, `current_context` in the file, `default`
(the file's top-level keys); see `jobctl context --help`. Each setting is then the first
of: its flag, its environment variable, the context's key, the top-level key, the default.
Flags, variables, keys in client.toml and defaults:
  --context  JOBWORKER_CONTEXT  current_context = \"prod\"       default: none (`default`)
  --server   JOBWORKER_SERVER   server = \"https://host:50051\"  default https://localhost:50051
  --ca       JOBWORKER_CA       ca = \"ca.pem\"                  default <config dir>/ca.pem
  --cert     JOBWORKER_CERT     cert = \"alice.pem\"             default <config dir>/client.pem
  --key      JOBWORKER_KEY      key = \"alice.key\"              default <config dir>/client.key
Relative paths in the file are relative to the file's directory.

Exit status: 0 success; 1 other error; 2 bad usage or client configuration; 3 server
unreachable or unavailable; 4 TLS handshake failed; 5 job not found; 6 invalid
argument; 7 resource exhausted; 8 permission denied; 9 the job failed to start;
141 stdout closed (e.g. `| head`). Each error prints one line starting with `jobctl:`
on stderr. `run`, `exec` and `wait` exit with the job's own status instead, and with
125 (jobctl or server error), 126 (the command could not be executed) or 127 (command
not found) when it did not run: see `jobctl run --help`.";

const START_EXAMPLES: &str = "\
Examples:
  jobctl start -- sleep 60
  id=$(jobctl start --cpu 0.25 --memory 64M -- ./backup.sh --full)
  jobctl start --env LANG=C.UTF-8 --io-device /dev/vda --io-read-bps 10M -- dd if=/usr/bin/bash of=/dev/null bs=1M iflag=direct
  jobctl start --timeout 2h --tmp-size 1G -- ./nightly-build.sh

Prints only the new job's id (32 hexadecimal digits) on stdout. IO limits hold the
job's reads and writes on that disk (here: the disk under /usr; direct IO, so the page
cache does not absorb them); the job's /tmp is memory, which no IO limit touches.";

const EXIT_STATUS: &str = "\
Exit status: the job's own: its exit code when it exited, 128+N when a signal N killed
it (137 for SIGKILL), with a line on stderr when the kernel's OOM killer did it. When
it did not run, the codes docker uses: 125 jobctl or the server failed (unreachable,
refused, ...), 126 the command could not be executed (permissions, its format, its
working directory), 127 command not found; each with a `jobctl:` line on stderr.";

const RUN_EXAMPLES: &str = "\
What the job writes to its stdout goes to jobctl's stdout, what it writes to its
stderr to jobctl's stderr. Its stdin is /dev/null unless -i streams jobctl's stdin to
it (end of input closes it). -t gives it a terminal of its own (from a devpts instance
of the job's, never the host's) of your terminal's size, kept in step when yours is
resized; with -i too, your terminal is switched to raw mode, so Ctrl-C, Ctrl-Z and
Ctrl-D are keys typed at the job's terminal, and restored on every exit.

Without -t, Ctrl-C (SIGINT), SIGTERM or SIGHUP stops the job (as `jobctl stop` does:
SIGTERM to all its processes, SIGKILL after the server's grace period), prints its
remaining output, and exits with its final status, usually 143 (128+SIGTERM). A second
Ctrl-C exits at once with 130 without waiting. If stdout is closed (`| head`), the job
is stopped too and jobctl exits with 141. If the connection is lost, jobctl exits with
125 and the job runs on: `jobctl status ID` and `jobctl logs -f ID` still reach it.

Examples:
  jobctl run -- uname -a
  jobctl run --memory 256M --pids 50 -- sh -c 'echo hello; exit 3'; echo $?
  jobctl run -- tar -C /srv -c www > www.tar      (warnings stay on stderr)
  gzip -c big.log | jobctl run -i -- sh -c 'gunzip | wc -l'
  jobctl run -it -- sh
  jobctl run --workdir /srv/app --env GREETING=hi -- ./check.sh";

const EXEC_EXAMPLES: &str = "\
Runs another process in a running job, as `docker exec` and `kubectl exec` do: in the
job's namespaces (it sees the job's processes and files), in its cgroup (under its
limits), as its user, with no capabilities and the job's seccomp filter, with the
job's environment rules (add variables with --env). Only the job's owner (or an
administrator) may; anyone else is told there is no such job. Its output is not kept
with the job's: it comes only to this command. -i and -t work as for `jobctl run`.
If jobctl goes away, the process loses its stdin and output (or its terminal hangs
up), as one whose ssh session dropped.

Examples:
  jobctl exec \"$id\" -- ps -ef
  jobctl exec -it \"$id\" -- sh
  jobctl exec -i \"$id\" -- sh -c 'cat > /tmp/input.csv' < input.csv";

const WAIT_EXAMPLES: &str = "\
Blocks until the job has ended (at once if it has) and exits with its status, as
`jobctl run` does; prints nothing else. Interrupting jobctl does not touch the job.

Examples:
  jobctl wait \"$id\"; echo \"the job exited with $?\"
  id=$(jobctl start -- make) && jobctl wait \"$id\" && jobctl logs \"$id\" | tail";

const LOGS_EXAMPLES: &str = "\
Examples:
  jobctl logs 0123456789abcdef0123456789abcdef > out.bin
  jobctl logs -f \"$id\"
  jobctl logs \"$id\" 2>/dev/null | head -n 20
  jobctl logs --stream stderr --tail 5 \"$id\"

The bytes are written exactly as the job wrote them, from the first byte (or the first
of the last N lines), with nothing added: what the job wrote to its stdout goes to
jobctl's stdout, what it wrote to its stderr to jobctl's stderr, in the order they
arrived. If the server's per-job cap truncated the output, a note says so on stderr.";

const STATUS_EXAMPLES: &str = "\
Examples:
  jobctl status \"$id\"
  jobctl status --output json \"$id\" | jq -r .state

JSON (--output json): one object; fields never change name or meaning, new ones may
be added:
  {
    \"id\": \"0123456789abcdef0123456789abcdef\",   32 hexadecimal digits
    \"owner\": \"alice\",                            who started the job
    \"argv\": [\"sh\", \"-c\", \"exit 7\"],
    \"state\": \"exited\",  running | exited | signaled | stopped | failed_to_start
                          | lost | timed_out | unknown
    \"exit_code\": 7,                null unless the command exited by itself
    \"signal\": null,                the signal number that killed it, or null
    \"oom_killed\": false,           the kernel's OOM killer killed one of its processes
    \"error\": null,                 why it failed to start or was lost, or null
    \"started_at\": \"2025-01-31T12:00:00.123Z\",   RFC 3339, UTC, milliseconds
    \"started_at_unix_ms\": 1738324800123,        the same, in ms since 1970
    \"ended_at\": null,              null while running
    \"ended_at_unix_ms\": null,
    \"cpu_usec\": 1520,              CPU time of all its processes, or null
    \"peak_memory_bytes\": 1048576,  or null when unknown
    \"output_bytes\": 0,             output stored so far
    \"output_truncated\": false,     the output reached the server's cap
    \"limits\": {                    the limits applied (null: unknown)
      \"cpu_millis\": 500,           thousandths of a core
      \"memory_bytes\": 268435456,
      \"pids\": 100,
      \"io\": null,                  or {\"device\": \"/dev/vda\", \"read_bps\": 10485760,
                                     \"write_bps\": null, \"read_iops\": null,
                                     \"write_iops\": null}
      \"tmp_bytes\": 67108864,       size of each private tmpfs
      \"timeout_ms\": 86400000       the job's deadline, from its start
    },
    \"uid\": 600123,                the user id it ran as (its own), or null
    \"name\": \"nightly\",             its name (--name), or null
    \"labels\": {\"team\": \"infra\"},   its labels (--label)
    \"start_failure\": null          not_found | not_executable | other when it failed
                                  to start, else null
  }";

const LIST_EXAMPLES: &str = "\
Examples:
  jobctl list
  jobctl list --all
  jobctl list --state running --label team=infra
  jobctl list --all --owner bob --state failed-to-start
  jobctl list --output json | jq -r '.jobs[].id'

Lists your jobs, oldest first (administrators may add --all for everyone's). With
--output json: {\"jobs\": [JOB, ...]} where each JOB has the shape shown in
`jobctl status --help`.";

const STOP_EXAMPLES: &str = "\
Examples:
  jobctl stop \"$id\"
  jobctl stop --output json \"$id\"

Sends SIGTERM to every process of the job, then SIGKILL after the server's grace
period, and prints the job's final status (the JSON shape of `jobctl status --help`).
Stopping a job that has already ended is not an error.";

const QUOTA_EXAMPLES: &str = "\
Examples:
  jobctl quota
  jobctl quota --all
  jobctl quota --output json | jq .quotas[0].used.running_jobs

Each owner may run at most so many jobs at once, and the sums of the memory, CPU and
pids limits of their running jobs are capped too (the server's configuration). A start
past a quota is refused (exit 7) with a line naming the quota and the use. A job gives
its share back when it ends.";

const CONTEXT_EXAMPLES: &str = "\
A context is a named server, with the CA, certificate and key for it: a [contexts.NAME]
table in the configuration file ($XDG_CONFIG_HOME/jobworker/client.toml, or
~/.config/jobworker/client.toml). `default` is no context: the file's top-level keys.
The context in use is the first of: --context NAME, $JOBWORKER_CONTEXT, `current_context`
in the file, `default`. Each setting is then the first of: its flag (--server, --ca,
--cert, --key), its environment variable (JOBWORKER_SERVER, ...), the context's key, the
file's top-level key, the default. These commands need no server.

client.toml:
  current_context = \"prod\"

  [contexts.prod]
  server = \"https://jobs.example.com:50051\"
  ca = \"prod/ca.pem\"        # relative paths are relative to the file's directory
  cert = \"prod/alice.pem\"
  key = \"prod/alice.key\"

  [contexts.dev]
  server = \"https://localhost:50051\"
  ca = \"/home/alice/jobworker/dev-pki/ca.pem\"
  cert = \"/home/alice/jobworker/dev-pki/alice.pem\"
  key = \"/home/alice/jobworker/dev-pki/alice.key\"

Examples:
  jobctl context list
  jobctl context use dev
  jobctl --context prod list
  JOBWORKER_CONTEXT=dev jobctl run -- uname -a
  jobctl context show
  jobctl context show prod --output json
  jobctl context use default      # back to the top-level keys

A context that does not exist is an error (exit 2) that lists those that do.";

const RM_EXAMPLES: &str = "\
Examples:
  jobctl rm 0123456789abcdef0123456789abcdef
  jobctl rm nightly-build 4f2a9c
  jobctl rm --force \"$id\"
  jobctl list --state exited --output json | jq -r '.jobs[].id' | xargs jobctl rm

Deletes each job's record and output from the server; its name is free again. A running
job is refused unless --force, which stops it first (as `jobctl stop`). Prints each id
removed; a job that cannot be removed is reported on stderr and the others go on.";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  jobctl completions bash > /etc/bash_completion.d/jobctl
  jobctl completions zsh > \"${fpath[1]}/_jobctl\"
  jobctl completions fish > ~/.config/fish/completions/jobctl.fish
  source <(jobctl completions bash)

Completes subcommands and flags, and the ids and names of your jobs, asked of the
server at each Tab (with the settings of the environment and configuration file, for at
most 2 s; nothing is offered when it cannot be reached). The script calls `jobctl`
through PATH.";

/// Run and manage isolated, resource-limited jobs on a jobworker server.
///
/// Talks to the jobworker API server over gRPC with mutual TLS (TLS 1.3 only). Your
/// identity is the common name of your client certificate: you see and control only
/// the jobs you started.
#[derive(Debug, Parser)]
#[command(name = "jobctl", version, after_long_help = MAIN_EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Where the server is and how to prove who we are.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// The context: a named server, CA, certificate and key in client.toml (see `jobctl
    /// context --help`) [env: JOBWORKER_CONTEXT] [default: the file's current_context]
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// The API server, https://HOST:PORT (the port defaults to 50051) [env:
    /// JOBWORKER_SERVER] [default: https://localhost:50051]
    #[arg(long, global = true, value_name = "URL", value_parser = parse_server)]
    pub server: Option<String>,

    /// CA certificate (PEM) the server's certificate must chain to [env: JOBWORKER_CA]
    #[arg(long, global = true, value_name = "PATH")]
    pub ca: Option<PathBuf>,

    /// Your client certificate (PEM); its common name is your identity [env:
    /// JOBWORKER_CERT]
    #[arg(long, global = true, value_name = "PATH")]
    pub cert: Option<PathBuf>,

    /// The private key of --cert (PEM); must not be readable by group or others [env:
    /// JOBWORKER_KEY]
    #[arg(long, global = true, value_name = "PATH")]
    pub key: Option<PathBuf>,
}

fn parse_server(text: &str) -> Result<String, String> {
    text.parse::<settings::Server>()?;
    Ok(text.to_string())
}

impl ConnectionArgs {
    pub fn flags(&self) -> Flags {
        Flags {
            server: self.server.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            context: self.context.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a job and print its id
    #[command(after_long_help = START_EXAMPLES)]
    Start(JobArgs),

    /// Start a job, stay attached to it (output, and -i input), exit with its status
    #[command(after_long_help = format!("{RUN_EXAMPLES}\n\n{EXIT_STATUS}"))]
    Run(RunArgs),

    /// Run another process in a running job, attached, and exit with its status
    #[command(after_long_help = format!("{EXEC_EXAMPLES}\n\n{EXIT_STATUS}"))]
    Exec(ExecArgs),

    /// Wait for a job to end and exit with its status
    #[command(after_long_help = format!("{WAIT_EXAMPLES}\n\n{EXIT_STATUS}"))]
    Wait(WaitArgs),

    /// Write a job's output, from its first byte
    #[command(after_long_help = LOGS_EXAMPLES)]
    Logs(LogsArgs),

    /// Show the status of a job
    #[command(after_long_help = STATUS_EXAMPLES)]
    Status(IdArgs),

    /// List your jobs
    #[command(after_long_help = LIST_EXAMPLES)]
    List(ListArgs),

    /// Stop a job and show its final status
    #[command(after_long_help = STOP_EXAMPLES)]
    Stop(IdArgs),

    /// Delete finished jobs: their records and output
    #[command(after_long_help = RM_EXAMPLES)]
    Rm(RmArgs),

    /// Show your quotas and what your running jobs hold of them
    #[command(after_long_help = QUOTA_EXAMPLES)]
    Quota(QuotaArgs),

    /// List, choose and show contexts (named servers in client.toml)
    #[command(after_long_help = CONTEXT_EXAMPLES)]
    Context(ContextArgs),

    /// Read the executor's audit trail (administrators only)
    #[command(after_long_help = crate::observe::AUDIT_EXAMPLES)]
    Audit(crate::observe::AuditArgs),

    /// Print your jobs' lifecycle events: started, exec, stop requested, ended
    #[command(after_long_help = crate::observe::EVENTS_EXAMPLES)]
    Events(crate::observe::EventsArgs),

    /// Show a running job's live usage: memory, processes, CPU rate
    #[command(after_long_help = crate::observe::STATS_EXAMPLES)]
    Stats(crate::observe::StatsArgs),

    /// Print shell completions
    #[command(after_long_help = COMPLETIONS_EXAMPLES)]
    Completions {
        /// The shell to complete for
        #[arg(value_name = "SHELL")]
        shell: Shell,
    },
}

/// A job to start.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// Add NAME=VALUE to the job's environment (repeatable)
    #[arg(short, long = "env", value_name = "NAME=VALUE", value_parser = parse::env_var)]
    pub env: Vec<(String, String)>,

    /// The command's working directory, an absolute path in the job [default: /tmp]
    #[arg(short, long, value_name = "DIR", value_parser = parse::workdir)]
    pub workdir: Option<String>,

    /// A name for the job, unique among your jobs that are kept; any command then takes
    /// it instead of the id
    #[arg(long, value_name = "NAME", value_parser = parse::job_name)]
    pub name: Option<String>,

    /// Add a label KEY=VALUE to the job (repeatable); `list --label` finds it
    #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = parse::label)]
    pub labels: Vec<(String, String)>,

    /// The command and its arguments, after `--`
    #[arg(value_name = "COMMAND", last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,

    // Last: its help heading applies to the arguments declared after it.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Resource limits. An unset limit takes the server's ceiling (the tmp size and the
/// timeout: the server's default).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Limits (unset: the server's ceiling)")]
#[command(group(ArgGroup::new("io_rates").multiple(true).args(
    ["io_read_bps", "io_write_bps", "io_read_iops", "io_write_iops"]
)))]
pub struct LimitArgs {
    /// CPU time in cores, up to 3 decimals: 0.5 is half of one core, 2 two cores
    #[arg(long, value_name = "CORES", value_parser = parse::cpu)]
    pub cpu: Option<u32>,

    /// Memory, in bytes or with a binary unit: 512K, 256M, 2G (no swap)
    #[arg(long, value_name = "SIZE", value_parser = parse::memory)]
    pub memory: Option<u64>,

    /// Most processes and threads at once
    #[arg(long, value_name = "N", value_parser = parse::pids)]
    pub pids: Option<u32>,

    /// Block device the IO limits apply to, e.g. /dev/vda (needs an --io-* rate)
    #[arg(long, value_name = "DEVICE", value_parser = parse::device, requires = "io_rates")]
    pub io_device: Option<String>,

    /// Bytes read per second from --io-device: 10M, 512K, 1048576
    #[arg(long, value_name = "RATE", value_parser = parse::rate, requires = "io_device")]
    pub io_read_bps: Option<u64>,

    /// Bytes written per second to --io-device
    #[arg(long, value_name = "RATE", value_parser = parse::rate, requires = "io_device")]
    pub io_write_bps: Option<u64>,

    /// Read operations per second on --io-device
    #[arg(long, value_name = "N", value_parser = parse::count, requires = "io_device")]
    pub io_read_iops: Option<u64>,

    /// Write operations per second on --io-device
    #[arg(long, value_name = "N", value_parser = parse::count, requires = "io_device")]
    pub io_write_iops: Option<u64>,

    /// Size of the job's private /tmp (and /var/tmp, /dev/shm): 64M, 1G. Counts against
    /// --memory as it fills [default: the server's]
    #[arg(long, value_name = "SIZE", value_parser = parse::memory)]
    pub tmp_size: Option<u64>,

    /// Stop the job after this long: 90s, 10m, 2h, 1d. It then ends "timed out"
    /// [default: the server's]
    #[arg(long, value_name = "DURATION", value_parser = parse::timeout)]
    pub timeout: Option<std::time::Duration>,
}

/// A job to run attached.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub attach: AttachArgs,

    #[command(flatten)]
    pub job: JobArgs,
}

/// How a client attaches to a job or an exec.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct AttachArgs {
    /// Stream jobctl's stdin to the command (without it, its stdin is /dev/null)
    #[arg(short, long)]
    pub interactive: bool,

    /// Give the command a terminal; with -i, jobctl's terminal goes to raw mode
    #[arg(short, long)]
    pub tty: bool,
}

/// A process to run in a running job.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub attach: AttachArgs,

    /// Add NAME=VALUE to the process's environment (repeatable)
    #[arg(short, long = "env", value_name = "NAME=VALUE", value_parser = parse::env_var)]
    pub env: Vec<(String, String)>,

    /// The process's working directory, an absolute path in the job [default: /tmp]
    #[arg(short, long, value_name = "DIR", value_parser = parse::workdir)]
    pub workdir: Option<String>,

    /// The running job's id, name, or id prefix
    #[arg(value_name = "ID", add = crate::complete::jobs())]
    pub id: String,

    /// The command and its arguments, after `--`
    #[arg(value_name = "COMMAND", last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// The job's id, name, or id prefix
    #[arg(value_name = "ID", add = crate::complete::jobs())]
    pub id: String,
}

#[derive(Debug, Clone, Args)]
pub struct QuotaArgs {
    /// Everyone's quotas, not only yours (administrators only)
    #[arg(short, long)]
    pub all: bool,

    /// Output format
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

/// A job's state, for `list --state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Running,
    Exited,
    Signaled,
    Stopped,
    FailedToStart,
    Lost,
    TimedOut,
}

/// Jobs to remove.
#[derive(Debug, Clone, Args)]
pub struct RmArgs {
    /// Remove a running job too, stopping it first
    #[arg(short, long)]
    pub force: bool,

    /// The jobs: ids, names or id prefixes
    #[arg(value_name = "ID", required = true, num_args = 1.., add = crate::complete::jobs())]
    pub ids: Vec<String>,
}

/// One stream of a job's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// How to print a result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Text for people
    #[default]
    Human,
    /// JSON for scripts (the shape in `jobctl status --help`)
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct IdArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    pub output: Output,

    /// The job's id, name, or id prefix
    #[arg(value_name = "ID", add = crate::complete::jobs())]
    pub id: String,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Everyone's jobs, not only yours (administrators only)
    #[arg(short, long)]
    pub all: bool,

    /// Only jobs in this state (repeatable)
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Vec<StateArg>,

    /// Only jobs with this label KEY=VALUE (repeatable: all of them)
    #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = parse::label)]
    pub labels: Vec<(String, String)>,

    /// Only the job of this name
    #[arg(long, value_name = "NAME", value_parser = parse::job_name)]
    pub name: Option<String>,

    /// Only this owner's jobs (administrators only; implies --all)
    #[arg(long, value_name = "IDENTITY")]
    pub owner: Option<String>,

    /// Output format
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Keep writing new output until the job ends
    #[arg(short, long)]
    pub follow: bool,

    /// Only this stream of the job's output (default: both, each to its own descriptor)
    #[arg(short, long, value_enum, value_name = "STREAM")]
    pub stream: Option<LogStream>,

    /// Start at the last N lines (of --stream, if given) instead of the first byte
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<u32>,

    /// The job's id, name, or id prefix
    #[arg(value_name = "ID", add = crate::complete::jobs())]
    pub id: String,
}

const CONTEXT_LIST_HELP: &str = "\
Lists `default` (the top-level keys), then the file's contexts by name, with the server
each gives by itself (no flags or environment variables). With --output json:
  {\"current\": \"prod\", \"contexts\": [{\"name\": \"default\", \"current\": false,
   \"server\": \"https://localhost:50051\", \"ca\": PATH, \"cert\": PATH, \"key\": PATH}, ...]}
(a path is null when it has no default: no configuration directory).";

const CONTEXT_USE_HELP: &str = "\
Sets `current_context` in the configuration file, keeping the rest of the file as it is
(comments included), and replaces the file in one step (a new file renamed over it).
`jobctl context use default` sets it to `default`: the top-level keys apply again.
--context and $JOBWORKER_CONTEXT still win over the file; a note says so when one is set.";

const CONTEXT_SHOW_HELP: &str = "\
Each setting with its source: `flag --server`, `environment JOBWORKER_SERVER`, `context
NAME`, `file` (a top-level key) or `default`. With NAME, as if --context NAME were given.
With --output json:
  {\"file\": PATH or null,
   \"context\": {\"value\": \"prod\", \"source\": \"file\", \"from\": \"current_context\"},
   \"server\": {\"value\": \"https://jobs.example.com:50051\", \"source\": \"context\", \"from\": \"prod\"},
   \"ca\": {...}, \"cert\": {...}, \"key\": {...}}
where source is flag, environment, context, file or default, and from names the flag,
the variable, the context or the file's key (null for a default).";

#[derive(Debug, Clone, Args)]
pub struct ContextArgs {
    #[command(subcommand)]
    pub command: ContextCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ContextCommand {
    /// List the contexts; `*` marks the one in use
    #[command(after_long_help = CONTEXT_LIST_HELP)]
    List {
        /// Output format: human or json
        #[arg(short, long, value_enum, default_value_t = Output::Human, hide_possible_values = true)]
        output: Output,
    },

    /// Make NAME the current context (rewrites `current_context` in client.toml)
    #[command(after_long_help = CONTEXT_USE_HELP)]
    Use {
        /// The context's name
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Show the settings a command would use, and where each comes from
    #[command(after_long_help = CONTEXT_SHOW_HELP)]
    Show {
        /// Output format: human or json
        #[arg(short, long, value_enum, default_value_t = Output::Human, hide_possible_values = true)]
        output: Output,

        /// The context to show [default: the one in use]
        #[arg(value_name = "NAME")]
        name: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("jobctl").chain(args.iter().copied()))
    }

    #[test]
    fn run_takes_limits_and_the_command_after_the_separator() {
        let cli = parse(&[
            "run", "--cpu", "0.5", "--memory", "256M", "--pids", "100", "-e", "A=1", "--", "sh",
            "-c", "exit 7",
        ])
        .unwrap();
        let Command::Run(RunArgs { job, attach }) = cli.command else {
            panic!("not run")
        };
        assert!(!attach.interactive && !attach.tty);
        assert_eq!(job.limits.cpu, Some(500));
        assert_eq!(job.limits.memory, Some(256 << 20));
        assert_eq!(job.limits.pids, Some(100));
        assert_eq!(job.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(job.command, vec!["sh", "-c", "exit 7"]);
    }

    #[test]
    fn run_and_exec_attach_as_docker_does() {
        let cli = parse(&["run", "-it", "-w", "/srv", "--", "sh"]).unwrap();
        let Command::Run(RunArgs { job, attach }) = cli.command else {
            panic!("not run")
        };
        assert!(attach.interactive && attach.tty);
        assert_eq!(job.workdir.as_deref(), Some("/srv"));
        let cli = parse(&["exec", "-i", "abc", "--", "ps", "-ef"]).unwrap();
        let Command::Exec(exec) = cli.command else {
            panic!("not exec")
        };
        assert!(exec.attach.interactive && !exec.attach.tty);
        assert_eq!((exec.id.as_str(), exec.command.len()), ("abc", 2));
        assert!(parse(&["run", "-w", "srv", "--", "true"]).is_err());
        assert!(parse(&["exec", "abc"]).is_err());
    }

    #[test]
    fn the_separator_is_required() {
        let e = parse(&["run", "sh", "-c", "exit 7"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        let e = parse(&["run", "--"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn io_rates_and_device_require_each_other() {
        assert!(parse(&["start", "--io-read-bps", "1M", "--", "true"]).is_err());
        assert!(parse(&["start", "--io-device", "/dev/vda", "--", "true"]).is_err());
        let cli = parse(&[
            "start",
            "--io-device",
            "/dev/vda",
            "--io-write-iops",
            "5",
            "--",
            "true",
        ])
        .unwrap();
        let Command::Start(job) = cli.command else {
            panic!("not start")
        };
        assert_eq!(job.limits.io_device.as_deref(), Some("/dev/vda"));
        assert_eq!(job.limits.io_write_iops, Some(5));
    }

    #[test]
    fn connection_flags_go_anywhere() {
        let cli = parse(&["--server", "localhost:1", "status", "--ca", "/ca", "x"]).unwrap();
        assert_eq!(cli.connection.server.as_deref(), Some("localhost:1"));
        assert_eq!(cli.connection.ca, Some(PathBuf::from("/ca")));
        assert!(parse(&["status", "--server", "http://localhost", "x"]).is_err());
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let e = parse(&["run", "--memory", "lots", "--", "true"]).unwrap_err();
        let text = e.render().to_string();
        assert!(
            text.contains(
                "invalid value 'lots' for '--memory <SIZE>': expected a size like 512M, 2G \
                 or 1048576"
            ),
            "{text}"
        );
    }
}
