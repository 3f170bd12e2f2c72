//! `breakwater-e2e-client`: what a test pod runs (image `breakwater/e2e-client`).
//!
//! - `get URL [COUNT]`: GETs `URL` COUNT times (default 1) on fresh HTTP/1.1 connections and
//!   prints one line per answer, `<status> <first line of the body>`; any non-2xx answer or a
//!   connection failure exits 1.
//! - `connect HOST:PORT`: opens a TCP connection and prints `connected HOST:PORT`.
//! - `cat FILE...`: prints files; `size FILE...`: prints `FILE <bytes>` (for secrets).
//!
//! Connection failures are retried for up to 10 s: the Service rules may trail the pod by a moment.

#![forbid(unsafe_code)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::ExitCode,
    time::Duration,
};

const RETRY_FOR: Duration = Duration::from_secs(10);
const RETRY_EVERY: Duration = Duration::from_millis(100);

const USAGE: &str =
    "usage: breakwater-e2e-client get URL [COUNT] | connect HOST:PORT | cat FILE... | size FILE...";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("get") if args.len() >= 2 => get_command(&args[1], args.get(2)),
        Some("connect") if args.len() == 2 => match connect(&args[1]) {
            Ok(_) => {
                println!("connected {}", args[1]);
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("error {e}");
                ExitCode::FAILURE
            }
        },
        Some(cmd @ ("cat" | "size")) if args.len() >= 2 => {
            let mut ok = true;
            for file in &args[1..] {
                match std::fs::read(file) {
                    Ok(bytes) if cmd == "cat" => print!("{}", String::from_utf8_lossy(&bytes)),
                    Ok(bytes) => println!("{file} {}", bytes.len()),
                    Err(e) => {
                        println!("error {file}: {e}");
                        ok = false;
                    }
                }
            }
            if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn get_command(url: &str, count: Option<&String>) -> ExitCode {
    let count: usize = count.and_then(|c| c.parse().ok()).unwrap_or(1);
    let Some((host, path)) = url.strip_prefix("http://").map(|rest| match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }) else {
        eprintln!("only http:// URLs are supported, got {url}");
        return ExitCode::from(2);
    };
    let mut ok = true;
    for _ in 0..count {
        match get(host, path) {
            Ok((status, body)) => {
                println!("{status} {}", body.lines().next().unwrap_or_default());
                ok &= (200..300).contains(&status);
            }
            Err(e) => {
                println!("error {e}");
                ok = false;
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn get(host: &str, path: &str) -> std::io::Result<(u16, String)> {
    // A URL without a port means port 80.
    let mut stream = if host.contains(':') { connect(host)? } else { connect(&format!("{host}:80"))? };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Connects, retrying refused or unreachable connections for up to [`RETRY_FOR`].
fn connect(host: &str) -> std::io::Result<TcpStream> {
    let attempts = RETRY_FOR.as_millis() / RETRY_EVERY.as_millis();
    let mut last = None;
    for _ in 0..attempts {
        match TcpStream::connect(host) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(RETRY_EVERY);
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no connection attempt made")))
}
