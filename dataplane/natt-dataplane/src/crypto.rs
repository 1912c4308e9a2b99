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
    match (natt_ipsec_mb::select_named(choice)?, natt_ipsec_mb::library()) {
        (natt_ipsec_mb::Choice::IpsecMb, Ok(lib)) => Ok(format!(
            "intel-ipsec-mb {} ({}) for AES-GCM and GMAC, ring for ChaCha20-Poly1305",
            lib.version, lib.arch
        )),
        _ if choice == "ring" => Ok("ring for every algorithm".to_owned()),
        (_, Ok(_)) => Ok("ring for every algorithm (intel-ipsec-mb has no AES-NI code path here)".to_owned()),
        (_, Err(e)) => Ok(format!("ring for every algorithm (intel-ipsec-mb cannot start: {e})")),
    }
}
