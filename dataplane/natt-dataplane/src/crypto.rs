//! Which crypto library the workers' keys come from (`--crypto`): the backend type the
//! dataplane is built on, and the choice made once at start, before any key exists.

/// The engine's backend in this process: intel-ipsec-mb or ring per key (see
/// `natt_ipsec_mb::Auto`).
pub type Crypto = natt_ipsec_mb::Auto;

/// The library AES-GCM and GMAC keys are made with now (for statistics).
pub fn name() -> &'static str {
    natt_ipsec_mb::selected().library()
}

/// Apply `--crypto` (`auto`, `ipsec-mb`, `ring`); returns the line that says what was chosen.
pub fn select(choice: &str) -> Result<String, String> {
    use natt_ipsec_mb::Choice;
    let mb = match choice {
        "ring" => None,
        "ipsec-mb" => Some(natt_ipsec_mb::library().map_err(|e| {
            format!("--crypto ipsec-mb: intel-ipsec-mb cannot start: {e}; use --crypto ring (or auto)")
        })?),
        _ => natt_ipsec_mb::library().ok(),
    };
    match mb {
        Some(lib) => {
            natt_ipsec_mb::select(Choice::IpsecMb).map_err(str::to_owned)?;
            Ok(format!(
                "intel-ipsec-mb {} ({}) for AES-GCM and GMAC, ring for ChaCha20-Poly1305",
                lib.version, lib.arch
            ))
        }
        None => {
            natt_ipsec_mb::select(Choice::Ring).map_err(str::to_owned)?;
            let why = if choice == "ring" { "" } else { " (intel-ipsec-mb cannot start on this CPU)" };
            Ok(format!("ring for every algorithm{why}"))
        }
    }
}
