//! The EAL: initialised once per process from DPDK's own command-line arguments;
//! lcores; launching a function on each worker lcore; the TSC.

use crate::DpdkError;
use std::ffi::{CString, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

static INITIALISED: AtomicBool = AtomicBool::new(false);

/// Initialise the EAL with `args` (the program name first, then EAL options such as
/// `-l 0-1 --vdev=net_null0 --no-huge`). Returns how many arguments the EAL consumed.
/// Only once per process.
pub fn init(args: &[String]) -> Result<usize, DpdkError> {
    if INITIALISED.swap(true, Ordering::SeqCst) {
        return Err(DpdkError::new("EAL", "already initialised in this process"));
    }
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| {
            CString::new(a.as_str())
                .map_err(|_| DpdkError::new("EAL arguments", format!("\"{a}\" contains a NUL byte")))
        })
        .collect::<Result<_, _>>()?;
    // rte_eal_init may permute argv and keeps pointers into it: leak the strings and the
    // array so they live for the rest of the process.
    let mut argv: Vec<*mut std::ffi::c_char> = cargs.into_iter().map(CString::into_raw).collect();
    argv.push(std::ptr::null_mut());
    let argv = Box::leak(argv.into_boxed_slice());
    // SAFETY: argv is a NULL-terminated array of valid NUL-terminated strings that lives
    // for the rest of the process; argc counts the strings before the NULL.
    let rc = unsafe { dpdk_sys::rte_eal_init((argv.len() - 1) as c_int, argv.as_mut_ptr()) };
    if rc < 0 {
        // SAFETY: reads the calling lcore's rte_errno through the shim.
        let e = unsafe { dpdk_sys::natt_errno() };
        let why = if e == 0 {
            "initialisation failed (another DPDK process with the same --file-prefix? use --in-memory or --file-prefix)"
                .to_owned()
        } else {
            crate::strerror(e)
        };
        return Err(DpdkError::new("EAL", why));
    }
    Ok(rc as usize)
}

/// Release the EAL's resources at exit.
pub fn cleanup() {
    if INITIALISED.load(Ordering::SeqCst) {
        // SAFETY: called once, after every lcore has returned, on the main lcore.
        unsafe {
            dpdk_sys::rte_eal_cleanup();
        }
    }
}

/// The main lcore.
pub fn main_lcore() -> u32 {
    // SAFETY: plain query after init.
    unsafe { dpdk_sys::rte_get_main_lcore() }
}

/// The worker lcores (every enabled lcore but the main one), in order.
pub fn worker_lcores() -> Vec<u32> {
    let mut v = Vec::new();
    // SAFETY: rte_get_next_lcore iterates enabled lcores; -1 (as u32::MAX) starts it.
    let mut l = unsafe { dpdk_sys::rte_get_next_lcore(u32::MAX, 1, 0) };
    while l < dpdk_sys::RTE_MAX_LCORE {
        v.push(l);
        // SAFETY: as above.
        l = unsafe { dpdk_sys::rte_get_next_lcore(l, 1, 0) };
    }
    v
}

/// The socket (NUMA node) of an lcore.
pub fn lcore_socket(lcore: u32) -> u32 {
    // SAFETY: plain query.
    unsafe { dpdk_sys::rte_lcore_to_socket_id(lcore) }
}

/// The CPU an lcore runs on (`None` if it is not pinned to one).
pub fn lcore_cpu(lcore: u32) -> Option<usize> {
    // SAFETY: plain query; returns -1 for an lcore without a single CPU.
    let c = unsafe { dpdk_sys::rte_lcore_to_cpu_id(lcore as i32) };
    usize::try_from(c).ok()
}

/// The lcore the caller runs on.
pub fn lcore_id() -> u32 {
    // SAFETY: reads the per-thread lcore id.
    unsafe { dpdk_sys::natt_lcore_id() }
}

/// TSC ticks per second.
pub fn tsc_hz() -> u64 {
    // SAFETY: plain query.
    unsafe { dpdk_sys::rte_get_tsc_hz() }
}

/// The TSC now.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: reads the time-stamp counter.
    unsafe { dpdk_sys::natt_rdtsc() }
}

type Job = Box<dyn FnOnce() -> i32 + Send>;

extern "C" fn trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the Box<Job> leaked by `launch` for exactly this call.
    let job: Box<Job> = unsafe { Box::from_raw(arg.cast::<Job>()) };
    // A panic must not unwind into C (it would abort the whole process): report it as a
    // failed lcore instead.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).unwrap_or(-1)
}

/// Run `f` on worker lcore `lcore`.
pub fn launch(lcore: u32, f: impl FnOnce() -> i32 + Send + 'static) -> Result<(), DpdkError> {
    let job: Box<Job> = Box::new(Box::new(f));
    let arg = Box::into_raw(job).cast::<c_void>();
    // SAFETY: trampoline takes back ownership of `arg` exactly once when the lcore runs.
    let rc = unsafe { dpdk_sys::rte_eal_remote_launch(Some(trampoline), arg, lcore) };
    if rc != 0 {
        // SAFETY: not launched, so still ours: reclaim it.
        drop(unsafe { Box::from_raw(arg.cast::<Job>()) });
        return Err(DpdkError::errno(format!("launching on lcore {lcore}"), rc));
    }
    Ok(())
}

/// Wait for the function launched on `lcore`; returns its result.
pub fn wait(lcore: u32) -> i32 {
    // SAFETY: waits for a previously launched lcore.
    unsafe { dpdk_sys::rte_eal_wait_lcore(lcore) }
}

/// Let `dpdk-dumpcap` capture on our ports.
pub fn pdump_init() -> Result<(), DpdkError> {
    // SAFETY: registers the pdump server; called once after init.
    let rc = unsafe { dpdk_sys::rte_pdump_init() };
    if rc < 0 {
        return Err(DpdkError::errno("rte_pdump_init", -unsafe { dpdk_sys::natt_errno() }));
    }
    Ok(())
}

/// The DPDK version string.
pub fn version() -> String {
    // SAFETY: rte_version returns a static string.
    unsafe { std::ffi::CStr::from_ptr(dpdk_sys::rte_version()).to_string_lossy().into_owned() }
}
