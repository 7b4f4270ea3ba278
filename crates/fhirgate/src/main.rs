//! The `fhirgate` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fhirgate::config::Config;
use fhirgate::telemetry::Telemetry;

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
        /// Configuration file (YAML); the embedded default when absent.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and exit: 0 when valid, 2 when not.
    Check {
        /// Configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
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
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// HTTP method: GET, POST, PUT, PATCH, DELETE, ...
        method: String,
        /// Absolute URL under the public FHIR base, or a path starting with the public base path.
        url: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(loaded) => match fhirgate::run::preflight(&loaded) {
                Ok(()) => {
                    println!("{}: configuration is valid", config.display());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {}: {error}", config.display());
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
            format,
            method,
            url,
        } => explain(ExplainArgs {
            config,
            token,
            claims,
            body,
            headers,
            format,
            method,
            url,
        }),
        Command::Serve { config } => {
            let config = match config {
                Some(path) => match Config::load(&path) {
                    Ok(config) => config,
                    Err(error) => {
                        eprintln!("error: {error}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::embedded_default(),
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
            let served = runtime.block_on(fhirgate::run::serve(config));
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
    })
}
