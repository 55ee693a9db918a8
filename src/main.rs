//! `velox-cache`: parses the command line, loads the configuration, and runs the subcommand.

use std::process::ExitCode;

use clap::Parser;
use velox_cache::cli::{Cli, Command};
use velox_cache::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), &cli.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("velox-cache: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", config.to_masked_toml());
            ExitCode::SUCCESS
        }
        Command::Healthcheck => velox_cache::cli::healthcheck::run(&config),
        Command::Warm {
            file,
            url,
            concurrency,
        } => velox_cache::cli::warm::run(&config, &file, &url, concurrency),
        Command::Cache { action } => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
                .init();
            velox_cache::cli::cache::run(&config, &action)
        }
        Command::Serve => {
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
