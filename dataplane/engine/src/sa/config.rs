//! The JSON SA configuration format: parsing and validation with errors that name the
//! file, the SA and the field, and say how to fix it. A file with any error yields no
//! SAs at all.

use super::params::*;
use super::prefix::IpPrefix;
use core::fmt;
use core::net::IpAddr;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Which SA an error is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaLabel {
    /// Position in the `sas` array, from 0.
    pub index: usize,
    pub name: Option<String>,
    pub spi: Option<u32>,
}

impl fmt::Display for SaLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SA #{}", self.index)?;
        if let Some(n) = &self.name {
            write!(f, " \"{n}\"")?;
        }
        if let Some(s) = self.spi {
            write!(f, " (spi 0x{s:08x})")?;
        }
        Ok(())
    }
}

/// A configuration error: what is wrong, where, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<String>,
    pub sa: Option<SaLabel>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        let mut parts = Vec::new();
        if let Some(sa) = &self.sa {
            parts.push(sa.to_string());
        }
        if let Some(field) = &self.field {
            parts.push(format!("field \"{field}\""));
        }
        if parts.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", parts.join(", "), self.message) }
    }
}

impl std::error::Error for ConfigError {}

/// An error inside one SA object, before the file and SA label are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: Some(field.into()), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field \"{field}\": {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

const SA_FIELDS: &[&str] = &[
    "name",
    "spi",
    "direction",
    "mode",
    "algorithm",
    "key",
    "salt",
    "local",
    "peer",
    "encap",
    "replay_window",
    "esn",
    "selectors",
    "lifetime",
    "nat_update",
    "paired_spi",
    "ttl",
    "df",
    "last_seq",
    "pad_to",
];

/// Parse a whole configuration file: `{"sas": [ {...}, ... ]}`. Every SA is checked, and
/// then the set (unique SPIs per direction, pairs, no two outbound SAs on one selector).
pub fn parse_config(text: &str, file: Option<&str>) -> Result<Vec<SaParams>, ConfigError> {
    let err = |sa: Option<SaLabel>, field: Option<String>, message: String| ConfigError {
        file: file.map(str::to_owned),
        sa,
        field,
        message,
    };
    let root: Value = serde_json::from_str(text)
        .map_err(|e| err(None, None, format!("invalid JSON at line {}, column {}: {e}", e.line(), e.column())))?;
    let Value::Object(root) = root else {
        return Err(err(None, None, "the top level must be an object: {\"sas\": [ ... ]}".into()));
    };
    for k in root.keys() {
        if k != "sas" && k != "version" {
            return Err(err(
                None,
                Some(k.clone()),
                format!("unknown top-level field{}", suggest(k, &["sas", "version"])),
            ));
        }
    }
    if let Some(v) = root.get("version") {
        if v.as_u64() != Some(1) {
            return Err(err(
                None,
                Some("version".into()),
                "only version 1 exists; write \"version\": 1 or leave it out".into(),
            ));
        }
    }
    let Some(sas) = root.get("sas") else {
        return Err(err(None, Some("sas".into()), "missing: the file must list its SAs in \"sas\": [ ... ]".into()));
    };
    let Value::Array(sas) = sas else {
        return Err(err(None, Some("sas".into()), "must be an array of SA objects".into()));
    };
    let mut out = Vec::with_capacity(sas.len());
    for (index, v) in sas.iter().enumerate() {
        let label = label_of(index, v);
        match parse_sa(v) {
            Ok(p) => out.push(p),
            Err(e) => return Err(err(Some(label), e.field, e.message)),
        }
    }
    check_set(&out).map_err(|(i, e)| {
        let label = label_of(i, &sas[i]);
        err(Some(label), e.field, e.message)
    })?;
    Ok(out)
}

fn label_of(index: usize, v: &Value) -> SaLabel {
    SaLabel {
        index,
        name: v.get("name").and_then(Value::as_str).map(str::to_owned),
        spi: v.get("spi").and_then(|s| parse_u32_value(s).ok()),
    }
}

/// Check a set of SAs together. Returns the index of the offending SA.
pub fn check_set(sas: &[SaParams]) -> Result<(), (usize, FieldError)> {
    let mut by_spi: HashMap<(Direction, u32), usize> = HashMap::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (i, s) in sas.iter().enumerate() {
        if let Some(j) = by_spi.insert((s.direction, s.spi), i) {
            return Err((
                i,
                FieldError::at(
                    "spi",
                    format!(
                        "{} SPI 0x{:08x} is already used by SA #{j} \"{}\"; SPIs must be unique per direction",
                        s.direction.name(),
                        s.spi,
                        sas[j].name
                    ),
                ),
            ));
        }
        if let Some(j) = by_name.insert(&s.name, i) {
            return Err((
                i,
                FieldError::at("name", format!("\"{}\" is already the name of SA #{j}; names must be unique", s.name)),
            ));
        }
    }
    // Two SAs with one key and salt would both count IVs from 1: the AES-GCM (or
    // ChaCha20-Poly1305) nonces would repeat between them.
    let mut by_key: HashMap<u64, usize> = HashMap::new();
    for (i, s) in sas.iter().enumerate() {
        if let Some(j) = by_key.insert(crate::crypto::key_fingerprint(s.key.expose(), &s.salt), i) {
            return Err((
                i,
                FieldError::at(
                    "key",
                    format!(
                        "the same key and salt as SA #{j} \"{}\": AES-GCM nonces would repeat between the two; give every SA its own key (IKE derives one per SA and direction)",
                        sas[j].name
                    ),
                ),
            ));
        }
    }
    let mut owner: HashMap<IpPrefix, usize> = HashMap::new();
    for (i, s) in sas.iter().enumerate() {
        if s.direction == Direction::Outbound {
            for p in s.outbound_keys() {
                if let Some(j) = owner.insert(p, i) {
                    return Err((
                        i,
                        FieldError::at(
                            "selectors.peer",
                            format!(
                                "{p} is already the selector of outbound SA #{j} \"{}\"; each destination prefix selects one outbound SA",
                                sas[j].name
                            ),
                        ),
                    ));
                }
            }
        }
        if let Some(pair) = s.paired_spi {
            match by_spi.get(&(Direction::Outbound, pair)) {
                None => {
                    return Err((
                        i,
                        FieldError::at(
                            "paired_spi",
                            format!(
                                "no outbound SA has SPI 0x{pair:08x}; name the outbound SA of this CHILD_SA or remove the field"
                            ),
                        ),
                    ));
                }
                Some(&j) if sas[j].peer.is_ipv4() != s.peer.is_ipv4() => {
                    return Err((
                        i,
                        FieldError::at(
                            "paired_spi",
                            format!("outbound SA #{j} \"{}\" has a peer of another address family", sas[j].name),
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Parse and validate one SA object.
pub fn parse_sa(v: &Value) -> Result<SaParams, FieldError> {
    let Value::Object(obj) = v else {
        return Err(FieldError { field: None, message: "each SA must be a JSON object".into() });
    };
    let f = Fields { obj, prefix: "" };
    f.reject_unknown(SA_FIELDS)?;

    let spi = f.required("spi", |v| parse_u32_value(v).map_err(str::to_owned))?;
    if spi < 256 {
        return Err(FieldError::at(
            "spi",
            format!("0x{spi:x} is reserved (SPIs 0-255 are not assigned to SAs, RFC 4303 §2.1); use 256 or above"),
        ));
    }
    let name = f.optional("name", |v| as_str(v).map(str::to_owned))?.unwrap_or_else(|| format!("sa-{spi:08x}"));
    if name.is_empty() {
        return Err(FieldError::at("name", "must not be empty; leave the field out for a generated name"));
    }
    let direction = f.required("direction", |v| match as_str(v)? {
        "inbound" | "in" => Ok(Direction::Inbound),
        "outbound" | "out" => Ok(Direction::Outbound),
        other => Err(format!("\"{other}\" is not a direction; use \"inbound\" or \"outbound\"")),
    })?;
    let mode = f
        .optional("mode", |v| match as_str(v)? {
            "tunnel" => Ok(Mode::Tunnel),
            "transport" => Ok(Mode::Transport),
            other => Err(format!("\"{other}\" is not a mode; use \"tunnel\" or \"transport\"")),
        })?
        .unwrap_or(Mode::Tunnel);
    let algorithm = f.required("algorithm", |v| {
        let s = as_str(v)?;
        Algorithm::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            let extra = if s.to_ascii_lowercase().contains("192") {
                " (AES-192 is not offered by the crypto backend)"
            } else {
                ""
            };
            format!("\"{s}\" is not supported{extra}; use one of {}", names.join(", "))
        })
    })?;

    let key_bytes = f.required("key", |v| parse_hex(as_str(v)?))?;
    let salt_bytes = f.optional("salt", |v| parse_hex(as_str(v)?))?;
    let kl = algorithm.key_len();
    let (key, salt) = match salt_bytes {
        Some(s) => {
            if key_bytes.len() != kl {
                return Err(FieldError::at(
                    "key",
                    format!(
                        "{} needs a {kl}-byte key ({} hex digits), got {} bytes",
                        algorithm.name(),
                        kl * 2,
                        key_bytes.len()
                    ),
                ));
            }
            let salt: [u8; 4] = s.as_slice().try_into().map_err(|_| {
                FieldError::at("salt", format!("must be 4 bytes (8 hex digits), got {} bytes", s.len()))
            })?;
            (key_bytes, salt)
        }
        None => {
            if key_bytes.len() != kl + 4 {
                return Err(FieldError::at(
                    "key",
                    format!(
                        "{} needs a {kl}-byte key and a 4-byte salt: give \"key\" ({} hex digits) and \"salt\" (8), or \"key\" as key||salt ({} hex digits); got {} bytes",
                        algorithm.name(),
                        kl * 2,
                        (kl + 4) * 2,
                        key_bytes.len()
                    ),
                ));
            }
            let mut k = key_bytes;
            let salt: [u8; 4] = k[kl..].try_into().expect("4 bytes");
            k.truncate(kl);
            (k, salt)
        }
    };

    let local = f.required("local", parse_addr)?;
    let peer = f.required("peer", parse_addr)?;
    if local.is_ipv4() != peer.is_ipv4() {
        return Err(FieldError::at("peer", format!("{peer} and local {local} are of different address families")));
    }
    if local == peer {
        return Err(FieldError::at("peer", "is the same address as local"));
    }
    let encap = f.optional("encap", |v| match v {
        Value::Null => Ok(None),
        Value::String(s) if s == "none" => Ok(None),
        Value::Object(o) => {
            let e = Fields { obj: o, prefix: "encap." };
            e.reject_unknown(&["local_port", "peer_port"]).map_err(|e| e.message)?;
            let port = |k: &str| -> Result<u16, String> {
                e.optional(k, parse_port).map_err(|e| e.to_string()).map(|p| p.unwrap_or(crate::wire::esp::NATT_PORT))
            };
            Ok(Some(Encap { local_port: port("local_port")?, peer_port: port("peer_port")? }))
        }
        _ => {
            Err("must be an object {\"local_port\": 4500, \"peer_port\": 4500}, or null (or \"none\") for plain ESP"
                .into())
        }
    })?;
    let encap = encap.flatten();

    let esn = f.optional("esn", as_bool)?.unwrap_or(false);
    let replay_window = f
        .optional("replay_window", |v| {
            let w = as_u64(v)?;
            if w == 0 || (u64::from(MIN_REPLAY_WINDOW)..=u64::from(MAX_REPLAY_WINDOW)).contains(&w) {
                Ok(w as u32)
            } else {
                Err(format!(
                    "{w} is out of range; use 0 (anti-replay off) or {MIN_REPLAY_WINDOW} to {MAX_REPLAY_WINDOW} packets"
                ))
            }
        })?
        .unwrap_or(DEFAULT_REPLAY_WINDOW);
    if direction == Direction::Outbound && f.obj.contains_key("replay_window") {
        return Err(FieldError::at("replay_window", "applies to inbound SAs only; remove it from this outbound SA"));
    }

    let selectors = match f.obj.get("selectors") {
        None => Selectors::default(),
        Some(Value::Object(o)) => {
            let s = Fields { obj: o, prefix: "selectors." };
            s.reject_unknown(&["local", "peer"])?;
            Selectors {
                local: s.optional("local", parse_prefixes)?.unwrap_or_default(),
                peer: s.optional("peer", parse_prefixes)?.unwrap_or_default(),
            }
        }
        Some(_) => {
            return Err(FieldError::at(
                "selectors",
                "must be an object {\"local\": [\"10.0.0.0/16\"], \"peer\": [\"10.8.0.2/32\"]}",
            ));
        }
    };
    if mode == Mode::Tunnel {
        if selectors.local.is_empty() {
            return Err(FieldError::at(
                "selectors.local",
                "a tunnel-mode SA needs the prefixes behind this headend, e.g. [\"10.0.0.0/16\"]",
            ));
        }
        if selectors.peer.is_empty() {
            return Err(FieldError::at(
                "selectors.peer",
                "a tunnel-mode SA needs the client's inner addresses, e.g. [\"10.8.0.2/32\"]",
            ));
        }
    }

    let lifetime = match f.obj.get("lifetime") {
        None => Lifetime::default(),
        Some(Value::Object(o)) => {
            let l = Fields { obj: o, prefix: "lifetime." };
            l.reject_unknown(&["soft_bytes", "hard_bytes", "soft_packets", "hard_packets"])?;
            let lt = Lifetime {
                soft_bytes: l.optional("soft_bytes", positive)?,
                hard_bytes: l.optional("hard_bytes", positive)?,
                soft_packets: l.optional("soft_packets", positive)?,
                hard_packets: l.optional("hard_packets", positive)?,
            };
            for (what, soft, hard) in
                [("bytes", lt.soft_bytes, lt.hard_bytes), ("packets", lt.soft_packets, lt.hard_packets)]
            {
                if let (Some(s), Some(h)) = (soft, hard) {
                    if s >= h {
                        return Err(FieldError::at(
                            format!("lifetime.soft_{what}"),
                            format!(
                                "{s} is not below hard_{what} {h}; the soft limit must come first so the rekey starts before expiry"
                            ),
                        ));
                    }
                }
            }
            lt
        }
        Some(_) => {
            return Err(FieldError::at(
                "lifetime",
                "must be an object with soft_bytes, hard_bytes, soft_packets, hard_packets",
            ));
        }
    };

    let inbound_only = |k: &str| -> Result<(), FieldError> {
        if direction == Direction::Outbound && f.obj.contains_key(k) {
            return Err(FieldError::at(k, "applies to inbound SAs only; remove it from this outbound SA"));
        }
        Ok(())
    };
    let outbound_only = |k: &str| -> Result<(), FieldError> {
        if direction == Direction::Inbound && f.obj.contains_key(k) {
            return Err(FieldError::at(k, "applies to outbound SAs only; remove it from this inbound SA"));
        }
        Ok(())
    };
    inbound_only("nat_update")?;
    inbound_only("paired_spi")?;
    outbound_only("ttl")?;
    outbound_only("df")?;
    outbound_only("pad_to")?;
    let pad_to = f
        .optional("pad_to", |v| match as_u64(v)? {
            a @ (4 | 8 | 16) => Ok(a as u8),
            a => {
                Err(format!("{a} is not a padding alignment; use 4 (smallest packets), 8 or 16 (whole cipher blocks)"))
            }
        })?
        .unwrap_or(4);
    let nat_update = f.optional("nat_update", as_bool)?.unwrap_or(true);
    let paired_spi = f.optional("paired_spi", |v| parse_u32_value(v).map_err(str::to_owned))?;
    let ttl = f
        .optional("ttl", |v| match as_u64(v)? {
            t @ 1..=255 => Ok(t as u8),
            t => Err(format!("{t} is out of range 1-255")),
        })?
        .unwrap_or(64);
    let df = f
        .optional("df", |v| match as_str(v)? {
            "copy" => Ok(DfPolicy::Copy),
            "set" => Ok(DfPolicy::Set),
            "clear" => Ok(DfPolicy::Clear),
            other => Err(format!("\"{other}\" is not a DF policy; use \"copy\", \"set\" or \"clear\"")),
        })?
        .unwrap_or(DfPolicy::Copy);
    let last_seq = f.optional("last_seq", as_u64)?.unwrap_or(0);
    if !esn && last_seq > u64::from(u32::MAX) {
        return Err(FieldError::at(
            "last_seq",
            format!("{last_seq} does not fit 32 bits; without ESN sequence numbers end at 4294967295"),
        ));
    }

    let p = SaParams {
        name,
        spi,
        direction,
        mode,
        algorithm,
        key: Key::new(key),
        salt,
        local,
        peer,
        encap,
        replay_window: if direction == Direction::Inbound { replay_window } else { 0 },
        esn,
        selectors,
        lifetime,
        nat_update,
        paired_spi,
        ttl,
        df,
        last_seq,
        pad_to,
    };
    p.validate()?;
    Ok(p)
}

impl SaParams {
    /// Check the invariants every SA meets, whatever it came from: a configuration file,
    /// or a shared-memory record written by another process (untrusted input).
    pub fn validate(&self) -> Result<(), FieldError> {
        let bad = |f: &str, m: String| Err(FieldError::at(f, m));
        if self.spi < 256 {
            return bad("spi", format!("0x{:x} is reserved (0-255)", self.spi));
        }
        if self.name.is_empty() {
            return bad("name", "is empty".into());
        }
        if self.key.expose().len() != self.algorithm.key_len() {
            return bad(
                "key",
                format!(
                    "{} needs {} bytes, got {}",
                    self.algorithm.name(),
                    self.algorithm.key_len(),
                    self.key.expose().len()
                ),
            );
        }
        if self.local.is_ipv4() != self.peer.is_ipv4() {
            return bad("peer", "local and peer are of different address families".into());
        }
        if self.local == self.peer {
            return bad("peer", "is the same address as local".into());
        }
        if let Some(e) = self.encap {
            if e.local_port == 0 || e.peer_port == 0 {
                return bad("encap", "ports must be 1-65535".into());
            }
        }
        match self.direction {
            Direction::Inbound => {
                let w = self.replay_window;
                if w != 0 && !(MIN_REPLAY_WINDOW..=MAX_REPLAY_WINDOW).contains(&w) {
                    return bad("replay_window", format!("{w} is out of range"));
                }
            }
            Direction::Outbound => {
                if self.replay_window != 0 || self.paired_spi.is_some() {
                    return bad("direction", "an outbound SA has no replay window or paired SPI".into());
                }
            }
        }
        if self.mode == Mode::Tunnel && (self.selectors.local.is_empty() || self.selectors.peer.is_empty()) {
            return bad("selectors", "a tunnel-mode SA needs local and peer selectors".into());
        }
        let lt = &self.lifetime;
        for (what, soft, hard) in
            [("bytes", lt.soft_bytes, lt.hard_bytes), ("packets", lt.soft_packets, lt.hard_packets)]
        {
            if soft == Some(0) || hard == Some(0) {
                return bad("lifetime", format!("{what} limits must be at least 1"));
            }
            if let (Some(s), Some(h)) = (soft, hard) {
                if s >= h {
                    return bad("lifetime", format!("soft_{what} {s} is not below hard_{what} {h}"));
                }
            }
        }
        if self.ttl == 0 {
            return bad("ttl", "must be 1-255".into());
        }
        if !matches!(self.pad_to, 4 | 8 | 16) {
            return bad("pad_to", format!("{} is not 4, 8 or 16", self.pad_to));
        }
        if self.last_seq > self.seq_max() {
            return bad("last_seq", format!("{} exceeds the sequence space", self.last_seq));
        }
        Ok(())
    }
}

/// Reads named fields of one JSON object, with the object's path prefix for errors.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'a str,
}

impl Fields<'_> {
    fn reject_unknown(&self, known: &[&str]) -> Result<(), FieldError> {
        for k in self.obj.keys() {
            if !known.contains(&k.as_str()) {
                return Err(FieldError::at(
                    format!("{}{k}", self.prefix),
                    format!("unknown field{}", suggest(k, known)),
                ));
            }
        }
        Ok(())
    }

    fn optional<T>(&self, k: &str, f: impl FnOnce(&Value) -> Result<T, String>) -> Result<Option<T>, FieldError> {
        match self.obj.get(k) {
            None => Ok(None),
            Some(v) => f(v).map(Some).map_err(|m| FieldError::at(format!("{}{k}", self.prefix), m)),
        }
    }

    fn required<T>(&self, k: &str, f: impl FnOnce(&Value) -> Result<T, String>) -> Result<T, FieldError> {
        self.optional(k, f)?
            .ok_or_else(|| FieldError::at(format!("{}{k}", self.prefix), "missing; this field is required"))
    }
}

/// An SA's settings as JSON, in the configuration's field names, without its key and
/// salt: what tools print about an SA (natt-pcap check, natt-control show and stats).
pub fn public_json(p: &SaParams) -> Value {
    let mut v = serde_json::json!({
        "name": p.name,
        "spi": format!("0x{:08x}", p.spi),
        "direction": p.direction.name(),
        "mode": p.mode.name(),
        "algorithm": p.algorithm.name(),
        "local": p.local.to_string(),
        "peer": p.peer.to_string(),
        "encap": p.encap.map(|e| serde_json::json!({"local_port": e.local_port, "peer_port": e.peer_port})),
        "esn": p.esn,
        "selectors": {
            "local": p.selectors.local.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "peer": p.selectors.peer.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        },
        "lifetime": {
            "soft_bytes": p.lifetime.soft_bytes, "hard_bytes": p.lifetime.hard_bytes,
            "soft_packets": p.lifetime.soft_packets, "hard_packets": p.lifetime.hard_packets,
        },
    });
    match p.direction {
        Direction::Inbound => {
            v["replay_window"] = p.replay_window.into();
            v["nat_update"] = p.nat_update.into();
            v["paired_spi"] = p.paired_spi.map_or(Value::Null, |s| format!("0x{s:08x}").into());
        }
        Direction::Outbound => {
            v["ttl"] = p.ttl.into();
            v["df"] = p.df.name().into();
            v["pad_to"] = p.pad_to.into();
        }
    }
    v
}

fn suggest(k: &str, known: &[&str]) -> String {
    let best = known.iter().map(|c| (edit_distance(k, c), *c)).min();
    match best {
        Some((d, c)) if d <= 2 || c.starts_with(k) => format!("; did you mean \"{c}\"?"),
        _ => format!("; known fields are {}", known.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn as_str(v: &Value) -> Result<&str, String> {
    v.as_str().ok_or_else(|| format!("must be a string, got {}", kind(v)))
}

fn as_bool(v: &Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("must be true or false, got {}", kind(v)))
}

fn as_u64(v: &Value) -> Result<u64, String> {
    v.as_u64().ok_or_else(|| format!("must be a non-negative integer, got {}", kind(v)))
}

fn positive(v: &Value) -> Result<u64, String> {
    match as_u64(v)? {
        0 => Err("must be at least 1; leave the field out for no limit".into()),
        n => Ok(n),
    }
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string \"{s}\""),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// An SPI: a number, or a string of decimal or 0x-prefixed hex.
pub fn parse_u32_value(v: &Value) -> Result<u32, &'static str> {
    const MSG: &str = "must be a 32-bit number, or a string like \"0x0000c001\"";
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or(MSG),
        Value::String(s) => parse_u32_str(s).ok_or(MSG),
        _ => Err(MSG),
    }
}

/// Parse `0x…` hex or decimal.
pub fn parse_u32_str(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let t: String = s.trim().trim_start_matches("0x").chars().filter(|c| *c != ':' && *c != ' ').collect();
    if t.len() % 2 != 0 {
        return Err(format!("has an odd number of hex digits ({}); each byte is two digits", t.len()));
    }
    hex::decode(&t).map_err(|_| "must be hex digits (0-9, a-f), optionally with a 0x prefix".to_owned())
}

fn parse_addr(v: &Value) -> Result<IpAddr, String> {
    let s = as_str(v)?;
    s.parse().map_err(|_| format!("\"{s}\" is not an IPv4 or IPv6 address"))
}

fn parse_port(v: &Value) -> Result<u16, String> {
    match as_u64(v)? {
        p @ 1..=65535 => Ok(p as u16),
        p => Err(format!("{p} is not a UDP port (1-65535)")),
    }
}

fn parse_prefixes(v: &Value) -> Result<Vec<IpPrefix>, String> {
    let Value::Array(a) = v else {
        return Err(format!("must be an array of prefixes like [\"10.0.0.0/16\"], got {}", kind(v)));
    };
    a.iter()
        .enumerate()
        .map(|(i, p)| {
            let s = as_str(p).map_err(|m| format!("entry {i}: {m}"))?;
            s.parse::<IpPrefix>().map_err(|e| format!("entry {i} \"{s}\": {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good_in() -> Value {
        json!({
            "name": "alice-in", "spi": "0x00001001", "direction": "inbound", "mode": "tunnel",
            "algorithm": "aes128-gcm", "key": "00112233445566778899aabbccddeeff", "salt": "01020304",
            "local": "203.0.113.1", "peer": "198.51.100.7",
            "encap": {"local_port": 4500, "peer_port": 4500},
            "replay_window": 1024, "esn": true,
            "selectors": {"local": ["10.0.0.0/16"], "peer": ["10.8.0.2/32"]},
            "lifetime": {"soft_bytes": 1000, "hard_bytes": 2000},
            "paired_spi": "0x2001"
        })
    }

    fn good_out() -> Value {
        json!({
            "name": "alice-out", "spi": 0x2001, "direction": "outbound",
            "algorithm": "aes128gcm16", "key": "ffeeddccbbaa99887766554433221100a1a2a3a4",
            "local": "203.0.113.1", "peer": "198.51.100.7", "encap": {"peer_port": 40000},
            "selectors": {"local": ["10.0.0.0/16"], "peer": ["10.8.0.2/32"]}, "ttl": 32, "df": "set"
        })
    }

    fn file(sas: Vec<Value>) -> String {
        json!({ "sas": sas }).to_string()
    }

    #[test]
    fn parses_full_sa() {
        let sas = parse_config(&file(vec![good_in(), good_out()]), Some("t.json")).unwrap();
        let i = &sas[0];
        assert_eq!(i.spi, 0x1001);
        assert_eq!(i.direction, Direction::Inbound);
        assert_eq!(i.algorithm, Algorithm::Aes128Gcm);
        assert_eq!(i.salt, [1, 2, 3, 4]);
        assert_eq!(i.replay_window, 1024);
        assert!(i.esn);
        assert_eq!(i.encap, Some(Encap { local_port: 4500, peer_port: 4500 }));
        assert_eq!(i.lifetime.soft_bytes, Some(1000));
        assert_eq!(i.paired_spi, Some(0x2001));
        let o = &sas[1];
        assert_eq!(o.key.expose().len(), 16);
        assert_eq!(o.salt, [0xa1, 0xa2, 0xa3, 0xa4]);
        assert_eq!(o.encap, Some(Encap { local_port: 4500, peer_port: 40000 }));
        assert_eq!((o.ttl, o.df), (32, DfPolicy::Set));
        assert_eq!(o.replay_window, 0);
        assert!(!format!("{o:?}").contains("0011223344"), "key must not be printed");
    }

    fn error_of(sas: Vec<Value>) -> String {
        parse_config(&file(sas), Some("conf/sas.json")).unwrap_err().to_string()
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        v[k] = x;
        v
    }

    fn without(mut v: Value, k: &str) -> Value {
        v.as_object_mut().unwrap().remove(k);
        v
    }

    #[test]
    fn errors_name_file_sa_and_field() {
        let e = error_of(vec![good_out(), with(good_in(), "key", json!("0011"))]);
        assert!(
            e.starts_with(
                "conf/sas.json: SA #1 \"alice-in\" (spi 0x00001001), field \"key\": aes128-gcm needs a 16-byte key"
            ),
            "{e}"
        );
        let e = error_of(vec![with(good_in(), "replay_windw", json!(64))]);
        assert!(e.contains("field \"replay_windw\": unknown field; did you mean \"replay_window\"?"), "{e}");
        let e = error_of(vec![with(good_in(), "algorithm", json!("aes192-gcm")), good_out()]);
        assert!(e.contains("AES-192 is not offered"), "{e}");
        let e = error_of(vec![with(good_in(), "spi", json!(7)), good_out()]);
        assert!(e.contains("field \"spi\": 0x7 is reserved"), "{e}");
        let e = error_of(vec![good_in()]);
        assert!(e.contains("field \"paired_spi\": no outbound SA has SPI 0x00002001"), "{e}");
        let b = with(with(with(good_out(), "name", json!("b")), "spi", json!(0x2002)), "key", json!("11".repeat(20)));
        let e = error_of(vec![good_in(), good_out(), b]);
        assert!(e.contains("SA #2 \"b\" (spi 0x00002002), field \"selectors.peer\": 10.8.0.2/32 is already the selector of outbound SA #1"), "{e}");
        // One key for two SAs: their nonces would collide.
        let twin = with(with(good_in(), "name", json!("twin")), "spi", json!(0x1002));
        let e = error_of(vec![good_in(), good_out(), twin]);
        assert!(
            e.contains("SA #2 \"twin\" (spi 0x00001002), field \"key\": the same key and salt as SA #0 \"alice-in\": AES-GCM nonces would repeat"),
            "{e}"
        );
        let e = error_of(vec![good_out(), with(good_out(), "name", json!("x"))]);
        assert!(e.contains("SPI 0x00002001 is already used by SA #0"), "{e}");
        let e = error_of(vec![
            with(good_in(), "selectors", json!({"local": ["10.0.0.1/16"], "peer": ["10.8.0.2"]})),
            good_out(),
        ]);
        assert!(
            e.contains(
                "field \"selectors.local\": entry 0 \"10.0.0.1/16\": host bits are set; did you mean 10.0.0.0/16?"
            ),
            "{e}"
        );
        let e = error_of(vec![with(good_in(), "lifetime", json!({"soft_bytes": 5, "hard_bytes": 5})), good_out()]);
        assert!(e.contains("field \"lifetime.soft_bytes\": 5 is not below hard_bytes 5"), "{e}");
        let e = error_of(vec![without(good_in(), "local"), good_out()]);
        assert!(e.contains("field \"local\": missing"), "{e}");
        let e = error_of(vec![with(good_in(), "peer", json!("2001:db8::1")), good_out()]);
        assert!(e.contains("different address families"), "{e}");
        let e = error_of(vec![with(good_in(), "replay_window", json!(32)), good_out()]);
        assert!(e.contains("use 0 (anti-replay off) or 64 to 65536"), "{e}");
        let e = error_of(vec![with(good_out(), "replay_window", json!(128))]);
        assert!(e.contains("applies to inbound SAs only"), "{e}");
        let e = error_of(vec![with(good_in(), "ttl", json!(3)), good_out()]);
        assert!(e.contains("field \"ttl\": applies to outbound SAs only"), "{e}");
        let e = error_of(vec![with(good_in(), "encap", json!({"local_port": 0})), good_out()]);
        assert!(e.contains("encap.local_port"), "{e}");
        let e = error_of(vec![with(good_in(), "salt", json!("0102")), good_out()]);
        assert!(e.contains("field \"salt\": must be 4 bytes"), "{e}");
        let e = error_of(vec![with(good_in(), "key", json!("xyz0")), good_out()]);
        assert!(e.contains("must be hex digits"), "{e}");
        let e = error_of(vec![with(good_out(), "pad_to", json!(12))]);
        assert!(e.contains("field \"pad_to\": 12 is not a padding alignment"), "{e}");
        let e = error_of(vec![with(good_in(), "pad_to", json!(16)), good_out()]);
        assert!(e.contains("field \"pad_to\": applies to outbound SAs only"), "{e}");
        let e = error_of(vec![with(good_out(), "last_seq", json!(1u64 << 33))]);
        assert!(e.contains("does not fit 32 bits"), "{e}");
        let e = error_of(vec![without(good_in(), "selectors"), good_out()]);
        assert!(e.contains("selectors.local"), "{e}");
        let e = parse_config("{\"sas\": [}", Some("x.json")).unwrap_err().to_string();
        assert!(e.starts_with("x.json: invalid JSON at line 1, column 10"), "{e}");
        let e = parse_config("{\"sa\": []}", None).unwrap_err().to_string();
        assert!(e.contains("did you mean \"sas\"?"), "{e}");
    }

    #[test]
    fn transport_mode_selects_by_peer() {
        let v = json!({"spi": 300, "direction": "out", "mode": "transport", "algorithm": "chacha20-poly1305",
            "key": "00".repeat(36), "local": "192.0.2.1", "peer": "192.0.2.2", "encap": null});
        let p = parse_sa(&v).unwrap();
        assert_eq!(p.name, "sa-0000012c");
        assert_eq!(p.encap, None);
        assert_eq!(p.outbound_keys(), vec!["192.0.2.2/32".parse().unwrap()]);
    }
}
