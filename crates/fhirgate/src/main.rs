//! The `fhirgate` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fhirgate::config::Config;
use fhirgate::reload::ConfigFile;
use fhirgate::telemetry::Telemetry;

/// jemalloc rather than the system allocator: the request path allocates and frees many
/// small buffers from both runtime threads, and jemalloc keeps that as fast as any
/// allocator measured here while holding the least memory once a cache has filled
/// (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A SMART-on-FHIR enforcement gateway.
#[derive(Parser)]
#[command(name = "fhirgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (YAML), reloaded on SIGHUP and when its content changes
        /// (docs/RELOAD.md); the embedded default when absent.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and exit: 0 when valid, 2 when not.
    Check {
        /// Configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the configuration file's JSON Schema (draft 2020-12), for editors and linters.
    Schema,
    /// Explain what the gateway would decide for one request, and why: exit 0 when the
    /// decision allows it, 1 when it refuses it, 2 on a usage, configuration or input error.
    #[command(group(clap::ArgGroup::new("credentials").required(true).args(["token", "claims"])))]
    Explain {
        /// Configuration file (YAML); the embedded default when absent.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// An access token (JWT). It is decoded, NOT verified.
        #[arg(long)]
        token: Option<String>,
        /// A JSON file of token claims (or an introspection answer).
        #[arg(long)]
        claims: Option<PathBuf>,
        /// Request body file (POST, PUT, PATCH).
        #[arg(long)]
        body: Option<PathBuf>,
        /// A request header, 'Name: value'; repeatable.
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// A purpose of use (e.g. BTG), as if the token's purpose-of-use claim stated it;
        /// repeatable.
        #[arg(long = "purpose", value_name = "CODE")]
        purposes: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// HTTP method: GET, POST, PUT, PATCH, DELETE, ...
        method: String,
        /// Absolute URL under the public FHIR base, or a path starting with the public base path.
        url: String,
    },
    /// Read the local audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// An accounting of disclosures: the records of the local audit trail that match, in time
    /// order, each once. Exit 0 with matches or none, 2 on a usage or read error.
    Query(QueryArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum QueryFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Decision {
    Allow,
    Deny,
    Filter,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Schema => {
            let schema = fhirgate::config::schema::config_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).expect("a schema serialises")
            );
            ExitCode::SUCCESS
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(loaded) => match fhirgate::run::preflight(&loaded) {
                Ok(()) => {
                    println!("{}: configuration is valid", config.display());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    let line = error.line().or_else(|| {
                        let text = std::fs::read_to_string(&config).ok()?;
                        fhirgate::config::line_of(&text, &error.key()?)
                    });
                    match line {
                        Some(line) => eprintln!("error: {}:{line}: {error}", config.display()),
                        None => eprintln!("error: {}: {error}", config.display()),
                    }
                    ExitCode::from(2)
                }
            },
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
        Command::Explain {
            config,
            token,
            claims,
            body,
            headers,
            purposes,
            format,
            method,
            url,
        } => explain(ExplainArgs {
            config,
            token,
            claims,
            body,
            headers,
            purposes,
            format,
            method,
            url,
        }),
        Command::Audit {
            command: AuditCommand::Query(args),
        } => audit_query(args),
        Command::Serve { config } => {
            let file = match config.as_deref().map(ConfigFile::read).transpose() {
                Ok(file) => file,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            let config = match file.as_ref().map(ConfigFile::config).transpose() {
                Ok(Some(config)) => config,
                Ok(None) => Config::embedded_default(),
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            let telemetry = match Telemetry::init(&config.telemetry) {
                Ok(telemetry) => telemetry,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime starts");
            let served = runtime.block_on(fhirgate::run::serve(config, file));
            drop(runtime);
            telemetry.shutdown();
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "fhirgate stopped");
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

struct ExplainArgs {
    config: Option<PathBuf>,
    token: Option<String>,
    claims: Option<PathBuf>,
    body: Option<PathBuf>,
    headers: Vec<String>,
    purposes: Vec<String>,
    format: Format,
    method: String,
    url: String,
}

/// `fhirgate explain`: the report on stdout, errors on stderr with exit 2.
fn explain(args: ExplainArgs) -> ExitCode {
    let format = args.format;
    let input = match explain_input(args) {
        Ok(input) => input,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    match fhirgate::explain::explain(&input) {
        Ok(report) => {
            let text = match format {
                Format::Text => fhirgate::explain::render_text(&report),
                Format::Json => fhirgate::explain::render_json(&report) + "\n",
            };
            print!("{text}");
            ExitCode::from(fhirgate::explain::exit_status(&report))
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

fn explain_input(args: ExplainArgs) -> Result<fhirgate::explain::Input, String> {
    use fhirgate::explain::{Credentials, Input};
    let (config, config_origin) = match &args.config {
        Some(path) => (
            Config::load(path).map_err(|e| e.to_string())?,
            path.display().to_string(),
        ),
        None => (Config::embedded_default(), "embedded default".to_owned()),
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let credentials = match (args.token, &args.claims) {
        (Some(token), None) => Credentials::Token(token),
        (None, Some(path)) => Credentials::Claims {
            path: path.display().to_string(),
            text: String::from_utf8(read(path)?)
                .map_err(|_| format!("{}: not UTF-8 text", path.display()))?,
        },
        _ => return Err("give exactly one of --token and --claims".into()),
    };
    let body = args.body.as_ref().map(read).transpose()?;
    Ok(Input {
        config,
        config_origin,
        credentials,
        method: args.method,
        url: args.url,
        headers: args.headers,
        body,
        purposes: args.purposes,
    })
}

/// What `fhirgate audit query` selects and how it prints it.
#[derive(clap::Args)]
struct QueryArgs {
    /// Configuration file (YAML) whose jsonl sinks are the trail; the embedded default
    /// when neither this nor --trail is given.
    #[arg(long, short, conflicts_with = "trails")]
    config: Option<PathBuf>,
    /// A trail file, as a jsonl sink's path: its rotated files next to it are read too.
    /// Repeatable.
    #[arg(long = "trail", value_name = "PATH", num_args = 1.., action = clap::ArgAction::Append)]
    trails: Vec<PathBuf>,
    /// Records whose patient in context, or the patient the request names, is ID.
    #[arg(long, value_name = "ID")]
    patient: Option<String>,
    /// Records of this client_id.
    #[arg(long, value_name = "ID")]
    client: Option<String>,
    /// Records whose token subject or fhirUser is this.
    #[arg(long, value_name = "SUB_OR_FHIRUSER")]
    user: Option<String>,
    /// Records with this decision.
    #[arg(long, value_enum)]
    decision: Option<Decision>,
    /// Records of requests that took this route (its `name`; `default` for `upstream`).
    #[arg(long, value_name = "NAME")]
    route: Option<String>,
    /// Only records of requests allowed under break-the-glass.
    #[arg(long)]
    break_glass: bool,
    /// Records made at or after this: a duration back from now (24h, 7days) or a UTC
    /// time (2026-12-04T03:45:00Z, 2026-12-04).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Records made before this: a duration back from now or a UTC time.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Output format: a table for a person, or the records as stored (JSON lines).
    #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
    format: QueryFormat,
    /// Show only the first N matching records in time order.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
}

/// `fhirgate audit query`: the records on stdout; malformed lines and a cut by the limit
/// reported on stderr; errors on stderr with exit 2.
fn audit_query(args: QueryArgs) -> ExitCode {
    use fhirgate::audit::query;
    let format = args.format;
    let limit = args.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let answer = match query_input(args).and_then(|(trails, filter)| {
        query::query(&trails, &filter, limit).map_err(|e| e.to_string())
    }) {
        Ok(answer) => answer,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    for malformed in &answer.malformed {
        eprintln!(
            "warning: {}: skipped {} malformed line{} (first at line {})",
            malformed.path.display(),
            malformed.lines,
            if malformed.lines == 1 { "" } else { "s" },
            malformed.first_line
        );
    }
    if format == QueryFormat::Json && answer.records.len() < answer.matched {
        eprintln!("{}", query::render::count_line(&answer));
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = match format {
        QueryFormat::Table => query::render::write_table(&mut out, &answer),
        QueryFormat::Json => query::render::write_json(&mut out, &answer),
    }
    .and_then(|()| std::io::Write::flush(&mut out));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the answer: {e}");
            ExitCode::from(2)
        }
    }
}

/// The trails to read and the filter, from the command line.
fn query_input(
    args: QueryArgs,
) -> Result<
    (
        Vec<fhirgate::audit::query::Trail>,
        fhirgate::audit::query::Filter,
    ),
    String,
> {
    use fhirgate::audit::{AuditDecision, query};
    let trails = if args.trails.is_empty() {
        let (config, origin) = match &args.config {
            Some(path) => (
                Config::load(path).map_err(|e| e.to_string())?,
                path.display().to_string(),
            ),
            None => (Config::embedded_default(), "embedded default".to_owned()),
        };
        query::trails_of(&config.audit, &origin).map_err(|e| e.to_string())?
    } else {
        args.trails
            .into_iter()
            .map(|path| query::Trail { path })
            .collect()
    };
    let now = std::time::SystemTime::now();
    let time = |flag: &str, value: Option<String>| {
        value
            .map(|v| query::parse_time(&v, now).map_err(|e| format!("{flag}: {e}")))
            .transpose()
    };
    let filter = query::Filter {
        patient: args.patient,
        client: args.client,
        user: args.user,
        decision: args.decision.map(|d| match d {
            Decision::Allow => AuditDecision::Allow,
            Decision::Deny => AuditDecision::Deny,
            Decision::Filter => AuditDecision::Filter,
        }),
        route: args.route,
        since: time("--since", args.since)?,
        until: time("--until", args.until)?,
        break_glass: args.break_glass,
    };
    filter.check_range().map_err(|e| e.to_string())?;
    Ok((trails, filter))
}
