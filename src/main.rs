//! `wa-onboard`: serve, migrate, manage tenants, run the simulators, print the version.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wa_onboard::config::{Overrides, Settings};
use wa_onboard::domain::Secret;

#[derive(Parser)]
#[command(
    name = "wa-onboard",
    version,
    about = "One gRPC API for onboarding businesses onto WhatsApp through several BSPs"
)]
struct Cli {
    /// TOML config file (optional; embedded defaults otherwise).
    #[arg(long, global = true, env = "WA_ONBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true, env = "WA_ONBOARD_LOG_FORMAT")]
    log_format: Option<String>,
    /// Data directory (SQLite file, development secrets).
    #[arg(long, global = true, env = "WA_ONBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL (sqlite:PATH or postgres://...).
    #[arg(long, global = true, env = "WA_ONBOARD_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the service.
    Serve {
        /// gRPC listen address.
        #[arg(long, env = "WA_ONBOARD_GRPC_ADDR")]
        grpc_addr: Option<String>,
        /// Webhook ingress listen address.
        #[arg(long, env = "WA_ONBOARD_WEBHOOK_ADDR")]
        webhook_addr: Option<String>,
        /// Metrics listen address.
        #[arg(long, env = "WA_ONBOARD_METRICS_ADDR")]
        metrics_addr: Option<String>,
    },
    /// Runs database migrations and exits.
    Migrate,
    /// Runs the four provider simulators standalone (for other teams' tests).
    Sim {
        /// Interface to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// First port; the six listeners take consecutive ports (Gupshup, Exotel Singapore,
        /// Exotel Mumbai, Whapi manager, Whapi gate, 99digital).
        #[arg(long, default_value_t = 18080)]
        base_port: u16,
    },
    /// Manages tenants and their API keys, directly on the configured store.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Prints the version.
    Version,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Creates a tenant and prints its first API key (shown once).
    Create {
        /// Tenant name: lowercase letters, digits, '-'.
        name: String,
    },
    /// Lists tenants and their keys (ids and prefixes only).
    List,
    /// Adds an API key to a tenant and prints it (shown once).
    AddKey {
        /// Tenant name.
        name: String,
    },
    /// Revokes an API key by id.
    RevokeKey {
        /// Key id (from `tenant list`).
        key_id: String,
    },
    /// Prints a new random API key and its SHA-256, for `auth.keys` in the config file
    /// (`key_sha256`); nothing is stored.
    GenKey,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut overrides = Overrides {
        data_dir: cli.data_dir,
        database_url: cli.database_url,
        log_format: cli.log_format,
        ..Default::default()
    };
    if let Command::Serve { grpc_addr, webhook_addr, metrics_addr } = &cli.command {
        overrides.grpc_addr = grpc_addr.clone();
        overrides.webhook_addr = webhook_addr.clone();
        overrides.metrics_addr = metrics_addr.clone();
    }
    let settings = Settings::load(cli.config.as_deref(), &overrides).map_err(|e| e.to_string())?;
    if !matches!(cli.command, Command::Serve { .. }) {
        wa_onboard::telemetry::init(&settings.server.log_format);
    }
    match cli.command {
        Command::Version => {
            println!("wa-onboard {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve { .. } => {
            let telemetry = wa_onboard::telemetry::init_with(&settings.server.log_format, &settings.telemetry);
            let r = serve(settings).await;
            // Flushing the span exporter blocks: off the async workers.
            let _ = tokio::task::spawn_blocking(move || drop(telemetry)).await;
            r
        }
        Command::Migrate => {
            let url = settings.database_url();
            ensure_data_dir(&settings)?;
            wa_onboard::store::open(&url).await.map_err(|e| e.to_string())?;
            println!("Migrations applied to {}.", wa_onboard::store::redact_url(&url));
            Ok(())
        }
        Command::Tenant { command } => tenant(settings, command).await,
        Command::Sim { host, base_port } => {
            // Before the addresses are printed: a signal right after them ends us cleanly.
            let signal = wa_onboard::app::shutdown_signal();
            let sandbox = wa_onboard::sim::sandbox::Sandbox::start(&settings.sandbox.sims, &host, base_port)
                .await
                .map_err(|e| format!("cannot start the simulators on {host}:{base_port}: {e}"))?;
            let ep = sandbox.endpoints();
            println!("Simulators running (control API under /_sim on each):");
            println!("  gupshup           {}", ep.gupshup);
            println!("  exotel singapore  {}", ep.exotel_singapore);
            println!("  exotel mumbai     {}", ep.exotel_mumbai);
            println!("  whapi manager     {}", ep.whapi_manager);
            println!("  whapi gate        {}", ep.whapi_gate);
            println!("  99digital         {}", ep.digital99);
            signal.await;
            Ok(())
        }
    }
}

fn ensure_data_dir(settings: &Settings) -> Result<(), String> {
    if settings.database.url.is_empty() {
        std::fs::create_dir_all(&settings.server.data_dir).map_err(|e| format!("server.data_dir: {e}"))?;
    }
    Ok(())
}

async fn serve(settings: Settings) -> Result<(), String> {
    let dev_key = std::env::var("WA_ONBOARD_DEV_API_KEY").ok().filter(|k| !k.is_empty()).map(Secret::new);
    let key_supplied = dev_key.is_some();
    if let Some(k) = &dev_key
        && !k.expose().starts_with(wa_onboard::core::tenants::KEY_PREFIX)
    {
        return Err(format!("WA_ONBOARD_DEV_API_KEY must start with '{}'", wa_onboard::core::tenants::KEY_PREFIX));
    }
    let tenant = settings.dev.tenant.clone();
    let key_file = settings.server.data_dir.join("dev-api-key");
    let running = wa_onboard::app::start(settings, dev_key).await.map_err(|e| e.to_string())?;
    // Installed before the lines below announce readiness: a SIGTERM sent right after them
    // (what a supervisor or a test does) gets the graceful shutdown, not the default action.
    let signal = wa_onboard::app::shutdown_signal();
    println!(
        "wa-onboard listening: gRPC {}  webhooks {}  metrics {}",
        running.grpc_addr, running.webhook_addr, running.metrics_addr
    );
    if key_supplied {
        // The operator chose it: echoing it would only put a secret into collected logs.
        println!("Development tenant '{tenant}' API key: the one in WA_ONBOARD_DEV_API_KEY");
    } else if running.dev_api_key.is_some() && !running.dev_api_key_generated {
        // Shown once, when generated: every later start would copy it into collected logs.
        println!("Development tenant '{tenant}' API key: kept in {}", key_file.display());
    } else if let Some(key) = &running.dev_api_key {
        // Printed on purpose, once: the development tenant's key was just generated, so a new
        // user can call the API (it is also kept in `dev-api-key` under the data dir).
        println!("Development tenant '{tenant}' API key: {}", key.expose());
        println!(
            "Try: grpcurl -plaintext -H 'authorization: Bearer {}' {} wa.onboard.v1.ProviderService/ListProviders",
            key.expose(),
            running.grpc_addr
        );
    }
    running.run_until(signal).await;
    Ok(())
}

async fn tenant(settings: Settings, command: TenantCommand) -> Result<(), String> {
    use wa_onboard::core::tenants;
    if let TenantCommand::GenKey = command {
        let key = tenants::generate_key();
        // Printed on purpose: the operator hands the key to the client and puts the hash in
        // the config file.
        println!("key         {}", key.expose());
        println!("key_sha256  {}", hex::encode(tenants::hash_key(key.expose())));
        return Ok(());
    }
    ensure_data_dir(&settings)?;
    let store = wa_onboard::store::open(&settings.database_url()).await.map_err(|e| e.to_string())?;
    let store = store.as_ref();
    match command {
        TenantCommand::Create { name } => {
            let (t, key) = tenants::create_tenant(store, &name).await.map_err(|e| e.message)?;
            println!("Created tenant '{}' (id {}).", t.name, t.id);
            println!("API key {} (shown once): {}", key.id, key.key.expose());
        }
        TenantCommand::List => {
            for t in store.list_tenants().await.map_err(|e| e.to_string())? {
                println!("{}\t{}", t.name, t.id);
                for k in store.list_api_keys(&t.id).await.map_err(|e| e.to_string())? {
                    let state = if k.revoked_ms.is_some() { "revoked" } else { "active" };
                    println!("  key {}\t{}...\t{state}", k.id, k.prefix);
                }
            }
        }
        TenantCommand::AddKey { name } => {
            let t = tenants::tenant_by_name(store, &name).await.map_err(|e| e.message)?;
            let key = tenants::add_key(store, &t.id, None).await.map_err(|e| e.message)?;
            println!("API key {} for '{}' (shown once): {}", key.id, t.name, key.key.expose());
        }
        TenantCommand::RevokeKey { key_id } => {
            let id = wa_onboard::domain::ApiKeyId::parse(key_id).map_err(|e| format!("key id: {e}"))?;
            if store.revoke_api_key(&id, wa_onboard::domain::now_ms()).await.map_err(|e| e.to_string())? {
                println!("Revoked key {id}.");
            } else {
                return Err(format!("no active key with id {id}"));
            }
        }
        TenantCommand::GenKey => {}
    }
    Ok(())
}
