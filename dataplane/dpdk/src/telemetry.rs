//! DPDK telemetry: commands that `dpdk-telemetry.py` (and anything speaking the
//! telemetry socket) can call. Each command answers with a dictionary of unsigned
//! integers built by a Rust closure, on DPDK's telemetry thread.

use crate::DpdkError;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::Mutex;

type Fill = Box<dyn Fn(&str) -> Vec<(String, u64)> + Send + Sync>;

/// The closures, by the index given to the shim as context. Entries are never removed.
static COMMANDS: Mutex<Vec<Fill>> = Mutex::new(Vec::new());

extern "C" fn fill(
    _cmd: *const c_char,
    params: *const c_char,
    ctx: *mut c_void,
    d: *mut dpdk_sys::rte_tel_data,
) -> c_int {
    let params = if params.is_null() {
        String::new()
    } else {
        // SAFETY: DPDK passes a NUL-terminated string valid for this call.
        unsafe { CStr::from_ptr(params) }.to_string_lossy().into_owned()
    };
    let pairs = match std::panic::catch_unwind(|| {
        let cmds = COMMANDS.lock().unwrap_or_else(|e| e.into_inner());
        cmds.get(ctx as usize).map(|f| f(&params))
    }) {
        Ok(Some(p)) => p,
        _ => return -1,
    };
    // SAFETY: `d` is the telemetry data object DPDK gave us for this call.
    unsafe {
        dpdk_sys::rte_tel_data_start_dict(d);
        for (k, v) in pairs {
            // Names are at most RTE_TEL_MAX_STRING_LEN; ours are short and ASCII.
            if let Ok(k) = CString::new(k) {
                dpdk_sys::rte_tel_data_add_dict_u64(d, k.as_ptr(), v);
            }
        }
    }
    0
}

/// Register `cmd` (for example `/natt/stats`) answering with what `f(params)` returns.
pub fn register(
    cmd: &str,
    help: &str,
    f: impl Fn(&str) -> Vec<(String, u64)> + Send + Sync + 'static,
) -> Result<(), DpdkError> {
    let c = CString::new(cmd).map_err(|_| DpdkError::new("telemetry", "command contains a NUL byte"))?;
    let h = CString::new(help).map_err(|_| DpdkError::new("telemetry", "help contains a NUL byte"))?;
    let idx = {
        let mut cmds = COMMANDS.lock().unwrap_or_else(|e| e.into_inner());
        cmds.push(Box::new(f));
        cmds.len() - 1
    };
    // SAFETY: valid strings (copied by DPDK and the shim); `fill` matches the callback
    // type; the context is an index into COMMANDS, whose entries live forever.
    let rc = unsafe { dpdk_sys::natt_telemetry_register(c.as_ptr(), h.as_ptr(), Some(fill), idx as *mut c_void) };
    if rc != 0 {
        return Err(DpdkError::errno(format!("registering telemetry command {cmd}"), rc));
    }
    Ok(())
}
