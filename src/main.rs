use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use roomcast::config::Config;

/// roomcast: sub-second live streaming for Matrix communities.
///
/// RTMP and WHIP in; WebRTC (WHEP) out, on one UDP and one TCP port.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. Without --config: built-in defaults, standalone, a `demo`
    /// stream, SQLite file in the working directory. Every key can also be set
    /// with ROOMCAST_<SECTION>__<KEY> (e.g. ROOMCAST_HTTP__LISTEN=0.0.0.0:8080).
    Serve {
        /// Path to the TOML config (see config/roomcast.example.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Estimate bandwidth and monthly transit for a planned use, and check it
    /// against the configured limits (e.g. `roomcast plan --video-kbps 2000
    /// --audio-kbps 256 --mode solo --viewers 5 --hours-per-day 4 --days-per-month 20`).
    Plan {
        /// Video bitrate per stream.
        #[arg(long, default_value_t = 2500.0)]
        video_kbps: f64,
        /// Audio bitrate per stream.
        #[arg(long, default_value_t = 128.0)]
        audio_kbps: f64,
        /// solo: one streamer, N viewers; event: N streamers to a producer; call: N users all watching each other.
        #[arg(long, value_enum, default_value_t = roomcast::plan::Mode::Solo)]
        mode: roomcast::plan::Mode,
        /// Viewers (solo) or users/streamers (event, call).
        #[arg(long, visible_alias = "users", default_value_t = 10)]
        viewers: u32,
        #[arg(long, default_value_t = 4.0)]
        hours_per_day: f64,
        #[arg(long, default_value_t = 20.0)]
        days_per_month: f64,
        /// Also size a cluster: nodes with this NIC, in Mbit/s (default 1000 with --cores).
        #[arg(long)]
        nic_mbps: Option<f64>,
        /// Also size a cluster: cores per node (default 2 with --nic-mbps).
        #[arg(long)]
        cores: Option<f64>,
        /// Config whose [limits] to check against.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write the Matrix appservice registration (registration.yaml) for the
    /// homeserver: random as_token and hs_token, the bot, and roomcast's user
    /// and alias namespaces. Add the file to the homeserver's
    /// app_service_config_files (Synapse) and restart it.
    Registration {
        /// URL at which the homeserver reaches roomcast's http.listen
        /// (default: public_url of --config, else its http.listen).
        #[arg(long)]
        url: Option<String>,
        /// The homeserver's server name (default: matrix.server_name of --config).
        #[arg(long)]
        server_name: Option<String>,
        /// Where to write it (default: matrix.registration of --config, else registration.yaml).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Config file to take server_name, registration path and alias prefix from.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The appservice id (unique on the homeserver, never changed).
        #[arg(long, default_value = "roomcast")]
        id: String,
        /// The bot's localpart (@<localpart>:<server_name>).
        #[arg(long, default_value = "roomcast")]
        bot: String,
        /// Replace an existing file (new tokens: restart the homeserver after).
        #[arg(long)]
        force: bool,
    },
    /// Mint an OvenMediaEngine SignedPolicy URL, for publishing (RTMP stream
    /// key, WHIP URL) or playback (e.g. `roomcast sign --config roomcast.toml
    /// --url rtmp://live.example.org:1935/live/slot-1 --expires-in 24h`).
    /// Prints the signed URL; for RTMP also the OBS Server and Stream Key.
    Sign {
        /// The URL to sign: scheme://host[:port]/app/stream (the port is added
        /// when missing, as OME signs with it).
        #[arg(long)]
        url: String,
        /// How long the URL can start sessions (90s, 30m, 24h, 7d).
        #[arg(long, default_value = "1h")]
        expires_in: String,
        /// Not usable until this long from now.
        #[arg(long)]
        activates_in: Option<String>,
        /// Sessions started with it end this long from now.
        #[arg(long)]
        stream_expires_in: Option<String>,
        /// Only clients from this address range (CIDR), e.g. 203.0.113.0/24.
        #[arg(long)]
        allow_ip: Option<String>,
        /// The secret; default: [signed_policy] secret_key of --config.
        #[arg(long)]
        secret: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// "90s", "30m", "24h", "7d" or plain seconds → milliseconds.
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 90s, 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use s, m, h or d)")),
    };
    Ok(secs * 1000)
}

#[allow(clippy::too_many_arguments)]
fn sign(
    url: &str,
    expires_in: &str,
    activates_in: Option<&str>,
    stream_expires_in: Option<&str>,
    allow_ip: Option<String>,
    secret: Option<String>,
    config: Option<&std::path::Path>,
) -> Result<String, String> {
    use roomcast::auth::Cidr;
    use roomcast::auth::signed_policy::{self, Policy, QueryNames};
    let mut names = QueryNames::default();
    let secret = match secret {
        Some(s) => s,
        None => {
            let config = Config::load(config, std::env::vars()).map_err(|e| e.to_string())?;
            let p = config
                .signed_policy
                .ok_or("no secret: pass --secret, or --config with a [signed_policy] secret_key")?;
            names.policy = p.policy_query_key;
            names.signature = p.signature_query_key;
            p.secret_key
        }
    };
    if let Some(ip) = &allow_ip
        && Cidr::parse(ip).is_none()
    {
        return Err(format!("--allow-ip '{ip}' is not an address or CIDR range"));
    }
    let now = signed_policy::now_ms();
    let policy = Policy {
        url_expire: Some(now + parse_duration_ms(expires_in)?),
        url_activate: activates_in
            .map(parse_duration_ms)
            .transpose()?
            .map(|d| now + d),
        stream_expire: stream_expires_in
            .map(parse_duration_ms)
            .transpose()?
            .map(|d| now + d),
        allow_ip,
        real_ip: None,
    };
    let signed = signed_policy::sign_url(secret.as_bytes(), url, &policy, &names)
        .map_err(|e| e.to_string())?;
    let mut out = format!("{signed}\n");
    // OBS takes RTMP as Server + Stream Key: the key is the last segment and the query.
    if signed.starts_with("rtmp://") || signed.starts_with("rtmps://") {
        let (base, query) = signed.split_once('?').unwrap_or((&signed, ""));
        if let Some((server, stream)) = base.rsplit_once('/') {
            out.push_str(&format!(
                "OBS → Settings → Stream → Custom…\n  Server:     {server}\n  Stream Key: {stream}?{query}\n"
            ));
        }
    }
    Ok(out)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ROOMCAST_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,str0m=warn,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[allow(clippy::too_many_arguments)]
fn write_registration(
    url: Option<String>,
    server_name: Option<String>,
    output: Option<PathBuf>,
    config: Option<PathBuf>,
    id: String,
    bot: String,
    force: bool,
) -> Result<(PathBuf, String), String> {
    let config = match &config {
        Some(p) => Some(Config::load(Some(p), std::env::vars()).map_err(|e| e.to_string())?),
        None => None,
    };
    let (url, url_source) = match url {
        Some(u) => (u.clone(), format!("url {u} from --url")),
        None => {
            let defaults = Config::default();
            let c = config.as_ref().unwrap_or(&defaults);
            roomcast::matrix::registration::url_from_config(c.public_url.as_deref(), c.http.listen)
        }
    };
    let matrix = config.as_ref().and_then(|c| c.matrix.clone());
    let server_name = server_name
        .or_else(|| matrix.as_ref().map(|m| m.server_name.clone()))
        .ok_or("give --server-name (the homeserver's server_name) or a --config with a [matrix] section")?;
    let output = output
        .or_else(|| matrix.as_ref().map(|m| PathBuf::from(&m.registration)))
        .unwrap_or_else(|| PathBuf::from("registration.yaml"));
    let alias_prefix = matrix
        .as_ref()
        .map(|m| m.alias_prefix.clone())
        .unwrap_or_else(|| "live_".to_string());
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("--url '{url}' must start with http:// or https://"));
    }
    let n = roomcast::matrix::registration::NewRegistration {
        id: &id,
        url: &url,
        server_name: &server_name,
        sender_localpart: &bot,
        alias_prefix: &alias_prefix,
    };
    roomcast::matrix::registration::write(&output, &n, force).map_err(|e| e.to_string())?;
    Ok((output, url_source))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan {
            video_kbps,
            audio_kbps,
            mode,
            viewers,
            hours_per_day,
            days_per_month,
            nic_mbps,
            cores,
            config,
        } => {
            let config = match Config::load(config.as_deref(), std::env::vars()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            for (name, v) in [
                ("video-kbps", video_kbps),
                ("audio-kbps", audio_kbps),
                ("hours-per-day", hours_per_day),
                ("days-per-month", days_per_month),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    eprintln!("error: --{name} must be a non-negative number");
                    return ExitCode::from(2);
                }
            }
            let input = roomcast::plan::PlanInput {
                video_kbps,
                audio_kbps,
                mode,
                people: viewers,
                hours_per_day,
                days_per_month,
            };
            let p = roomcast::plan::plan(&input);
            print!("{}", roomcast::plan::render(&input, &p, &config.limits));
            let mut fits = roomcast::plan::check_caps(&input, &p, &config.limits).is_empty();
            if nic_mbps.is_some() || cores.is_some() {
                use roomcast::plan::cluster;
                let node = cluster::NodeSize {
                    nic_mbps: nic_mbps.unwrap_or(1000.0),
                    cores: cores.unwrap_or(2.0),
                };
                for (name, v) in [("nic-mbps", node.nic_mbps), ("cores", node.cores)] {
                    if !(v.is_finite() && v > 0.0) {
                        eprintln!("error: --{name} must be a positive number");
                        return ExitCode::from(2);
                    }
                }
                let c = cluster::cluster(&input, &p, node, &config.limits);
                print!("{}", cluster::render(node, &c));
                // Caps are per node: the cluster answer already counts them.
                fits = c.nodes.is_some();
            }
            if fits {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Command::Sign {
            url,
            expires_in,
            activates_in,
            stream_expires_in,
            allow_ip,
            secret,
            config,
        } => match sign(
            &url,
            &expires_in,
            activates_in.as_deref(),
            stream_expires_in.as_deref(),
            allow_ip,
            secret,
            config.as_deref(),
        ) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Registration {
            url,
            server_name,
            output,
            config,
            id,
            bot,
            force,
        } => match write_registration(url, server_name, output, config, id, bot, force) {
            Ok((path, url_source)) => {
                println!(
                    "wrote {} ({url_source})
add it to the homeserver's app_service_config_files (Synapse) and restart the homeserver",
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let config = match Config::load(config.as_deref(), std::env::vars()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(roomcast::server::serve(config));
            // Worker threads blocked in I/O are not waited for: the stop is
            // already complete (sessions ended, database closed).
            rt.shutdown_timeout(std::time::Duration::from_millis(200));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
