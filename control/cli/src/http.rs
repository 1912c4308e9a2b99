//! The statistics over HTTP, for scrapers: `GET /stats` (JSON, schema `natt-stats/1`),
//! `GET /stats/sa/<spi>` (one SA, asked of the worker that owns it), `GET /metrics`
//! (Prometheus text). Read-only: GET and HEAD, one request per connection.
//!
//! Whatever arrives is bounded before it is parsed (`httparse`): a request head of at most
//! `MAX_HEAD` bytes and `MAX_HEADERS` headers, a target of at most `MAX_TARGET` bytes, no
//! body, `TIMEOUT` to send it all, `MAX_CONNECTIONS` at once. Anything else gets an error
//! status with a JSON body saying what was wrong (400, 404, 405, 408, 413, 414, 431, 503).
//! The server only reads shared memory, on its own threads: the dataplane and the SA
//! table are not disturbed by it.

use crate::stats::{self, StatsError};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_TARGET: usize = 256;
const MAX_CONNECTIONS: usize = 32;
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Http {
    pub addr: SocketAddr,
}

struct Context {
    shm_dir: PathBuf,
    name: String,
    /// SA questions go one at a time (they share the workers' question boxes).
    sa_lock: Mutex<()>,
    connections: AtomicUsize,
}

/// A response: status, content type, body.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn error(status: u16, message: &str) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: json!({"error": message, "status": status}).to_string() + "\n",
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Write the reply.
fn write_reply(s: &mut TcpStream, r: &Reply, head_only: bool) -> bool {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if r.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&r.body);
    }
    s.write_all(out.as_bytes()).is_ok()
}

/// Write the reply, then close gracefully: stop sending, discard (briefly, boundedly)
/// what the client still sends, so that our reply is not lost to a reset.
fn send(mut s: TcpStream, r: &Reply, head_only: bool) {
    if !write_reply(&mut s, r, head_only) {
        return;
    }
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut left: usize = 256 * 1024;
    while left > 0 {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The answer to a well-formed request head.
fn route(ctx: &Context, method: &str, target: &str, has_body: bool) -> Reply {
    if target.len() > MAX_TARGET {
        return Reply::error(414, "request target too long");
    }
    if method != "GET" && method != "HEAD" {
        return Reply::error(405, "only GET (and HEAD) are served");
    }
    if has_body {
        return Reply::error(413, "a GET request has no body");
    }
    let path = target.split('?').next().unwrap_or("");
    let json = |v: serde_json::Value| ("application/json", v.to_string() + "\n");
    let result = match path {
        "/stats" | "/stats/" => stats::document(&ctx.shm_dir, &ctx.name).map(|(_, j)| json(j)),
        "/metrics" => stats::prometheus(&ctx.shm_dir, &ctx.name).map(|t| ("text/plain; version=0.0.4", t)),
        p if p.starts_with("/stats/sa/") => stats::parse_spi(&p["/stats/sa/".len()..]).and_then(|spi| {
            let _g = ctx.sa_lock.lock().unwrap_or_else(|e| e.into_inner());
            stats::sa(&ctx.shm_dir, &ctx.name, spi, None).map(json)
        }),
        "/" => Ok(json(json!({"endpoints": ["/stats", "/stats/sa/<spi>", "/metrics"]}))),
        _ => Err(StatsError::NotFound(format!("no such endpoint {path}; try /stats, /stats/sa/<spi> or /metrics"))),
    };
    match result {
        Ok((content_type, body)) => Reply { status: 200, content_type, body },
        Err(StatsError::NotFound(m)) => Reply::error(404, &m),
        Err(StatsError::BadRequest(m)) => Reply::error(400, &m),
        Err(StatsError::NoDataplane(m)) => Reply::error(503, &m),
    }
}

/// Read one request head within the limits, answer it, close.
fn connection(ctx: &Context, mut s: TcpStream) {
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    let (reply, head_only) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            break (Reply::error(408, "the request head did not arrive in time"), false);
        }
        match s.read(&mut buf[n..]) {
            Ok(0) => return,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                break (Reply::error(408, "the request head did not arrive in time"), false);
            }
            Err(_) => return,
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..n]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("");
                let has_body = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("transfer-encoding")
                        || (h.name.eq_ignore_ascii_case("content-length") && h.value.iter().any(|b| *b != b'0'))
                });
                break (route(ctx, method, req.path.unwrap_or(""), has_body), method == "HEAD");
            }
            Ok(httparse::Status::Partial) if n < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                // Full buffer, no end of head: is it the request line or the headers?
                let line_done = buf[..n].windows(2).any(|w| w == b"\r\n");
                break if line_done {
                    (Reply::error(431, "request head too large (16 KiB at most)"), false)
                } else {
                    (Reply::error(414, "request target too long"), false)
                };
            }
            Err(httparse::Error::TooManyHeaders) => {
                break (Reply::error(431, "too many header fields (64 at most)"), false);
            }
            Err(e) => break (Reply::error(400, &format!("malformed HTTP request: {e}")), false),
        }
    };
    let _ = s.set_write_timeout(Some(TIMEOUT));
    send(s, &reply, head_only);
}

/// Start serving on `addr` (for example 127.0.0.1:9180; port 0 picks a free one).
pub fn serve(addr: &str, shm_dir: PathBuf, name: String) -> Result<Http, String> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        format!("--http {addr}: {e} (give another ADDRESS:PORT, for example 127.0.0.1:9181, or \"off\")")
    })?;
    let local = listener.local_addr().map_err(|e| format!("--http {addr}: {e}"))?;
    let ctx = Arc::new(Context { shm_dir, name, sa_lock: Mutex::new(()), connections: AtomicUsize::new(0) });
    std::thread::Builder::new()
        .name("natt-http".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let s = match conn {
                    Ok(s) => s,
                    Err(_) => {
                        // Out of descriptors or similar: let it pass, do not spin.
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                if ctx.connections.fetch_add(1, Relaxed) >= MAX_CONNECTIONS {
                    ctx.connections.fetch_sub(1, Relaxed);
                    let mut s = s;
                    let _ = s.set_nonblocking(true);
                    write_reply(&mut s, &Reply::error(503, "too many connections; try again"), false);
                    continue;
                }
                let c = ctx.clone();
                let spawned = std::thread::Builder::new().name("natt-http-conn".into()).spawn(move || {
                    connection(&c, s);
                    c.connections.fetch_sub(1, Relaxed);
                });
                if spawned.is_err() {
                    ctx.connections.fetch_sub(1, Relaxed);
                }
            }
        })
        .map_err(|e| format!("--http {addr}: cannot start a thread: {e}"))?;
    Ok(Http { addr: local })
}
