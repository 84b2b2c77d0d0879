// SPDX-License-Identifier: MPL-2.0
//! racs-lite: a stand-in RACS v0.1.0 server.
//!
//! Usage: racs-lite --port 6381 --data-dir DIR [--host ADDR] [--entries N] [--cache-entries N]
//!        [--max-connections N] [--max-message-bytes N] [--idle-timeout SECS]
//!        [--flush-invisible-ms MS] [--durable] [--keep-colliding-tables]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use racs_lite::{Config, Server};

const USAGE: &str = "usage: racs-lite --port PORT --data-dir DIR [--host ADDR] [--entries N] \
[--cache-entries N] [--max-connections N] [--max-message-bytes N] [--idle-timeout SECS] \
[--flush-invisible-ms MS] [--durable] [--keep-colliding-tables]

  --port PORT              TCP port (6381 is the usual RACS port; 0 = any free port)
  --data-dir DIR           where data is stored (DIR/.racs); created if missing
  --host ADDR              address to bind (default: :: dual-stack, falling back to 0.0.0.0)
  --entries N              blocks in the shared in-memory table (default 40)
  --cache-entries N        streams whose metadata is cached; eviction persists it (default 4096)
  --max-connections N      simultaneous connections; more are refused (default 190)
  --max-message-bytes N    largest request payload (default 67108864)
  --idle-timeout SECS      close connections idle this long (default 300)
  --flush-invisible-ms MS  hide each table being written from EXTRACT at least this long; a
                           kill or stop inside the window loses it (default 100; 0 = off)
  --durable                SIGTERM, SIGINT and SHUTDOWN flush and persist everything (default:
                           like the real server, SIGTERM/SIGINT lose what a kill loses and
                           SHUTDOWN loses the in-memory table)
  --keep-colliding-tables  tables whose names collide get a .N suffix (default: the later
                           overwrites the earlier, as on the real server)";

struct Args {
    port: u16,
    host: Option<IpAddr>,
    config: Config,
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut port = None;
    let mut host = None;
    let mut data_dir = None;
    let mut entries = None;
    let mut max_conn = None;
    let mut max_msg = None;
    let mut idle = None;
    let mut invisible = None;
    let mut cache_entries = None;
    let mut durable = false;
    let mut keep_colliding = false;
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        if flag == "--durable" {
            durable = true;
            continue;
        }
        if flag == "--keep-colliding-tables" {
            keep_colliding = true;
            continue;
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value")),
            }
        };
        fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{name}: '{v}' is not a valid number"))
        }
        match name {
            "--port" => port = Some(num::<u16>(name, &value()?)?),
            "--host" => {
                let v = value()?;
                let v = v.trim_start_matches('[').trim_end_matches(']');
                host = Some(
                    v.parse::<IpAddr>()
                        .map_err(|_| format!("--host: '{v}' is not an IP address"))?,
                );
            }
            "--data-dir" => data_dir = Some(value()?),
            "--entries" => entries = Some(num::<usize>(name, &value()?)?),
            "--cache-entries" => cache_entries = Some(num::<usize>(name, &value()?)?),
            "--max-connections" => max_conn = Some(num::<usize>(name, &value()?)?),
            "--max-message-bytes" => max_msg = Some(num::<usize>(name, &value()?)?),
            "--idle-timeout" => idle = Some(num::<u64>(name, &value()?)?),
            "--flush-invisible-ms" => invisible = Some(num::<u64>(name, &value()?)?),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    let port = port.ok_or("--port is required")?;
    let data_dir = data_dir.ok_or("--data-dir is required")?;
    let mut config = Config::new(data_dir);
    if let Some(n) = entries {
        if n == 0 || n > 65535 {
            return Err("--entries must be between 1 and 65535".into());
        }
        config.entries = n;
    }
    if let Some(n) = max_conn {
        if n == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        config.max_connections = n;
    }
    if let Some(n) = max_msg {
        config.max_message_bytes = n;
    }
    if let Some(s) = idle {
        if s == 0 {
            return Err("--idle-timeout must be at least 1".into());
        }
        config.idle_timeout = Duration::from_secs(s);
    }
    if let Some(ms) = invisible {
        config.flush_invisible = Duration::from_millis(ms);
    }
    if let Some(n) = cache_entries {
        if n == 0 {
            return Err("--cache-entries must be at least 1".into());
        }
        config.cache_entries = n;
    }
    config.durable = durable;
    config.keep_colliding_tables = keep_colliding;
    Ok(Args { port, host, config })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("racs-lite: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = match args.host {
        Some(ip) => Server::start(SocketAddr::new(ip, args.port), args.config.clone()),
        None => Server::start(
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), args.port),
            args.config.clone(),
        )
        .or_else(|e| {
            eprintln!(
                "racs-lite: cannot bind [::]:{} ({e}); trying 0.0.0.0",
                args.port
            );
            Server::start(
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), args.port),
                args.config.clone(),
            )
        }),
    };
    let server = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("racs-lite: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("racs-lite: cannot build the signal runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Install the handlers before saying we listen, so an early signal is never fatal.
    let signals = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    });
    let (mut int, mut term) = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("racs-lite: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "racs-lite: listening on {} (data dir {}, entries {}, max connections {}, {})",
        server.local_addr(),
        args.config.data_dir.display(),
        args.config.entries,
        args.config.max_connections,
        if args.config.durable {
            "durable"
        } else {
            "stops lose unflushed data, like the real server"
        }
    );
    let reason = rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = int.recv() => return "SIGINT",
                _ = term.recv() => return "SIGTERM",
                _ = tick.tick() => if server.is_finished() { return "SHUTDOWN" },
            }
        }
    });
    eprintln!("racs-lite: {reason}: stopping");
    match server.stop() {
        Ok(()) => {
            eprintln!("racs-lite: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("racs-lite: error while stopping: {e}");
            ExitCode::FAILURE
        }
    }
}
