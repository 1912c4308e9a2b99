//! Compile the shim against intel-ipsec-mb's header and link the library (Debian:
//! libipsec-mb-dev, which scripts/setup.sh installs).

fn main() {
    println!("cargo:rerun-if-changed=shim/mb.c");
    let header = std::path::Path::new("/usr/include/intel-ipsec-mb.h");
    if !header.exists() {
        panic!("{} not found: install libipsec-mb-dev (scripts/setup.sh does)", header.display());
    }
    cc::Build::new().file("shim/mb.c").warnings(true).opt_level(3).compile("natt_mb_shim");
    println!("cargo:rustc-link-lib=dylib=IPSec_MB");
}
