//! `breakwater-e2e-client URL [COUNT]`: a tiny HTTP/1.1 client for pods in e2e tests (image
//! `breakwater/e2e-client`). GETs `URL` COUNT times (default 1) on fresh connections and prints
//! one line per answer, `<status> <first line of the body>`. Connection failures are retried for
//! up to 10 s (the Service rules may trail the pod by a moment); any non-2xx answer or a final
//! connection failure exits 1.

#![forbid(unsafe_code)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::ExitCode,
    time::Duration,
};

const RETRY_FOR: Duration = Duration::from_secs(10);
const RETRY_EVERY: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(url) = args.first() else {
        eprintln!("usage: breakwater-e2e-client http://HOST:PORT/PATH [COUNT]");
        return ExitCode::from(2);
    };
    let count: usize = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1);
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
    let mut stream = connect(host)?;
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
