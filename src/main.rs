//! The `relais` command: run a node, or mint an access token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use relais::auth::{self, Grants, TokenRequest};
use relais::config::Config;

#[derive(Parser)]
#[command(
    name = "relais",
    version,
    about = "A clustered WebRTC selective forwarding unit"
)]
struct Cli {
    /// Configuration file (TOML); built-in defaults when absent.
    #[arg(long, short, global = true, env = "RELAIS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve,
    /// Mint an access token for a room and identity with the configured key.
    Token {
        #[arg(long)]
        room: String,
        #[arg(long)]
        identity: String,
        /// Display name; defaults to the identity.
        #[arg(long)]
        name: Option<String>,
        /// API key to sign with; defaults to the first configured one.
        #[arg(long)]
        api_key: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 6 * 3600)]
        ttl_secs: u64,
        #[arg(long)]
        no_publish: bool,
        #[arg(long)]
        no_subscribe: bool,
        #[arg(long)]
        admin: bool,
    },
    /// Join simulated participants to running nodes and measure what they forward.
    Load(relais::load::LoadArgs),
    /// Exit 0 if an HTTP GET of the URL answers 200, else 1: a container health check
    /// for images without curl.
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:7880/healthz")]
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The load generator is a client: it needs no node configuration.
    if let Command::Load(args) = cli.command {
        return relais::load::run(args);
    }
    if let Command::Healthcheck { url } = &cli.command {
        return healthcheck(url);
    }
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("relais: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve => serve(config),
        Command::Load(_) | Command::Healthcheck { .. } => {
            unreachable!("handled before the configuration is read")
        }
        Command::Token {
            room,
            identity,
            name,
            api_key,
            ttl_secs,
            no_publish,
            no_subscribe,
            admin,
        } => {
            let grants = Grants {
                publish: !no_publish,
                subscribe: !no_subscribe,
                admin,
            };
            let name = name.unwrap_or_else(|| identity.clone());
            let ttl = Duration::from_secs(ttl_secs);
            token(
                &config,
                api_key,
                TokenRequest {
                    api_key: String::new(),
                    identity,
                    name,
                    room,
                    grants,
                    ttl,
                },
            )
        }
    }
}

fn serve(config: Config) -> ExitCode {
    init_logging(&config.log.level);
    if config.auth.keys.is_empty() {
        tracing::warn!(
            "no API keys configured (auth.keys or RELAIS_API_KEYS): every join will be refused"
        );
    }
    let system = actix_web::rt::System::new();
    match system.block_on(relais::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relais: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(config: &Config, api_key: Option<String>, mut request: TokenRequest) -> ExitCode {
    let chosen = match api_key {
        Some(key) => config.auth.keys.get_key_value(&key),
        None => config.auth.keys.iter().next(),
    };
    let Some((key, secret)) = chosen else {
        eprintln!("relais: no such API key in auth.keys (or RELAIS_API_KEYS)");
        return ExitCode::from(2);
    };
    request.api_key = key.clone();
    match auth::mint(&request, secret, auth::now_unix()) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relais: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A plain HTTP/1.0 GET of an `http://host:port/path` URL, with a 5 s budget.
fn healthcheck(url: &str) -> ExitCode {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};

    let Some(rest) = url.strip_prefix("http://") else {
        eprintln!("relais: healthcheck needs an http:// URL");
        return ExitCode::from(2);
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let timeout = Duration::from_secs(5);
    let answer = (|| -> std::io::Result<String> {
        let addr = authority
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })();
    match answer {
        Ok(response) if response.split(' ').nth(1) == Some("200") => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!("relais: {url}: {}", response.lines().next().unwrap_or(""));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("relais: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    // A bare level applies to relais; the media stack's own chatter stays at warn.
    let directives = if level.contains('=') || level.contains(',') {
        level.to_owned()
    } else {
        format!("warn,relais={level}")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&directives))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,relais=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}
