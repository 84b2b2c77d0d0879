// SPDX-License-Identifier: MPL-2.0
//! What this benchmark process costs, from the kernel's own counters: CPU time of the whole
//! process and of each thread (by name), resident memory, and the client connections it holds.

use std::collections::HashMap;

/// CPU seconds (user + system) of the whole process so far, exited threads included.
pub fn process_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// CPU seconds of each live thread of this process, by thread id, with its name (from each
/// thread's schedstat: nanoseconds on CPU).
pub fn thread_cpu() -> HashMap<String, (String, f64)> {
    let mut out = HashMap::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let path = task.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let ns = std::fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            out.insert(
                task.file_name().to_string_lossy().into_owned(),
                (comm.trim().to_string(), ns as f64 * 1e-9),
            );
        }
    }
    out
}

/// CPU seconds of the live threads whose name starts with `prefix` (an in-process racs-lite's
/// threads are all named `racs-lite*`).
pub fn threads_cpu(prefix: &str) -> f64 {
    thread_cpu()
        .values()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, s)| s)
        .sum()
}

/// A field of /proc/self/status in KiB (`"VmRSS:"`, `"VmHWM:"`).
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the peak-RSS mark (`VmHWM`), so that each phase reports its own peak.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Established TCP connections of this process's network namespace to `port` (the client ends
/// only).
pub fn connections_to(port: u16) -> usize {
    let mut n = 0;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(rem), Some(st)) = (f.get(2), f.get(3)) else {
                continue;
            };
            let rem_port = rem
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if rem_port == Some(port) && *st == "01" {
                n += 1;
            }
        }
    }
    n
}
