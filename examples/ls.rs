// SPDX-License-Identifier: MPL-2.0
//! List the streams on a RACS server, with their format, length and reference time:
//!
//!     cargo run --release --example ls -- [--host H] [--port P] [PATTERN...]
//!
//! PATTERN is a SEARCH glob (`*`, `?`, `[abc]`, `[!a]`; case-sensitive). The server's globs
//! never match `/`, so without a pattern this asks for `*`, `*/*`, `*/*/*` and `*/*/*/*` to
//! find names with up to three slashes too. Without --host/--port it uses localhost:6381.
//!
//! ```text
//! STREAM    RATE  CH  BITS  BYTES      LENGTH      REF (UTC)
//! air      44100   2    16  1764000    10.000 s    2026-11-21T11:43:35.047Z
//! old      48000   1    24  -          unknown     unknown (the server lost size and ref)
//! ```

use std::process::ExitCode;
use std::time::Duration;

use gstracs::client::{runtime, Connection, InfoAttr};

const USAGE: &str = "usage: ls [--host H] [--port P] [PATTERN...]";

struct Row {
    name: String,
    rate: Option<i64>,
    channels: Option<i64>,
    bits: Option<i64>,
    size: Option<i64>,
    ref_ms: Option<i64>,
}

fn main() -> ExitCode {
    let mut host = "localhost".to_string();
    let mut port = 6381u16;
    let mut patterns = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--host" => match args.next() {
                Some(h) => host = h,
                None => return usage("--host needs a value"),
            },
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = p,
                None => return usage("--port needs a number from 1 to 65535"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ if a.starts_with("--") => return usage(&format!("unknown option {a}")),
            _ => patterns.push(a),
        }
    }
    if patterns.is_empty() {
        patterns = ["*", "*/*", "*/*/*", "*/*/*/*"].map(String::from).to_vec();
    }
    let addr = gstracs::client::host_port(&host, port);
    match runtime().block_on(list(&addr, &patterns)) {
        Ok(rows) => {
            print_rows(&rows);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ls: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("ls: {why}\n{USAGE}");
    ExitCode::from(2)
}

async fn list(addr: &str, patterns: &[String]) -> gstracs::client::Result<Vec<Row>> {
    let mut conn = Connection::connect(addr, Duration::from_secs(5)).await?;
    let mut names = Vec::new();
    for p in patterns {
        names.extend(conn.search(p).await?);
    }
    names.sort();
    names.dedup();
    let mut rows = Vec::with_capacity(names.len());
    for name in names {
        // INFO answers an error for a value of 0 (a stream without data, or one whose size and
        // reference time the server lost in a crash): shown as unknown.
        // A name the command language cannot quote (it holds a `'`) is listed without details.
        let mut values = [None; 5];
        for (slot, attr) in values.iter_mut().zip([
            InfoAttr::SampleRate,
            InfoAttr::Channels,
            InfoAttr::BitDepth,
            InfoAttr::Size,
            InfoAttr::Ref,
        ]) {
            match conn.info(&name, attr).await {
                Ok(v) => *slot = v,
                Err(e) if conn.is_broken() => return Err(e),
                Err(_) => break,
            }
        }
        let [rate, channels, bits, size, ref_ms] = values;
        rows.push(Row {
            name,
            rate,
            channels,
            bits,
            size,
            ref_ms,
        });
    }
    Ok(rows)
}

fn print_rows(rows: &[Row]) {
    let opt = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(6);
    println!(
        "{:<width$}  {:>6}  {:>3}  {:>4}  {:>12}  {:>12}  REF (UTC)",
        "STREAM", "RATE", "CH", "BITS", "BYTES", "LENGTH"
    );
    for r in rows {
        let bytes_per_second = match (r.rate, r.channels, r.bits) {
            (Some(sr), Some(ch), Some(bd)) if sr > 0 && ch > 0 && bd >= 8 => {
                Some(sr * ch * (bd / 8))
            }
            _ => None,
        };
        let length = match (r.size, bytes_per_second) {
            (Some(size), Some(bps)) => format!("{:.3} s", size as f64 / bps as f64),
            _ => "unknown".to_string(),
        };
        let reference = match r.ref_ms {
            Some(ms) => gstracs::client::reader::format_unix_ms(ms),
            None if r.size.is_none() => "unknown (no data, or lost in a server crash)".into(),
            None => "unknown".into(),
        };
        println!(
            "{:<width$}  {:>6}  {:>3}  {:>4}  {:>12}  {:>12}  {reference}",
            r.name,
            opt(r.rate),
            opt(r.channels),
            opt(r.bits),
            opt(r.size),
            length
        );
    }
    if rows.is_empty() {
        eprintln!("ls: no stream matches");
    }
}
