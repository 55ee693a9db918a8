//! `velox-cache`: parses the command line, loads the configuration, and runs the subcommand.

use std::process::ExitCode;

use clap::Parser;
use velox_cache::cli::{Cli, Command};
use velox_cache::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Beyond the values: the CA file read, GOPRIVATE patterns compiled, the upstream's name
    // resolved (`velox_cache::preflight`).
    let loaded = match Config::load_checked(
        cli.config.as_deref(),
        &cli.overrides(),
        cli.serving(),
        &velox_cache::preflight::check,
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("velox-cache: {e}");
            return ExitCode::from(2);
        }
    };
    // Before any logger exists, and once: every subcommand reads the same environment.
    for w in &loaded.warnings {
        eprintln!("velox-cache: warning: {w}");
    }
    let config = loaded.config;
    match cli.command {
        Some(Command::Config(_)) => {
            print!("{}", config.to_masked_toml());
            ExitCode::SUCCESS
        }
        Some(Command::Healthcheck { .. }) => velox_cache::cli::healthcheck::run(&config),
        Some(Command::Warm {
            file,
            url,
            concurrency,
        }) => velox_cache::cli::warm::run(&config, &file, &url, concurrency),
        Some(Command::Cache { action, .. }) => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
                .init();
            velox_cache::cli::cache::run(&config, &action)
        }
        Some(Command::Keygen { dir, name }) => velox_cache::cli::keygen::run(&dir, &name),
        Some(Command::Channel { action, .. }) => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
                .init();
            velox_cache::cli::channel::run(&config, &action)
        }
        Some(Command::Token { action, .. }) => {
            velox_cache::cli::access::run_token(&config, &action)
        }
        Some(Command::Url { action, .. }) => velox_cache::cli::access::run_url(&config, &action),
        None | Some(Command::Serve(_)) => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .init();
            match velox_cache::server::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("velox-cache: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
