//! The statistics over HTTP, for scrapers: `GET /stats` (JSON, schema `natt-stats/1`),
//! `GET /stats/sa/<spi>` (one SA, asked of the worker that owns it), `GET /metrics`
//! (Prometheus text). Read-only, GET and HEAD only; requests with a body, a long
//! target or unknown paths get an error status and a JSON error. The server runs on its
//! own threads and only reads shared memory: whatever arrives, the dataplane and the
//! SA table are not disturbed.

use crate::stats::{self, StatsError};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

const MAX_TARGET: usize = 256;
const THREADS: usize = 2;

pub struct Http {
    pub addr: SocketAddr,
}

fn header(k: &str, v: &str) -> Header {
    Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("valid header")
}

fn reply(req: Request, status: u16, content_type: &str, body: String) {
    let resp = Response::from_string(body)
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"));
    let _ = req.respond(resp);
}

fn error(req: Request, status: u16, message: &str) {
    let body = json!({"error": message, "status": status}).to_string() + "\n";
    reply(req, status, "application/json", body);
}

/// SA questions go one at a time (they share the workers' question boxes).
fn handle(req: Request, shm_dir: &Path, name: &str, sa_lock: &Mutex<()>) {
    let target = req.url().to_owned();
    if target.len() > MAX_TARGET {
        return error(req, 414, "request target too long");
    }
    if !matches!(req.method(), Method::Get | Method::Head) {
        return error(req, 405, "only GET (and HEAD) are served");
    }
    if req.body_length().is_some_and(|n| n > 0) {
        return error(req, 413, "a GET request has no body");
    }
    let path = target.split('?').next().unwrap_or("");
    let result = match path {
        "/stats" | "/stats/" => stats::document(shm_dir, name).map(|(_, j)| ("application/json", j.to_string() + "\n")),
        "/metrics" => stats::prometheus(shm_dir, name).map(|t| ("text/plain; version=0.0.4", t)),
        p if p.starts_with("/stats/sa/") => {
            let spi = &p["/stats/sa/".len()..];
            stats::parse_spi(spi).and_then(|spi| {
                let _g = sa_lock.lock().unwrap_or_else(|e| e.into_inner());
                stats::sa(shm_dir, name, spi, None).map(|j| ("application/json", j.to_string() + "\n"))
            })
        }
        "/" => {
            Ok(("application/json", json!({"endpoints": ["/stats", "/stats/sa/<spi>", "/metrics"]}).to_string() + "\n"))
        }
        _ => Err(StatsError::NotFound(format!("no such endpoint {path}; try /stats, /stats/sa/<spi> or /metrics"))),
    };
    match result {
        Ok((ct, body)) => reply(req, 200, ct, body),
        Err(StatsError::NotFound(m)) => error(req, 404, &m),
        Err(StatsError::BadRequest(m)) => error(req, 400, &m),
        Err(StatsError::NoDataplane(m)) => error(req, 503, &m),
    }
}

/// Start serving on `addr`.
pub fn serve(addr: &str, shm_dir: PathBuf, name: String) -> Result<Http, String> {
    let server = Server::http(addr).map_err(|e| format!("--http {addr}: {e}"))?;
    let local = server.server_addr().to_ip().ok_or_else(|| format!("--http {addr}: not an IP address"))?;
    let server = Arc::new(server);
    let sa_lock = Arc::new(Mutex::new(()));
    for _ in 0..THREADS {
        let (server, shm_dir, name, sa_lock) = (server.clone(), shm_dir.clone(), name.clone(), sa_lock.clone());
        std::thread::spawn(move || {
            for req in server.incoming_requests() {
                handle(req, &shm_dir, &name, &sa_lock);
            }
        });
    }
    Ok(Http { addr: local })
}
