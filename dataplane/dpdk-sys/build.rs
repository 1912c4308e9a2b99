//! Find DPDK with pkg-config, compile the C shim with DPDK's flags, and generate
//! bindings for the allowlisted API only (the full headers do not bind cleanly).

use std::path::PathBuf;
use std::process::Command;

fn pkg_config(arg: &str) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args([arg, "libdpdk"])
        .output()
        .unwrap_or_else(|e| panic!("running pkg-config: {e}; install pkg-config and dpdk-dev (scripts/setup.sh does)"));
    if !out.status.success() {
        panic!(
            "pkg-config cannot find libdpdk: {}; install dpdk-dev 22.11 or newer (scripts/setup.sh does)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
}

fn main() {
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-changed=src/shim.h");
    let version = pkg_config("--modversion");
    let v: Vec<u32> =
        version.first().map(|s| s.split('.').filter_map(|x| x.parse().ok()).collect()).unwrap_or_default();
    if v.len() < 2 || (v[0], v[1]) < (22, 11) {
        panic!("DPDK {version:?} is too old; 22.11 or newer is needed");
    }
    // Compile flags: include paths, `-include rte_config.h`, `-march=...`.
    let cflags = pkg_config("--cflags");
    let mut cc = cc::Build::new();
    cc.file("src/shim.c").warnings(true).flag_if_supported("-Wno-unused-parameter").opt_level(3);
    // `-include rte_config.h` is two words and must stay a pair.
    let mut it = cflags.iter();
    while let Some(f) = it.next() {
        if f == "-include" {
            if let Some(h) = it.next() {
                cc.flag("-include").flag(h);
            }
        } else {
            cc.flag(f);
        }
    }
    cc.compile("natt_dpdk_shim");

    // Link: the -l and -L flags; PMDs load at run time from DPDK's plugin directory.
    for f in pkg_config("--libs") {
        if let Some(l) = f.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={l}");
        } else if let Some(p) = f.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={p}");
        }
    }

    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    bindgen::Builder::default()
        .header("src/shim.h")
        .clang_args(&cflags)
        .allowlist_function("natt_.*")
        .allowlist_function("rte_eal_(init|cleanup|remote_launch|wait_lcore|mp_wait_lcore)")
        .allowlist_function("rte_(get_main_lcore|lcore_count|get_next_lcore|socket_id|lcore_to_socket_id|lcore_to_cpu_id|get_tsc_hz|strerror|version)")
        .allowlist_function("rte_eth_(dev_count_avail|dev_is_valid_port|dev_get_name_by_port|dev_socket_id|macaddr_get|stats_get|stats_reset|dev_stop|dev_close|link_get_nowait)")
        .allowlist_function("rte_pktmbuf_(pool_create|free_bulk)")
        .allowlist_function("rte_mempool_(free|avail_count|in_use_count)")
        .allowlist_function("rte_ring_(create|free|count)")
        .allowlist_function("rte_pdump_(init|uninit)")
        .allowlist_function("rte_tel_data_.*")
        .allowlist_function("rte_telemetry_register_cmd")
        .allowlist_type("rte_mbuf")
        .allowlist_type("rte_eth_stats")
        .allowlist_type("rte_ether_addr")
        .allowlist_type("rte_eth_link")
        .allowlist_type("natt_offload_bits")
        .allowlist_var("RTE_MBUF_F_.*")
        .allowlist_var("RTE_PKTMBUF_HEADROOM")
        .allowlist_var("RTE_MBUF_DEFAULT_BUF_SIZE")
        .allowlist_var("RTE_MAX_LCORE")
        .allowlist_var("RTE_MAX_ETHPORTS")
        .allowlist_var("RING_F_.*")
        .allowlist_var("SOCKET_ID_ANY")
        .allowlist_var("RTE_ETHER_ADDR_LEN")
        .allowlist_var("RTE_TEL_MAX_.*")
        .derive_default(true)
        .layout_tests(true)
        .generate()
        .expect("bindgen could not bind the DPDK headers")
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings");
}
